"""The console pages for channels and senders, through the test client, per role."""

from pathlib import Path

import pytest
from django.urls import reverse

from channels_app import services
from channels_app.models import ChannelSender, EmailSender
from messaging.models import CapturedEmail
from tests.smtp_server import PASSWORD, USERNAME

pytestmark = pytest.mark.django_db

ROLE_EXPECTATIONS = {
    # role: (channel list, channel page, sender list, sender add page, sender page)
    None: (200, 200, 200, 200, 200),
    "Channel admin": (200, 200, 200, 200, 200),
    "Data admin": (200, 200, 403, 403, 403),
    "Marketing": (200, 200, 200, 403, 200),
    "Reviewer": (200, 200, 200, 403, 200),
}


@pytest.mark.parametrize("role", list(ROLE_EXPECTATIONS))
def test_admin_pages_render_for_each_role(client, role_user, make_sender, role):
    sender = make_sender()
    channel, _secret = services.channel_create(name="Shop")
    services.channel_authorize_sender(channel=channel, sender=sender)
    client.force_login(role_user(role))

    statuses = (
        client.get(reverse("admin:channels_app_channel_changelist")).status_code,
        client.get(reverse("admin:channels_app_channel_change", args=[channel.pk])).status_code,
        client.get(reverse("admin:channels_app_emailsender_changelist")).status_code,
        client.get(reverse("admin:channels_app_emailsender_add")).status_code,
        client.get(reverse("admin:channels_app_emailsender_change", args=[sender.pk])).status_code,
    )

    assert statuses == ROLE_EXPECTATIONS[role]
    assert client.get(reverse("admin:index")).status_code == 200


def sender_form(**overrides):
    data = {
        "preset": "",
        "name": "Shop mail",
        "code": "SHOP1",
        "is_enabled": "on",
        "account": USERNAME,
        "password": PASSWORD,
        "from_address": "noreply@shop.example.com",
        "from_name": "Shop",
        "host": "localhost",
        "port": "465",
        "encryption": "ssl",
        "pinned_fingerprint": "",
        "port_exception_reason": "",
    }
    data.update(overrides)
    return data


def test_channel_admin_creates_a_sender_with_the_six_items(client, role_user):
    client.force_login(role_user("Channel admin"))

    response = client.post(reverse("admin:channels_app_emailsender_add"), sender_form())

    assert response.status_code == 302, response.content.decode()[:2000]
    sender = EmailSender.objects.get(code="SHOP1")
    assert sender.smtp_config().password == PASSWORD
    assert (sender.host, sender.port, sender.encryption) == ("localhost", 465, "ssl")


def test_sender_form_offers_the_presets_and_the_qq_help(admin_client):
    html = admin_client.get(reverse("admin:channels_app_emailsender_add")).content.decode()

    assert "smtp.qq.com" in html
    assert "smtp.office365.com" in html
    assert "authorization code" in html
    assert "sender_presets.js" in html


def test_sender_form_requires_a_password_for_a_new_account(admin_client):
    response = admin_client.post(
        reverse("admin:channels_app_emailsender_add"), sender_form(password="")
    )

    assert response.status_code == 200
    assert "Enter the password" in response.content.decode()
    assert not EmailSender.objects.exists()


def test_sender_form_asks_for_a_justification_for_other_ports(admin_client):
    response = admin_client.post(
        reverse("admin:channels_app_emailsender_add"),
        sender_form(port="587", encryption="starttls"),
    )

    assert response.status_code == 200
    assert "explain why this sender needs it" in response.content.decode()


def test_sender_form_refuses_a_metadata_host(admin_client):
    response = admin_client.post(
        reverse("admin:channels_app_emailsender_add"),
        sender_form(host="169.254.169.254", port="80"),
    )

    assert response.status_code == 200
    assert "metadata" in response.content.decode()
    assert not EmailSender.objects.exists()


def test_editing_with_a_blank_password_keeps_it(admin_client, make_sender):
    sender = make_sender()

    response = admin_client.post(
        reverse("admin:channels_app_emailsender_change", args=[sender.pk]),
        sender_form(name=sender.name, code=sender.code, password="", from_name="New name"),
    )

    assert response.status_code == 302
    sender.refresh_from_db()
    assert sender.from_name == "New name"
    assert sender.smtp_config().password == PASSWORD


def test_test_connection_button_shows_the_servers_replies(
    client, role_user, ssl_server, trust_test_ca, make_sender
):
    sender = make_sender(ssl_server)
    client.force_login(role_user("Channel admin"))

    change_page = client.get(reverse("admin:channels_app_emailsender_change", args=[sender.pk]))
    response = client.post(reverse("admin:channels_app_emailsender_test", args=[sender.pk]))

    assert "Test connection" in change_page.content.decode()
    html = response.content.decode()
    assert "works" in html
    assert "235" in html and "221" in html
    sender.refresh_from_db()
    assert sender.health == EmailSender.Health.OK


def test_test_connection_is_a_post_only_action(admin_client, ssl_server, make_sender):
    sender = make_sender(ssl_server)

    response = admin_client.get(reverse("admin:channels_app_emailsender_test", args=[sender.pk]))

    assert response.status_code == 302
    assert ssl_server.recorder.connections == 0


def test_send_test_email_through_the_console(admin_client, plain_server, make_sender):
    sender = make_sender(plain_server, account="", password="")
    url = reverse("admin:channels_app_emailsender_send_test", args=[sender.pk])

    form_page = admin_client.get(url)
    response = admin_client.post(url, {"recipient": "me@example.com"})

    assert form_page.status_code == 200
    assert "me@example.com" in response.content.decode()
    [received] = plain_server.recorder.messages
    assert received.rcpt_tos == ["me@example.com"]


