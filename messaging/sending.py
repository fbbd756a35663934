"""The delivery pipeline: resolve a message's audience into Delivery rows, then send in batches.

Claim, then send, then record: a batch claims its rows in a short transaction, talks SMTP
outside any transaction over one connection, and records the results with a few bulk updates.
A duplicate task finds nothing left to claim.
"""

import json
import logging
import select
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Count, F, Min, Q
from django.utils import timezone
from psycopg import pq

from channels_app import rules
from channels_app import services as channel_services
from channels_app.models import EmailSender
from channels_app.ratelimit import RateLimitUnavailable, SenderLimits, sender_grant, sender_sent
from channels_app.selectors import channel_default_sender
from channels_app.services import ConnectionCheck
from channels_app.smtp import (
    SENDER_FAILURES,
    Failure,
    FailureKind,
    SenderEmailBackend,
    SmtpConfig,
    classify_failure,
)
from messaging import audience as audiences
from messaging import lists
from messaging.mime import Composer, message_id_for
from messaging.models import Delivery, Message

logger = logging.getLogger(__name__)

WRITE_CHUNK = 5000
OPEN = (Delivery.Status.PENDING, Delivery.Status.SENDING, Delivery.Status.RETRYING)
# A limited sender's wait up to this many seconds is slept in the batch; a longer one (a day's
# quota used up) releases the rows until then.
RATE_WAIT_MAX = 3.0
NO_SENDER = "No sender of the message's strategy can send now."


def reports_status(message: Message) -> bool:
    """Whether the message's recipients' statuses go to a callback URL: the statements that
    record a final status then also mark the rows `callback_due` (see messaging.callbacks)."""
    callback = message.callback
    return isinstance(callback, dict) and bool(callback.get("url"))


# --- resolving --------------------------------------------------------------------------------


def message_resolve(*, message_id: int) -> list[int]:
    """Write one Delivery per recipient; returns the batches that have something to send.

    Safe to run again after a worker died in the middle (it starts over from a clean slate,
    which is possible because no batch is queued before the whole audience is written), and
    never twice at once: a message being resolved is only taken over once it is abandoned.
    """
    now = timezone.now()
    abandoned = now - timedelta(seconds=bulk_time_limit() + 120)
    claimable = Q(status=Message.Status.QUEUED) | Q(
        status=Message.Status.RESOLVING, dispatched_at__lt=abandoned
    )
    if not Message.objects.filter(claimable, pk=message_id).update(
        status=Message.Status.RESOLVING, dispatched_at=now
    ):
        return []
    with transaction.atomic():
        message = Message.objects.select_for_update().select_related("channel").get(pk=message_id)
        if message.status != Message.Status.RESOLVING:  # retracted meanwhile
            return []
        Delivery.objects.filter(message=message).delete()
        total, invalid, batches = _write_deliveries(message)
        # A retract that landed while resolving stands: the message is not sent.
        updated = (
            Message.objects.filter(pk=message.pk)
            .exclude(status=Message.Status.RETRACTED)
            .update(
                status=Message.Status.SENDING if batches else Message.Status.DONE,
                total=total,
                invalid=invalid,
                finished_at=None if batches else timezone.now(),
            )
        )
        if not updated:
            _cancel_open(message.pk, callback_due=reports_status(message))
            message_recount(message_id=message.pk)
            return []
    return sorted(batches)


def bulk_time_limit() -> int:
    """Seconds a whole-audience task (resolving, importing) may run."""
    return settings.UMS_IMPORT_TIME_LIMIT


def _recipients(message: Message) -> Iterator[audiences.Recipient]:
    key = message.channel.channel_key
    aud = message.audience
    if aud.get("broadcast"):
        return audiences.resolve_everyone(channel_key=key)
    if aud.get("email"):
        return audiences.resolve_addresses(emails=aud["email"])
    if aud.get("tag"):
        return audiences.resolve_tags(channel_key=key, tags=aud["tag"])
    return audiences.resolve_userids(channel_key=key, userids=aud.get("userid", []))


def _write_deliveries(message: Message) -> tuple[int, int, set[int]]:
    """Returns (recipients, invalid ones, batch numbers to send)."""
    suppression = lists.suppression_in_use(channel_id=message.channel_id)
    if connection.vendor == "postgresql":
        return _insert_deliveries(message, suppression=suppression)
    size = settings.UMS_DELIVERY_BATCH_SIZE
    due = reports_status(message)
    total = invalid = sendable = 0
    batches: set[int] = set()
    for chunk in _chunked(_recipients(message), WRITE_CHUNK):
        blocked = _blocked(message, chunk, suppression=suppression)
        rows: list[Delivery] = []
        for recipient in chunk:
            total += 1
            reason = blocked.get(recipient) if recipient.email else None
            if recipient.email and reason is None:
                batch = sendable // size
                sendable += 1
                batches.add(batch)
                rows.append(
                    Delivery(
                        message=message,
                        batch=batch,
                        userid=recipient.userid,
                        email=recipient.email,
                    )
                )
            else:
                invalid += 1
                rows.append(
                    Delivery(
                        message=message,
                        batch=0,
                        userid=recipient.userid,
                        email=recipient.email,
                        status=Delivery.Status.INVALID,
                        smtp_reply=reason or "",
                        callback_due=due,
                    )
                )
        Delivery.objects.bulk_create(rows)
    return total, invalid, batches


