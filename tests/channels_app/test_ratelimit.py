"""Sending limits across processes, the API rate limit and the daily broadcast quota.

Every test runs against a real Redis (a key prefix of its own) and against the SQLite file that
replaces it on a machine without Redis.
"""

import json
import subprocess
import sys
import time
import uuid
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import redis
from django.core.checks import run_checks

from channels_app import ratelimit, services
from channels_app.ratelimit import SenderLimits
from tests.processes import ROOT, child_env
from tests.smtp_server import Received, SmtpTestServer

MARGIN = ratelimit.DEFAULT_MARGIN


@pytest.fixture(params=["redis", "local"])
def store(request, settings, tmp_path):
    """Point the limiter at a fresh Redis prefix or a fresh SQLite file; yields its kind."""
    settings.UMS_RATE_LIMIT_PREFIX = f"test:{uuid.uuid4().hex}:"
    settings.UMS_RATE_LIMIT_MARGIN = MARGIN
    settings.CELERY_BROKER_URL = ""
    settings.UMS_RATE_LIMIT_FILE = str(tmp_path / "ratelimit.sqlite3")
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        settings.UMS_RATE_LIMIT_REDIS_URL = url
        yield "redis"
        client = redis.Redis.from_url(url)
        for key in client.scan_iter(f"{settings.UMS_RATE_LIMIT_PREFIX}*"):
            client.delete(key)
    else:
        settings.UMS_RATE_LIMIT_REDIS_URL = ""
        yield "local"


def grants(n, **limits):
    return [
        ratelimit.sender_grant(sender_id=1, limits=SenderLimits(**limits), wanted=1)
        for _ in range(n)
    ]


def most_in_any_window(stamps, width=1.0):
    """The most events in any half-open window [t, t + width), wherever it starts."""
    stamps = sorted(stamps)
    first = most = 0
    for last, at in enumerate(stamps):
        while stamps[first] <= at - width:
            first += 1
        most = max(most, last - first + 1)
    return most


# --- one process -------------------------------------------------------------------------------


def test_a_sender_gets_its_limit_per_second_then_the_exact_wait(store):
    taken = grants(6, per_second=5)

    assert [g.granted for g in taken] == [1, 1, 1, 1, 1, 0]
    # The sixth may go when the first leaves the window: one second (and the margin) after it.
    expected = taken[0].at + 1 + MARGIN - taken[5].at
    assert taken[5].wait == pytest.approx(expected, abs=0.002)
    assert ratelimit.sender_permit(sender_id=1, limits=SenderLimits(per_second=5)) > 0


def test_after_the_wait_the_sender_may_send_again(store):
    limits = SenderLimits(per_second=3)
    for _ in range(3):
        assert ratelimit.sender_permit(sender_id=1, limits=limits) == 0.0

    wait = ratelimit.sender_permit(sender_id=1, limits=limits)
    time.sleep(wait)

    assert ratelimit.sender_permit(sender_id=1, limits=limits) == 0.0


def test_the_per_minute_limit_waits_for_the_oldest_permit(store):
    taken = grants(4, per_minute=3)

    assert [g.granted for g in taken] == [1, 1, 1, 0]
    assert taken[3].wait == pytest.approx(taken[0].at + 60 + MARGIN - taken[3].at, abs=0.002)


def test_the_tightest_limit_decides(store):
    taken = grants(4, per_second=10, per_minute=3)

    assert [g.granted for g in taken] == [1, 1, 1, 0]
    assert taken[3].wait > 50


def test_a_batch_takes_what_the_limit_allows_within_the_margin(store, settings):
    settings.UMS_RATE_LIMIT_MARGIN = 0.5  # 10 per second: 5 may go together
    limits = SenderLimits(per_second=10)

    first = ratelimit.sender_permits(sender_id=1, limits=limits, wanted=8)
    second = ratelimit.sender_permits(sender_id=1, limits=limits, wanted=8)
    third = ratelimit.sender_permits(sender_id=1, limits=limits, wanted=8)

    assert first == (5, 0.0)
    assert second[0] == 5
    assert second[1] == pytest.approx(1.5, abs=0.01)  # full: the first batch leaves at 1.5 s
    assert third[0] == 0
    assert 0 < third[1] <= 1.5


