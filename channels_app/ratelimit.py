"""Sending limits of senders, and the API rate limit and daily broadcast quota of channels.

Senders (`EmailSender.rate_per_second`, `rate_per_minute`, `rate_per_day`) are limited across
every worker on every machine through Redis: the broker's Redis when `CELERY_BROKER_URL` is a
redis:// URL, or `UMS_RATE_LIMIT_REDIS_URL`. Each request is one Lua script, so reading the
counts, deciding and counting are one atomic step, and every time is the Redis server's `TIME`:
the workers' clocks never enter the decision.

Per second and per minute: a sliding log. Each grant is an entry of a sorted set, scored by a
time; a grant is allowed while the entries of the last second (minute) hold fewer emails than
the limit. So *any* second holds at most the limit, wherever it starts: fixed windows only bound
aligned ones (10 at 0.9 s and 10 at 1.1 s put 20 into one second).

The SMTP server counts on its own clock when it accepts an email, which is a little after the
grant: an email granted at 0.0 but delayed to 0.3 shares a second with the emails granted at
1.05. So an entry first counts as sent `UMS_RATE_LIMIT_MARGIN` seconds (default 0.1) after its
grant, and when the emails have been accepted the pipeline calls `sender_sent`, which moves the
entry to that moment (Redis time again) and gives back the permits it did not use. Every email
is then counted from its grant until one second after its acceptance: no second on the server's
clock holds more than the limit, however long the SMTP conversation took (up to the window; the
offset between the clocks cancels out). Throughput stays at the limit less the time an email
takes to be accepted. A grant holds at most `rate * margin` emails (at least one), so that one
worker's chunk is sent quickly and the others get their turn.

Per day: a counter per calendar day in `settings.TIME_ZONE`, what providers count.

Without Redis (`make run`), a SQLite file under var/ (`UMS_RATE_LIMIT_FILE`) holds the same logs
and counters; its write lock makes each request atomic across the worker processes of this
machine, on this machine's clock. That holds the limits on one machine only: production uses
Redis, and the system check channels_app.W001 says so when a deployment has none.

A channel's API rate (`api_rate_per_minute`) and daily broadcast quota (`daily_broadcast_quota`)
are fixed windows on the same store: a calendar minute, as the vendor's X-Rate-Limit-Reset
counts, and a calendar day.

What the pipeline calls, per sender and chunk of a batch (`limits = SenderLimits.of(sender)`)::

    grant = sender_grant(sender_id=sender.pk, limits=limits, wanted=len(rows))
    if not grant.granted:
        ... leave the rows for later: retry in grant.wait seconds (nothing was counted)
    try:
        ... send rows[:grant.granted] over the open connection
    finally:
        sender_sent(sender_id=sender.pk, limits=limits, grant=grant, sent=accepted)

`sender_permit` and `sender_permits` are the one-call forms for callers that do not report
back; their emails are covered by the margin alone.
"""

import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.checks import Warning, register

logger = logging.getLogger(__name__)

DEFAULT_MARGIN = 0.1
DEFAULT_PREFIX = "ums:rl:"
DAY = 86400


class RateLimitUnavailable(Exception):
    """The limiter's store (Redis) cannot be reached: nothing may be sent under a limit."""


@dataclass(frozen=True)
class SenderLimits:
    """A sender's limits; None is no limit."""

    per_second: int | None = None
    per_minute: int | None = None
    per_day: int | None = None

    @classmethod
    def of(cls, sender: Any) -> "SenderLimits":
        return cls(sender.rate_per_second, sender.rate_per_minute, sender.rate_per_day)

    @property
    def unlimited(self) -> bool:
        return not (self.per_second or self.per_minute or self.per_day)

    def chunk(self, margin: float) -> int:
        """The most emails one grant may hold: what the limit allows within the margin."""
        rates = [r for r in (self.per_second, (self.per_minute or 0) / 60) if r]
        if not rates:
            return 1 << 30  # a daily limit alone has no window to keep short
        return max(1, math.floor(min(rates) * margin))


