"""Who a message goes to: userids, tags, everyone, or raw addresses, resolved in bulk.

A channel's own binding wins over `all`; a user with neither has no usable address and becomes
an `invalid` delivery. One query resolves a few thousand userids.
"""

from collections.abc import Iterator
from dataclasses import dataclass

from django.db import connection

from users_app.models import ALL_SCOPE

CHUNK = 2000


@dataclass(frozen=True)
class Recipient:
    userid: str
    email: str  # empty: no usable address (an invalid target)


_RESOLVE_SQL = """
    SELECT u.userid, COALESCE(bc.email, ba.email, '')
    FROM users_app_umsuser u
    LEFT JOIN users_app_useremailbinding bc ON bc.user_id = u.id AND bc.bind_id = %s
    LEFT JOIN users_app_useremailbinding ba ON ba.user_id = u.id AND ba.bind_id = %s
    WHERE {where}
"""


def resolve_userids(*, channel_key: str, userids: list[str]) -> Iterator[Recipient]:
    """Each distinct userid once, in the order given; unknown userids have no address."""
    ordered = list(dict.fromkeys(userids))
    for start in range(0, len(ordered), CHUNK):
        chunk = ordered[start : start + CHUNK]
        placeholders = ", ".join(["%s"] * len(chunk))
        sql = _RESOLVE_SQL.format(where=f"u.userid IN ({placeholders})")
        with connection.cursor() as cursor:
            cursor.execute(sql, [channel_key, ALL_SCOPE, *chunk])
            found = dict(cursor.fetchall())
        for userid in chunk:
            yield Recipient(userid, found.get(userid, ""))


def resolve_tags(*, channel_key: str, tags: list[str]) -> Iterator[Recipient]:
    """Users carrying any of the tags under this channel's key or under `all`."""
    placeholders = ", ".join(["%s"] * len(tags))
    # Only placeholders are formatted into the SQL.
    where = f"u.id IN (SELECT t.user_id FROM users_app_usertag t WHERE t.tag IN ({placeholders}) AND t.bind_id IN (%s, %s))"  # noqa: E501, S608
    yield from _stream(where, [*tags, channel_key, ALL_SCOPE], channel_key)


def resolve_everyone(*, channel_key: str) -> Iterator[Recipient]:
    """Every user with an address this channel may use (its own binding, or `all`)."""
    where = "(bc.email IS NOT NULL OR ba.email IS NOT NULL)"
    yield from _stream(where, [], channel_key)


def _stream(where: str, params: list, channel_key: str) -> Iterator[Recipient]:
    """Keyset pagination over users, so memory stays flat for a million recipients."""
    last_id = 0
    sql = _RESOLVE_SQL.replace("SELECT u.userid,", "SELECT u.id, u.userid,").format(
        where=f"{where} AND u.id > %s ORDER BY u.id LIMIT {CHUNK}"
    )
    while True:
        with connection.cursor() as cursor:
            cursor.execute(sql, [channel_key, ALL_SCOPE, *params, last_id])
            rows = cursor.fetchall()
        for _id, userid, email in rows:
            yield Recipient(userid, email)
        if len(rows) < CHUNK:
            return
        last_id = rows[-1][0]


def resolve_addresses(*, emails: list[str]) -> Iterator[Recipient]:
    """Raw addresses (already cleaned by the caller), each distinct one once."""
    for email in dict.fromkeys(emails):
        yield Recipient("", email)


# --- PostgreSQL: the audience as one query, for an INSERT ... SELECT ----------------------------

# Each selects (ord, userid, email); the channel's own binding wins over `all`, as above.
_USERIDS_SQL = """
    SELECT a.ord, a.userid, COALESCE(bc.email, ba.email, '') AS email
    FROM unnest(%(userids)s::text[]) WITH ORDINALITY AS a(userid, ord)
    LEFT JOIN users_app_umsuser u ON u.userid = a.userid
    LEFT JOIN users_app_useremailbinding bc ON bc.user_id = u.id AND bc.bind_id = %(channel_key)s
    LEFT JOIN users_app_useremailbinding ba ON ba.user_id = u.id AND ba.bind_id = %(all_scope)s
"""
_TAGS_SQL = """
    SELECT u.id AS ord, u.userid, COALESCE(bc.email, ba.email, '') AS email
    FROM users_app_umsuser u
    LEFT JOIN users_app_useremailbinding bc ON bc.user_id = u.id AND bc.bind_id = %(channel_key)s
    LEFT JOIN users_app_useremailbinding ba ON ba.user_id = u.id AND ba.bind_id = %(all_scope)s
    WHERE u.id IN (
        SELECT t.user_id FROM users_app_usertag t
        WHERE t.tag = ANY(%(tags)s::text[]) AND t.bind_id IN (%(channel_key)s, %(all_scope)s)
    )
"""
_EVERYONE_SQL = """
    SELECT u.id AS ord, u.userid, COALESCE(bc.email, ba.email) AS email
    FROM users_app_umsuser u
    LEFT JOIN users_app_useremailbinding bc ON bc.user_id = u.id AND bc.bind_id = %(channel_key)s
    LEFT JOIN users_app_useremailbinding ba ON ba.user_id = u.id AND ba.bind_id = %(all_scope)s
    WHERE bc.email IS NOT NULL OR ba.email IS NOT NULL
"""
_ADDRESSES_SQL = """
    SELECT a.ord, '' AS userid, a.email
    FROM unnest(%(emails)s::text[]) WITH ORDINALITY AS a(email, ord)
"""


def recipients_sql(*, channel_key: str, audience: dict) -> tuple[str, dict]:
    """A PostgreSQL SELECT of (ord, userid, email): the same recipients as the resolve_*
    functions, ordered by `ord` as they are (an empty email: no usable address).

    Lets the database write the deliveries itself, without a round trip of every recipient
    through Python. Its parameters are named, so the caller can add its own.
    """
    params: dict = {"channel_key": channel_key, "all_scope": ALL_SCOPE}
    if audience.get("broadcast"):
        return _EVERYONE_SQL, params
    if audience.get("email"):
        return _ADDRESSES_SQL, {**params, "emails": list(dict.fromkeys(audience["email"]))}
    if audience.get("tag"):
        return _TAGS_SQL, {**params, "tags": list(audience["tag"])}
    userids = list(dict.fromkeys(audience.get("userid", [])))
    return _USERIDS_SQL, {**params, "userids": userids}
