"""Secrets at rest: SMTP passwords and MasterSecrets are encrypted, rotated, never rendered."""

import pytest
from cryptography.fernet import Fernet
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.urls import reverse

from channels_app import crypto, services
from channels_app.models import Channel, EmailSender
from tests.smtp_server import PASSWORD

pytestmark = pytest.mark.django_db


def raw_column(table: str, column: str, pk: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {table} WHERE id = %s", [pk])
        return cursor.fetchone()[0]


def test_stored_password_is_not_the_plaintext(make_sender):
    sender = make_sender()

    stored = raw_column("channels_app_emailsender", "password_encrypted", sender.pk)

    assert PASSWORD not in stored
    assert sender.smtp_config().password == PASSWORD


def test_password_survives_key_rotation(settings, make_sender):
    sender = make_sender()
    old_key = settings.UMS_FIELD_KEYS[0]
    new_key = Fernet.generate_key().decode()
    settings.UMS_FIELD_KEYS = [new_key, old_key]

    counts = services.field_keys_rotate()

    settings.UMS_FIELD_KEYS = [new_key]  # the old key is gone now
    sender = EmailSender.objects.get(pk=sender.pk)
    assert sender.smtp_config().password == PASSWORD
    assert counts["senders"] == 1


def test_secret_encrypted_under_an_unknown_key_is_reported(settings, make_sender):
    sender = make_sender()
    settings.UMS_FIELD_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(crypto.SecretUnreadable):
        EmailSender.objects.get(pk=sender.pk).smtp_config()


def test_blank_password_on_edit_keeps_the_stored_one(make_sender):
    sender = make_sender()
    sender.from_name = "Renamed"

    services.sender_save(sender=sender, password="")

    assert EmailSender.objects.get(pk=sender.pk).smtp_config().password == PASSWORD


def test_password_never_appears_in_the_admin(admin_client, make_sender):
    sender = make_sender()
    ciphertext = sender.password_encrypted

    pages = [
        admin_client.get(reverse("admin:channels_app_emailsender_change", args=[sender.pk])),
        admin_client.get(reverse("admin:channels_app_emailsender_changelist")),
    ]

    for page in pages:
        assert page.status_code == 200
        html = page.content.decode()
        assert PASSWORD not in html
        assert ciphertext not in html


def test_master_secret_is_stored_encrypted(db):
    channel, secret = services.channel_create(name="Shop")

    stored = raw_column("channels_app_channel", "master_secret_encrypted", channel.pk)

    assert len(secret) == 32 and int(secret, 16) >= 0
    assert len(channel.channel_key) == 24
    assert secret not in stored
    assert Channel.objects.get(pk=channel.pk).get_master_secret() == secret


def test_only_the_explicit_action_reveals_the_master_secret(client, role_user):
    channel, secret = services.channel_create(name="Shop")
    admin_user = role_user("Channel admin")
    client.force_login(admin_user)
    secret_url = reverse("admin:channels_app_channel_secret", args=[channel.pk])

    change_page = client.get(reverse("admin:channels_app_channel_change", args=[channel.pk]))
    confirm_page = client.get(secret_url)
    revealed = client.post(secret_url)

    assert secret not in change_page.content.decode()
    assert secret_url in change_page.content.decode()
    assert secret not in confirm_page.content.decode()
    assert secret in revealed.content.decode()
    assert "no-store" in revealed["Cache-Control"]
    assert LogEntry.objects.filter(
        object_id=str(channel.pk), change_message__contains="Revealed", user=admin_user
    ).exists()


def test_roles_without_the_permission_cannot_reveal_the_secret(client, role_user):
    channel, secret = services.channel_create(name="Shop")
    client.force_login(role_user("Marketing"))

    change_page = client.get(reverse("admin:channels_app_channel_change", args=[channel.pk]))
    response = client.post(reverse("admin:channels_app_channel_secret", args=[channel.pk]))

    assert response.status_code == 403
    assert secret not in change_page.content.decode()
    assert "Show secret" not in change_page.content.decode()


def test_reset_rotates_the_secret(client, role_user):
    channel, old_secret = services.channel_create(name="Shop")
    client.force_login(role_user("Channel admin"))

    response = client.post(reverse("admin:channels_app_channel_secret_reset", args=[channel.pk]))

    channel.refresh_from_db()
    new_secret = channel.get_master_secret()
    assert new_secret != old_secret
    assert new_secret in response.content.decode()


def test_adding_a_channel_shows_its_secret_once(admin_client):
    response = admin_client.post(
        reverse("admin:channels_app_channel_add"),
        {
            "name": "Newsletter",
            "status": "enabled",
            "description": "",
            "authorizations-TOTAL_FORMS": "0",
            "authorizations-INITIAL_FORMS": "0",
        },
    )

    channel = Channel.objects.get(name="Newsletter")
    assert response.status_code == 200
    assert channel.get_master_secret() in response.content.decode()
    assert channel.channel_key in response.content.decode()