def test_marketing_cannot_test_or_approve(client, role_user, make_sender):
    sender = make_sender(port=587, encryption="starttls", approve=False)
    client.force_login(role_user("Marketing"))

    assert (
        client.post(reverse("admin:channels_app_emailsender_test", args=[sender.pk])).status_code
        == 403
    )
    assert (
        client.post(
            reverse("admin:channels_app_emailsender_approve_port", args=[sender.pk])
        ).status_code
        == 403
    )
    sender.refresh_from_db()
    assert not sender.port_usable


def test_channel_admin_approves_a_port_exception_in_the_console(client, role_user, make_sender):
    sender = make_sender(port=587, encryption="starttls", approve=False)
    client.force_login(role_user("Channel admin"))
    url = reverse("admin:channels_app_emailsender_approve_port", args=[sender.pk])

    change_page = client.get(reverse("admin:channels_app_emailsender_change", args=[sender.pk]))
    confirm = client.get(url)
    response = client.post(url)

    assert url in change_page.content.decode()
    assert "the test server&#x27;s port" in confirm.content.decode()
    assert response.status_code == 302
    sender.refresh_from_db()
    assert sender.port_usable


def test_bulk_check_action_queues_one_task_per_sender(admin_client, make_sender, settings):
    queue = Path(settings.CELERY_BROKER_FOLDER) / "queue"
    for stale in queue.glob("*"):
        stale.unlink()
    senders = [make_sender(), make_sender()]

    response = admin_client.post(
        reverse("admin:channels_app_emailsender_changelist"),
        {"action": "check_selected", "_selected_action": [s.pk for s in senders]},
        follow=True,
    )

    queued = [path.read_text() for path in queue.glob("*")]
    assert len(queued) == 2
    assert all("channels_app.tasks.sender_check" in message for message in queued)
    assert "Queued 2 connection checks" in response.content.decode()


def test_channel_inline_needs_exactly_one_default_sender(admin_client, make_sender):
    first, second = make_sender(), make_sender()
    channel, _secret = services.channel_create(name="Shop")
    data = {
        "name": "Shop",
        "status": "enabled",
        "description": "",
        "authorizations-TOTAL_FORMS": "2",
        "authorizations-INITIAL_FORMS": "0",
        "authorizations-0-sender": first.pk,
        "authorizations-0-is_default": "on",
        "authorizations-1-sender": second.pk,
        "authorizations-1-is_default": "on",
        "callback_urls-TOTAL_FORMS": "0",
        "callback_urls-INITIAL_FORMS": "0",
    }
    url = reverse("admin:channels_app_channel_change", args=[channel.pk])

    refused = admin_client.post(url, data)
    del data["authorizations-1-is_default"]
    accepted = admin_client.post(url, data)

    assert "exactly one" in refused.content.decode()
    assert accepted.status_code == 302
    assert ChannelSender.objects.get(channel=channel, is_default=True).sender == first


def test_channel_page_edits_marketing_suppression_and_api_limits(admin_client):
    channel, _secret = services.channel_create(name="Shop")
    url = reverse("admin:channels_app_channel_change", args=[channel.pk])
    data = {
        "name": "Shop",
        "status": "enabled",
        "description": "",
        "is_marketing": "on",
        "suppress_on_permanent_failure": "on",
        "api_rate_per_minute": "600",
        "daily_broadcast_quota": "",
        "authorizations-TOTAL_FORMS": "0",
        "authorizations-INITIAL_FORMS": "0",
        "callback_urls-TOTAL_FORMS": "0",
        "callback_urls-INITIAL_FORMS": "0",
    }

    page = admin_client.get(url).content.decode()
    response = admin_client.post(url, data)

    assert "API requests per minute" in page and "broadcasts per day" in page.lower()
    assert response.status_code == 302
    channel.refresh_from_db()
    assert (channel.is_marketing, channel.suppress_on_permanent_failure) == (True, True)
    assert (channel.api_rate_per_minute, channel.daily_broadcast_quota) == (600, None)


def test_sender_form_has_its_sending_limits(admin_client):
    page = admin_client.get(reverse("admin:channels_app_emailsender_add")).content.decode()
    response = admin_client.post(
        reverse("admin:channels_app_emailsender_add"),
        sender_form(rate_per_second="10", rate_per_minute="", rate_per_day="500"),
    )

    assert "Sending limits" in page
    assert response.status_code == 302
    sender = EmailSender.objects.get(code="SHOP1")
    assert (sender.rate_per_second, sender.rate_per_minute, sender.rate_per_day) == (10, None, 500)


def test_sender_limits_must_be_positive(admin_client):
    response = admin_client.post(
        reverse("admin:channels_app_emailsender_add"), sender_form(rate_per_second="0")
    )

    assert response.status_code == 200
    assert "greater than or equal to 1" in response.content.decode()
    assert not EmailSender.objects.exists()


def test_captured_emails_are_readable_in_the_console(admin_client, db):
    raw = (
        b"From: Shop <noreply@shop.example.com>\r\nTo: a@example.com\r\nSubject: Hello\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBody text here\r\n"
    )
    mail = CapturedEmail.objects.create(
        envelope_from="noreply@shop.example.com",
        envelope_to=["a@example.com"],
        subject="Hello",
        raw=raw,
    )

    listing = admin_client.get(reverse("admin:messaging_capturedemail_changelist"))
    detail = admin_client.get(reverse("admin:messaging_capturedemail_change", args=[mail.pk]))
    download = admin_client.get(reverse("admin:messaging_capturedemail_raw", args=[mail.pk]))

    assert "Hello" in listing.content.decode()
    assert "Body text here" in detail.content.decode()
    assert download.content == raw
