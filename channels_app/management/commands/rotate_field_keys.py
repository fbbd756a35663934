"""Re-encrypt every stored secret under the first key of UMS_FIELD_KEYS."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from channels_app import services
from channels_app.crypto import SecretUnreadable
from channels_app.management.commands._json import write_json


class Command(BaseCommand):
    help = (
        "Re-encrypt SMTP passwords and MasterSecrets with the first key of UMS_FIELD_KEYS. "
        "Put the new key first, run this, then remove the old key."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            counts = services.field_keys_rotate()
        except SecretUnreadable as exc:
            raise CommandError(f"{exc} Nothing was changed.") from exc
        write_json(self, {"rotated": counts})
