"""Status callbacks (spec §3): records built from deliveries in bulk, batched per URL, POSTed.

The delivery pipeline's only part, and all of it: when it records a status of a message that
has a callback URL (`message.callback["url"]`), the same UPDATE sets `callback_due = True`.
Everything else runs in the tasks of messaging.callback_tasks, never in the pipeline's:

- callbacks_collect (every 10 seconds) takes the due deliveries in chunks, builds the records of
  the types not yet reported (`callback_reported` holds a bit per type) and stores them as
  CallbackBatch rows of at most 100 records per (channel, URL), one transaction per chunk; each
  new batch is posted at once;
- callback_batch_post claims a batch, POSTs it with Basic auth and an HMAC signature, and
  records it delivered (HTTP 200), to be retried, or dropped once the retries are used up;
- callback_batches_sweep hands out again what a dead worker or a lost task left behind.

See docs/callbacks.md.
"""

import hashlib
import hmac
import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntEnum
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, JSONField, Q, Value
from django.utils import timezone
from django.utils.translation import gettext as _
from kombu.exceptions import OperationalError

from channels_app.callbacks import (
    CallbackUnreachable,
    basic_auth,
    callback_url_is_usable,
    http_exchange,
)
from channels_app.models import SendingRuleStep
from messaging.models import CallbackBatch, Delivery, Message

logger = logging.getLogger(__name__)

CHUNK = 2000  # due deliveries per transaction (a multiple of BATCH_SIZE: batches stay full)
MAX_CHUNKS = 100  # per run of the collector; the next run carries on
BATCH_SIZE = 100  # records per POST, as the vendor batches them
SENDER_EMAIL = 4  # the record's `sender`: the vendor's number for the email channel
LEASE = timedelta(minutes=2)  # a claim older than this belongs to a worker that died
SWEEP_GRACE = timedelta(minutes=1)  # a due batch left this long lost its task
SWEEP_LIMIT = 1000

# Error codes of a record whose failure has no SMTP reply code (with one, that code is used).
ERROR_NO_ADDRESS = 1016050  # target invalid: no usable address
ERROR_NO_REPLY = 1016051  # submit failed without an SMTP reply (connection, timeout)
ERROR_NOT_SENT = 1016052  # submit failed: cancelled before sending, the channel was closed


class CallbackType(IntEnum):
    TARGET_VALID = 0
    TARGET_INVALID = 1
    SUBMITTED = 2
    SUBMIT_FAILED = 3
    RETRACTED = 7
    RETRACT_FAILED = 8


_STATUS_TYPES: dict[str, tuple[CallbackType, ...]] = {
    Delivery.Status.PENDING: (CallbackType.TARGET_VALID,),
    Delivery.Status.SENDING: (CallbackType.TARGET_VALID,),
    Delivery.Status.RETRYING: (CallbackType.TARGET_VALID,),
    Delivery.Status.SENT: (CallbackType.TARGET_VALID, CallbackType.SUBMITTED),
    Delivery.Status.FAILED: (CallbackType.TARGET_VALID, CallbackType.SUBMIT_FAILED),
    Delivery.Status.INVALID: (CallbackType.TARGET_INVALID,),
    Delivery.Status.CANCELLED: (CallbackType.TARGET_VALID, CallbackType.SUBMIT_FAILED),
}
_RETRACTED_TYPES: dict[str, tuple[CallbackType, ...]] = {
    Delivery.Status.SENT: (
        CallbackType.TARGET_VALID,
        CallbackType.SUBMITTED,
        CallbackType.RETRACT_FAILED,
    ),
    Delivery.Status.CANCELLED: (CallbackType.TARGET_VALID, CallbackType.RETRACTED),
}


def delivery_callback_types(*, status: str, retracted: bool) -> tuple[CallbackType, ...]:
    """The record types a delivery's status stands for (spec §3).

    An address was resolved (0) for every row but an invalid one (1). Sent is 2, failed 3. A
    retracted message's cancelled rows are 7 and its sent rows also 8 (sent before the retract
    could stop them); rows cancelled without a retract (the channel was closed) failed: 3.
    """
    if retracted and status in _RETRACTED_TYPES:
        return _RETRACTED_TYPES[status]
    return _STATUS_TYPES.get(status, ())


def callback_retries() -> int:
    return int(getattr(settings, "UMS_CALLBACK_RETRIES", 3))


def callback_retry_seconds() -> float:
    return float(getattr(settings, "UMS_CALLBACK_RETRY_SECONDS", 50))


