"""Management commands print JSON that automation can use as it is."""

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from channels_app import services
from channels_app.models import AccessKey, Channel, EmailSender
from tests.smtp_server import PASSWORD, USERNAME

pytestmark = pytest.mark.django_db


def run(*args) -> dict:
    out = StringIO()
    call_command(*args, stdout=out)
    return json.loads(out.getvalue())


def test_create_channel_output_can_be_used_as_is(ssl_server, trust_test_ca, monkeypatch):
    monkeypatch.setenv("SHOP_SMTP_PASSWORD", PASSWORD)

    created = run(
        "create_channel", "--name", "Shop", "--sender-host", "localhost",
        "--sender-port", str(ssl_server.port), "--encryption", "ssl",
        "--sender-account", USERNAME, "--sender-address", "noreply@shop.example.com",
        "--password-env", "SHOP_SMTP_PASSWORD", "--approve-port",
    )  # fmt: skip

    channel = Channel.objects.get(channel_key=created["channel_key"])
    assert channel.get_master_secret() == created["master_secret"]
    assert created["sender_usable"] is True
    checked = run("check_sender", created["sender_code"])
    assert checked["ok"] is True
    assert ssl_server.recorder.auth_attempts == [(USERNAME, PASSWORD)]


def test_create_channel_without_approval_leaves_the_sender_unusable():
    created = run(
        "create_channel", "--name", "Outlook line", "--sender-host", "smtp.office365.example",
        "--sender-port", "587", "--encryption", "none", "--sender-address", "a@example.com",
        "--port-reason", "provider only offers 587",
    )  # fmt: skip

    sender = EmailSender.objects.get(code=created["sender_code"])
    assert created["sender_usable"] is False
    assert not sender.port_usable


def test_create_channel_needs_a_reason_for_a_port_outside_the_list():
    with pytest.raises(CommandError, match="port_exception_reason"):
        run(
            "create_channel", "--name", "Outlook line", "--sender-host", "smtp.office365.example",
            "--sender-port", "587", "--encryption", "none", "--sender-address", "a@example.com",
        )  # fmt: skip
    assert not Channel.objects.exists()


def test_create_channel_reports_bad_input_and_writes_nothing():
    with pytest.raises(CommandError, match="from_address"):
        run(
            "create_channel", "--name", "Broken", "--sender-host", "smtp.example.com",
            "--sender-port", "465", "--encryption", "none", "--sender-address", "not-an-address",
        )  # fmt: skip
    assert not Channel.objects.exists()


def test_create_channel_refuses_a_missing_password_variable():
    with pytest.raises(CommandError, match="NOT_SET_ANYWHERE"):
        run(
            "create_channel", "--name", "Shop", "--sender-host", "smtp.example.com",
            "--sender-port", "465", "--encryption", "ssl", "--sender-account", "a@example.com",
            "--sender-address", "a@example.com", "--password-env", "NOT_SET_ANYWHERE",
        )  # fmt: skip


def test_check_sender_exits_1_on_failure(ssl_server, trust_test_ca, make_sender):
    sender = make_sender(ssl_server, password="wrong")
    out = StringIO()

    with pytest.raises(SystemExit) as exit_info:
        call_command("check_sender", sender.code, stdout=out)

    assert exit_info.value.code == 1
    result = json.loads(out.getvalue())
    assert result["failure"]["code"] == 535
    assert "wrong" not in out.getvalue()


def test_check_sender_can_send_a_test_email(plain_server, make_sender):
    sender = make_sender(plain_server, account="", password="")

    result = run("check_sender", sender.code, "--send-to", "ops@example.com")

    assert result["ok"] is True
    assert plain_server.recorder.messages[0].rcpt_tos == ["ops@example.com"]


def test_create_access_key_shows_the_secret_once_and_stores_a_hash():
    created = run("create_access_key")

    key = AccessKey.objects.get(access_key=created["access_key"])
    assert created["access_secret"] not in key.secret_hash
    assert key.secret_hash == services.access_secret_hash(created["access_secret"])


def test_rotate_field_keys_command(settings, make_sender):
    from cryptography.fernet import Fernet

    sender = make_sender()
    services.channel_create(name="Shop")
    new_key = Fernet.generate_key().decode()
    settings.UMS_FIELD_KEYS = [new_key, *settings.UMS_FIELD_KEYS]

    result = run("rotate_field_keys")

    settings.UMS_FIELD_KEYS = [new_key]
    assert result == {"rotated": {"channels": 1, "senders": 1}}
    assert EmailSender.objects.get(pk=sender.pk).smtp_config().password == PASSWORD
