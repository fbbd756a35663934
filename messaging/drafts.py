"""Writes for console drafts: a message being composed, saved to be reopened."""

from typing import Any

from django.db import transaction

from messaging.models import Draft, Message


def draft_audience_from_message(message: Message) -> dict[str, Any]:
    """The composer's audience ({"kind", "values"}) for a stored message's audience."""
    audience = message.audience or {}
    if audience.get("broadcast"):
        return {"kind": "all", "values": []}
    for kind in ("userid", "tag", "email"):
        if audience.get(kind):
            return {"kind": kind, "values": list(audience[kind])}
    return {"kind": "userid", "values": []}


@transaction.atomic
def draft_from_message(*, message: Message, user: Any) -> Draft:
    """A new draft with the content and audience of a message ("duplicate as a new draft")."""
    draft = Draft.objects.create(
        created_by=user,
        channel=message.channel,
        audience=draft_audience_from_message(message),
        subject=message.subject,
        html=message.html,
        from_name=message.from_name,
        reply_to=message.reply_to,
        priority=message.priority,
        source_message=message,
    )
    draft.materials.set(message.materials.all())
    return draft