def test_a_high_limit_is_granted_in_few_calls(store):
    limits = SenderLimits(per_second=1000)

    granted, wait = ratelimit.sender_permits(sender_id=1, limits=limits, wanted=500)

    assert (granted, wait) == (int(1000 * MARGIN), 0.0)


def test_senders_are_counted_apart(store):
    limits = SenderLimits(per_second=1)

    assert ratelimit.sender_permit(sender_id=1, limits=limits) == 0.0
    assert ratelimit.sender_permit(sender_id=2, limits=limits) == 0.0
    assert ratelimit.sender_permit(sender_id=1, limits=limits) > 0


def test_the_day_quota_waits_until_midnight_in_the_time_zone(store, settings):
    settings.TIME_ZONE = "Asia/Shanghai"
    taken = grants(4, per_day=3)

    assert [g.granted for g in taken] == [1, 1, 1, 0]
    reopens = datetime.fromtimestamp(round(taken[3].at + taken[3].wait), ZoneInfo("Asia/Shanghai"))
    assert (reopens.hour, reopens.minute, reopens.second) == (0, 0, 0)
    assert 0 < taken[3].wait <= 86400


def test_the_day_is_the_calendar_day_of_the_time_zone(store, settings):
    # UTC+14 and UTC-11 are never on the same date: each has a day count of its own.
    settings.TIME_ZONE = "Pacific/Kiritimati"
    assert [g.granted for g in grants(3, per_day=2)] == [1, 1, 0]

    settings.TIME_ZONE = "Pacific/Pago_Pago"
    assert [g.granted for g in grants(3, per_day=2)] == [1, 1, 0]


def test_a_sender_without_limits_never_waits_nor_asks_the_store(store, settings):
    settings.UMS_RATE_LIMIT_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there

    assert ratelimit.sender_permits(sender_id=1, limits=SenderLimits(), wanted=500) == (500, 0.0)


def test_an_unreachable_redis_stops_limited_sending(store, settings):
    settings.UMS_RATE_LIMIT_REDIS_URL = "redis://127.0.0.1:1/0"

    with pytest.raises(ratelimit.RateLimitUnavailable):
        ratelimit.sender_permit(sender_id=1, limits=SenderLimits(per_second=5))


def test_an_unusable_limits_file_stops_limited_sending(settings, tmp_path):
    settings.UMS_RATE_LIMIT_REDIS_URL = settings.CELERY_BROKER_URL = ""
    (tmp_path / "not-a-folder").write_text("")
    settings.UMS_RATE_LIMIT_FILE = str(tmp_path / "not-a-folder" / "ratelimit.sqlite3")

    with pytest.raises(ratelimit.RateLimitUnavailable):
        ratelimit.sender_permit(sender_id=1, limits=SenderLimits(per_second=5))


def test_redis_keys_expire(settings, redis_url):
    settings.UMS_RATE_LIMIT_REDIS_URL = redis_url
    settings.UMS_RATE_LIMIT_PREFIX = prefix = f"test:{uuid.uuid4().hex}:"
    limits = SenderLimits(per_second=5, per_minute=50, per_day=500)
    grant = ratelimit.sender_grant(sender_id=1, limits=limits)
    ratelimit.sender_sent(sender_id=1, limits=limits, grant=grant, sent=1)

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{prefix}*"))
    ttls = [client.pttl(key) for key in keys]
    client.delete(*keys)
    assert len(keys) == 6  # two logs, their counts, the entry numbers, today's count
    assert all(0 < ttl <= 2 * 86400 * 1000 for ttl in ttls)


# --- reporting back what was sent --------------------------------------------------------------


def test_reported_emails_count_from_their_acceptance(store):
    limits = SenderLimits(per_second=2)
    first = ratelimit.sender_grant(sender_id=1, limits=limits)
    second = ratelimit.sender_grant(sender_id=1, limits=limits)
    accepted = ratelimit.sender_sent(sender_id=1, limits=limits, grant=first, sent=1)
    ratelimit.sender_sent(sender_id=1, limits=limits, grant=second, sent=1)

    third = ratelimit.sender_grant(sender_id=1, limits=limits)

    assert (first.granted, second.granted, third.granted) == (1, 1, 0)
    # Not the margin after the grant: one second after the server accepted the first.
    assert third.wait == pytest.approx(accepted + 1 - third.at, abs=0.002)
    assert accepted + 1 < first.at + 1 + MARGIN


