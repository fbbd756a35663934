"""Reads for the compose page: whose drafts, who may compose, how many a draft would reach,
which templates it can start from."""

from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.db.models import QuerySet

from channels_app.models import Channel
from messaging import audience as audiences
from messaging.drafts import AudienceKind
from messaging.models import Draft, MessageTemplate
from messaging.templating import RECIPIENT_VARIABLES, required_variables
from users_app.models import ALL_SCOPE


def can_compose(user: Any) -> bool:
    return bool(user.is_active and user.has_perm("messaging.add_message"))


def drafts_visible_to(*, user: Any) -> QuerySet[Draft]:
    """A user's own drafts; a superuser's are everyone's."""
    drafts = Draft.objects.select_related("channel", "created_by")
    return drafts if user.is_superuser else drafts.filter(created_by=user)


@dataclass(frozen=True)
class AudienceCount:
    total: int  # the deliveries the message will have
    without_address: int  # of them, recorded as invalid targets

    @property
    def with_address(self) -> int:
        return self.total - self.without_address


# The joins of messaging.audience: a channel's own binding wins over `all`. Counted in the
# database, so a broadcast to a million users is one query and not a loop over them.
_COUNT_SQL = """
    SELECT COUNT(*), COALESCE(SUM(CASE WHEN COALESCE(bc.email, ba.email, '') = '' THEN 1 END), 0)
    FROM users_app_umsuser u
    LEFT JOIN users_app_useremailbinding bc ON bc.user_id = u.id AND bc.bind_id = %s
    LEFT JOIN users_app_useremailbinding ba ON ba.user_id = u.id AND ba.bind_id = %s
    WHERE {where}
"""

_USERIDS_COUNT_PG = """
    SELECT COUNT(*), COUNT(*) FILTER (WHERE COALESCE(bc.email, ba.email, '') = '')
    FROM unnest(%s::text[]) AS a(userid)
    LEFT JOIN users_app_umsuser u ON u.userid = a.userid
    LEFT JOIN users_app_useremailbinding bc ON bc.user_id = u.id AND bc.bind_id = %s
    LEFT JOIN users_app_useremailbinding ba ON ba.user_id = u.id AND ba.bind_id = %s
"""
# Only placeholders are formatted into these.
_TAGGED = (
    "u.id IN (SELECT t.user_id FROM users_app_usertag t"
    " WHERE t.tag IN ({placeholders}) AND t.bind_id IN (%s, %s))"
)


def audience_count(*, channel: Channel, kind: str, values: list[str]) -> AudienceCount:
    """How many recipients the audience resolves to on the channel, as the pipeline will."""
    key = channel.channel_key
    if kind == AudienceKind.ALL:
        return _count("(bc.email IS NOT NULL OR ba.email IS NOT NULL)", [], key)
    if kind == AudienceKind.TAG:
        if not values:
            return AudienceCount(0, 0)
        placeholders = ", ".join(["%s"] * len(values))
        where = _TAGGED.format(placeholders=placeholders)
        return _count(where, [*values, key, ALL_SCOPE], key)
    if kind == AudienceKind.EMAIL:
        return AudienceCount(len(list(audiences.resolve_addresses(emails=values))), 0)
    return _count_userids(list(dict.fromkeys(values)), key)


def _count_userids(userids: list[str], channel_key: str) -> AudienceCount:
    """Unknown userids count as recipients without an address, as the pipeline records them."""
    if connection.vendor == "postgresql":
        # One query for any number of userids (an IN list of thousands plans slowly).
        with connection.cursor() as cursor:
            cursor.execute(_USERIDS_COUNT_PG, [userids, channel_key, ALL_SCOPE])
            total, missing = cursor.fetchone()
        return AudienceCount(int(total), int(missing))
    total = missing = 0
    for recipient in audiences.resolve_userids(channel_key=channel_key, userids=userids):
        total += 1
        missing += not recipient.email
    return AudienceCount(total, missing)


def _count(where: str, params: list[str], channel_key: str) -> AudienceCount:
    with connection.cursor() as cursor:
        cursor.execute(_COUNT_SQL.format(where=where), [channel_key, ALL_SCOPE, *params])
        total, missing = cursor.fetchone()
    return AudienceCount(int(total), int(missing))


@dataclass(frozen=True)
class TemplateChoice:
    """A template offered by "Start from a template", with the values it asks for."""

    pk: int
    name: str
    channel_id: int | None
    channel_name: str
    variables: list[str]  # the values the author types
    per_recipient: list[str]  # {{userid}} / {{email}}: filled for each recipient


def templates_for_compose() -> list[TemplateChoice]:
    """The enabled templates, by name; each usable on its channel, or on all without one."""
    rows = MessageTemplate.objects.filter(is_enabled=True).select_related("channel")
    return [
        TemplateChoice(
            pk=row.pk,
            name=row.name,
            channel_id=row.channel_id,
            channel_name=row.channel.name if row.channel else "",
            variables=required_variables(row.variables),
            per_recipient=[name for name in row.variables if name in RECIPIENT_VARIABLES],
        )
        for row in rows.order_by("name", "pk")
    ]
