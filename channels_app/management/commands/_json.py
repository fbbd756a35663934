import json
from typing import Any

from django.core.management.base import BaseCommand


def write_json(command: BaseCommand, data: Any) -> None:
    command.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str))