def test_a_slow_smtp_answer_keeps_the_email_counted_past_the_margin(store):
    limits = SenderLimits(per_second=1)
    grant = ratelimit.sender_grant(sender_id=1, limits=limits)
    time.sleep(3 * MARGIN)  # the SMTP server takes longer than the margin to accept it
    accepted = ratelimit.sender_sent(sender_id=1, limits=limits, grant=grant, sent=1)

    refused = ratelimit.sender_grant(sender_id=1, limits=limits)

    assert accepted > grant.at + MARGIN
    assert refused.granted == 0
    assert refused.wait == pytest.approx(accepted + 1 - refused.at, abs=0.002)


def test_permits_not_used_are_given_back(store):
    limits = SenderLimits(per_minute=6000, per_day=3)  # 10 may go together, 3 a day
    grant = ratelimit.sender_grant(sender_id=1, limits=limits, wanted=3)

    ratelimit.sender_sent(sender_id=1, limits=limits, grant=grant, sent=1)
    again = ratelimit.sender_grant(sender_id=1, limits=limits, wanted=3)

    assert grant.granted == 3
    assert again.granted == 2


def test_a_failed_attempt_frees_its_place_in_the_second(store):
    limits = SenderLimits(per_second=1)
    grant = ratelimit.sender_grant(sender_id=1, limits=limits)

    ratelimit.sender_sent(sender_id=1, limits=limits, grant=grant, sent=0)

    assert ratelimit.sender_grant(sender_id=1, limits=limits).granted == 1


def test_reporting_to_an_unreachable_redis_does_not_fail_the_batch(store, settings):
    limits = SenderLimits(per_second=5)
    grant = ratelimit.sender_grant(sender_id=1, limits=limits)
    settings.UMS_RATE_LIMIT_REDIS_URL = "redis://127.0.0.1:1/0"

    assert ratelimit.sender_sent(sender_id=1, limits=limits, grant=grant, sent=1) is None


# --- which store -------------------------------------------------------------------------------


def test_the_brokers_redis_holds_the_limits(settings, tmp_path):
    settings.UMS_RATE_LIMIT_REDIS_URL = ""
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:6379/0"
    assert isinstance(ratelimit.limiter(), ratelimit.RedisLimiter)

    settings.UMS_RATE_LIMIT_REDIS_URL = "redis://127.0.0.1:6379/3"
    assert ratelimit.redis_url() == "redis://127.0.0.1:6379/3"

    settings.UMS_RATE_LIMIT_REDIS_URL = ""
    settings.CELERY_BROKER_URL = ""
    settings.UMS_RATE_LIMIT_FILE = str(tmp_path / "limits.sqlite3")
    assert isinstance(ratelimit.limiter(), ratelimit.LocalLimiter)


def test_a_deployment_without_redis_is_warned(settings):
    settings.DEBUG = False
    settings.CELERY_BROKER_URL = ""
    settings.UMS_RATE_LIMIT_REDIS_URL = ""
    assert "channels_app.W001" in {m.id for m in run_checks(include_deployment_checks=True)}

    settings.UMS_RATE_LIMIT_REDIS_URL = "redis://127.0.0.1:6379/0"
    assert "channels_app.W001" not in {m.id for m in run_checks(include_deployment_checks=True)}


# --- channels: API rate and broadcast quota ----------------------------------------------------


@pytest.fixture
def make_channel(db):
    counter = iter(range(1, 1000))

    def make(**fields):
        channel, _secret = services.channel_create(name=f"Shop {next(counter)}")
        for name, value in fields.items():
            setattr(channel, name, value)
        channel.save()
        return channel

    return make


def test_the_api_rate_limit_counts_down_then_refuses(store, make_channel):
    channel = make_channel(api_rate_per_minute=3)

    decisions = [ratelimit.api_rate_check(channel=channel) for _ in range(4)]

    assert [(d.allowed, d.remaining) for d in decisions] == [
        (True, 2),
        (True, 1),
        (True, 0),
        (False, 0),
    ]
    refused = decisions[3]
    assert 1 <= refused.reset_seconds <= 60
    assert refused.headers() == {
        "X-Rate-Limit-Limit": "3",
        "X-Rate-Limit-Remaining": "0",
        "X-Rate-Limit-Reset": str(refused.reset_seconds),
    }