# --- collecting ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _MessageFacts:
    """What the records of one message share."""

    msgid: str
    channel_id: int
    channel_key: str
    url: str
    params: Any
    retracted: bool
    sender_code: str
    step_codes: tuple[str, ...]  # the senders of its strategy, in order (empty without one)


_ROW_FIELDS = (
    "pk",
    "message_id",
    "userid",
    "email",
    "status",
    "smtp_code",
    "smtp_reply",
    "sent_at",
    "updated_at",
    "callback_reported",
    "step",
)


def callbacks_collect(*, now: datetime | None = None, max_chunks: int = MAX_CHUNKS) -> int:
    """Turn due deliveries into CallbackBatch rows; returns how many records were queued.

    Takes the due rows in id order, CHUNK at a time (locked with SKIP LOCKED on PostgreSQL, so
    collectors running at once share the work), builds the records of the types not yet
    reported, and in the same transaction stores them in batches of at most BATCH_SIZE per
    (channel, URL) and marks the rows reported and no longer due. A few queries per chunk,
    none per row. Each new batch is posted once the chunk is committed.
    """
    now = now or timezone.now()
    records = 0
    for _chunk in range(max_chunks):
        taken, queued = _collect_chunk(now)
        records += queued
        if taken < CHUNK:
            break
    return records


@transaction.atomic
def _collect_chunk(now: datetime) -> tuple[int, int]:
    """Returns (due rows taken, records queued)."""
    due = Delivery.objects.filter(callback_due=True).order_by("pk")
    if connection.features.has_select_for_update_skip_locked:
        due = due.select_for_update(skip_locked=True)
    rows = list(due.values_list(*_ROW_FIELDS, named=True)[:CHUNK])
    if not rows:
        return 0, 0
    facts = _message_facts({row.message_id for row in rows})
    groups: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    added: dict[int, list[int]] = defaultdict(list)  # bits newly reported -> delivery ids
    for row in rows:
        message = facts.get(row.message_id)
        bits = 0
        if message is not None:  # without a URL nothing is reported; the row is just cleared
            for kind in delivery_callback_types(status=row.status, retracted=message.retracted):
                if not row.callback_reported & (1 << kind):
                    bits |= 1 << kind
                    groups[message.channel_id, message.url].append(_record(kind, row, message))
        added[bits].append(row.pk)
    for bits, pks in added.items():
        Delivery.objects.filter(pk__in=pks).update(
            callback_due=False, callback_reported=F("callback_reported").bitor(bits)
        )
    batches = CallbackBatch.objects.bulk_create(
        CallbackBatch(
            channel_id=channel_id,
            url=url,
            # An expression, not a plain value: Django would insert plain values through a
            # PostgreSQL array of jsonb, whose quoting costs more than the rest of the chunk.
            records=Value(records[start : start + BATCH_SIZE], output_field=JSONField()),
            size=len(records[start : start + BATCH_SIZE]),
            next_attempt_at=now,
        )
        for (channel_id, url), records in groups.items()
        for start in range(0, len(records), BATCH_SIZE)
    )
    ids = [batch.pk for batch in batches]
    if ids:
        transaction.on_commit(lambda: callback_batches_enqueue(ids))
    return len(rows), sum(len(records) for records in groups.values())


def _message_facts(message_ids: set[int]) -> dict[int, _MessageFacts]:
    """The chunk's messages that have a callback URL, in two queries."""
    messages = list(
        Message.objects.filter(pk__in=message_ids).values_list(
            "pk",
            "msgid",
            "channel_id",
            "channel__channel_key",
            "sender__code",
            "callback",
            "status",
            "rule_id",
        )
    )
    rules = {rule_id for *_fields, rule_id in messages if rule_id}
    steps: dict[int, list[str]] = defaultdict(list)
    if rules:
        for rule_id, code in (
            SendingRuleStep.objects.filter(rule_id__in=rules)
            .order_by("rule_id", "position", "pk")
            .values_list("rule_id", "sender__code")
        ):
            steps[rule_id].append(code)
    facts = {}
    for pk, msgid, channel_id, channel_key, sender_code, callback, status, rule_id in messages:
        callback = callback if isinstance(callback, dict) else {}
        url = callback.get("url")
        if not url or not isinstance(url, str):
            continue
        facts[pk] = _MessageFacts(
            msgid=msgid,
            channel_id=channel_id,
            channel_key=channel_key,
            url=url,
            params=callback.get("params"),
            retracted=status == Message.Status.RETRACTED or bool(callback.get("retracted")),
            sender_code=sender_code,
            step_codes=tuple(steps.get(rule_id, ())),
        )
    return facts