def _chunked(recipients: Iterator[audiences.Recipient], size: int) -> Iterator[list]:
    chunk: list[audiences.Recipient] = []
    for recipient in recipients:
        chunk.append(recipient)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _blocked(
    message: Message, chunk: list[audiences.Recipient], *, suppression: bool
) -> dict[audiences.Recipient, str]:
    """The chunk's recipients with an address that must not get the message, and why: the
    message's black or white list first, then the suppression list (a few queries a chunk)."""
    found: dict[audiences.Recipient, str] = {}
    if message.black_list_id is not None or message.white_list_id is not None:
        reason = lists.BLACKLISTED if message.black_list_id is not None else lists.NOT_WHITELISTED
        userids = lists.userids_blocked(
            message=message, userids=[r.userid for r in chunk if r.email and r.userid]
        )
        found = {r: reason for r in chunk if r.email and r.userid in userids}
    if suppression:
        suppressed = lists.emails_suppressed_reasons(
            channel_id=message.channel_id,
            emails=[r.email for r in chunk if r.email and r not in found],
        )
        found.update((r, suppressed[r.email]) for r in chunk if r.email in suppressed)
    return found


# The recipients numbered in their order; those with an address that nothing blocks (`reason`
# empty: see lists.recipients_block_reason_sql) fill the batches one by one.
_INSERT_SQL = """
    WITH audience AS ({recipients}),
    checked AS (
        SELECT a.ord, a.userid, a.email,
               CASE WHEN a.email <> '' THEN {reason} ELSE '' END AS reason
        FROM audience a
    ),
    numbered AS (
        SELECT ord, userid, email, reason, email <> '' AND reason = '' AS sendable,
               count(*) FILTER (WHERE email <> '' AND reason = '') OVER (ORDER BY ord) AS nth
        FROM checked
    ),
    written AS (
        INSERT INTO messaging_delivery (
            message_id, batch, userid, email, status, attempts, smtp_reply, smtp_message_id,
            updated_at, callback_due
        )
        SELECT %(message)s,
               CASE WHEN sendable THEN (nth - 1) / %(size)s ELSE 0 END,
               userid, email,
               CASE WHEN sendable THEN %(pending)s ELSE %(invalid)s END,
               0, reason, '', %(now)s,
               CASE WHEN sendable THEN false ELSE %(due)s END
        FROM numbered ORDER BY ord
        RETURNING status
    )
    SELECT count(*), count(*) FILTER (WHERE status = %(invalid)s) FROM written
"""


