"""Reads for the console's dashboard: sends by status per channel, sender health, queue depth.

The figures come from the counters kept on each message and from small index scans, never from
counting a message's deliveries, and each panel is cached for CACHE_SECONDS, so a console left
open by many staff costs a handful of queries a minute.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis
from django.conf import settings
from django.core.cache import cache
from django.db.models import Case, Count, F, IntegerField, Q, Sum, Value, When
from django.db.models.functions import Greatest, TruncDate
from django.utils import timezone
from kombu.transport.redis import Channel as RedisChannel
from redis.backoff import NoBackoff
from redis.retry import Retry

from channels_app.models import EmailSender
from messaging.models import Delivery, Message
from ums.celery import REDIS_OPTIONS
from ums.celery import app as celery_app

CACHE_SECONDS = 30
DAYS = 30
STATUSES = ("sent", "failed", "invalid", "cancelled", "pending")
# Deliveries waiting in the database: exactly the condition of the partial index delivery_due_idx.
WAITING_DELIVERIES = (Delivery.Status.SENDING, Delivery.Status.RETRYING, Delivery.Status.PENDING)
WAITING_MESSAGES = (Message.Status.QUEUED, Message.Status.SCHEDULED, Message.Status.RESOLVING)
# A broker that is down must cost the page about a second, not a hang.
BROKER_TIMEOUT = 1.0
MAX_SENDERS = 100

T = TypeVar("T")


# --- sends by status per channel --------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    """Recipients by status; pending is what is neither sent, failed, invalid nor cancelled."""

    sent: int = 0
    failed: int = 0
    invalid: int = 0
    cancelled: int = 0
    pending: int = 0

    @property
    def total(self) -> int:
        return self.sent + self.failed + self.invalid + self.cancelled + self.pending

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(**{s: getattr(self, s) + getattr(other, s) for s in STATUSES})


@dataclass(frozen=True)
class ChannelSends:
    channel_id: int
    name: str
    daily: tuple[Counts, ...]  # one per day of SendStats.days

    @property
    def today(self) -> Counts:
        return self.daily[-1]

    @property
    def period(self) -> Counts:
        return sum(self.daily, Counts())


@dataclass(frozen=True)
class SendStats:
    days: tuple[date, ...]  # oldest first; the last is today in the active time zone
    channels: tuple[ChannelSends, ...]  # those with sends in the period, by name
    computed_at: datetime

    @property
    def today(self) -> Counts:
        return sum((c.today for c in self.channels), Counts())

    @property
    def period(self) -> Counts:
        return sum((c.period for c in self.channels), Counts())

    def daily_totals(self) -> list[tuple[date, Counts]]:
        """All channels together, per day."""
        return [
            (day, sum((c.daily[i] for c in self.channels), Counts()))
            for i, day in enumerate(self.days)
        ]


def send_stats(*, now: datetime | None = None, days: int = DAYS) -> SendStats:
    """Recipients by status per channel and day, in the active time zone; test sends left out.

    One GROUP BY over the messages of the period (index on created_at), summing their counters.
    """
    now = now or timezone.now()
    tz = timezone.get_current_timezone()
    today = timezone.localdate(now, tz)
    first = today - timedelta(days=days - 1)
    start = timezone.make_aware(datetime.combine(first, time.min), tz)
    end = timezone.make_aware(datetime.combine(today + timedelta(days=1), time.min), tz)
    remaining = F("total") - F("sent") - F("failed") - F("invalid") - F("cancelled")
    rows = (
        Message.objects.filter(created_at__gte=start, created_at__lt=end, is_test=False)
        .annotate(day=TruncDate("created_at", tzinfo=tz))
        .values("day", "channel_id", "channel__name")
        .annotate(
            n_sent=Sum("sent"),
            n_failed=Sum("failed"),
            n_invalid=Sum("invalid"),
            n_cancelled=Sum("cancelled"),
            n_pending=Sum(Greatest(remaining, Value(0), output_field=IntegerField())),
        )
        .order_by()
    )
    day_list = tuple(first + timedelta(days=i) for i in range(days))
    index = {day: i for i, day in enumerate(day_list)}
    names: dict[int, str] = {}
    daily: dict[int, list[Counts]] = {}
    for row in rows:
        channel = row["channel_id"]
        names[channel] = row["channel__name"]
        series = daily.setdefault(channel, [Counts()] * days)
        i = index[row["day"]]
        series[i] = series[i] + Counts(**{s: row[f"n_{s}"] or 0 for s in STATUSES})
    channels = sorted(
        (ChannelSends(channel_id=c, name=names[c], daily=tuple(daily[c])) for c in daily),
        key=lambda c: c.name.lower(),
    )
    return SendStats(days=day_list, channels=tuple(channels), computed_at=now)


# --- sender health ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SenderHealth:
    sender_id: int
    name: str
    code: str
    is_enabled: bool
    health: str  # EmailSender.Health
    checked_at: datetime | None
    error_kind: str  # channels_app.smtp.FailureKind, or ""
    error: str
    failed_last_hour: int


@dataclass(frozen=True)
class SenderPanel:
    senders: tuple[SenderHealth, ...]  # failing first, then by name
    more: bool  # more senders than MAX_SENDERS
    computed_at: datetime


def sender_failures_since(*, since: datetime) -> dict[int, int]:
    """Failed deliveries per sender (of their messages) that failed at or after `since`.

    A failure does not stamp its own time: a row fails after both its last write (updated_at)
    and its last retry time (next_attempt_at), so a row with either at or after `since` failed
    since then. The count never includes an older failure; it misses one whose last attempt
    waited more than the window behind a backlog. Two partial indexes on failed rows make it a
    scan of the window's failures only, however big the table.
    """
    recent = Q(updated_at__gte=since) | Q(next_attempt_at__gte=since)
    rows = (
        Delivery.objects.filter(recent, status=Delivery.Status.FAILED)
        .values_list("message__sender_id")
        .annotate(n=Count("pk"))
        .order_by()
    )
    return dict(rows)


def sender_health(*, now: datetime | None = None, limit: int = MAX_SENDERS) -> SenderPanel:
    """Each sender's last connection check and its failed deliveries of the last hour."""
    now = now or timezone.now()
    failing_first = Case(When(health=EmailSender.Health.FAILED, then=Value(0)), default=Value(1))
    senders = list(
        EmailSender.objects.only(
            "pk",
            "name",
            "code",
            "is_enabled",
            "health",
            "health_checked_at",
            "health_error",
            "health_error_kind",
        ).order_by(failing_first, "name")[: limit + 1]
    )
    failures = sender_failures_since(since=now - timedelta(hours=1))
    rows = tuple(
        SenderHealth(
            sender_id=s.pk,
            name=s.name,
            code=s.code,
            is_enabled=s.is_enabled,
            health=s.health,
            checked_at=s.health_checked_at,
            error_kind=s.health_error_kind,
            error=s.health_error,
            failed_last_hour=failures.get(s.pk, 0),
        )
        for s in senders[:limit]
    )
    return SenderPanel(senders=rows, more=len(senders) > limit, computed_at=now)


