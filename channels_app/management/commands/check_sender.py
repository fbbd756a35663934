"""Test a sender's connection (and optionally send a test email); prints the result as JSON."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from channels_app import services
from channels_app.management.commands._json import write_json
from channels_app.models import EmailSender


class Command(BaseCommand):
    help = "Connect, negotiate TLS, authenticate and QUIT with a sender; exit status 1 on failure."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("code", help="The sender's code.")
        parser.add_argument(
            "--send-to", default="", metavar="ADDR", help="Also send a test email to ADDR."
        )

    def handle(self, *args: Any, code: str, send_to: str, **options: Any) -> None:
        sender = EmailSender.objects.filter(code=code).first()
        if sender is None:
            raise CommandError(f"No sender with the code {code!r}.")
        check = services.sender_check_connection(sender=sender, send_to=send_to)
        write_json(self, check.as_dict())
        if not check.ok:
            raise SystemExit(1)