def _insert_deliveries(message: Message, *, suppression: bool) -> tuple[int, int, set[int]]:
    """PostgreSQL writes the deliveries itself: one INSERT ... SELECT, whatever the audience.
    The lists and the suppression list are checked in the same statement."""
    size = settings.UMS_DELIVERY_BATCH_SIZE
    recipients, params = audiences.recipients_sql(
        channel_key=message.channel.channel_key, audience=message.audience
    )
    reason, reason_params = lists.recipients_block_reason_sql(
        message=message, userid="a.userid", email="a.email", suppression=suppression
    )
    params.update(reason_params)
    params.update(
        message=message.pk,
        size=size,
        pending=Delivery.Status.PENDING,
        invalid=Delivery.Status.INVALID,
        now=timezone.now(),
        due=reports_status(message),
    )
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_SQL.format(recipients=recipients, reason=reason), params)
        total, invalid = cursor.fetchone()
    return total, invalid, set(range(-(-(total - invalid) // size)))


# --- sending ----------------------------------------------------------------------------------


@dataclass
class BatchOutcome:
    sent: int = 0
    failed: int = 0
    retrying: int = 0
    moved: int = 0  # recipients handed to the next sender of the message's strategy
    retry_in: float | None = None  # seconds until the earliest retry, if any
    sender_failure: Failure | None = None

    def add(self, other: "BatchOutcome") -> None:
        self.sent += other.sent
        self.failed += other.failed
        self.retrying += other.retrying
        self.moved += other.moved
        if other.retry_in is not None:
            self.retry_in = (
                other.retry_in if self.retry_in is None else min(self.retry_in, other.retry_in)
            )
        self.sender_failure = self.sender_failure or other.sender_failure


@dataclass(slots=True)
class _Claimed:
    """A claimed delivery: what sending it needs, and what its failure leaves to record. (A
    model instance per recipient cost more than the rest of the batch's bookkeeping.)"""

    pk: int
    email: str
    attempts: int
    userid: str = ""
    step: int = 0
    status: str = Delivery.Status.SENDING
    smtp_code: int | None = None
    smtp_reply: str = ""
    next_attempt_at: datetime | None = None


@dataclass
class _Results:
    sent: list[_Claimed] = field(default_factory=list)
    failed: list[_Claimed] = field(default_factory=list)
    retry: list[_Claimed] = field(default_factory=list)
    # Not tried, through no fault of theirs (a sender's limit): back after `deferred_in` seconds
    # with the attempt given back.
    deferred: list[_Claimed] = field(default_factory=list)
    deferred_in: float = 0.0


def batch_send(*, message_id: int, batch: int) -> BatchOutcome:
    # The audience was resolved already, and can be long (every userid given).
    message = (
        Message.objects.select_related("sender", "channel").defer("audience").get(pk=message_id)
    )
    due = reports_status(message)
    if message.status == Message.Status.RETRACTED or not message.channel.is_enabled:
        # Nothing more goes out for a retracted message or a closed channel.
        _cancel_open(message.pk, batch=batch, callback_due=due)
        return BatchOutcome()
    if message.rule_id is not None:
        return _batch_send_steps(message, batch, due)
    sender = _usable_sender(message)
    if sender is None or sender_is_broken(sender):
        # Logging in again with a refused password risks locking the account: the rows stay
        # unclaimed until someone fixes the sender (which clears its health); the sweeper
        # hands them out again.
        failure = Failure(FailureKind.AUTH, None, sender.health_error if sender else "")
        return BatchOutcome(sender_failure=failure)
    message.sender = sender
    with fast_commits():
        claimed = _claim(message, batch)
        if not claimed:
            return BatchOutcome()
        outcome = _send_group(message, sender, claimed, due)
        message_finish_if_done(message_id=message.pk)
    return outcome


def _batch_send_steps(message: Message, batch: int, due: bool) -> BatchOutcome:
    """A message with a sending strategy: the claimed rows by step, each step's rows through
    that step's sender (see channels_app.rules), one sender after the other."""
    outcome = BatchOutcome()
    with fast_commits():
        claimed = _claim(message, batch)
        if not claimed:
            return outcome
        by_step: dict[int, list[_Claimed]] = {}
        for row in claimed:
            by_step.setdefault(row.step, []).append(row)
        senders: dict[int, EmailSender] = {}
        for step in sorted(by_step):
            sender = rules.rule_sender(message=message, step=step)
            if sender is not None:
                senders[step] = sender
                continue
            # That step cannot send now: its rows go to the next step that can, at once.
            rows = by_step.pop(step)
            usable = rules.usable_step(message=message, step=step)
            if usable is None:
                outcome.add(_fail_without_sender(message, rows, due))
                continue
            Delivery.objects.filter(pk__in=[row.pk for row in rows]).update(step=usable)
            for row in rows:
                row.step = usable
            by_step.setdefault(usable, []).extend(rows)
            if usable not in senders:
                senders[usable] = rules.rule_sender(message=message, step=usable)
        for step in sorted(by_step):
            sender = senders[step]
            message.sender = sender
            if sender_is_broken(sender):
                failure = Failure(FailureKind.AUTH, None, sender.health_error)
                results = _Results(retry=list(by_step[step]))
                outcome.add(_record(message, results, by_step[step], failure, due=due, step=step))
                continue
            outcome.add(_send_group(message, sender, by_step[step], due, step=step))
        message_finish_if_done(message_id=message.pk)
    return outcome


def _fail_without_sender(message: Message, rows: list[_Claimed], due: bool) -> BatchOutcome:
    failure = Failure(FailureKind.PERMANENT, None, NO_SENDER)
    for row in rows:
        _note(row, failure)
    return _record(message, _Results(failed=list(rows)), rows, None, due=due, step=None)


def _send_group(
    message: Message, sender: EmailSender, claimed: list[_Claimed], due: bool, step: int = 0
) -> BatchOutcome:
    """Send claimed rows through one sender (`message.sender`), then record the results."""
    try:
        composer = Composer(message)
        config = sender.smtp_config()
    except Exception as exc:
        logger.exception("message %s cannot be built", message.msgid)
        failure = Failure(FailureKind.PERMANENT, None, str(exc)[:500])
        results = _Results(retry=list(claimed))
        for row in claimed:
            _note(row, failure)
        return _record(message, results, claimed, None, due=due, step=step)
    limits = SenderLimits.of(sender)
    results, sender_failure = _send(
        message, claimed, composer, config, None if limits.unlimited else limits, due
    )
    outcome = _record(message, results, claimed, sender_failure, due=due, step=step)
    if sender_failure is not None:
        _mark_sender(sender, sender_failure)
    return outcome


def _usable_sender(message: Message) -> EmailSender | None:
    """The message's sender, or the channel's current default if it was disabled meanwhile."""
    sender = message.sender
    if sender.is_enabled and sender.port_usable:
        return sender
    return channel_default_sender(channel=message.channel)


def _cancel_open(message_id: int, *, batch: int | None = None, callback_due: bool = False) -> None:
    rows = Delivery.objects.filter(
        message_id=message_id, status__in=[Delivery.Status.PENDING, Delivery.Status.RETRYING]
    )
    if batch is not None:
        rows = rows.filter(batch=batch)
    cancelled = {"status": Delivery.Status.CANCELLED, "claimed_at": None}
    if callback_due:
        cancelled["callback_due"] = True
    if rows.update(**cancelled, updated_at=timezone.now()):
        message_recount(message_id=message_id)


_CLAIM_SQL = """
    UPDATE messaging_delivery SET status = %s, claimed_at = %s, attempts = attempts + 1
    WHERE id IN (
        SELECT id FROM messaging_delivery
        WHERE message_id = %s AND batch = %s
          AND (status = %s OR (status = %s AND next_attempt_at <= %s))
        FOR UPDATE SKIP LOCKED
    )
    RETURNING id, email, attempts, userid, step
"""


def _claim(message: Message, batch: int) -> list[_Claimed]:
    """Take the batch's due rows for this worker; a concurrent duplicate task gets none of them."""
    now = timezone.now()
    if connection.vendor == "postgresql":  # one statement instead of a locking read and an update
        params = [Delivery.Status.SENDING, now, message.pk, batch, Delivery.Status.PENDING]
        with connection.cursor() as cursor:  # autocommit: the statement is its own transaction
            cursor.execute(_CLAIM_SQL, [*params, Delivery.Status.RETRYING, now])
            return [_Claimed(*row) for row in sorted(cursor.fetchall())]
    due = Q(status=Delivery.Status.PENDING) | Q(
        status=Delivery.Status.RETRYING, next_attempt_at__lte=now
    )
    with transaction.atomic():
        rows = list(
            Delivery.objects.select_for_update(skip_locked=True)
            .filter(due, message=message, batch=batch)
            .order_by("pk")
            .values_list("pk", "email", "attempts", "userid", "step")
        )
        Delivery.objects.filter(pk__in=[row[0] for row in rows]).update(
            status=Delivery.Status.SENDING, claimed_at=now, attempts=F("attempts") + 1
        )
    return [_Claimed(pk, email, n + 1, userid, step) for pk, email, n, userid, step in rows]


def _send(
    message: Message,
    claimed: list[_Claimed],
    composer: Composer,
    config: SmtpConfig,
    limits: SenderLimits | None,
    callback_due: bool,
) -> tuple["_Results", Failure | None]:
    """SMTP I/O, outside any transaction: one connection, one recipient per message."""
    results = _Results()
    backend = SenderEmailBackend(config)
    try:
        failure = _open(backend)
        if failure is not None:  # no session at all: the whole batch waits (or the sender)
            results.retry.extend(claimed)
            for row in claimed:
                _note(row, failure)
            return results, failure if failure.sender_problem else None
        with connection.cursor() as cursor:
            return results, _send_each(
                message, claimed, composer, backend, results, cursor, limits, callback_due
            )
    except SoftTimeLimitExceeded:
        # Out of time: what was not recorded goes back for a retry (see _record).
        logger.warning("batch of message %s stopped at its soft time limit", message.msgid)
        return results, None
    except RateLimitUnavailable:
        # The limiter cannot say whether the sender may send: the rest waits, as for a
        # transient failure of the batch; the recipients keep their tries.
        logger.warning("rate limiter unreachable: batch of message %s waits", message.msgid)
        handled = {d.pk for d in results.sent + results.failed + results.retry}
        results.deferred.extend(d for d in claimed if d.pk not in handled)
        results.deferred_in = retry_delay(1).total_seconds()
        return results, None
    finally:
        backend.close()


def _open(backend: SenderEmailBackend) -> Failure | None:
    try:
        backend.open()
    except SoftTimeLimitExceeded:
        raise
    except Exception as exc:  # noqa: BLE001 - sorted below
        failure = classify_failure(exc)
        if failure.kind == FailureKind.PERMANENT:  # e.g. a 554 greeting: not the recipients'
            return Failure(FailureKind.CONNECTION, failure.code, failure.text)
        return failure
    return None


class _Pacer:
    """The indexes of a limited sender's rows, as its limit grants them (channels_app.ratelimit):
    a grant per chunk, reported back with what the server accepted. A short wait is slept; a
    long one (a day's quota) ends the batch, the rest deferred until then. A batch paced for
    longer than half its soft time limit also ends, the rest deferred to a new task at once, so
    that a slow limit never runs a batch into its time limit (which would use up tries)."""

    def __init__(self, sender_id: int, limits: SenderLimits, total: int) -> None:
        self.sender_id, self.limits, self.total = sender_id, limits, total
        self.accepted = 0
        self.wait: float | None = None
        self.deadline = time.monotonic() + settings.CELERY_TASK_SOFT_TIME_LIMIT / 2

    def __iter__(self) -> Iterator[int]:
        index = 0
        while index < self.total:
            if time.monotonic() >= self.deadline:
                self.wait = 0.0
                return
            grant = sender_grant(
                sender_id=self.sender_id, limits=self.limits, wanted=self.total - index
            )
            if not grant.granted:
                if grant.wait <= RATE_WAIT_MAX:
                    time.sleep(grant.wait)
                    continue
                self.wait = grant.wait
                return
            self.accepted = 0
            try:
                for _n in range(grant.granted):
                    yield index
                    index += 1
            finally:
                sender_sent(
                    sender_id=self.sender_id, limits=self.limits, grant=grant, sent=self.accepted
                )


def _send_each(
    message: Message,
    claimed: list[_Claimed],
    composer: Composer,
    backend: SenderEmailBackend,
    results: "_Results",
    cursor: Any,
    limits: SenderLimits | None = None,
    callback_due: bool = False,
) -> Failure | None:
    envelope_from = message.sender.from_address
    broken_connections = 0
    accepted = _Acceptances(cursor, callback_due)
    pacer = None if limits is None else _Pacer(message.sender.pk, limits, len(claimed))
    indexes = iter(range(len(claimed)) if pacer is None else pacer)
    try:
        for index in indexes:
            delivery = claimed[index]
            message_id = message_id_for(message, delivery.pk)
            started = time.monotonic()
            try:
                reply = backend.send_raw(
                    envelope_from=envelope_from,
                    recipient=delivery.email,
                    message=composer.email(
                        userid=delivery.userid, email=delivery.email, message_id=message_id
                    ),
                )
            except SoftTimeLimitExceeded:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is sorted and recorded
                failure = classify_failure(exc)
                _note(delivery, failure)
                if failure.sender_problem:
                    results.retry.extend(claimed[index:])
                    for row in claimed[index + 1 :]:
                        _note(row, failure)
                    return failure
                (results.retry if failure.retryable else results.failed).append(delivery)
                if failure.kind in (FailureKind.CONNECTION, FailureKind.TIMEOUT):
                    backend.close()  # the next recipient reconnects
                    broken_connections += 1
                    if broken_connections >= 2:  # the server is gone: retry the rest later
                        results.retry.extend(claimed[index + 1 :])
                        return None
                continue
            broken_connections = 0
            accepted.add(delivery.pk, reply.code, reply.text[:500], message_id, started)
            results.sent.append(delivery)
            if pacer is not None:
                pacer.accepted += 1
        if pacer is not None and pacer.wait is not None:
            done = len(results.sent) + len(results.failed) + len(results.retry)
            results.deferred.extend(claimed[done:])
            results.deferred_in = pacer.wait
        return None
    finally:
        if pacer is not None:
            indexes.close()  # reports the grant in progress back to the limiter
        accepted.finish()  # also when stopped by the time limit: what was accepted is recorded


# Accepted emails are recorded in small groups: one statement per group instead of one per email
# (at thousands of emails a second, the per-email statement was the pipeline's largest cost).
# A group is written once it holds RECORD_EVERY acceptances, or as soon as the oldest of them
# was handed to the server RECORD_WITHIN seconds ago or more: with a server slower than that,
# every acceptance is written, and its write awaited, before the next email goes. On PostgreSQL
# a full group's statement is sent without waiting for its result, which is read before the
# next group is sent: the batch goes on with the next emails meanwhile. So at most two groups
# are unrecorded at any moment, the one being written and the one filling up: a worker killed
# in the middle of a batch can re-send at most 2 x RECORD_EVERY emails of that batch (accepted,
# not yet recorded), and just the one in flight with a slow server. See
# docs/sending.md#guarantees.
RECORD_EVERY = 20
RECORD_WITHIN = 0.05

# (delivery id, SMTP code, reply, Message-ID, time accepted as a Unix timestamp)
Acceptance = tuple[int, int, str, str, float]


class _Acceptances:
    def __init__(self, cursor: Any, callback_due: bool = False) -> None:
        self.cursor = cursor
        self.callback_due = callback_due
        self.rows: list[Acceptance] = []
        self.oldest = 0.0
        self.writer = _GroupWriter(callback_due) if connection.vendor == "postgresql" else None

    def add(self, delivery_id: int, code: int, reply: str, message_id: str, started: float) -> None:
        if not self.rows:
            self.oldest = started
        self.rows.append((delivery_id, code, reply, message_id, time.time()))
        if len(self.rows) >= RECORD_EVERY:
            self.write(wait=False)
        elif time.monotonic() - self.oldest >= RECORD_WITHIN:
            self.write()  # a slow server: recorded before the next email goes

    def write(self, *, wait: bool = True) -> None:
        rows, self.rows = self.rows, []
        if self.writer is None:
            if rows:
                _record_sent(self.cursor, rows, callback_due=self.callback_due)
            return
        if rows:
            self.writer.send(rows)
        if wait:
            self.writer.wait()

    def finish(self) -> None:
        """Writes what is left and waits for it, so that the connection is free again."""
        try:
            self.write()
        except BaseException:
            if self.writer is not None and self.writer.pending:
                # A statement's result was never read: this session cannot be used again.
                connection.close()
            raise


# The group as one JSON parameter (cheaper to build than five arrays); the ids again as an array,
# so that PostgreSQL looks the rows up by primary key however many the JSON holds.
_SENT_JSON_SQL = b"""
    UPDATE messaging_delivery AS d
    SET status = $1, callback_due = $2, smtp_code = (v.r->>1)::smallint, smtp_reply = v.r->>2,
        smtp_message_id = v.r->>3, sent_at = to_timestamp((v.r->>4)::float8),
        updated_at = to_timestamp((v.r->>4)::float8), claimed_at = NULL
    FROM json_array_elements($3::json) AS v(r)
    WHERE d.id = ANY($4::bigint[]) AND d.id = (v.r->>0)::bigint
"""


class _GroupWriter:
    """Writes a group of acceptances on PostgreSQL without waiting for the result.

    The statement goes through the connection's libpq handle (psycopg's `Connection.pgconn`)
    as one extended-protocol query, which PostgreSQL commits on its own in autocommit mode. Its
    result is read before the next statement: until then nothing else may use the connection,
    which the batch's loop (SMTP only) guarantees, and `_Acceptances.finish` ends with a wait.
    """

    def __init__(self, callback_due: bool) -> None:
        connection.ensure_connection()
        self.pgconn = connection.connection.pgconn
        self.fixed = [Delivery.Status.SENT.value.encode(), b"t" if callback_due else b"f"]
        self.pending = False

    def send(self, rows: list[Acceptance]) -> None:
        self.wait()
        group = json.dumps(rows).encode()
        ids = ("{" + ",".join(str(row[0]) for row in rows) + "}").encode()
        with connection.wrap_database_errors:
            self.pgconn.send_query_params(_SENT_JSON_SQL, [*self.fixed, group, ids])
            self.pending = True
            while self.pgconn.flush():  # 1: more to send (the connection is non-blocking)
                select.select([], [self.pgconn.socket], [])

    def wait(self) -> None:
        if not self.pending:
            return
        error = ""
        with connection.wrap_database_errors:
            while True:
                while self.pgconn.is_busy():
                    select.select([self.pgconn.socket], [], [])
                    self.pgconn.consume_input()
                result = self.pgconn.get_result()
                if result is None:
                    break
                if result.status != pq.ExecStatus.COMMAND_OK and not error:
                    error = (result.error_message or b"").decode(errors="replace")
        self.pending = False
        if error:
            raise DatabaseError(error)


_SENT_SQL = (
    "UPDATE messaging_delivery SET status = %s, callback_due = %s, smtp_code = %s, "
    "smtp_reply = %s, smtp_message_id = %s, sent_at = %s, updated_at = %s, claimed_at = NULL "
    "WHERE id = %s"
)


@contextmanager
def fast_commits() -> Iterator[None]:
    """A batch's writes (claim, records, results) without waiting for the disk at each commit
    (PostgreSQL): a batch commits a few dozen times, and each wait for the disk took
    milliseconds.

    A dead worker loses none of the records it wrote: each is committed before the next group
    starts. Only a crash of the database server itself could lose the last fraction of a second
    of records, and with them re-send those few emails.
    """
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit TO OFF")
    try:
        yield
    finally:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SET synchronous_commit TO DEFAULT")
        except DatabaseError:
            # Never leave the setting to the connection's next user (connections are kept
            # across tasks); a connection that cannot reset it is not worth keeping.
            connection.close()


def _record_sent(cursor: Any, rows: list[Acceptance], *, callback_due: bool = False) -> None:
    """Accepted emails become `sent` (SQLite: in one transaction); with a callback URL, due to
    be reported by the same statement."""
    sent = Delivery.Status.SENT
    with transaction.atomic():
        cursor.executemany(
            _SENT_SQL,
            [
                [sent, callback_due, code, reply, message_id, when, when, pk]
                for pk, code, reply, message_id, at in rows
                for when in [datetime.fromtimestamp(at, tz=UTC)]
            ],
        )


def _note(delivery: _Claimed, failure: Failure) -> None:
    delivery.smtp_code = failure.code
    delivery.smtp_reply = failure.text[:500]


def _record(
    message: Message,
    results: _Results,
    claimed: list[_Claimed],
    sender_failure: Failure | None,
    *,
    due: bool = False,
    step: int | None = 0,
) -> BatchOutcome:
    """Record what is left of a group of rows sent through one sender: failures, retries, rows
    moved to the strategy's next step (`step` is theirs; None: there is no next step)."""
    now = timezone.now()
    outcome = BatchOutcome(sender_failure=sender_failure)
    deferred = {d.pk for d in results.deferred}
    handled = (
        {d.pk for d in results.sent}
        | {d.pk for d in results.failed}
        | {d.pk for d in results.retry}
        | deferred
    )
    # Rows neither sent nor failed (a soft time limit in the middle) go back for a retry.
    results.retry.extend(d for d in claimed if d.pk not in handled)
    for delivery in results.deferred:
        # Not tried: a sender's limit holds them until then, without using up a try.
        delivery.attempts -= 1
        delivery.status = Delivery.Status.RETRYING
        delivery.next_attempt_at = now + timedelta(seconds=results.deferred_in)
        outcome.retrying += 1
    if results.deferred:
        outcome.retry_in = results.deferred_in
    waiting = list(results.deferred)
    for delivery in results.retry:
        if delivery.pk in deferred:
            continue
        if sender_failure is not None:
            delivery.attempts -= 1  # the sender's fault does not use up the recipient's tries
        elif delivery.attempts >= settings.UMS_DELIVERY_MAX_ATTEMPTS:
            results.failed.append(delivery)
            continue
        delay = retry_delay(delivery.attempts)
        delivery.status, delivery.next_attempt_at = Delivery.Status.RETRYING, now + delay
        waiting.append(delivery)
        outcome.retrying += 1
        seconds = delay.total_seconds()
        outcome.retry_in = seconds if outcome.retry_in is None else min(outcome.retry_in, seconds)
    failed = results.failed
    moved = _move_to_next_step(message, failed, step) if failed and step is not None else False
    if moved:
        # The strategy's next sender takes them (not failed, no callback): queued again now.
        outcome.moved, failed = len(failed), []
        outcome.retry_in = 0.0
    for delivery in failed:
        delivery.status = Delivery.Status.FAILED
    outcome.sent, outcome.failed = len(results.sent), len(failed)
    with transaction.atomic() if failed or waiting else nullcontext():
        # Their Message-ID and sending time are cleared, and they are no longer claimed. A
        # failure is final: due to be reported when the message has a callback URL.
        _write_rows(failed, now, callback_due=due)
        _write_rows(waiting, now)
        # Not to a message already done: another batch's finish counted these rows from the
        # deliveries themselves (they were final before it could finish), after this batch
        # recorded them and before it got here.
        Message.objects.filter(pk=message.pk).exclude(status=Message.Status.DONE).update(
            sent=F("sent") + outcome.sent, failed=F("failed") + outcome.failed
        )
    refused = [row.email for row in failed if row.smtp_code and row.smtp_code >= 500]
    if refused:
        lists.addresses_suppress_failed(channel=message.channel, emails=refused)
    return outcome


_ROW_FIELDS = [
    "status",
    "smtp_code",
    "smtp_reply",
    "smtp_message_id",
    "sent_at",
    "next_attempt_at",
    "claimed_at",
    "attempts",
    "updated_at",
]


def _write_rows(rows: list[_Claimed], now: datetime, *, callback_due: bool = False) -> None:
    if not rows:
        return
    changed = [
        Delivery(
            pk=row.pk,
            status=row.status,
            smtp_code=row.smtp_code,
            smtp_reply=row.smtp_reply,
            next_attempt_at=row.next_attempt_at,
            attempts=row.attempts,
            updated_at=now,
            callback_due=True,
        )
        for row in rows
    ]
    fields = [*_ROW_FIELDS, "callback_due"] if callback_due else _ROW_FIELDS
    Delivery.objects.bulk_update(changed, fields, batch_size=1000)


def _move_to_next_step(message: Message, rows: list[_Claimed], step: int) -> bool:
    """Rows that failed for good on `step` of the message's strategy go to its next step, if
    there is one (one UPDATE): pending, their tries reset. False for a message without one."""
    if message.rule_id is None:
        return False
    following = rules.next_step(message=message, step=step)
    if following is None:
        return False
    Delivery.objects.filter(pk__in=[row.pk for row in rows]).update(
        step=following,
        status=Delivery.Status.PENDING,
        attempts=0,
        next_attempt_at=None,
        claimed_at=None,
        smtp_message_id="",
        updated_at=timezone.now(),
    )
    return True


def retry_delay(attempts: int) -> timedelta:
    """Exponential backoff: base, 4 x base, 16 x base ... capped at an hour."""
    base = settings.UMS_DELIVERY_RETRY_BASE
    return timedelta(seconds=min(3600.0, base * 4 ** max(0, attempts - 1)))


def sender_is_broken(sender: EmailSender) -> bool:
    return sender.health == EmailSender.Health.FAILED and sender.health_error_kind in {
        kind.value for kind in SENDER_FAILURES
    }


def _mark_sender(sender: EmailSender, failure: Failure) -> None:
    """A login or TLS failure is the sender's, not the message's: show it on the sender."""
    check = ConnectionCheck(ok=False, sender_code=sender.code, failure=failure)
    channel_services.sender_record_check(sender=sender, check=check)


def message_finish_if_done(*, message_id: int) -> bool:
    """A sending message with nothing left open becomes done.

    It runs after every batch, so the usual answer (rows still open) costs one query. Only a
    message that looks finished is locked and looked at again: a retry of its failed rows
    (messaging.services.message_retry_failed, which holds the same lock) may have put rows back
    to pending meanwhile, and a check made before that retry committed would not see them.
    """
    still_open = Delivery.objects.filter(message_id=message_id, status__in=OPEN)
    if still_open.exists():
        return False
    with transaction.atomic():
        locked = (
            Message.objects.select_for_update()
            .filter(pk=message_id, status=Message.Status.SENDING)
            .values_list("pk", flat=True)
            .first()
        )
        # A new statement once the lock is held: it sees what a retry committed before.
        if locked is None or still_open.exists():
            return False
        Message.objects.filter(pk=message_id).update(
            status=Message.Status.DONE, finished_at=timezone.now()
        )
        message_recount(message_id=message_id)
    return True


def message_recount(*, message_id: int) -> None:
    """Counters from the deliveries themselves. Batches add to the counters as they go; a worker
    killed between sending and adding leaves them short, so the final numbers are counted."""
    counts = dict(
        Delivery.objects.filter(message_id=message_id)
        .values_list("status")
        .annotate(n=Count("pk"))
        .order_by()
    )
    Message.objects.filter(pk=message_id).update(
        total=sum(counts.values()),
        sent=counts.get(Delivery.Status.SENT, 0),
        failed=counts.get(Delivery.Status.FAILED, 0),
        invalid=counts.get(Delivery.Status.INVALID, 0),
        cancelled=counts.get(Delivery.Status.CANCELLED, 0),
    )


# --- sweeping ---------------------------------------------------------------------------------


@dataclass
class SweepOutcome:
    messages: list[int] = field(default_factory=list)
    batches: list[tuple[int, int, int]] = field(default_factory=list)  # message, batch, priority
    released: int = 0


def sweep(*, now: datetime | None = None) -> SweepOutcome:
    """What the broker may have lost: undispatched messages, stuck claims, stalled batches.

    Safe to run twice: it only hands work to tasks that claim before they act, and a message's
    batches are handed out again only when nothing of it moved for UMS_DISPATCH_GRACE seconds.
    """
    now = now or timezone.now()
    outcome = SweepOutcome()
    overdue = now - timedelta(seconds=settings.UMS_DISPATCH_GRACE)
    released = _release_stuck(now, outcome)
    outcome.messages = list(
        Message.objects.filter(
            Q(status=Message.Status.QUEUED, created_at__lt=overdue)
            | Q(
                status=Message.Status.RESOLVING,
                dispatched_at__lt=now - timedelta(seconds=bulk_time_limit() + 120),
            )
            | Q(status=Message.Status.SCHEDULED, send_at__lte=now)
        ).values_list("pk", flat=True)[:1000]
    )
    Message.objects.filter(pk__in=outcome.messages, status=Message.Status.SCHEDULED).update(
        status=Message.Status.QUEUED
    )
    waiting = Q(status=Delivery.Status.PENDING) | Q(
        status=Delivery.Status.RETRYING, next_attempt_at__lte=overdue
    )
    candidates = set(
        Delivery.objects.filter(
            waiting,
            message__status__in=[Message.Status.SENDING, Message.Status.RETRACTED],
            message__dispatched_at__lt=overdue,
        )
        .values_list("message_id", "batch")
        .distinct()
        .order_by()[:5000]
    )
    stalled = {m for m, _b in candidates if not _moved_since(m, overdue)}
    batches = released | {(m, b) for m, b in candidates if m in stalled}
    priorities = dict(
        Message.objects.filter(pk__in={m for m, _b in batches}).values_list("pk", "priority")
    )
    outcome.batches = sorted((m, b, priorities[m]) for m, b in batches)
    # Touch one waiting row of each message handed out again, so that the next sweep gives
    # their tasks time to run (see _moved_since). The message's dispatched_at stays the time it
    # was first handed out: the console's timeline shows it.
    first_waiting = (
        Delivery.objects.filter(waiting, message_id__in=list(priorities))
        .values("message_id")
        .annotate(first=Min("pk"))
        .values_list("first", flat=True)
        .order_by()
    )
    Delivery.objects.filter(pk__in=list(first_waiting)).update(updated_at=now)
    Message.objects.filter(pk__in=priorities, dispatched_at__isnull=True).update(dispatched_at=now)
    return outcome


def _release_stuck(now: datetime, outcome: SweepOutcome) -> set[tuple[int, int]]:
    """Rows claimed by a worker that died: back for a retry, or failed if that was the last try."""
    stuck = Delivery.objects.filter(
        status=Delivery.Status.SENDING,
        claimed_at__lt=now - timedelta(seconds=settings.UMS_DELIVERY_LEASE),
    )
    released = set(stuck.values_list("message_id", "batch").distinct().order_by())
    last = Q(attempts__gte=settings.UMS_DELIVERY_MAX_ATTEMPTS)
    messages = {m for m, _b in released}
    _move_stuck_to_next_step(stuck.filter(last), messages, now)
    reporting = [
        pk
        for pk, callback in Message.objects.filter(pk__in=messages).values_list("pk", "callback")
        if isinstance(callback, dict) and callback.get("url")
    ]
    failed = {
        "status": Delivery.Status.FAILED,
        "claimed_at": None,
        "updated_at": now,
        "smtp_reply": "The worker stopped while sending, on the last attempt.",
    }
    # A failure is final: due to be reported to a callback URL by the same statement.
    stuck.filter(last, message_id__in=reporting).update(**failed, callback_due=True)
    stuck.filter(last).update(**failed)
    outcome.released = stuck.exclude(last).update(
        status=Delivery.Status.RETRYING, next_attempt_at=now, claimed_at=None, updated_at=now
    )
    return released


def _move_stuck_to_next_step(last: Any, messages: set[int], now: datetime) -> None:
    """Stuck rows on their last try, of messages with a strategy: to the strategy's next step
    (pending, tries reset), as a failure on that step would. One query per (message, step)."""
    strategic = Message.objects.filter(pk__in=messages, rule__isnull=False).select_related(
        "channel", "sender"
    )
    for message in strategic:
        mine = last.filter(message_id=message.pk)
        for step in set(mine.values_list("step", flat=True).order_by()):
            following = rules.next_step(message=message, step=step)
            if following is not None:
                mine.filter(step=step).update(
                    step=following,
                    status=Delivery.Status.PENDING,
                    attempts=0,
                    next_attempt_at=None,
                    claimed_at=None,
                    updated_at=now,
                )


def _moved_since(message_id: int, since: datetime) -> bool:
    """Whether any delivery of the message changed lately: its tasks are still running."""
    return Delivery.objects.filter(message_id=message_id, updated_at__gte=since).exists()