# --- queue depth ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerQueue:
    name: str
    length: int


@dataclass(frozen=True)
class BrokerDepth:
    transport: str  # "redis", "filesystem" or "other"
    location: str  # host:port/db or a folder; never a password
    state: str  # "ok", "unreachable" or "unsupported"
    queues: tuple[BrokerQueue, ...] = ()
    error: str = ""

    @property
    def total(self) -> int:
        return sum(q.length for q in self.queues)


@dataclass(frozen=True)
class QueueDepth:
    deliveries: dict[str, int]  # waiting in the database, by Delivery.Status
    messages: dict[str, int]  # waiting to be resolved or sent, by Message.Status
    broker: BrokerDepth
    computed_at: datetime


def queue_depth(*, now: datetime | None = None, timeout: float = BROKER_TIMEOUT) -> QueueDepth:
    deliveries = dict(
        Delivery.objects.filter(status__in=WAITING_DELIVERIES)
        .values_list("status")
        .annotate(n=Count("pk"))
        .order_by()
    )
    messages = dict(
        Message.objects.filter(status__in=WAITING_MESSAGES)
        .values_list("status")
        .annotate(n=Count("pk"))
        .order_by()
    )
    return QueueDepth(
        deliveries={s.value: deliveries.get(s, 0) for s in WAITING_DELIVERIES},
        messages={s.value: messages.get(s, 0) for s in WAITING_MESSAGES},
        broker=broker_depth(timeout=timeout),
        computed_at=now or timezone.now(),
    )


