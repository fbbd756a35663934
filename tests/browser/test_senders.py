"""A channel admin sets up sending in the browser: a sender, its connection test, a channel."""

import re

import pytest
from playwright.sync_api import Page, expect

from channels_app.models import Channel, ChannelSender, EmailSender
from tests.browser.steps import log_in, open_from_home

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def add_sender(page: Page, *, name: str, code: str, port: int) -> None:
    """Fills the sender form with the six items, for an SMTP server without login or TLS."""
    open_from_home(page, "Email senders")
    page.get_by_role("link", name="Add email sender").click()
    page.get_by_label("Name:", exact=True).fill(name)
    page.get_by_label("Code:", exact=True).fill(code)
    page.get_by_label("Account:", exact=True).fill("")
    page.get_by_label("Sender address:", exact=True).fill("noreply@shop.example.com")
    page.get_by_label("Display name:", exact=True).fill("Shop")
    page.get_by_label("Sending server:", exact=True).fill("localhost")
    page.get_by_label("Port:", exact=True).fill(str(port))
    page.get_by_label("Encryption:", exact=True).select_option(label="None")
    page.get_by_label("Port exception justification:", exact=True).fill(
        "The shop's relay listens on this port."
    )
    page.get_by_role("button", name="Save", exact=True).click()


def test_a_channel_admin_configures_a_sender_tests_it_and_authorizes_it_for_a_channel(
    page, role_user, plain_server, screenshot
):
    role_user("Channel admin", username="channeladmin")
    log_in(page, "channeladmin")

    add_sender(page, name="Shop mail", code="SHOP1", port=plain_server.port)
    expect(page.get_by_text("was added successfully")).to_be_visible()
    expect(
        page.get_by_text(f"Port {plain_server.port} needs an approved port exception")
    ).to_be_visible()

    page.get_by_role("link", name="Shop mail", exact=True).click()
    page.get_by_role("link", name="Approve port exception").click()
    expect(
        page.get_by_text("Justification: The shop's relay listens on this port.")
    ).to_be_visible()
    page.get_by_role("button", name="Approve port exception").click()
    expect(page.get_by_text("Port exception approved for Shop mail.")).to_be_visible()

    page.get_by_role("button", name="Test connection").click()
    expect(page.get_by_text(re.compile(r"Shop mail works \(\d+ ms\)\."))).to_be_visible()
    expect(page.locator("#smtp-transcript")).to_contain_text("220")
    screenshot(page, "sender-connection-test")
    page.get_by_role("link", name="Back to the sender").click()
    expect(page.locator(".field-health")).to_contain_text("Working")
    screenshot(page, "sender", full_page=True)

    open_from_home(page, "Channels")
    page.get_by_role("link", name="Add channel").click()
    page.get_by_label("Name:", exact=True).fill("Shop")
    page.get_by_role("button", name="Add another authorized email sender").click()
    # The sender column is an autocomplete box: open it, type, choose.
    page.locator(".dynamic-authorizations .select2-selection").click()
    page.locator(".select2-search__field").fill("Shop")
    page.get_by_role("option", name="Shop mail").click()
    page.locator(".dynamic-authorizations input[name$='-is_default']").check()
    page.get_by_role("button", name="Save", exact=True).click()

    expect(page.get_by_role("heading", name="Channel created")).to_be_visible()
    channel = Channel.objects.get(name="Shop")
    expect(page.locator("#channel-key")).to_have_text(channel.channel_key)
    expect(page.locator("#master-secret")).not_to_be_empty()
    page.get_by_role("link", name="I have saved it, continue").click()
    expect(page.get_by_role("heading", name="Change channel")).to_be_visible()
    screenshot(page, "channel", full_page=True)

    sender = EmailSender.objects.get(code="SHOP1")
    assert (sender.health, sender.port_exception_approved) == (EmailSender.Health.OK, True)
    assert ChannelSender.objects.filter(channel=channel, sender=sender, is_default=True).exists()
    open_from_home(page, "Channels")
    expect(page.get_by_role("row", name=re.compile("Shop"))).to_contain_text("Shop mail")