def _record(kind: CallbackType, row: Any, message: _MessageFacts) -> dict[str, Any]:
    """One status record, in the vendor's field names (`email` and the error codes: ours)."""
    codes = message.step_codes
    record: dict[str, Any] = {
        "type": int(kind),
        "channelkey": message.channel_key,
        "msgid": message.msgid,
        "userid": row.userid,
    }
    if row.email:
        record["email"] = row.email
    record["sender_id"] = codes[row.step] if row.step < len(codes) else message.sender_code
    record["sender"] = SENDER_EMAIL
    record["sent_time"] = int((row.sent_at or row.updated_at).timestamp() * 1000)
    if kind in (CallbackType.TARGET_INVALID, CallbackType.SUBMIT_FAILED):
        record["error"] = _error(kind, row)
    if message.params is not None:
        record["params"] = message.params
    return record


def _error(kind: CallbackType, row: Any) -> dict[str, Any]:
    if row.smtp_code:
        return {"code": row.smtp_code, "message": row.smtp_reply}
    if kind == CallbackType.TARGET_INVALID:
        return {
            "code": ERROR_NO_ADDRESS,
            "message": row.smtp_reply or "no usable email address for this user on this channel",
        }
    if row.status == Delivery.Status.CANCELLED:
        return {"code": ERROR_NOT_SENT, "message": "not sent: the channel was closed"}
    return {"code": ERROR_NO_REPLY, "message": row.smtp_reply or "the mail server did not answer"}


def callbacks_mark_retracted(*, message_id: int) -> int:
    """After a retract: its sent rows are due to report 8, its cancelled rows 7.

    For a message that had already finished (its status stays `done`), the retract is noted in
    `message.callback["retracted"]`, so that the collector reports 8 for it too. Returns the rows
    marked; a message without a callback URL marks none. One UPDATE, whatever the audience.
    """
    message = Message.objects.filter(pk=message_id).values("callback", "status").first()
    callback = (message or {}).get("callback") or {}
    if not isinstance(callback, dict) or not callback.get("url"):
        return 0
    if message["status"] != Message.Status.RETRACTED and not callback.get("retracted"):
        Message.objects.filter(pk=message_id).update(callback={**callback, "retracted": True})
    return Delivery.objects.filter(
        message_id=message_id, status__in=[Delivery.Status.SENT, Delivery.Status.CANCELLED]
    ).update(callback_due=True)


# --- posting -------------------------------------------------------------------------------------


class PostStatus:
    DELIVERED = "delivered"
    RETRYING = "retrying"
    DROPPED = "dropped"
    SKIPPED = "skipped"  # not due, already claimed or finished: another task has it


@dataclass(frozen=True)
class PostOutcome:
    status: str
    status_code: int | None = None
    error: str = ""
    retry_in: float | None = None  # seconds until the next attempt, when one is due