@dataclass(frozen=True)
class Grant:
    granted: int  # emails that may go now, already counted
    wait: float  # seconds before one more may go (0: at once)
    at: float  # the limiter's clock (epoch seconds) at the decision
    seq: int = 0  # which entry of the logs holds it, for sender_sent
    day: int = 0  # the calendar day it was counted in


@dataclass(frozen=True)
class RateDecision:
    """The answer to one API request: `limit` None means the channel has no rate limit."""

    allowed: bool
    limit: int | None
    remaining: int | None
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        if self.limit is None:
            return {}
        return {
            "X-Rate-Limit-Limit": str(self.limit),
            "X-Rate-Limit-Remaining": str(self.remaining),
            "X-Rate-Limit-Reset": str(self.reset_seconds),
        }


@dataclass(frozen=True)
class _Window:
    name: str
    limit: int
    seconds: float


def _windows(limits: SenderLimits) -> list[_Window]:
    windows = [("sec", limits.per_second, 1.0), ("min", limits.per_minute, 60.0)]
    return [_Window(name, limit, period) for name, limit, period in windows if limit]


def _utc_offset() -> int:
    """Seconds east of UTC in settings.TIME_ZONE now: where the calendar day starts."""
    offset = datetime.now(ZoneInfo(settings.TIME_ZONE)).utcoffset()
    return int(offset.total_seconds()) if offset else 0


# --- the stores ------------------------------------------------------------------------------


class Limiter:
    """A store of sliding logs and fixed-window counters; one decision per call, atomically."""

    def sender_grant(
        self,
        *,
        sender_id: int,
        windows: list[_Window],
        per_day: int | None,
        wanted: int,
        lease: float,
    ) -> Grant:
        """Count up to `wanted` emails, as sent `lease` seconds from now."""
        raise NotImplementedError

    def sender_sent(
        self, *, sender_id: int, windows: list[_Window], grant: Grant, sent: int
    ) -> float:
        """Count the grant's emails as sent now, `sent` of them; returns the store's time."""
        raise NotImplementedError

    def fixed_take(
        self, *, key: str, limit: int, seconds: int, offset: int
    ) -> tuple[bool, int, float, float]:
        """Count one in the current fixed window if under `limit`: (taken, used, reset, at)."""
        raise NotImplementedError


# Shared by both scripts: KEYS are a log (sorted set of "seq:count" members scored by the
# microsecond an entry counts from) and a meta hash (the emails in the log) per window.
_LUA_HELPERS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function us(n) return string.format('%d', n) end
local function count_of(member) return tonumber(string.match(member, ':(%d+)$')) end
local function used(meta) return tonumber(redis.call('HGET', meta, 'used') or '0') end
local function keep(log, meta, ttl)
  if redis.call('PTTL', log) < ttl then
    redis.call('PEXPIRE', log, ttl)
    redis.call('PEXPIRE', meta, ttl)
  end
end
"""

_GRANT_LUA = (
    _LUA_HELPERS
    + """
