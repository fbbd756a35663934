"""The SMTP factory and the connection test, against real aiosmtpd servers on loopback."""

from email import message_from_bytes

import pytest

from channels_app import services
from channels_app.models import EmailSender
from channels_app.smtp import Encryption, SenderEmailBackend, SmtpConfig
from tests.smtp_server import PASSWORD, USERNAME, SmtpTestServer

pytestmark = pytest.mark.django_db


def test_connection_check_over_implicit_tls(ssl_server, trust_test_ca, make_sender):
    sender = make_sender(ssl_server)

    check = services.sender_check_connection(sender=sender)

    assert check.ok, check.failure
    assert check.session.tls_version.startswith("TLSv1.")
    assert check.session.auth_reply.startswith("235")
    assert check.transcript[-1].startswith("221")
    assert ssl_server.recorder.auth_attempts == [(USERNAME, PASSWORD)]
    sender.refresh_from_db()
    assert sender.health == EmailSender.Health.OK
    assert sender.health_checked_at is not None


def test_connection_check_over_starttls(starttls_server, trust_test_ca, make_sender):
    sender = make_sender(starttls_server)

    check = services.sender_check_connection(sender=sender)

    assert check.ok, check.failure
    assert check.session.tls_version
    assert "starttls" not in check.session.extensions  # features as seen after the upgrade
    assert starttls_server.recorder.auth_attempts == [(USERNAME, PASSWORD)]


def test_connection_check_without_encryption(plain_server, make_sender):
    sender = make_sender(plain_server, account="", password="")

    check = services.sender_check_connection(sender=sender)

    assert check.ok, check.failure
    assert check.session.tls_version == ""
    assert plain_server.recorder.auth_attempts == []


def test_wrong_password_reports_535_and_marks_sender_unhealthy(
    ssl_server, trust_test_ca, make_sender
):
    sender = make_sender(ssl_server, password="not-the-password")

    check = services.sender_check_connection(sender=sender)

    assert not check.ok
    assert check.failure.kind == "auth"
    assert check.failure.code == 535
    sender.refresh_from_db()
    assert sender.health == EmailSender.Health.FAILED
    assert sender.health_error.startswith("535")
    assert sender.health_error_kind == "auth"


def test_certificate_for_another_host_is_refused_before_auth(ca, trust_test_ca, make_sender):
    wrong_host_cert = ca.issue_cert("mail.elsewhere.test")
    with SmtpTestServer(mode="ssl", cert=wrong_host_cert) as server:
        check = services.sender_check_connection(sender=make_sender(server))

    assert not check.ok
    assert check.failure.kind == "certificate"
    assert "mismatch" in check.failure.text.lower() or "match" in check.failure.text.lower()
    assert server.recorder.auth_attempts == []


def test_untrusted_certificate_authority_is_refused_before_auth(starttls_server, make_sender):
    # No CA bundle configured: the test CA is not trusted.
    check = services.sender_check_connection(sender=make_sender(starttls_server))

    assert not check.ok
    assert check.failure.kind == "certificate"
    assert starttls_server.recorder.auth_attempts == []


def test_ssl_against_a_plain_port_fails_within_the_timeout(plain_server, make_sender):
    sender = make_sender(plain_server, encryption="ssl")

    check = services.sender_check_connection(sender=sender)

    assert not check.ok
    assert check.failure.kind in ("tls", "timeout", "connection")
    assert plain_server.recorder.auth_attempts == []


def test_starttls_against_a_server_without_starttls_fails_clearly(server_cert, make_sender):
    with SmtpTestServer(mode="starttls", cert=server_cert, offer_starttls=False) as server:
        check = services.sender_check_connection(sender=make_sender(server))

    assert not check.ok
    assert check.failure.kind == "tls"
    assert "STARTTLS" in check.failure.text
    assert server.recorder.auth_attempts == []


def test_hung_server_times_out(silent_server, settings, make_sender):
    settings.UMS_SMTP_TIMEOUT = 1
    sender = make_sender(silent_server, encryption="none", account="", password="")

    check = services.sender_check_connection(sender=sender)

    assert not check.ok
    assert check.failure.kind == "timeout"


def test_self_signed_certificate_is_pinned_on_first_check(ca, make_sender):
    # Not trusted by any CA bundle, but the sender explicitly trusts a self-signed certificate.
    cert = ca.issue_cert("localhost")
    with SmtpTestServer(mode="ssl", cert=cert) as server:
        sender = make_sender(server, trust_self_signed=True)
        first = services.sender_check_connection(sender=sender)
        sender.refresh_from_db()
        assert first.ok, first.failure
        assert sender.pinned_fingerprint == first.session.fingerprint

    other_cert = ca.issue_cert("localhost")
    with SmtpTestServer(mode="ssl", cert=other_cert) as impostor:
        sender.port = impostor.port
        sender.port_exception_port = impostor.port
        sender.save()
        second = services.sender_check_connection(sender=sender)

    assert not second.ok
    assert second.failure.kind == "certificate"
    assert impostor.recorder.auth_attempts == []


def test_test_email_arrives_with_the_servers_reply(ssl_server, trust_test_ca, make_sender):
    sender = make_sender(ssl_server, from_name="Shop 商城")

    check = services.sender_check_connection(sender=sender, send_to="alice@example.com")

    assert check.ok, check.failure
    assert any("250 2.0.0 Ok: queued as TEST1" in line for line in check.transcript)
    [received] = ssl_server.recorder.messages
    assert received.rcpt_tos == ["alice@example.com"]
    assert received.mail_from == "noreply@shop.example.com"
    parsed = message_from_bytes(received.data)
    assert "noreply@shop.example.com" in parsed["From"]
    assert parsed["Message-ID"]


def test_recipient_refusal_is_reported_with_its_code(plain_server, make_sender):
    async def refuse(server, session, envelope, address, rcpt_options):
        return "550 5.1.1 No such user"

    plain_server.controller.handler.handle_RCPT = refuse
    sender = make_sender(plain_server, account="", password="")

    check = services.sender_check_connection(sender=sender, send_to="ghost@example.com")

    assert not check.ok
    assert check.failure.kind == "permanent"
    assert check.failure.code == 550
    assert plain_server.recorder.messages == []


def test_backend_never_falls_back_to_global_email_settings(settings):
    settings.EMAIL_HOST = "global.example.com"
    settings.EMAIL_HOST_USER = "global-user"
    config = SmtpConfig(
        host="smtp.example.com",
        port=465,
        username="",
        password="",
        encryption=Encryption.NONE,
        timeout=5,
    )

    backend = SenderEmailBackend(config)

    assert (backend.host, backend.username, backend.password) == ("smtp.example.com", "", "")
    assert backend.timeout == 5
    assert not backend.use_ssl and not backend.use_tls


def test_backend_requires_an_explicit_timeout():
    config = SmtpConfig(
        host="smtp.example.com",
        port=465,
        username="",
        password="",
        encryption=Encryption.SSL,
        timeout=0,
    )
    with pytest.raises(ValueError, match="timeout"):
        SenderEmailBackend(config)


def test_password_is_not_in_the_config_repr(make_sender):
    sender = make_sender()
    assert PASSWORD not in repr(sender.smtp_config())
