"""Create a channel with an email sender authorized to it, and print the credentials as JSON."""

import os
import re
import secrets
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from channels_app import services
from channels_app.management.commands._json import write_json


class Command(BaseCommand):
    help = "Create a channel and its email sender; prints channel_key, master_secret, sender_code."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True, help="Channel name.")
        parser.add_argument("--description", default="")
        parser.add_argument("--sender-name", help="Defaults to the channel name (30 characters).")
        parser.add_argument("--sender-code", help="Letters and digits; generated when omitted.")
        parser.add_argument("--sender-host", required=True)
        parser.add_argument("--sender-port", type=int, required=True)
        parser.add_argument("--encryption", choices=["ssl", "starttls", "none"], required=True)
        parser.add_argument("--sender-account", default="")
        parser.add_argument("--sender-address", required=True, help="The From address.")
        parser.add_argument("--sender-display-name", default="")
        parser.add_argument(
            "--password-env",
            metavar="VAR",
            help="Name of the environment variable holding the SMTP password "
            "(never pass a password on the command line).",
        )
        parser.add_argument(
            "--approve-port", action="store_true", help="Approve a port outside the allowed list."
        )
        parser.add_argument("--port-reason", default="", help="Justification for --approve-port.")
        parser.add_argument("--trust-self-signed", action="store_true")

    def handle(self, *args: Any, **opts: Any) -> None:
        password = ""
        if opts["password_env"]:
            if opts["password_env"] not in os.environ:
                raise CommandError(f"Environment variable {opts['password_env']} is not set.")
            password = os.environ[opts["password_env"]]
        try:
            result = self._create(opts, password)
        except ValidationError as exc:
            raise CommandError("; ".join(_messages(exc))) from exc
        write_json(self, result)

    @transaction.atomic
    def _create(self, opts: dict[str, Any], password: str) -> dict[str, Any]:
        channel, secret = services.channel_create(
            name=opts["name"], description=opts["description"]
        )
        code = (
            opts["sender_code"]
            or re.sub(r"[^A-Za-z0-9]", "", opts["name"])[:20] + secrets.token_hex(3).upper()
        )
        sender = services.sender_create(
            name=(opts["sender_name"] or opts["name"])[:30],
            code=code,
            host=opts["sender_host"],
            port=opts["sender_port"],
            encryption=opts["encryption"],
            account=opts["sender_account"],
            password=password,
            from_address=opts["sender_address"],
            from_name=opts["sender_display_name"],
            trust_self_signed=opts["trust_self_signed"],
            port_exception_reason=opts["port_reason"]
            or ("Approved on the command line" if opts["approve_port"] else ""),
        )
        if opts["approve_port"] and not sender.port_allowed:
            services.sender_approve_port_exception(sender=sender, user=None)
        services.channel_authorize_sender(channel=channel, sender=sender, is_default=True)
        return {
            "channel_key": channel.channel_key,
            "master_secret": secret,
            "sender_code": sender.code,
            "sender_usable": sender.port_usable,
        }


def _messages(exc: ValidationError) -> list[str]:
    if hasattr(exc, "error_dict"):
        return [f"{field}: {msg}" for field, errors in exc.message_dict.items() for msg in errors]
    return exc.messages