local wanted, lim_d, offset, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4])
local nwin = (#KEYS - 2) / 2
local seq_key, day_prefix = KEYS[#KEYS - 1], KEYS[#KEYS]

local function expire(log, meta, window)
  if redis.call('EXISTS', meta) == 0 then redis.call('DEL', log) return end
  local old = redis.call('ZRANGEBYSCORE', log, '-inf', us(now - window))
  if #old == 0 then return end
  local gone = 0
  for _, member in ipairs(old) do gone = gone + count_of(member) end
  redis.call('ZREMRANGEBYSCORE', log, '-inf', us(now - window))
  redis.call('HINCRBY', meta, 'used', -gone)
end

local function until_free(log, meta, limit, window)
  local excess = used(meta) - limit + 1
  local start = 0
  while excess > 0 do
    local rows = redis.call('ZRANGE', log, start, start + 99, 'WITHSCORES')
    if #rows == 0 then return window end
    for i = 1, #rows, 2 do
      excess = excess - count_of(rows[i])
      if excess <= 0 then return tonumber(rows[i + 1]) + window - now end
    end
    start = start + 100
  end
  return 0
end

local free = wanted
for w = 1, nwin do
  expire(KEYS[2 * w - 1], KEYS[2 * w], tonumber(ARGV[4 + 2 * w]))
  free = math.min(free, tonumber(ARGV[3 + 2 * w]) - used(KEYS[2 * w]))
end
local day = math.floor((now / 1000000 + offset) / 86400)
local day_key = day_prefix .. ':' .. us(day)
local day_used = 0
if lim_d > 0 then
  day_used = tonumber(redis.call('GET', day_key) or '0')
  free = math.min(free, lim_d - day_used)
end
if free < 0 then free = 0 end
local seq = 0
if free > 0 then
  seq = redis.call('INCR', seq_key)
  redis.call('PEXPIRE', seq_key, 2 * 86400 * 1000)
  for w = 1, nwin do
    local log, meta, window = KEYS[2 * w - 1], KEYS[2 * w], tonumber(ARGV[4 + 2 * w])
    redis.call('ZADD', log, us(now + lease), seq .. ':' .. free)
    redis.call('HINCRBY', meta, 'used', free)
    keep(log, meta, math.ceil((window + lease) / 1000) + 60000)
  end
  if lim_d > 0 then
    redis.call('INCRBY', day_key, free)
    redis.call('EXPIRE', day_key, 2 * 86400)
  end
end
local wait = 0
for w = 1, nwin do
  local limit, window = tonumber(ARGV[3 + 2 * w]), tonumber(ARGV[4 + 2 * w])
  wait = math.max(wait, until_free(KEYS[2 * w - 1], KEYS[2 * w], limit, window))
end
if lim_d > 0 and day_used + free >= lim_d then
  local day_us = 86400 * 1000000
  wait = math.max(wait, day_us - ((now + offset * 1000000) % day_us))
end
return {free, wait, now, seq, day}
"""
)

_SENT_LUA = (
    _LUA_HELPERS
    + """
local seq, granted, sent, day = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local nwin = (#KEYS - 1) / 2
for w = 1, nwin do
  local log, meta, window = KEYS[2 * w - 1], KEYS[2 * w], tonumber(ARGV[4 + w])
  if redis.call('ZREM', log, seq .. ':' .. granted) == 1 then
    redis.call('HINCRBY', meta, 'used', -granted)
  end
  if sent > 0 then
    redis.call('ZADD', log, us(now), seq .. ':' .. sent)
    redis.call('HINCRBY', meta, 'used', sent)
    keep(log, meta, math.ceil(window / 1000) + 60000)
  end
end
local day_key = KEYS[#KEYS] .. ':' .. day
if granted > sent and redis.call('EXISTS', day_key) == 1 then
  redis.call('DECRBY', day_key, granted - sent)
end
return now
"""
)

_FIXED_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit, seconds, offset = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local span = seconds * 1000000
local local_now = now + offset * 1000000
local key = KEYS[1] .. ':' .. string.format('%d', math.floor(local_now / span))
local used = tonumber(redis.call('GET', key) or '0')
local taken = 0
if used < limit then
  used = redis.call('INCR', key)
  redis.call('EXPIRE', key, 2 * seconds)
  taken = 1
end
return {taken, used, span - (local_now % span), now}
"""


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


class RedisLimiter(Limiter):
    def __init__(self, *, url: str, prefix: str = DEFAULT_PREFIX) -> None:
        import redis

        self.prefix = prefix
        errors = redis.exceptions
        # What an unreachable, loading, full or read-only Redis raises; anything else is a bug.
        self._errors = (
            errors.ConnectionError,
            errors.TimeoutError,
            errors.ReadOnlyError,
            errors.OutOfMemoryError,
            errors.BusyLoadingError,
        )
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._grant = client.register_script(_GRANT_LUA)
        self._sent = client.register_script(_SENT_LUA)
        self._fixed = client.register_script(_FIXED_LUA)

    def _log_keys(self, sender_id: int, windows: list[_Window]) -> tuple[str, list[str]]:
        base = f"{self.prefix}sender:{sender_id}"
        return base, [f"{base}:{w.name}:{part}" for w in windows for part in ("log", "meta")]

    def sender_grant(
        self,
        *,
        sender_id: int,
        windows: list[_Window],
        per_day: int | None,
        wanted: int,
        lease: float,
    ) -> Grant:
        base, keys = self._log_keys(sender_id, windows)
        args: list[Any] = [wanted, per_day or 0, _utc_offset(), _us(lease)]
        for window in windows:
            args += [window.limit, _us(window.seconds)]
        reply = self._run(self._grant, [*keys, f"{base}:seq", f"{base}:day"], args)
        granted, wait_us, now_us, seq, day = (int(value) for value in reply)
        return Grant(granted, wait_us / 1_000_000, now_us / 1_000_000, seq=seq, day=day)

    def sender_sent(
        self, *, sender_id: int, windows: list[_Window], grant: Grant, sent: int
    ) -> float:
        base, keys = self._log_keys(sender_id, windows)
        args = [grant.seq, grant.granted, sent, grant.day, *(_us(w.seconds) for w in windows)]
        return int(self._run(self._sent, [*keys, f"{base}:day"], args)) / 1_000_000

    def fixed_take(
        self, *, key: str, limit: int, seconds: int, offset: int
    ) -> tuple[bool, int, float, float]:
        taken, used, reset_us, now_us = self._run(
            self._fixed, [self.prefix + key], [limit, seconds, offset]
        )
        return bool(taken), int(used), int(reset_us) / 1_000_000, int(now_us) / 1_000_000

    def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return script(keys=keys, args=args)
        except self._errors as exc:
            raise RateLimitUnavailable(str(exc)) from exc


class LocalLimiter(Limiter):
    """The same decisions in a SQLite file, for the processes of one machine without Redis."""

    _SCHEMA = (
        """CREATE TABLE IF NOT EXISTS grant_log (
            key TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL, n INTEGER NOT NULL,
            PRIMARY KEY (key, seq)
        )""",
        "CREATE INDEX IF NOT EXISTS grant_log_at ON grant_log (key, at)",
        """CREATE TABLE IF NOT EXISTS counter (
            key TEXT PRIMARY KEY, n INTEGER NOT NULL, expires REAL NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS counter_expires ON counter (expires)",
    )
    TIMEOUT = 30.0

    def __init__(self, *, path: Path | str, prefix: str = DEFAULT_PREFIX) -> None:
        self.path = str(path)
        self.prefix = prefix
        self._local = threading.local()
        self._calls = 0

    def _connection(self) -> sqlite3.Connection:
        # One connection per process and thread: a forked worker must not share its parent's.
        owner = (threading.get_ident(), os.getpid())
        if getattr(self._local, "owner", None) != owner:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=self.TIMEOUT, isolation_level=None)
            self._set_up(db)
            self._local.db, self._local.owner = db, owner
        return self._local.db

    def _set_up(self, db: sqlite3.Connection) -> None:
        """WAL and the tables, safely when several workers start on a new file at once."""
        deadline = time.monotonic() + self.TIMEOUT
        while True:
            try:
                # Switching a new file to WAL needs it to itself: SQLite answers "locked" at
                # once, without waiting, while another process is doing the same.
                db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("BEGIN IMMEDIATE")  # the write lock first, so creating never has to upgrade
        for statement in self._SCHEMA:
            db.execute(statement)
        db.execute("COMMIT")

    @contextmanager
    def _locked(self) -> Iterator[tuple[sqlite3.Connection, float]]:
        try:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")  # the write lock: one decision at a time on this machine
        except (sqlite3.Error, OSError) as exc:  # locked for too long, unwritable, disk full
            raise RateLimitUnavailable(f"{self.path}: {exc}") from exc
        try:
            yield db, time.time()
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def sender_grant(
        self,
        *,
        sender_id: int,
        windows: list[_Window],
        per_day: int | None,
        wanted: int,
        lease: float,
    ) -> Grant:
        base = f"{self.prefix}sender:{sender_id}"
        with self._locked() as (db, now):
            free = wanted
            for window in windows:
                key = f"{base}:{window.name}"
                db.execute(
                    "DELETE FROM grant_log WHERE key = ? AND at <= ?", (key, now - window.seconds)
                )
                free = min(free, window.limit - _log_used(db, key))
            day = _day_number(now)
            day_used = _counter(db, f"{base}:day:{day}", now) if per_day else 0
            if per_day:
                free = max(min(free, per_day - day_used), 0)
            seq = (
                self._record(db, base, windows, per_day, day, now + lease, free) if free > 0 else 0
            )
            wait = max([_log_wait(db, f"{base}:{w.name}", w, now) for w in windows] or [0.0])
            if per_day and day_used + free >= per_day:
                wait = max(wait, DAY - (now + _utc_offset()) % DAY)
            self._calls += 1
            if self._calls % 1000 == 0:
                self._purge(db, now)
        return Grant(max(free, 0), wait, now, seq=seq, day=day)

    def _record(
        self,
        db: sqlite3.Connection,
        base: str,
        windows: list[_Window],
        per_day: int | None,
        day: int,
        at: float,
        n: int,
    ) -> int:
        _counter_add(db, f"{base}:seq", 1, expires=at + 2 * DAY)
        seq = _counter(db, f"{base}:seq", at)
        db.executemany(
            "INSERT INTO grant_log (key, seq, at, n) VALUES (?, ?, ?, ?)",
            [(f"{base}:{w.name}", seq, at, n) for w in windows],
        )
        if per_day:
            _counter_add(db, f"{base}:day:{day}", n, expires=at + 2 * DAY)
        return seq

    def sender_sent(
        self, *, sender_id: int, windows: list[_Window], grant: Grant, sent: int
    ) -> float:
        base = f"{self.prefix}sender:{sender_id}"
        with self._locked() as (db, now):
            for window in windows:
                key = f"{base}:{window.name}"
                db.execute("DELETE FROM grant_log WHERE key = ? AND seq = ?", (key, grant.seq))
                if sent > 0:
                    db.execute(
                        "INSERT INTO grant_log (key, seq, at, n) VALUES (?, ?, ?, ?)",
                        (key, grant.seq, now, sent),
                    )
            if grant.granted > sent:
                db.execute(
                    "UPDATE counter SET n = MAX(n - ?, 0) WHERE key = ?",
                    (grant.granted - sent, f"{base}:day:{grant.day}"),
                )
        return now

    def fixed_take(
        self, *, key: str, limit: int, seconds: int, offset: int
    ) -> tuple[bool, int, float, float]:
        with self._locked() as (db, now):
            local_now = now + offset
            window_key = f"{self.prefix}{key}:{math.floor(local_now / seconds)}"
            used = _counter(db, window_key, now)
            taken = used < limit
            if taken:
                used += 1
                _counter_add(db, window_key, 1, expires=now + 2 * seconds)
        return taken, used, seconds - local_now % seconds, now

    def _purge(self, db: sqlite3.Connection, now: float) -> None:
        """Forget what no window looks at any more (senders that stopped sending)."""
        db.execute("DELETE FROM grant_log WHERE at < ?", (now - 3600,))
        db.execute("DELETE FROM counter WHERE expires < ?", (now,))


def _day_number(at: float) -> int:
    return math.floor((at + _utc_offset()) / DAY)


def _log_used(db: sqlite3.Connection, key: str) -> int:
    query = "SELECT COALESCE(SUM(n), 0) FROM grant_log WHERE key = ?"
    return db.execute(query, (key,)).fetchone()[0]


def _log_wait(db: sqlite3.Connection, key: str, window: _Window, now: float) -> float:
    """Seconds until the log of `key` holds fewer emails than the limit."""
    excess = _log_used(db, key) - window.limit + 1
    if excess <= 0:
        return 0.0
    rows: Iterable[tuple[float, int]] = db.execute(
        "SELECT at, n FROM grant_log WHERE key = ? ORDER BY at", (key,)
    )
    for at, n in rows:
        excess -= n
        if excess <= 0:
            return at + window.seconds - now
    return window.seconds


def _counter(db: sqlite3.Connection, key: str, now: float) -> int:
    query = "SELECT n FROM counter WHERE key = ? AND expires >= ?"
    row = db.execute(query, (key, now)).fetchone()
    return row[0] if row else 0


def _counter_add(db: sqlite3.Connection, key: str, n: int, *, expires: float) -> None:
    db.execute(
        "INSERT INTO counter (key, n, expires) VALUES (?, ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET n = n + excluded.n, expires = excluded.expires",
        (key, n, expires),
    )


# --- which store -----------------------------------------------------------------------------

_limiters: dict[tuple[str, str, str], Limiter] = {}
_limiters_lock = threading.Lock()


def redis_url() -> str:
    """The Redis the limits live in: UMS_RATE_LIMIT_REDIS_URL, else a Redis broker, else ""."""
    url = getattr(settings, "UMS_RATE_LIMIT_REDIS_URL", "") or ""
    broker = getattr(settings, "CELERY_BROKER_URL", "") or ""
    if not url and broker.startswith(("redis://", "rediss://")):
        url = broker
    return url


def limiter() -> Limiter:
    """The configured store, one per process (its connections are reused)."""
    prefix = getattr(settings, "UMS_RATE_LIMIT_PREFIX", DEFAULT_PREFIX)
    url = redis_url()
    if url:
        key = ("redis", url, prefix)
    else:
        default = Path(settings.VAR_DIR) / "ratelimit.sqlite3"
        key = ("local", str(getattr(settings, "UMS_RATE_LIMIT_FILE", "") or default), prefix)
    with _limiters_lock:
        if key not in _limiters:
            if key[0] == "redis":
                _limiters[key] = RedisLimiter(url=key[1], prefix=prefix)
            else:
                _limiters[key] = LocalLimiter(path=key[1], prefix=prefix)
        return _limiters[key]


def margin() -> float:
    return float(getattr(settings, "UMS_RATE_LIMIT_MARGIN", DEFAULT_MARGIN))


# --- senders: what the pipeline calls --------------------------------------------------------


def sender_grant(*, sender_id: int, limits: SenderLimits, wanted: int = 1) -> Grant:
    """Up to `wanted` emails for the sender, counted now, and the seconds before more may go.

    Take it right before the emails go to the SMTP server, and report with `sender_sent` once
    the server has answered. Nothing is counted when nothing is granted. At most
    `limits.chunk(margin)` are granted at once: ask again for the rest (`wait` is then 0).
    Raises RateLimitUnavailable when Redis cannot be reached: the emails wait, as for a
    transient SMTP failure.
    """
    if wanted < 1:
        raise ValueError("wanted must be at least 1")
    if limits.unlimited:
        return Grant(wanted, 0.0, time.time())
    lease = margin()
    return limiter().sender_grant(
        sender_id=sender_id,
        windows=_windows(limits),
        per_day=limits.per_day,
        wanted=min(wanted, limits.chunk(lease)),
        lease=lease,
    )


def sender_sent(*, sender_id: int, limits: SenderLimits, grant: Grant, sent: int) -> float | None:
    """The SMTP server has answered for the grant's emails, and accepted `sent` of them.

    Their entries now count from this moment (the store's time, returned), so that a slow SMTP
    conversation cannot put more than the limit into one of the server's seconds, and the
    permits not used are given back. Call it for a failed attempt too (`sent` 0, or the
    emails that did go). Never raises: if the store cannot be reached the grant keeps counting
    from its grant plus the margin.
    """
    if limits.unlimited or not grant.granted:
        return None
    try:
        return limiter().sender_sent(
            sender_id=sender_id,
            windows=_windows(limits),
            grant=grant,
            sent=min(max(sent, 0), grant.granted),
        )
    except RateLimitUnavailable:
        logger.warning("rate limiter unreachable: sender %s's grant stays as granted", sender_id)
        return None


def sender_permit(*, sender_id: int, limits: SenderLimits) -> float:
    """0.0 when one email may go now (it is counted), else the seconds to wait (nothing counted).

    For callers that do not report back with `sender_sent`: the margin alone covers the
    time the SMTP server takes to accept the email. Raises RateLimitUnavailable like
    `sender_grant`.
    """
    grant = sender_grant(sender_id=sender_id, limits=limits, wanted=1)
    return 0.0 if grant.granted else max(grant.wait, 0.001)


def sender_permits(*, sender_id: int, limits: SenderLimits, wanted: int) -> tuple[int, float]:
    """How many of `wanted` emails may go now (counted), and the seconds before more may go.

    One call per chunk, not per email: send the granted emails at once, then ask again for the
    rest, after sleeping the wait when nothing was granted. A grant never exceeds what the
    limit allows within the margin, so the second value is often 0 with more still wanted.
    Like `sender_permit`, without the report back; the pipeline uses `sender_grant`.
    """
    grant = sender_grant(sender_id=sender_id, limits=limits, wanted=wanted)
    return grant.granted, grant.wait


# --- channels: what the API calls ------------------------------------------------------------


def api_rate_check(*, channel: Any) -> RateDecision:
    """Count one API request of the channel in the current minute; refused past the limit.

    A refusal counts nothing. When the limiter cannot be reached the request is let through
    (and logged): the API keeps answering while Redis is down.
    """
    limit = channel.api_rate_per_minute
    if not limit:
        return RateDecision(allowed=True, limit=None, remaining=None, reset_seconds=0)
    try:
        taken, used, reset, _at = limiter().fixed_take(
            key=f"api:{channel.pk}", limit=limit, seconds=60, offset=0
        )
    except RateLimitUnavailable:
        logger.warning(
            "rate limiter unreachable: API request of channel %s let through", channel.pk
        )
        return RateDecision(allowed=True, limit=limit, remaining=limit, reset_seconds=60)
    return RateDecision(
        allowed=taken,
        limit=limit,
        remaining=max(limit - used, 0),
        reset_seconds=max(math.ceil(reset), 1),
    )


def broadcast_quota_take(*, channel: Any) -> bool:
    """Count one broadcast of the channel today (calendar day in TIME_ZONE); False if used up.

    Not given back if the request is refused later for another reason: call it last, after
    every other check, right before the message is stored.
    """
    quota = channel.daily_broadcast_quota
    if not quota:
        return True
    try:
        taken, _used, _reset, _at = limiter().fixed_take(
            key=f"broadcast:{channel.pk}", limit=quota, seconds=DAY, offset=_utc_offset()
        )
    except RateLimitUnavailable:
        logger.warning("rate limiter unreachable: broadcast of channel %s let through", channel.pk)
        return True
    return taken


# --- configuration check ---------------------------------------------------------------------


@register("ums", deploy=True)
def check_rate_limit_store(app_configs: Iterable[Any] | None, **kwargs: Any) -> list[Warning]:
    if settings.DEBUG or redis_url():
        return []
    return [
        Warning(
            "Sending limits are kept in a file on each machine: without Redis, workers on "
            "several machines together can exceed a sender's limit.",
            hint="Set CELERY_BROKER_URL=redis://… or UMS_RATE_LIMIT_REDIS_URL.",
            id="channels_app.W001",
        )
    ]