def test_the_api_rate_limit_is_per_channel_and_optional(store, make_channel):
    busy = make_channel(api_rate_per_minute=1)
    quiet = make_channel(api_rate_per_minute=1)
    free = make_channel()
    ratelimit.api_rate_check(channel=busy)

    assert not ratelimit.api_rate_check(channel=busy).allowed
    assert ratelimit.api_rate_check(channel=quiet).allowed
    unlimited = ratelimit.api_rate_check(channel=free)
    assert unlimited.allowed
    assert unlimited.headers() == {}


def test_an_unreachable_redis_lets_api_requests_through(store, settings, make_channel):
    settings.UMS_RATE_LIMIT_REDIS_URL = "redis://127.0.0.1:1/0"
    channel = make_channel(api_rate_per_minute=1, daily_broadcast_quota=1)

    assert ratelimit.api_rate_check(channel=channel).allowed
    assert ratelimit.broadcast_quota_take(channel=channel)


def test_the_daily_broadcast_quota(store, make_channel):
    channel = make_channel(daily_broadcast_quota=2)
    other = make_channel(daily_broadcast_quota=2)
    unlimited = make_channel()

    assert [ratelimit.broadcast_quota_take(channel=channel) for _ in range(3)] == [
        True,
        True,
        False,
    ]
    assert ratelimit.broadcast_quota_take(channel=other)
    assert all(ratelimit.broadcast_quota_take(channel=unlimited) for _ in range(5))


def test_the_broadcast_quota_is_per_calendar_day_of_the_time_zone(store, settings, make_channel):
    channel = make_channel(daily_broadcast_quota=1)
    settings.TIME_ZONE = "Pacific/Kiritimati"
    assert [ratelimit.broadcast_quota_take(channel=channel) for _ in range(2)] == [True, False]

    settings.TIME_ZONE = "Pacific/Pago_Pago"
    assert ratelimit.broadcast_quota_take(channel=channel)


# --- two processes, one sender -----------------------------------------------------------------

CHILD = """
import json, smtplib, sys, time
import django
django.setup()
from django.conf import settings
config = json.loads(sys.argv[1])
for name, value in config["settings"].items():
    setattr(settings, name, value)
from channels_app import ratelimit
limits = ratelimit.SenderLimits(per_second=config["per_second"])
print("ready", flush=True)
sys.stdin.readline()
taken = []
with smtplib.SMTP("127.0.0.1", config["smtp_port"], timeout=10) as smtp:
    end = time.monotonic() + config["seconds"]
    while time.monotonic() < end:
        grant = ratelimit.sender_grant(sender_id=7, limits=limits, wanted=config["wanted"])
        for n in range(grant.granted):
            smtp.sendmail("a@example.com", ["b@example.com"], b"Subject: x\\r\\n\\r\\nx")
        if grant.granted and config["report"]:
            ratelimit.sender_sent(sender_id=7, limits=limits, grant=grant, sent=grant.granted)
        if grant.granted:
            taken.append([grant.at, grant.granted])
        else:
            time.sleep(grant.wait)
print(json.dumps(taken), flush=True)
"""


class TimedHandler:
    """Records when the SMTP server accepts each email, on its own clock."""

    def __init__(self, recorder) -> None:
        self.recorder = recorder
        self.accepted: list[float] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.accepted.append(time.time())
        self.recorder.messages.append(Received(envelope.mail_from, envelope.rcpt_tos, b""))
        return "250 2.0.0 Ok"


