"""Reads about messages."""

from datetime import timedelta

from django.utils import timezone

from channels_app.models import Channel
from messaging.models import Message, SendnoKey

SENDNO_WINDOW = timedelta(hours=24)


def sendno_message(*, channel: Channel, sendno: str) -> Message | None:
    """The channel's first message with this sendno in the last 24 hours, if any."""
    if not sendno:
        return None
    key = (
        SendnoKey.objects.filter(
            channel=channel, sendno=sendno, created_at__gte=timezone.now() - SENDNO_WINDOW
        )
        .select_related("message")
        .first()
    )
    return key.message if key else None