def celery_queue_names() -> list[str]:
    """The queues the workers consume: the default one and any configured ones."""
    names = [celery_app.conf.task_default_queue]
    names += [q.name for q in celery_app.conf.task_queues or ()]
    return list(dict.fromkeys(names))


def redis_queue_names() -> list[str]:
    """Each queue's Redis lists: kombu keeps one per priority step, suffixed after the first."""
    steps = REDIS_OPTIONS.get("priority_steps", RedisChannel.priority_steps)
    sep = REDIS_OPTIONS.get("sep", RedisChannel.sep)
    return [
        f"{name}{sep}{step}" if step else name for name in celery_queue_names() for step in steps
    ]


def broker_depth(*, timeout: float = BROKER_TIMEOUT) -> BrokerDepth:
    url = settings.CELERY_BROKER_URL
    if not url:
        return filesystem_depth(folder=Path(settings.CELERY_BROKER_FOLDER) / "queue")
    if url.startswith(("redis://", "rediss://")):
        return redis_depth(url=url, timeout=timeout)
    return BrokerDepth(transport="other", location=_location(url), state="unsupported")


def redis_depth(*, url: str, timeout: float = BROKER_TIMEOUT) -> BrokerDepth:
    """The length of every Celery list, in one round trip; "unreachable" within `timeout`."""
    names = redis_queue_names()
    client = redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.llen(name)
        lengths = pipe.execute()
    except (redis.RedisError, OSError) as exc:
        return BrokerDepth(
            transport="redis", location=_location(url), state="unreachable", error=str(exc)[:200]
        )
    finally:
        client.close()
    queues = tuple(
        BrokerQueue(name=n, length=int(length)) for n, length in zip(names, lengths, strict=True)
    )
    return BrokerDepth(transport="redis", location=_location(url), state="ok", queues=queues)


def filesystem_depth(*, folder: Path) -> BrokerDepth:
    """Message files per queue: kombu names them `<time>_<uuid>.<queue>.msg`."""
    counts = dict.fromkeys(celery_queue_names(), 0)
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                rest = entry.name.partition(".")[2]
                if rest.endswith(".msg"):
                    counts[rest[:-4]] = counts.get(rest[:-4], 0) + 1
    except OSError as exc:
        return BrokerDepth(
            transport="filesystem",
            location=str(folder),
            state="unreachable",
            error=exc.strerror or str(exc),
        )
    queues = tuple(BrokerQueue(name=n, length=length) for n, length in counts.items())
    return BrokerDepth(transport="filesystem", location=str(folder), state="ok", queues=queues)


def _location(url: str) -> str:
    parts = urlsplit(url)
    host = f"{parts.hostname or ''}:{parts.port}" if parts.port else parts.hostname or ""
    return f"{parts.scheme}://{host}{parts.path}"


# --- the dashboard, per user ------------------------------------------------------------------


@dataclass(frozen=True)
class Dashboard:
    """The panels a user may see; None for a panel their permissions do not allow."""

    sends: SendStats | None
    senders: SenderPanel | None
    queue: QueueDepth | None

    @property
    def has_panels(self) -> bool:
        return any(p is not None for p in (self.sends, self.senders, self.queue))


def dashboard_for(*, user: Any) -> Dashboard:
    """Message statistics and queues need messaging.view_message; senders, view_emailsender."""
    can_see_messages = user.has_perm("messaging.view_message")
    tz_name = timezone.get_current_timezone_name()
    return Dashboard(
        sends=_cached(f"sends:{tz_name}", send_stats) if can_see_messages else None,
        senders=(
            _cached("senders", sender_health)
            if user.has_perm("channels_app.view_emailsender")
            else None
        ),
        queue=_cached("queue", queue_depth) if can_see_messages else None,
    )


def _cached(key: str, compute: Callable[[], T]) -> T:
    return cache.get_or_set(f"ums:dashboard:{key}", compute, CACHE_SECONDS)
