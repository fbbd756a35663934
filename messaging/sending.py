"""The delivery pipeline: resolve a message's audience into Delivery rows, then send in batches.

Claim, then send, then record: a batch claims its rows in a short transaction, talks SMTP
outside any transaction over one connection, and records the results with a few bulk updates.
A duplicate task finds nothing left to claim.
"""

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Count, Exists, F, Q
from django.utils import timezone

from channels_app import services as channel_services
from channels_app.models import EmailSender
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
from messaging.mime import message_id_for, message_template, stamp
from messaging.models import Delivery, Message

logger = logging.getLogger(__name__)

WRITE_CHUNK = 5000
OPEN = (Delivery.Status.PENDING, Delivery.Status.SENDING, Delivery.Status.RETRYING)


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
            _cancel_open(message.pk)
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
    if connection.vendor == "postgresql":
        return _insert_deliveries(message)
    size = settings.UMS_DELIVERY_BATCH_SIZE
    total = invalid = sendable = 0
    batches: set[int] = set()
    rows: list[Delivery] = []
    for recipient in _recipients(message):
        total += 1
        if recipient.email:
            batch = sendable // size
            sendable += 1
            batches.add(batch)
            rows.append(
                Delivery(
                    message=message, batch=batch, userid=recipient.userid, email=recipient.email
                )
            )
        else:
            invalid += 1
            rows.append(
                Delivery(
                    message=message,
                    batch=0,
                    userid=recipient.userid,
                    status=Delivery.Status.INVALID,
                )
            )
        if len(rows) >= WRITE_CHUNK:
            Delivery.objects.bulk_create(rows)
            rows = []
    Delivery.objects.bulk_create(rows)
    return total, invalid, batches


# The recipients numbered in their order; those with an address fill the batches one by one.
_INSERT_SQL = """
    WITH audience AS ({recipients}),
    numbered AS (
        SELECT ord, userid, email,
               count(*) FILTER (WHERE email <> '') OVER (ORDER BY ord) AS nth
        FROM audience
    ),
    written AS (
        INSERT INTO messaging_delivery (
            message_id, batch, userid, email, status, attempts, smtp_reply, smtp_message_id,
            updated_at
        )
        SELECT %(message)s,
               CASE WHEN email <> '' THEN (nth - 1) / %(size)s ELSE 0 END,
               userid, email,
               CASE WHEN email <> '' THEN %(pending)s ELSE %(invalid)s END,
               0, '', '', %(now)s
        FROM numbered ORDER BY ord
        RETURNING status
    )
    SELECT count(*), count(*) FILTER (WHERE status = %(invalid)s) FROM written
"""