def hammer(settings, *, report, limit=10, seconds=3.0, wanted=3):
    """Two processes send as fast as one sender's limit lets them, for `seconds`, through one
    SMTP server: returns the grant times (the limiter's clock) and the server's accept times."""
    names = ["UMS_RATE_LIMIT_REDIS_URL", "UMS_RATE_LIMIT_FILE", "UMS_RATE_LIMIT_PREFIX"]
    with SmtpTestServer(mode="plain", require_auth=False) as server:
        handler = TimedHandler(server.recorder)
        server.controller.handler = handler
        config = {
            "settings": {name: getattr(settings, name) for name in names},
            "per_second": limit,
            "wanted": wanted,
            "seconds": seconds,
            "smtp_port": server.port,
            "report": report,
        }
        children = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, json.dumps(config)],
                cwd=ROOT,
                env=child_env(PYTHONPATH=str(ROOT)),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        for child in children:
            assert child.stdout.readline().strip() == "ready"
        for child in children:  # both start together
            child.stdin.write("go\n")
            child.stdin.flush()
        results = [json.loads(child.communicate(timeout=60)[0]) for child in children]
    assert all(results), "both processes were granted permits"
    permits = [at for result in results for at, n in result for _ in range(n)]
    return permits, handler.accepted


def test_two_processes_reporting_back_never_put_more_than_ten_into_one_second(store, settings):
    permits, accepted = hammer(settings, report=True)

    assert most_in_any_window(permits) <= 10
    assert most_in_any_window(accepted) <= 10  # on the SMTP server's own clock
    assert len(accepted) == len(permits)
    assert 0.8 * 10 * 3 <= len(permits) <= 10 * 4  # about the limit for three seconds


def test_two_processes_taking_permits_never_get_more_than_ten_in_one_second(store, settings):
    permits, accepted = hammer(settings, report=False)

    assert most_in_any_window(permits) <= 10
    assert len(accepted) == len(permits)
    assert 0.8 * 10 * 3 / (1 + MARGIN) <= len(permits) <= 10 * 4


# --- the delivery pipeline under a sender's limits ---------------------------------------------


def limited_send(make_sender, server, **limits):
    """A channel whose default sender has `limits`, and a message to raw addresses."""
    from messaging.models import Message
    from messaging.services import Audience, Content, Options, message_create

    channel, _secret = services.channel_create(name="Shop")
    sender = make_sender(server, account="", password="", **limits)
    services.channel_authorize_sender(channel=channel, sender=sender, is_default=True)

    def send(count: int) -> Message:
        message, _created = message_create(
            channel=channel,
            audience=Audience(emails=[f"r{n}@example.com" for n in range(count)]),
            content=Content(subject="Hello", html="<p>Hello</p>"),
            options=Options(),
            source="api",
        )
        return message

    return send


@pytest.mark.django_db
def test_a_day_quota_used_up_leaves_the_rest_waiting_until_midnight(
    settings, tmp_path, make_sender, plain_server
):
    from datetime import timedelta

    from django.utils import timezone

    from messaging import sending

    settings.UMS_RATE_LIMIT_PREFIX = f"test:{uuid.uuid4().hex}:"
    settings.CELERY_BROKER_URL = ""
    settings.UMS_RATE_LIMIT_REDIS_URL = ""
    settings.UMS_RATE_LIMIT_FILE = str(tmp_path / "ratelimit.sqlite3")
    message = limited_send(make_sender, plain_server, rate_per_day=3)(5)

    for batch in sending.message_resolve(message_id=message.pk):
        outcome = sending.batch_send(message_id=message.pk, batch=batch)

    message.refresh_from_db()
    statuses = sorted(message.deliveries.values_list("status", "attempts"))
    assert statuses == [("retrying", 0)] * 2 + [("sent", 1)] * 3
    assert len(plain_server.recorder.messages) == 3
    assert (message.status, message.sent, message.failed) == ("sending", 3, 0)
    local = datetime.now(ZoneInfo(settings.TIME_ZONE))
    midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), local.tzinfo)
    for waiting in message.deliveries.filter(status="retrying"):
        assert abs((waiting.next_attempt_at - midnight).total_seconds()) < 5
    assert outcome.retry_in > 0
    # The day's quota stays used up: handing the batch out again sends nothing more.
    message.deliveries.filter(status="retrying").update(next_attempt_at=timezone.now())
    sending.batch_send(message_id=message.pk, batch=0)
    assert len(plain_server.recorder.messages) == 3


