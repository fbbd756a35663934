"""The network guard: which addresses a sender may reach, at save time and at connect time."""

import ipaddress

import pytest
from django.core.exceptions import ValidationError

from channels_app import netguard, services


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",
        "100.100.100.200",
        "fd00:ec2::254",
        "169.254.10.1",
        "fe80::1",
        "0.0.0.0",
        "224.0.0.1",
    ],
)
def test_metadata_link_local_and_non_unicast_addresses_are_always_refused(address):
    assert netguard.address_refusal(ipaddress.ip_address(address), allow_private=True)


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "::1", "10.1.2.3", "172.16.0.5", "192.168.1.1", "100.64.0.1", "::ffff:127.0.0.1"],
)
def test_loopback_and_private_addresses_need_the_setting(address):
    ip = ipaddress.ip_address(address)
    assert netguard.address_refusal(ip, allow_private=False)
    assert netguard.address_refusal(ip, allow_private=True) is None


def test_public_addresses_are_allowed():
    assert netguard.address_refusal(ipaddress.ip_address("1.1.1.1"), allow_private=False) is None
    assert (
        netguard.address_refusal(ipaddress.ip_address("2606:4700::1111"), allow_private=False)
        is None
    )


def test_saving_a_sender_aimed_at_the_metadata_service_is_refused(make_sender):
    with pytest.raises(ValidationError) as info:
        make_sender(host="169.254.169.254", port=80)
    assert "metadata" in str(info.value)


def test_saving_a_sender_on_loopback_is_refused_by_default(settings, make_sender):
    settings.UMS_SMTP_ALLOW_PRIVATE_NETWORKS = False
    with pytest.raises(ValidationError) as info:
        make_sender(host="127.0.0.1", port=25)
    assert "loopback" in str(info.value)


def test_unresolvable_host_can_be_saved_and_is_checked_at_connect_time(make_sender):
    sender = make_sender(host="smtp.does-not-exist.invalid", port=465)

    check = services.sender_check_connection(sender=sender)

    assert not check.ok
    assert check.failure.kind == "connection"  # DNS failures pass; the sender is not to blame
    assert check.failure.retryable
    assert "does not resolve" in check.failure.text


def test_guard_is_checked_again_at_connect_time(plain_server, settings, make_sender):
    sender = make_sender(plain_server, account="", password="")
    settings.UMS_SMTP_ALLOW_PRIVATE_NETWORKS = False  # e.g. the setting changed, or DNS did

    check = services.sender_check_connection(sender=sender)

    assert not check.ok
    assert check.failure.kind == "network_guard"
    assert plain_server.recorder.connections == 0
