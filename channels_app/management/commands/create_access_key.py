"""Create the global AccessKey of the user-management API; the secret is printed only now."""

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from channels_app import services
from channels_app.management.commands._json import write_json


class Command(BaseCommand):
    help = "Create an AccessKey/secret pair for the user API and print it as JSON (shown once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--label", default="")

    def handle(self, *args: Any, label: str, **options: Any) -> None:
        key, secret = services.access_key_create(label=label)
        write_json(self, {"access_key": key.access_key, "access_secret": secret})