@pytest.mark.django_db
def test_a_sender_without_limits_never_asks_the_limiter(monkeypatch, make_sender, plain_server):
    from messaging import sending

    def unreachable():
        raise AssertionError("the limiter was asked")

    monkeypatch.setattr(ratelimit, "limiter", unreachable)
    message = limited_send(make_sender, plain_server)(3)

    for batch in sending.message_resolve(message_id=message.pk):
        sending.batch_send(message_id=message.pk, batch=batch)

    message.refresh_from_db()
    assert (message.status, message.sent) == ("done", 3)


@pytest.mark.django_db
def test_an_unreachable_limiter_leaves_the_batch_waiting_with_its_tries(
    settings, make_sender, plain_server
):
    from messaging import sending

    settings.UMS_RATE_LIMIT_REDIS_URL = "redis://127.0.0.1:1/0"
    message = limited_send(make_sender, plain_server, rate_per_second=10)(3)

    for batch in sending.message_resolve(message_id=message.pk):
        sending.batch_send(message_id=message.pk, batch=batch)

    message.refresh_from_db()
    assert plain_server.recorder.messages == []
    assert set(message.deliveries.values_list("status", "attempts")) == {("retrying", 0)}
    assert (message.status, message.failed) == ("sending", 0)


@pytest.mark.worker
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_two_workers_keep_a_sender_under_ten_a_second_on_the_servers_clock(
    make_sender, tmp_path, redis_url
):
    from messaging import tasks
    from messaging.models import Delivery, Message
    from tests.processes import celery_worker, publish, redis_server, wait_for
    from tests.smtp_server import free_port

    port = free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    with SmtpTestServer(mode="plain", require_auth=False) as server:
        handler = TimedHandler(server.recorder)
        server.controller.handler = handler
        message = limited_send(make_sender, server, rate_per_second=10)(50)
        env = child_env(
            CELERY_BROKER_URL=broker,
            UMS_DELIVERY_BATCH_SIZE="5",
            UMS_RATE_LIMIT_PREFIX=f"test:{uuid.uuid4().hex}:",
        )
        with redis_server(port, tmp_path / "redis.log"):
            with (
                celery_worker(env, tmp_path / "worker1.log"),
                celery_worker(env, tmp_path / "worker2.log"),
            ):
                publish(tasks.message_dispatch, message.pk, url=broker)

                def done() -> bool:
                    message.refresh_from_db()
                    return message.status == Message.Status.DONE

                wait_for(done, timeout=90, what="the 50 emails", log_path=tmp_path / "worker1.log")

    assert len(handler.accepted) == 50
    assert most_in_any_window(handler.accepted) <= 10  # on the SMTP server's own clock
    assert set(message.deliveries.values_list("status", flat=True)) == {Delivery.Status.SENT}
    assert message.deliveries.values("batch").distinct().count() == 10
    assert message.sent == 50


@pytest.mark.django_db
def test_a_slow_limit_hands_the_rest_of_a_long_batch_to_a_new_task_without_using_tries(
    settings, tmp_path, make_sender, plain_server
):
    from messaging import sending

    settings.UMS_RATE_LIMIT_PREFIX = f"test:{uuid.uuid4().hex}:"
    settings.CELERY_BROKER_URL = ""
    settings.UMS_RATE_LIMIT_REDIS_URL = ""
    settings.UMS_RATE_LIMIT_FILE = str(tmp_path / "ratelimit.sqlite3")
    settings.CELERY_TASK_SOFT_TIME_LIMIT = 1  # a batch paces itself for half a second at most
    message = limited_send(make_sender, plain_server, rate_per_second=2)(6)
    [batch] = sending.message_resolve(message_id=message.pk)

    outcome = sending.batch_send(message_id=message.pk, batch=batch)

    rows = list(message.deliveries.values_list("status", "attempts"))
    assert 1 <= outcome.sent < 6
    assert sorted(rows) == [("retrying", 0)] * (6 - outcome.sent) + [("sent", 1)] * outcome.sent
    assert outcome.retry_in == 0.0  # queued again at once
    for _round in range(10):
        if not message.deliveries.filter(status="retrying").exists():
            break
        sending.batch_send(message_id=message.pk, batch=batch)
    assert set(message.deliveries.values_list("status", "attempts")) == {("sent", 1)}
    assert len(plain_server.recorder.messages) == 6
