"""The local mail catcher of `make run`: a real SMTP server process that keeps what it gets."""

import sys
from pathlib import Path

import pytest

from channels_app import services
from messaging.models import CapturedEmail
from tests.processes import child_env, port_open, running, wait_for
from tests.smtp_server import free_port

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_test_email_lands_in_the_mail_catcher(make_sender, tmp_path: Path):
    port = free_port()
    args = [sys.executable, "manage.py", "mailcatcher", "--port", str(port)]
    log = tmp_path / "mailcatcher.log"

    with running(args, child_env(), log):
        wait_for(
            lambda: port_open(port), timeout=30, what="the mail catcher to listen", log_path=log
        )
        sender = make_sender(
            host="127.0.0.1",
            port=port,
            encryption="none",
            account="",
            password="",
            from_name="Demo 演示",
        )
        check = services.sender_check_connection(sender=sender, send_to="alice@example.com")

    assert check.ok, check.failure
    mail = CapturedEmail.objects.get()
    assert mail.envelope_to == ["alice@example.com"]
    assert mail.subject.startswith("UMS Email test from")
    assert "If you can read it, the sender works." in mail.body("plain")
    assert "Demo 演示" in str(mail.parsed()["From"])
    assert any(f"captured as {mail.pk}" in line for line in check.transcript)
