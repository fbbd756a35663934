"""Reads for the compose page: whose drafts, who may compose, how many a draft would reach."""

from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.db.models import QuerySet

from channels_app.models import Channel
from messaging import audience as audiences
from messaging.drafts import AudienceKind
from messaging.models import Draft
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
