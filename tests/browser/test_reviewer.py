"""A reviewer reads everything in the browser and can change or send nothing."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from channels_app import services as channel_services
from messaging.services import Audience, Content, Options, message_create
from tests.browser.steps import log_in, open_from_home
from tests.smtp_server import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def scheduled_message(plain_server, make_sender):
    channel, _secret = channel_services.channel_create(name="Shop")
    sender = make_sender(plain_server, name="Shop mail")  # with an account and its password
    channel_services.channel_authorize_sender(channel=channel, sender=sender, is_default=True)
    message, _created = message_create(
        channel=channel,
        audience=Audience(emails=["ann@example.com"]),
        content=Content(subject="Spring sale", html="<p>Hello</p>"),
        options=Options(send_at=timezone.now() + timedelta(days=1)),  # no worker needed
        source="api",
    )
    return message


def test_a_reviewer_reads_the_history_and_senders_but_cannot_send_or_change(
    page, role_user, scheduled_message
):
    role_user("Reviewer", username="reviewer")
    log_in(page, "reviewer")

    compose_links = page.get_by_role("link", name=re.compile("compose|draft", re.IGNORECASE))
    expect(page.get_by_role("link", name="Messages", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="Add", exact=True)).to_have_count(0)
    expect(compose_links).to_have_count(0)

    open_from_home(page, "Messages")
    expect(page.get_by_role("row", name=scheduled_message.msgid)).to_contain_text("Spring sale")
    expect(page.get_by_label("Action:")).to_have_count(0)  # no retract, no other action
    page.get_by_role("link", name=scheduled_message.msgid).click()
    expect(page.locator("#message-summary [data-status]")).to_have_text("Scheduled")
    expect(page.locator("#message-content")).to_contain_text("Spring sale")
    expect(page.locator("#message-actions")).to_have_count(0)  # no retry, retract, duplicate
    expect(compose_links).to_have_count(0)

    open_from_home(page, "Email senders")
    expect(page.get_by_role("link", name="Shop mail")).to_be_visible()
    expect(page.get_by_role("link", name="Add email sender")).to_have_count(0)
    expect(page.get_by_label("Action:")).to_have_count(0)  # no connection checks

    for url in [
        "/admin/messaging/draft/add/",
        "/admin/messaging/draft/",
        f"/admin/messaging/message/{scheduled_message.pk}/retract/",
        "/admin/messaging/message/add/",
        "/admin/channels_app/emailsender/add/",
        f"/admin/channels_app/emailsender/{scheduled_message.sender_id}/test-connection/",
        "/admin/users_app/importjob/add/",
    ]:
        response = page.goto(url)
        assert response.status == 403, url


def test_a_reviewer_opens_a_senders_page_without_buttons_or_password(
    page, role_user, scheduled_message
):
    role_user("Reviewer", username="reviewer")
    log_in(page, "reviewer")

    open_from_home(page, "Email senders")
    page.get_by_role("link", name="Shop mail").click()

    expect(page.get_by_role("heading", name="View email sender")).to_be_visible()
    expect(page.locator(".field-host")).to_contain_text("localhost")
    expect(page.get_by_role("button", name="Test connection")).to_have_count(0)
    expect(page.get_by_role("button", name="Save", exact=True)).to_have_count(0)
    expect(page.locator("#content")).not_to_contain_text(PASSWORD)