def _insert_deliveries(message: Message) -> tuple[int, int, set[int]]:
    """PostgreSQL writes the deliveries itself: one INSERT ... SELECT, whatever the audience."""
    size = settings.UMS_DELIVERY_BATCH_SIZE
    recipients, params = audiences.recipients_sql(
        channel_key=message.channel.channel_key, audience=message.audience
    )
    params.update(
        message=message.pk,
        size=size,
        pending=Delivery.Status.PENDING,
        invalid=Delivery.Status.INVALID,
        now=timezone.now(),
    )
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_SQL.format(recipients=recipients), params)
        total, invalid = cursor.fetchone()
    return total, invalid, set(range(-(-(total - invalid) // size)))


# --- sending ----------------------------------------------------------------------------------


@dataclass
class BatchOutcome:
    sent: int = 0
    failed: int = 0
    retrying: int = 0
    retry_in: float | None = None  # seconds until the earliest retry, if any
    sender_failure: Failure | None = None


@dataclass(slots=True)
class _Claimed:
    """A claimed delivery: what sending it needs, and what its failure leaves to record. (A
    model instance per recipient cost more than the rest of the batch's bookkeeping.)"""

    pk: int
    email: str
    attempts: int
    status: str = Delivery.Status.SENDING
    smtp_code: int | None = None
    smtp_reply: str = ""
    next_attempt_at: datetime | None = None


@dataclass
class _Results:
    sent: list[_Claimed] = field(default_factory=list)
    failed: list[_Claimed] = field(default_factory=list)
    retry: list[_Claimed] = field(default_factory=list)


def batch_send(*, message_id: int, batch: int) -> BatchOutcome:
    # The audience was resolved already, and can be long (every userid given).
    message = (
        Message.objects.select_related("sender", "channel").defer("audience").get(pk=message_id)
    )
    if message.status == Message.Status.RETRACTED or not message.channel.is_enabled:
        # Nothing more goes out for a retracted message or a closed channel.
        _cancel_open(message.pk, batch=batch)
        return BatchOutcome()
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
        try:
            template = message_template(message)
            config = sender.smtp_config()
        except Exception as exc:
            logger.exception("message %s cannot be built", message.msgid)
            failure = Failure(FailureKind.PERMANENT, None, str(exc)[:500])
            results = _Results(retry=list(claimed))
            for row in claimed:
                _note(row, failure)
            return _finish_batch(message, results, claimed, None)
        results, sender_failure = _send(message, claimed, template, config)
        outcome = _finish_batch(message, results, claimed, sender_failure)
    if sender_failure is not None:
        _mark_sender(sender, sender_failure)
    return outcome


def _finish_batch(
    message: Message, results: "_Results", claimed: list[_Claimed], sender_failure: Failure | None
) -> BatchOutcome:
    outcome = _record(message, results, claimed, sender_failure)
    message_finish_if_done(message_id=message.pk)
    return outcome


def _usable_sender(message: Message) -> EmailSender | None:
    """The message's sender, or the channel's current default if it was disabled meanwhile."""
    sender = message.sender
    if sender.is_enabled and sender.port_usable:
        return sender
    return channel_default_sender(channel=message.channel)


def _cancel_open(message_id: int, *, batch: int | None = None) -> None:
    rows = Delivery.objects.filter(
        message_id=message_id, status__in=[Delivery.Status.PENDING, Delivery.Status.RETRYING]
    )
    if batch is not None:
        rows = rows.filter(batch=batch)
    if rows.update(status=Delivery.Status.CANCELLED, claimed_at=None):
        message_recount(message_id=message_id)


_CLAIM_SQL = """
    UPDATE messaging_delivery SET status = %s, claimed_at = %s, attempts = attempts + 1
    WHERE id IN (
        SELECT id FROM messaging_delivery
        WHERE message_id = %s AND batch = %s
          AND (status = %s OR (status = %s AND next_attempt_at <= %s))
        FOR UPDATE SKIP LOCKED
    )
    RETURNING id, email, attempts
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
            .values_list("pk", "email", "attempts")
        )
        Delivery.objects.filter(pk__in=[pk for pk, _email, _n in rows]).update(
            status=Delivery.Status.SENDING, claimed_at=now, attempts=F("attempts") + 1
        )
    return [_Claimed(pk, email, n + 1) for pk, email, n in rows]


def _send(
    message: Message, claimed: list[_Claimed], template: bytes, config: SmtpConfig
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
            return results, _send_each(message, claimed, template, backend, results, cursor)
    except SoftTimeLimitExceeded:
        # Out of time: what was not recorded goes back for a retry (see _record).
        logger.warning("batch of message %s stopped at its soft time limit", message.msgid)
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


def _send_each(
    message: Message,
    claimed: list[_Claimed],
    template: bytes,
    backend: SenderEmailBackend,
    results: "_Results",
    cursor: Any,
) -> Failure | None:
    envelope_from = message.sender.from_address
    broken_connections = 0
    accepted = _Acceptances(cursor)
    try:
        for index, delivery in enumerate(claimed):
            message_id = message_id_for(message, delivery.pk)
            started = time.monotonic()
            try:
                reply = backend.send_raw(
                    envelope_from=envelope_from,
                    recipient=delivery.email,
                    message=stamp(template, to=delivery.email, message_id=message_id),
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
        return None
    finally:
        accepted.write()  # also when stopped by the time limit: what was accepted is recorded


# Accepted emails are recorded in small groups: one statement per group instead of one per email
# (at thousands of emails a second, the per-email statement was the pipeline's largest cost).
# A group is written once it holds RECORD_EVERY acceptances, or as soon as the oldest of them
# was handed to the server RECORD_WITHIN seconds ago or more: with a server slower than that,
# every acceptance is written before the next email goes. A worker killed in the middle of a
# batch can therefore re-send at most RECORD_EVERY emails of that batch (accepted, not yet
# recorded), and just the one in flight with a slow server. See docs/sending.md#guarantees.
RECORD_EVERY = 20
RECORD_WITHIN = 0.05


class _Acceptances:
    def __init__(self, cursor: Any) -> None:
        self.cursor = cursor
        self.rows: list[tuple[int, int, str, str, datetime]] = []
        self.oldest = 0.0

    def add(self, delivery_id: int, code: int, reply: str, message_id: str, started: float) -> None:
        if not self.rows:
            self.oldest = started
        self.rows.append((delivery_id, code, reply, message_id, timezone.now()))
        if len(self.rows) >= RECORD_EVERY or time.monotonic() - self.oldest >= RECORD_WITHIN:
            self.write()

    def write(self) -> None:
        if self.rows:
            rows, self.rows = self.rows, []
            _record_sent(self.cursor, rows)


_SENT_SQL = (
    "UPDATE messaging_delivery SET status = %s, smtp_code = %s, smtp_reply = %s, "
    "smtp_message_id = %s, sent_at = %s, updated_at = %s, claimed_at = NULL WHERE id = %s"
)
_SENT_MANY_SQL = """
    UPDATE messaging_delivery AS d
    SET status = %s, smtp_code = v.code, smtp_reply = v.reply, smtp_message_id = v.message_id,
        sent_at = v.at, updated_at = v.at, claimed_at = NULL
    FROM unnest(%s::bigint[], %s::smallint[], %s::text[], %s::text[], %s::timestamptz[])
        AS v(id, code, reply, message_id, at)
    WHERE d.id = v.id
"""


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


def _record_sent(cursor: Any, rows: list[tuple[int, int, str, str, datetime]]) -> None:
    """Accepted emails become `sent`, in one statement (autocommit: committed at once)."""
    sent = Delivery.Status.SENT
    if len(rows) == 1:
        ((pk, code, reply, message_id, at),) = rows
        cursor.execute(_SENT_SQL, [sent, code, reply, message_id, at, at, pk])
    elif connection.vendor == "postgresql":
        cursor.execute(
            _SENT_MANY_SQL, [sent, *(list(column) for column in zip(*rows, strict=True))]
        )
    else:
        with transaction.atomic():
            cursor.executemany(
                _SENT_SQL, [[sent, code, r, m, at, at, pk] for pk, code, r, m, at in rows]
            )


def _note(delivery: _Claimed, failure: Failure) -> None:
    delivery.smtp_code = failure.code
    delivery.smtp_reply = failure.text[:500]


def _record(
    message: Message, results: _Results, claimed: list[_Claimed], sender_failure: Failure | None
) -> BatchOutcome:
    now = timezone.now()
    outcome = BatchOutcome(sender_failure=sender_failure)
    handled = (
        {d.pk for d in results.sent}
        | {d.pk for d in results.failed}
        | {d.pk for d in results.retry}
    )
    # Rows neither sent nor failed (a soft time limit in the middle) go back for a retry.
    results.retry.extend(d for d in claimed if d.pk not in handled)
    for delivery in results.retry:
        if sender_failure is not None:
            delivery.attempts -= 1  # the sender's fault does not use up the recipient's tries
        elif delivery.attempts >= settings.UMS_DELIVERY_MAX_ATTEMPTS:
            results.failed.append(delivery)
            continue
        delay = retry_delay(delivery.attempts)
        delivery.status, delivery.next_attempt_at = Delivery.Status.RETRYING, now + delay
        outcome.retrying += 1
        seconds = delay.total_seconds()
        outcome.retry_in = seconds if outcome.retry_in is None else min(outcome.retry_in, seconds)
    for delivery in results.failed:
        delivery.status = Delivery.Status.FAILED
    # Their Message-ID and sending time are cleared, and they are no longer claimed.
    changed = [
        Delivery(
            pk=row.pk,
            status=row.status,
            smtp_code=row.smtp_code,
            smtp_reply=row.smtp_reply,
            next_attempt_at=row.next_attempt_at,
            attempts=row.attempts,
        )
        for row in results.failed + results.retry
    ]
    fields = [
        "status",
        "smtp_code",
        "smtp_reply",
        "smtp_message_id",
        "sent_at",
        "next_attempt_at",
        "claimed_at",
        "attempts",
    ]
    outcome.sent, outcome.failed = len(results.sent), len(results.failed)
    with transaction.atomic() if changed else nullcontext():
        Delivery.objects.bulk_update(changed, fields, batch_size=1000)
        Message.objects.filter(pk=message.pk).update(
            sent=F("sent") + outcome.sent, failed=F("failed") + outcome.failed
        )
    return outcome


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
    """A sending message with nothing left open becomes done (one statement: it runs after
    every batch)."""
    still_open = Delivery.objects.filter(message_id=message_id, status__in=OPEN)
    finished = (
        Message.objects.filter(pk=message_id, status=Message.Status.SENDING)
        .exclude(Exists(still_open))
        .update(status=Message.Status.DONE, finished_at=timezone.now())
    )
    if finished:
        message_recount(message_id=message_id)
    return bool(finished)


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
    # Touch the messages handed out again, so that the next sweep gives their tasks time to run.
    Message.objects.filter(pk__in=priorities).update(dispatched_at=now)
    return outcome


def _release_stuck(now: datetime, outcome: SweepOutcome) -> set[tuple[int, int]]:
    """Rows claimed by a worker that died: back for a retry, or failed if that was the last try."""
    stuck = Delivery.objects.filter(
        status=Delivery.Status.SENDING,
        claimed_at__lt=now - timedelta(seconds=settings.UMS_DELIVERY_LEASE),
    )
    released = set(stuck.values_list("message_id", "batch").distinct().order_by())
    last = Q(attempts__gte=settings.UMS_DELIVERY_MAX_ATTEMPTS)
    stuck.filter(last).update(
        status=Delivery.Status.FAILED,
        claimed_at=None,
        smtp_reply="The worker stopped while sending, on the last attempt.",
    )
    outcome.released = stuck.exclude(last).update(
        status=Delivery.Status.RETRYING, next_attempt_at=now, claimed_at=None
    )
    return released


def _moved_since(message_id: int, since: datetime) -> bool:
    """Whether any delivery of the message changed lately: its tasks are still running."""
    return Delivery.objects.filter(message_id=message_id, updated_at__gte=since).exists()
