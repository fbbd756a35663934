"""A local SMTP server that keeps every email it receives, for development and demos."""

import signal
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.management.base import BaseCommand

from messaging.services import captured_email_store


class CatchAllHandler:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        raw = envelope.original_content or b""
        stored = await sync_to_async(captured_email_store, thread_sensitive=False)(
            peer=str(session.peer[0]) if session.peer else "",
            envelope_from=envelope.mail_from or "",
            envelope_to=list(envelope.rcpt_tos),
            raw=raw,
        )
        return f"250 OK captured as {stored.pk}"


class Command(BaseCommand):
    help = "Run the local mail catcher: an SMTP server on loopback that stores every email."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=settings.UMS_MAILCATCHER_PORT)

    def handle(self, *args: Any, host: str, port: int, **options: Any) -> None:
        stop_signals = {signal.SIGINT, signal.SIGTERM}
        # Block the stop signals before the server thread starts, so that only sigwait sees them.
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        controller = Controller(
            CatchAllHandler(), hostname=host, port=port, decode_data=False, auth_require_tls=False
        )
        controller.start()
        self.stdout.write(f"Mail catcher listening on {host}:{port}; mails appear in the console.")
        try:
            signal.sigwait(stop_signals)
        finally:
            controller.stop()
