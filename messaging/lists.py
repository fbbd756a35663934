"""Black and white lists of userids, the suppression list of addresses, and the checks the
delivery pipeline makes with them.

A message names at most one list (`option.black_id` or `option.white_id`): a blacklist keeps
its userids from receiving the message, a whitelist lets only its userids receive it. Lists hold
userids, so they do not filter raw-address sends (`aud_email`, no userid).

The suppression list holds addresses that receive nothing: from every channel (`channel` empty)
or from one channel. Addresses are compared lower-cased as a whole, local part included: no
mainstream mailbox provider tells `Ann@…` from `ann@…`, and when in doubt an unsubscribed person
must not get mail. Every address is stored by `normalize_address`, and looked up the same way.

The pipeline's checks (`userids_blocked`, `emails_suppressed`, `recipients_block_reason_sql`) are on
its hot path: one query per chunk of `CHUNK` values, on the unique indexes, never one per
recipient.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.formats import number_format
from django.utils.translation import gettext as _

from channels_app.models import Channel
from messaging.models import Message, RecipientList, SuppressedAddress
from ums.api import ApiCode
from users_app.importer import FileRefused, read_rows
from users_app.validation import FieldError, clean_email, clean_userid

CHUNK = 5000  # values per query: well under SQLite's 32,766 parameters, small for PostgreSQL
SHOWN_ERRORS = 100
# An upload is applied while its page waits (100,000 userids take about a second): files larger
# than this are refused rather than left to run into the web server's timeout.
UPLOAD_MAX_ROWS = 1_000_000


class ListRefused(Exception):
    """`option.black_id` / `option.white_id` refused, with the API code to answer.

    `code` is 1015097 (both given), 1015046 (no such blacklist for the channel) or 4004 (no
    such whitelist; `message` names `option.white_id`); `status` is the HTTP status (400).
    It carries the same attributes as `messaging.services.SendRefused`, so the API answers it
    the same way: `ApiError(status=exc.status, code=exc.code, message=exc.message)`.
    """

    def __init__(self, *, code: int, message: str, field: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.status = status


def _chunks(values: list[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def normalize_address(email: str) -> str:
    """The form in which the suppression list stores and compares an address."""
    return email.strip().lower()


# --- black and white lists: the API ------------------------------------------------------------


def recipient_list_for_message(
    *, channel: Channel, black_id: int | None, white_id: int | None
) -> tuple[RecipientList | None, RecipientList | None]:
    """The (blacklist, whitelist) a send request names, for `Message.black_list`/`white_list`.

    A list is usable by the channel it belongs to, or by every channel when it has none.
    Raises ListRefused: 1015097 when both are given, 1015046 for an unknown or unusable
    black_id, 4004 naming `option.white_id` for an unknown or unusable white_id.
    """
    if black_id is not None and white_id is not None:
        raise ListRefused(
            code=ApiCode.BLACK_AND_WHITE,
            field="option",
            message=_("option: give black_id or white_id, not both"),
        )
    if black_id is not None:
        found = _usable_list(channel, RecipientList.Kind.BLACK, black_id)
        if found is None:
            raise ListRefused(
                code=ApiCode.LIST_UNKNOWN,
                field="option.black_id",
                message=_("option.black_id: this channel has no blacklist %(id)s")
                % {"id": black_id},
            )
        return found, None
    if white_id is not None:
        found = _usable_list(channel, RecipientList.Kind.WHITE, white_id)
        if found is None:
            raise ListRefused(
                code=ApiCode.INVALID_PARAMETER,
                field="option.white_id",
                message=_("option.white_id: this channel has no whitelist %(id)s")
                % {"id": white_id},
            )
        return None, found
    return None, None


def _usable_list(channel: Channel, kind: str, number: int) -> RecipientList | None:
    return (
        RecipientList.objects.filter(kind=kind, number=number)
        .filter(Q(channel__isnull=True) | Q(channel=channel))
        .first()
    )


# --- black and white lists: the pipeline's check ------------------------------------------------


def userids_blocked(*, message: Message, userids: list[str]) -> set[str]:
    """The userids among `userids` that must not receive `message`.

    Those on its blacklist, or not on its whitelist. Reads only `message.black_list_id` and
    `message.white_list_id` (no query for the message), then one query per CHUNK userids on
    the (recipient_list, userid) unique index. Empty userids (raw addresses) are never
    blocked. A list deleted after the message was accepted no longer filters it.
    """
    black, white = message.black_list_id, message.white_list_id
    if black is None and white is None:
        return set()
    wanted = [userid for userid in dict.fromkeys(userids) if userid]
    blocked: set[str] = set()
    if black is not None:
        blocked |= _listed(black, wanted)
    if white is not None:
        blocked |= set(wanted) - _listed(white, wanted)
    return blocked


def _listed(list_id: int, userids: list[str]) -> set[str]:
    return _select_in(
        "SELECT userid FROM messaging_recipientlistentry"
        " WHERE recipient_list_id = %s AND userid {values}",
        [list_id, VALUES],
        userids,
    )


VALUES = object()  # where _select_in's parameters take the chunk


def _select_in(sql: str, params: list[Any], values: list[str]) -> set[str]:
    """The first column of `sql` run once per chunk of `values`.

    Each `{values}` in `sql` tests against the chunk, given where `params` holds VALUES.
    Plain SQL, not the ORM: building an `IN` lookup of thousands of values costs more than the
    query. PostgreSQL gets the chunk as one array parameter (`= ANY(%s)`), SQLite as a list.
    """
    return {row[0] for row in _select_rows(sql, params, values)}


def _select_rows(sql: str, params: list[Any], values: list[str]) -> list[tuple[Any, ...]]:
    """The rows of `sql` run once per chunk of `values` (see _select_in)."""
    postgresql = connection.vendor == "postgresql"
    found: list[tuple[Any, ...]] = []
    with connection.cursor() as cursor:
        for chunk in _chunks(values):
            if postgresql:
                test, bound = "= ANY(%s)", [chunk if p is VALUES else p for p in params]
            else:
                test = "IN (" + ", ".join(["%s"] * len(chunk)) + ")"
                bound = [v for p in params for v in (chunk if p is VALUES else [p])]
            cursor.execute(sql.format(values=test), bound)
            found.extend(cursor.fetchall())
    return found


# --- black and white lists: changes -------------------------------------------------------------


@dataclass(frozen=True)
class ListChange:
    """What a change did: userids added, already there (kept), removed."""

    added: int = 0
    already: int = 0
    removed: int = 0


def recipient_list_add(*, recipient_list: RecipientList, userids: Iterable[str]) -> ListChange:
    """Add userids (already cleaned with clean_userid); those already on the list stay."""
    wanted = list(dict.fromkeys(userids))
    with transaction.atomic():
        _lock(recipient_list)
        added = _insert(recipient_list, wanted)
        _recount(recipient_list)
    return ListChange(added=added, already=len(wanted) - added)


def recipient_list_remove(*, recipient_list: RecipientList, userids: Iterable[str]) -> ListChange:
    """Remove userids from the list; those not on it are ignored."""
    wanted = list(dict.fromkeys(userids))
    removed = 0
    with transaction.atomic():
        _lock(recipient_list)
        for chunk in _chunks(wanted):
            removed += recipient_list.entries.filter(userid__in=chunk).delete()[0]
        _recount(recipient_list)
    return ListChange(removed=removed)


def recipient_list_replace(*, recipient_list: RecipientList, userids: Iterable[str]) -> ListChange:
    """Make the list hold exactly `userids`: new ones are added, missing ones removed."""
    wanted = dict.fromkeys(userids)
    with transaction.atomic():
        _lock(recipient_list)
        present = set(recipient_list.entries.values_list("userid", flat=True))
        gone = [userid for userid in present if userid not in wanted]
        if len(gone) == len(present):
            recipient_list.entries.all().delete()  # one statement: nothing of the old list stays
        else:
            for chunk in _chunks(gone):
                recipient_list.entries.filter(userid__in=chunk).delete()
        added = _insert(recipient_list, [userid for userid in wanted if userid not in present])
        _recount(recipient_list)
    return ListChange(added=added, already=len(wanted) - added, removed=len(gone))


def _lock(recipient_list: RecipientList) -> None:
    """Serialize changes to one list, so its size is the count after the last of them."""
    RecipientList.objects.select_for_update().filter(pk=recipient_list.pk).first()


def _insert(recipient_list: RecipientList, userids: list[str]) -> int:
    """Insert the userids not on the list yet, set-based; returns how many were inserted."""
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    if connection.vendor == "postgresql":
        sql = (
            "INSERT INTO messaging_recipientlistentry (recipient_list_id, userid, created_at)"
            " SELECT %s, u, %s FROM unnest(%s::text[]) AS u ON CONFLICT DO NOTHING"
        )
        return _run(sql, [[recipient_list.pk, now, chunk] for chunk in _chunks(userids)])
    sql = (
        "INSERT INTO messaging_recipientlistentry (recipient_list_id, userid, created_at)"
        " VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"
    )
    return _run_many(sql, [(recipient_list.pk, userid, now) for userid in userids])


def _run(sql: str, param_sets: list[list[Any]]) -> int:
    """Run one statement per parameter set (a chunk); returns the rows it wrote in all."""
    written = 0
    with connection.cursor() as cursor:
        for params in param_sets:
            cursor.execute(sql, params)
            written += cursor.rowcount
    return written


def _run_many(sql: str, rows: list[tuple[Any, ...]]) -> int:
    """SQLite: one prepared INSERT over all rows (executemany loops in C); rows written."""
    if not rows:
        return 0
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)
        return cursor.rowcount


def _recount(recipient_list: RecipientList) -> None:
    recipient_list.size = recipient_list.entries.count()
    recipient_list.save(update_fields=["size", "updated_at"])


# --- the suppression list: the pipeline's checks ------------------------------------------------


def emails_suppressed(*, channel: Channel | int, emails: list[str]) -> set[str]:
    """The addresses among `emails` (as given) that `channel` must not send to.

    Suppressed for every channel or for this one; compared by normalize_address. `channel` is
    a Channel or its id (`message.channel_id`: no query). One query per CHUNK addresses, on
    the unique indexes of (email) and (email, channel).
    """
    channel_id = channel if isinstance(channel, int) else channel.pk
    return set(emails_suppressed_reasons(channel_id=channel_id, emails=emails))


# Caller-given column expressions go in by str.format: they are SQL of the pipeline's own
# query, never input; the values are bound parameters.
_LISTED_SQL = (
    "({userid} <> '' AND {negation}EXISTS (SELECT 1 FROM messaging_recipientlistentry lists_e"
    " WHERE lists_e.recipient_list_id = %({param})s AND lists_e.userid = {userid}))"
)


# Why a recipient got no email: stored as the delivery's reply (`smtp_reply`) of an invalid row.
BLACKLISTED = "blacklisted"
NOT_WHITELISTED = "not in the whitelist"
SUPPRESSED = {
    SuppressedAddress.Reason.MANUAL: "suppressed: added by staff",
    SuppressedAddress.Reason.UNSUBSCRIBE: "suppressed: unsubscribed",
    SuppressedAddress.Reason.FAILURE: "suppressed: permanent failure",
}
SUPPRESSED_OTHER = "suppressed"


def suppression_in_use(*, channel_id: int) -> bool:
    """Whether any address is suppressed for the channel or for every channel (one query):
    when none is, the pipeline skips the check."""
    return SuppressedAddress.objects.filter(
        Q(channel__isnull=True) | Q(channel_id=channel_id)
    ).exists()


def emails_suppressed_reasons(*, channel_id: int, emails: list[str]) -> dict[str, str]:
    """Like emails_suppressed, with why: {address as given: SUPPRESSED text}.

    One query per CHUNK addresses, on the same unique indexes.
    """
    given: dict[str, list[str]] = {}
    for email in emails:
        if email:
            given.setdefault(normalize_address(email), []).append(email)
    rows = _select_rows(
        "SELECT email, reason FROM messaging_suppressedaddress"
        " WHERE email {values} AND channel_id IS NULL"
        " UNION ALL SELECT email, reason FROM messaging_suppressedaddress"
        " WHERE email {values} AND channel_id = %s",
        [VALUES, VALUES, channel_id],
        list(given),
    )
    found: dict[str, str] = {}
    for key, reason in rows:
        for original in given[key]:
            found.setdefault(original, SUPPRESSED.get(reason, SUPPRESSED_OTHER))
    return found


_SUPPRESSED_REASON_SQL = (
    "COALESCE((SELECT CASE lists_r.reason {reasons} ELSE %(lists_suppressed)s END"
    " FROM messaging_suppressedaddress lists_r"
    " WHERE lists_r.email = LOWER({email})"
    " AND (lists_r.channel_id IS NULL OR lists_r.channel_id = %(lists_channel)s)"
    " ORDER BY lists_r.channel_id NULLS FIRST LIMIT 1), '')"
)


def recipients_block_reason_sql(
    *, message: Message, userid: str = "userid", email: str = "email", suppression: bool = True
) -> tuple[str, dict[str, Any]]:
    """A SQL expression: why `message` must not reach a recipient (a BLACKLISTED,
    NOT_WHITELISTED or SUPPRESSED text), or '' when it may; and its named parameters.

    For a pipeline that writes deliveries with one INSERT … SELECT (PostgreSQL): the same
    rules as userids_blocked and emails_suppressed, over the SQL expressions `userid` and
    `email` of the SELECT, telling which one blocked (a list first). Parameters are named
    (`%(lists_…)s`), to merge with the caller's. With `suppression` False the suppression list
    is not looked at (see suppression_in_use).
    """
    params: dict[str, Any] = {"lists_channel": message.channel_id}
    cases = []
    if message.black_list_id is not None:
        params["lists_black"] = message.black_list_id
        listed = _LISTED_SQL.format(userid=userid, negation="", param="lists_black")
        cases.append(f"WHEN {listed} THEN %(lists_blacklisted)s")
        params["lists_blacklisted"] = BLACKLISTED
    if message.white_list_id is not None:
        params["lists_white"] = message.white_list_id
        unlisted = _LISTED_SQL.format(userid=userid, negation="NOT ", param="lists_white")
        cases.append(f"WHEN {unlisted} THEN %(lists_not_whitelisted)s")
        params["lists_not_whitelisted"] = NOT_WHITELISTED
    otherwise = "''"
    if suppression:
        reasons = " ".join(
            f"WHEN %(lists_reason_{n})s THEN %(lists_text_{n})s" for n in range(len(SUPPRESSED))
        )
        for n, (reason, text) in enumerate(SUPPRESSED.items()):
            params[f"lists_reason_{n}"] = str(reason)
            params[f"lists_text_{n}"] = text
        params["lists_suppressed"] = SUPPRESSED_OTHER
        otherwise = _SUPPRESSED_REASON_SQL.format(reasons=reasons, email=email)
    if not cases:
        return otherwise, params
    return f"(CASE {' '.join(cases)} ELSE {otherwise} END)", params


# --- the suppression list: changes --------------------------------------------------------------


def address_suppress(
    *,
    email: str,
    channel: Channel | None = None,
    reason: str,
    note: str = "",
    user: AbstractBaseUser | None = None,
) -> tuple[SuppressedAddress, bool]:
    """Suppress an address for `channel` (None: every channel); returns (row, created).

    Idempotent: an address already suppressed in that scope keeps its row (and its reason).
    Callers validate addresses typed by people with clean_email first.
    """
    key = normalize_address(email)
    if not key:
        raise ValueError("An empty address cannot be suppressed.")
    scope = Q(channel__isnull=True) if channel is None else Q(channel=channel)
    existing = SuppressedAddress.objects.filter(scope, email=key).first()
    if existing is not None:
        return existing, False
    try:
        with transaction.atomic():
            row = SuppressedAddress.objects.create(
                email=key,
                channel=channel,
                reason=reason,
                note=note[:500],
                created_by=user if user is not None and user.pk else None,
            )
    except IntegrityError:  # a concurrent request suppressed it first
        return SuppressedAddress.objects.get(scope, email=key), False
    return row, True


def addresses_suppress(
    *,
    emails: Iterable[str],
    channel: Channel | None,
    reason: str,
    note: str = "",
    user: AbstractBaseUser | None = None,
) -> ListChange:
    """Suppress many addresses at once (set-based); returns how many were added / already there.

    Addresses already suppressed in that scope keep their row (and its reason).
    """
    keys = list(dict.fromkeys(key for key in map(normalize_address, emails) if key))
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    channel_id = channel.pk if channel is not None else None
    creator = user.pk if user is not None and user.pk else None
    with transaction.atomic():
        if connection.vendor == "postgresql":
            sql = (
                "INSERT INTO messaging_suppressedaddress"
                " (email, channel_id, reason, note, created_by_id, created_at)"
                " SELECT e, %s, %s, %s, %s, %s FROM unnest(%s::text[]) AS e"
                " ON CONFLICT DO NOTHING"
            )
            fixed = [channel_id, reason, note[:500], creator, now]
            added = _run(sql, [[*fixed, chunk] for chunk in _chunks(keys)])
        else:
            sql = (
                "INSERT INTO messaging_suppressedaddress"
                " (email, channel_id, reason, note, created_by_id, created_at)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
            )
            rows = [(key, channel_id, reason, note[:500], creator, now) for key in keys]
            added = _run_many(sql, rows)
    return ListChange(added=added, already=len(keys) - added)


def addresses_suppress_failed(*, channel: Channel, emails: list[str]) -> int:
    """For the pipeline: suppress for `channel` addresses its servers refused permanently (5xx).

    Does nothing unless `channel.suppress_on_permanent_failure` is set, so it may be called
    for every permanent failure. Returns how many addresses were newly suppressed.
    """
    if not channel.suppress_on_permanent_failure or not emails:
        return 0
    change = addresses_suppress(
        emails=emails, channel=channel, reason=SuppressedAddress.Reason.FAILURE
    )
    return change.added


# --- uploads ------------------------------------------------------------------------------------


class UploadRejected(ValueError):
    """The file was not read or has bad rows; `errors` say which (the first SHOWN_ERRORS)."""

    def __init__(self, errors: list[str], total: int | None = None) -> None:
        super().__init__(errors[0] if errors else "")
        self.errors = errors
        self.total = len(errors) if total is None else total


def userids_read(*, path: Path) -> list[str]:
    """The userids of a one-column .xlsx or .csv file (header `userid` optional), in order.

    Raises UploadRejected naming each bad row and column; nothing is returned for a file
    with any bad row, so an upload is all or nothing.
    """
    return _column_read(path, "userid", clean_userid, {"userid", "user_id", "userids"})


def addresses_read(*, path: Path) -> list[str]:
    """The addresses of a one-column .xlsx or .csv file (header `email` optional), checked with
    clean_email and normalized; raises UploadRejected like userids_read."""
    addresses = _column_read(path, "email", clean_email, {"email", "e-mail", "emails", "address"})
    return list(dict.fromkeys(map(normalize_address, addresses)))


def _column_read(path: Path, name: str, cleaner: Any, headers: set[str]) -> list[str]:
    values: list[str] = []
    errors: list[str] = []
    total = 0
    first = True
    try:
        for number, cells in enumerate(read_rows(path), start=1):
            if not any(cell not in (None, "") for cell in cells):
                continue  # blank lines are not rows
            if first:
                first = False
                if str(cells[0] or "").strip().lower() in headers:
                    continue
            if len(values) + total >= UPLOAD_MAX_ROWS:
                raise UploadRejected(
                    [
                        _("The file has more than %(max)s rows: split it into smaller files.")
                        % {"max": number_format(UPLOAD_MAX_ROWS, force_grouping=True)}
                    ]
                )
            try:
                values.append(_one_cell(cells, name, cleaner))
            except FieldError as exc:
                total += 1
                if len(errors) < SHOWN_ERRORS:
                    errors.append(
                        _("Row %(row)d, column %(column)s: %(reason)s")
                        % {"row": number, "column": exc.field, "reason": exc.message}
                    )
    except FileRefused as exc:
        raise UploadRejected([str(exc)]) from exc
    if errors:
        raise UploadRejected(errors, total)
    if not values:
        raise UploadRejected([_("The file holds no %(name)s.") % {"name": name}])
    return list(dict.fromkeys(values))


def _one_cell(cells: list[Any], name: str, cleaner: Any) -> str:
    for index, cell in enumerate(cells[1:], start=1):
        if cell not in (None, ""):
            column = _column_letter(index)
            raise FieldError(
                column, _("the file must have one column only (%(name)s)") % {"name": name}
            )
    return cleaner(cells[0])


def _column_letter(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(65 + rest) + letters
    return letters
