"""Port rule: a port outside UMS_SMTP_ALLOWED_PORTS is unusable until an approval."""

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from channels_app import services
from channels_app.models import EmailSender


@pytest.mark.django_db
def test_port_587_is_refused_until_approved(
    starttls_server, trust_test_ca, settings, make_sender, role_user
):
    settings.UMS_SMTP_ALLOWED_PORTS = frozenset({25, 80, 443, 465})
    sender = make_sender(starttls_server, approve=False)
    assert not sender.port_allowed and not sender.port_usable

    refused = services.sender_check_connection(sender=sender)
    assert not refused.ok
    assert "port exception" in refused.failure.text
    assert starttls_server.recorder.connections == 0

    services.sender_approve_port_exception(sender=sender, user=role_user("Channel admin"))
    sender.refresh_from_db()
    assert sender.port_usable
    assert sender.port_exception_approved_by.username == "channeladmin"
    assert services.sender_check_connection(sender=sender).ok


@pytest.mark.django_db
def test_approving_needs_the_permission(make_sender, role_user):
    sender = make_sender(port=587, encryption="starttls", approve=False)
    with pytest.raises(PermissionDenied):
        services.sender_approve_port_exception(sender=sender, user=role_user("Marketing"))
    sender.refresh_from_db()
    assert not sender.port_usable


@pytest.mark.django_db
def test_approving_needs_a_justification(make_sender):
    sender = make_sender(port=587, encryption="starttls", approve=False)
    EmailSender.objects.filter(pk=sender.pk).update(port_exception_reason="")
    sender.refresh_from_db()
    with pytest.raises(ValidationError):
        services.sender_approve_port_exception(sender=sender, user=None)


@pytest.mark.django_db
def test_changing_the_port_voids_the_approval(make_sender):
    sender = make_sender(port=587, encryption="starttls")
    assert sender.port_usable

    sender.port = 2525
    services.sender_save(sender=sender)

    assert not sender.port_usable


@pytest.mark.django_db
def test_allowed_ports_need_no_exception(make_sender):
    sender = make_sender(port=465, approve=False)
    assert sender.port_usable
    with pytest.raises(ValidationError):
        services.sender_approve_port_exception(sender=sender, user=None)


@pytest.mark.django_db
def test_periodic_health_check_skips_senders_awaiting_approval(make_sender):
    from django.utils import timezone

    from channels_app.selectors import senders_due_for_health_check

    waiting = make_sender(port=587, encryption="starttls", approve=False)
    approved = make_sender(port=2525, encryption="starttls")
    allowed = make_sender(port=465)

    due = set(senders_due_for_health_check(now=timezone.now(), interval_minutes=60))

    assert due == {approved, allowed}
    assert waiting not in due