def callback_body(records: list[dict[str, Any]]) -> bytes:
    """The exact bytes POSTed, and signed."""
    return json.dumps(records, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def callback_signature(*, secret: str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of the body, keyed with the MasterSecret>` (X-UMS-Signature)."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def callback_batch_post(*, batch_id: int, now: datetime | None = None) -> PostOutcome:
    """Claim the batch, POST it, record the answer: delivered, a retry later, or dropped.

    Claimed with a conditional UPDATE, so two workers never post one batch at once; a batch
    not due yet, claimed or finished is skipped. The HTTP request runs outside any transaction.
    """
    started = now or timezone.now()
    due = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=started)
    claimed = CallbackBatch.objects.filter(
        due, pk=batch_id, status=CallbackBatch.Status.PENDING, claimed_at__isnull=True
    ).update(claimed_at=started, attempts=F("attempts") + 1)
    if not claimed:
        return PostOutcome(PostStatus.SKIPPED)
    batch = CallbackBatch.objects.select_related("channel").get(pk=batch_id)
    if not callback_url_is_usable(channel_id=batch.channel_id, url=batch.url):
        error = _("The URL is no longer a verified callback URL of the channel.")
        return _record_post(batch, now, None, error, final=True)
    secret = batch.channel.get_master_secret()
    body = callback_body(batch.records)
    headers = {
        "Content-Type": "application/json",
        "Authorization": basic_auth(channel_key=batch.channel.channel_key, secret=secret),
        "X-UMS-Signature": callback_signature(secret=secret, body=body),
    }
    try:
        reply = http_exchange(method="POST", url=batch.url, headers=headers, body=body)
    except CallbackUnreachable as exc:
        return _record_post(batch, now, None, str(exc))
    error = "" if reply.status == 200 else _("HTTP %(status)d") % {"status": reply.status}
    return _record_post(batch, now, reply.status, error)


def _record_post(
    batch: CallbackBatch,
    now: datetime | None,
    status_code: int | None,
    error: str,
    *,
    final: bool = False,
) -> PostOutcome:
    done = now or timezone.now()
    # Only while the claim is still ours (the sweeper releases claims of dead workers).
    mine = CallbackBatch.objects.filter(pk=batch.pk, claimed_at=batch.claimed_at)
    result = {"claimed_at": None, "last_status_code": status_code, "last_error": error[:500]}
    if status_code == 200:
        mine.update(
            status=CallbackBatch.Status.DELIVERED, finished_at=done, next_attempt_at=None, **result
        )
        return PostOutcome(PostStatus.DELIVERED, status_code)
    if final or batch.attempts > callback_retries():
        mine.update(
            status=CallbackBatch.Status.DROPPED, finished_at=done, next_attempt_at=None, **result
        )
        logger.warning("callback batch %s dropped: %s", batch.pk, error)
        return PostOutcome(PostStatus.DROPPED, status_code, error)
    delay = callback_retry_seconds()
    mine.update(next_attempt_at=done + timedelta(seconds=delay), **result)
    return PostOutcome(PostStatus.RETRYING, status_code, error, retry_in=delay)


# --- handing out, retrying, sweeping -------------------------------------------------------------


def callback_batches_enqueue(batch_ids: list[int]) -> int:
    """Queue a post of each batch; with the broker down, the sweeper queues them later."""
    from messaging import callback_tasks  # the tasks call this module

    queued = 0
    try:
        for batch_id in batch_ids:
            callback_tasks.callback_batch_post_task.delay(batch_id)
            queued += 1
    except OperationalError:
        logger.warning(
            "broker unreachable; %d callback batches wait for the sweeper", len(batch_ids)
        )
    return queued


def callback_batches_retry(*, batch_ids: Iterable[int], now: datetime | None = None) -> list[int]:
    """The console's "Retry now": pending and dropped batches are due at once, tries reset.

    A batch being posted right now (claimed) is left alone. Their posts are queued after the
    commit; returns the batches put back.
    """
    now = now or timezone.now()
    retryable = Q(
        status__in=[CallbackBatch.Status.PENDING, CallbackBatch.Status.DROPPED],
        claimed_at__isnull=True,
    )
    with transaction.atomic():
        ids = list(
            CallbackBatch.objects.filter(retryable, pk__in=list(batch_ids)).values_list(
                "pk", flat=True
            )
        )
        CallbackBatch.objects.filter(retryable, pk__in=ids).update(
            status=CallbackBatch.Status.PENDING, attempts=0, next_attempt_at=now, finished_at=None
        )
        if ids:
            transaction.on_commit(lambda: callback_batches_enqueue(ids))
    return ids


def callback_batches_sweep(*, now: datetime | None = None) -> list[int]:
    """What a dead worker or a lost task left: returns the batches to post again.

    A claim older than LEASE is released (or the batch dropped, if that was its last try); a
    pending batch due for SWEEP_GRACE or more lost its task. Those handed out are touched, so
    that the next sweep gives their tasks time to run. Safe to run twice.
    """
    now = now or timezone.now()
    stuck = CallbackBatch.objects.filter(
        status=CallbackBatch.Status.PENDING, claimed_at__lt=now - LEASE
    )
    stuck.filter(attempts__gt=callback_retries()).update(
        status=CallbackBatch.Status.DROPPED,
        claimed_at=None,
        finished_at=now,
        next_attempt_at=None,
        last_error=_("The worker stopped while posting, on the last attempt."),
    )
    released = list(stuck.values_list("pk", flat=True)[:SWEEP_LIMIT])
    CallbackBatch.objects.filter(pk__in=released, claimed_at__lt=now - LEASE).update(
        claimed_at=None, next_attempt_at=now
    )
    overdue = CallbackBatch.objects.filter(
        Q(next_attempt_at__lte=now - SWEEP_GRACE)
        | Q(next_attempt_at__isnull=True, created_at__lte=now - SWEEP_GRACE),
        status=CallbackBatch.Status.PENDING,
        claimed_at__isnull=True,
    )
    lost = list(overdue.order_by("next_attempt_at").values_list("pk", flat=True)[:SWEEP_LIMIT])
    CallbackBatch.objects.filter(pk__in=lost, claimed_at__isnull=True).update(next_attempt_at=now)
    return released + lost
