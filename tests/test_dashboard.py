"""The console's dashboard: sends by status per channel, sender health and queue depth."""

import json
import re
import shutil
import socket
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
import redis
from django.contrib.auth.models import Permission
from django.contrib.staticfiles import finders
from django.core.cache import cache
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from channels_app import services as channel_services
from channels_app.models import EmailSender
from messaging import tasks
from messaging.models import Delivery, Message
from tests.conftest import skip_or_fail
from tests.processes import publish, redis_server
from tests.smtp_server import PASSWORD, free_port
from ums import dashboard
from ums.celery import REDIS_OPTIONS
from ums.dashboard import Counts

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 27, 4, 0, tzinfo=UTC)  # noon in Shanghai
SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.fixture(autouse=True)
def fresh_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def channels(make_sender):
    sender = make_sender()
    made = {}
    for name in ("Shop", "News"):
        channel, _secret = channel_services.channel_create(name=name)
        channel_services.channel_authorize_sender(channel=channel, sender=sender, is_default=True)
        made[name] = channel
    return made


def message(channel, *, created_at: datetime, sender=None, is_test=False, **counters) -> Message:
    sender = sender or channel.senders.get()
    row = Message.objects.create(
        channel=channel,
        sender=sender,
        source=Message.Source.API,
        subject="Hello",
        status=counters.pop("status", Message.Status.DONE),
        is_test=is_test,
        **counters,
    )
    Message.objects.filter(pk=row.pk).update(created_at=created_at)
    return row


def by_name(stats) -> dict:
    return {c.name: c for c in stats.channels}


def admin_page(client, user):
    client.force_login(user)
    response = client.get(reverse("admin:index"))
    assert response.status_code == 200
    return response.content.decode()


def section(page: str, panel: str) -> str:
    match = re.search(rf'<section[^>]*id="ums-{panel}".*?</section>', page, re.S)
    assert match, f"no {panel} panel"
    return match.group(0)


def rows(html: str) -> list[str]:
    """Each table row as the words a reader sees."""
    found = []
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", html, re.S):
        text = re.sub(r"<[^>]+>", " ", row)
        found.append(" ".join(text.split()))
    return found


def chart_data(page: str) -> dict:
    match = re.search(r'<script id="ums-sends-data" type="application/json">(.*?)</script>', page)
    assert match
    return json.loads(match.group(1))


@pytest.fixture
def month_of_sends(channels):
    shop, news = channels["Shop"], channels["News"]
    message(shop, created_at=NOW - timedelta(hours=1), total=10, sent=6, failed=1, invalid=1)
    # 00:30 on the 27th in Shanghai, still the 26th in UTC.
    message(shop, created_at=datetime(2026, 11, 26, 16, 30, tzinfo=UTC), total=5, sent=5)
    # 23:30 on the 26th in Shanghai.
    message(shop, created_at=datetime(2026, 11, 26, 15, 30, tzinfo=UTC), total=4, failed=4)
    message(news, created_at=NOW - timedelta(days=10), total=3, cancelled=3)
    message(news, created_at=NOW - timedelta(days=31), total=100, sent=100)
    message(shop, created_at=NOW - timedelta(minutes=5), total=1, sent=1, is_test=True)
    return channels


# --- sends by status per channel ---------------------------------------------------------------


def test_sends_are_counted_per_channel_day_and_status_in_the_active_time_zone(month_of_sends):
    with timezone.override(SHANGHAI):
        stats = dashboard.send_stats(now=NOW)

    assert len(stats.days) == 30
    assert stats.days[-1] == date(2026, 11, 27)
    assert stats.days[0] == date(2026, 10, 29)
    shop, news = by_name(stats)["Shop"], by_name(stats)["News"]
    assert [c.name for c in stats.channels] == ["News", "Shop"]
    assert shop.today == Counts(sent=11, failed=1, invalid=1, pending=2)
    assert shop.daily[-2] == Counts(failed=4)
    assert news.daily[-11] == Counts(cancelled=3)
    assert news.today == Counts()
    assert news.period == Counts(cancelled=3)  # the message of 31 days ago is outside
    assert stats.today == Counts(sent=11, failed=1, invalid=1, pending=2)
    assert stats.period.total == 15 + 4 + 3


def test_days_follow_the_time_zone_that_is_active(month_of_sends):
    with timezone.override(ZoneInfo("UTC")):
        stats = dashboard.send_stats(now=NOW)

    shop = by_name(stats)["Shop"]
    assert shop.today == Counts(sent=6, failed=1, invalid=1, pending=2)
    assert shop.daily[-2] == Counts(sent=5, failed=4)


def test_test_sends_are_left_out(channels):
    message(channels["Shop"], created_at=NOW, total=1, sent=1, is_test=True)

    assert dashboard.send_stats(now=NOW).channels == ()


def test_the_page_shows_todays_and_the_months_numbers_per_channel(
    client, role_user, month_of_sends, settings
):
    settings.TIME_ZONE = "Asia/Shanghai"
    Message.objects.update(created_at=timezone.now())  # all on the page's today
    Message.objects.filter(total=100).update(created_at=timezone.now() - timedelta(days=40))
    page = admin_page(client, role_user("Reviewer"))

    sends = section(page, "sends")
    today, month = re.findall(r"<table class=\"ums-table\">.*?</table>", sends, re.S)[:2]
    # Channel, sent, failed, invalid, cancelled, pending, recipients.
    assert "Shop 11 5 1 0 2 19" in rows(today)  # the test send is not counted
    assert "News 0 0 0 3 0 3" in rows(today)
    assert "All channels 11 5 1 3 2 22" in rows(month)
    assert "test sends from the console are not counted" in sends


def test_the_chart_gets_each_channels_daily_series(client, role_user, month_of_sends):
    Message.objects.update(created_at=F("created_at") + (timezone.now() - NOW))
    page = admin_page(client, role_user("Marketing"))

    data = chart_data(page)
    assert [s["key"] for s in data["statuses"]] == [
        "sent",
        "failed",
        "invalid",
        "cancelled",
        "pending",
    ]
    assert data["days"][-1] == timezone.localdate().isoformat()
    assert len(data["days"]) == len(data["dayLabels"]) == 30
    news = next(c for c in data["channels"] if c["name"] == "News")
    assert sum(news["daily"]["cancelled"]) == 3
    assert sum(news["daily"]["sent"]) == 0  # 31 days ago is outside the chart
    assert '<details class="ums-details">' in page  # the numbers behind the chart, per day


# --- sender health ----------------------------------------------------------------------------


def delivery(msg: Message, status: str, *, updated_at: datetime, next_attempt_at=None) -> None:
    row = Delivery.objects.create(message=msg, email="a@example.com", status=status)
    Delivery.objects.filter(pk=row.pk).update(
        updated_at=updated_at, next_attempt_at=next_attempt_at
    )


@pytest.fixture
def failing_senders(make_sender):
    broken = make_sender(name="Broken relay", code="BROKEN")
    fine = make_sender(name="Fine relay", code="FINE")
    checked = timezone.now() - timedelta(minutes=20)
    EmailSender.objects.filter(pk=broken.pk).update(
        health=EmailSender.Health.FAILED,
        health_checked_at=checked,
        health_error="535 5.7.8 Authentication credentials invalid",
        health_error_kind="auth",
    )
    EmailSender.objects.filter(pk=fine.pk).update(
        health=EmailSender.Health.OK, health_checked_at=checked
    )
    channel, _secret = channel_services.channel_create(name="Alerts")
    now = timezone.now()
    on_broken = message(channel, sender=broken, created_at=now - timedelta(hours=3), total=8)
    for _ in range(2):
        delivery(on_broken, "failed", updated_at=now - timedelta(minutes=10))
    # Written three hours ago, failed at a retry due half an hour ago.
    delivery(
        on_broken,
        "failed",
        updated_at=now - timedelta(hours=3),
        next_attempt_at=now - timedelta(minutes=30),
    )
    delivery(on_broken, "failed", updated_at=now - timedelta(hours=3))
    delivery(
        on_broken,
        "failed",
        updated_at=now - timedelta(hours=3),
        next_attempt_at=now - timedelta(hours=2),
    )
    delivery(on_broken, "sent", updated_at=now - timedelta(minutes=5))
    delivery(on_broken, "retrying", updated_at=now - timedelta(minutes=5))
    on_fine = message(channel, sender=fine, created_at=now, total=1)
    delivery(on_fine, "failed", updated_at=now - timedelta(minutes=1))
    return broken, fine


def test_sender_health_lists_the_failing_first_with_failures_of_the_last_hour(failing_senders):
    broken, fine = failing_senders

    panel = dashboard.sender_health()

    assert [s.sender_id for s in panel.senders] == [broken.pk, fine.pk]
    assert [s.name for s in panel.senders] == ["Broken relay", "Fine relay"]
    first, second = panel.senders
    assert (first.health, first.error_kind, first.failed_last_hour) == ("failed", "auth", 3)
    assert first.error.startswith("535")
    assert (second.health, second.failed_last_hour) == ("ok", 1)
    assert panel.more is False


def test_the_sender_panel_links_each_sender_and_never_shows_a_password(
    client, role_user, failing_senders
):
    broken, _fine = failing_senders

    page = admin_page(client, role_user("Reviewer"))

    senders = section(page, "senders")
    url = reverse("admin:channels_app_emailsender_change", args=[broken.pk])
    assert f'<a href="{url}">Broken relay</a>' in senders
    row = next(r for r in rows(senders) if r.startswith("Broken relay"))
    assert "Failing" in row
    assert "login refused : 535 5.7.8 Authentication credentials invalid" in row
    assert row.endswith(" 3")
    assert PASSWORD not in page
    assert broken.password_encrypted not in page


# --- queue depth ------------------------------------------------------------------------------


def test_queue_depth_counts_what_waits_in_the_database(channels, settings, tmp_path):
    settings.CELERY_BROKER_URL = ""
    settings.CELERY_BROKER_FOLDER = tmp_path
    shop = channels["Shop"]
    now = timezone.now()
    for status in ("queued", "queued", "scheduled", "resolving", "sending", "done"):
        message(shop, created_at=now, status=status)
    sending = Message.objects.filter(status="sending").get()
    for status in ("pending", "pending", "retrying", "sending", "failed", "sent"):
        delivery(sending, status, updated_at=now)

    depth = dashboard.queue_depth()

    assert depth.deliveries == {"sending": 1, "retrying": 1, "pending": 2}
    assert depth.messages == {"queued": 2, "scheduled": 1, "resolving": 1}


@pytest.fixture
def own_redis_url(tmp_path):
    """A Redis server of the test's own: no other test or test run can touch its lists."""
    if shutil.which("redis-server") is None:
        skip_or_fail("redis-server is not installed")
    port = free_port()
    with redis_server(port, tmp_path / "redis.log"):
        yield f"redis://127.0.0.1:{port}/0"


@pytest.mark.redis
def test_queue_depth_counts_each_celery_list_on_redis(own_redis_url, settings):
    settings.CELERY_BROKER_URL = own_redis_url
    # Published as the application does (priorities 1 and 3 of a message), and pushed raw.
    publish(tasks.sweep, url=own_redis_url, transport_options=REDIS_OPTIONS, priority=0)
    publish(tasks.sweep, url=own_redis_url, transport_options=REDIS_OPTIONS, priority=6)
    publish(tasks.sweep, url=own_redis_url, transport_options=REDIS_OPTIONS, priority=6)
    redis.Redis.from_url(own_redis_url).lpush("celery:9", "a", "b", "c")

    broker = dashboard.broker_depth()

    assert broker.state == "ok"
    assert {q.name: q.length for q in broker.queues} == {
        "celery": 1,
        "celery:3": 0,
        "celery:6": 2,
        "celery:9": 3,
    }
    assert broker.total == 6
    assert ":" + str(urlsplit(own_redis_url).port) in broker.location


@pytest.mark.redis
def test_the_page_shows_the_redis_lists(client, role_user, own_redis_url, settings):
    settings.CELERY_BROKER_URL = own_redis_url
    redis.Redis.from_url(own_redis_url).lpush("celery:3", "a", "b")

    queue = section(admin_page(client, role_user("Channel admin")), "queue")

    assert "celery:3 2" in rows(queue)
    assert "Tasks queued 2" in rows(queue)


def test_queue_depth_counts_message_files_of_the_filesystem_broker(settings, tmp_path):
    folder = tmp_path / "broker"
    options = {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "control_folder": str(folder / "control"),
    }
    for sub in ("queue", "control"):
        (folder / sub).mkdir(parents=True)
    settings.CELERY_BROKER_URL = ""
    settings.CELERY_BROKER_FOLDER = folder
    for _ in range(2):
        publish(tasks.sweep, url="filesystem://", transport_options=options)
    (folder / "queue" / "notes.txt").write_text("not a message")

    broker = dashboard.broker_depth()

    assert broker.state == "ok"
    assert {q.name: q.length for q in broker.queues} == {"celery": 2}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_broker_that_refuses_connections_shows_unreachable(client, role_user, settings):
    settings.CELERY_BROKER_URL = f"redis://:secret@127.0.0.1:{closed_port()}/0"

    queue = section(admin_page(client, role_user("Marketing")), "queue")

    assert 'data-state="unreachable"' in queue
    assert ">unreachable<" in queue
    assert "secret" not in queue
    assert "Pending 0" in rows(queue)  # the database figures are still there


def test_a_broker_that_never_answers_shows_unreachable(silent_server, settings):
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{silent_server.port}/0"

    assert dashboard.broker_depth(timeout=0.5).state == "unreachable"


def test_a_missing_broker_folder_shows_unreachable(settings, tmp_path):
    settings.CELERY_BROKER_URL = ""
    settings.CELERY_BROKER_FOLDER = tmp_path / "nowhere"

    assert dashboard.broker_depth().state == "unreachable"


# --- who sees what ---------------------------------------------------------------------------

PANELS = ("sends", "senders", "queue")


@pytest.mark.parametrize(
    ("role", "panels"),
    [
        (None, PANELS),
        ("Channel admin", PANELS),
        ("Marketing", PANELS),
        ("Reviewer", PANELS),
        ("Data admin", ()),
    ],
)
def test_each_role_sees_exactly_its_panels(client, role_user, make_sender, role, panels):
    make_sender(name="Relay", code="RELAY")

    page = admin_page(client, role_user(role))

    assert tuple(p for p in PANELS if f'id="ums-{p}"' in page) == panels
    assert ("ums-sends-data" in page) == ("sends" in panels)
    assert ("Relay" in page) == ("senders" in panels)
    assert "Users and email bindings" in page or role != "Data admin"  # the app list stays


def test_sender_permission_alone_shows_only_sender_health(client, django_user_model, make_sender):
    make_sender(name="Relay", code="RELAY")
    user = django_user_model.objects.create_user(username="viewer", password="pw", is_staff=True)
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="channels_app", codename="view_emailsender")
    )

    page = admin_page(client, user)

    assert [p for p in PANELS if f'id="ums-{p}"' in page] == ["senders"]


# --- cost and self-containment ----------------------------------------------------------------


def dashboard_queries(captured: CaptureQueriesContext) -> list[str]:
    tables = ("messaging_message", "messaging_delivery", "channels_app_emailsender")
    return [q["sql"] for q in captured.captured_queries if any(t in q["sql"] for t in tables)]


def test_the_page_costs_a_few_queries_then_none_while_cached(
    client, role_user, month_of_sends, failing_senders, settings, tmp_path
):
    settings.CELERY_BROKER_URL = ""
    settings.CELERY_BROKER_FOLDER = tmp_path
    client.force_login(role_user(None))
    url = reverse("admin:index")

    with CaptureQueriesContext(connection) as first:
        client.get(url)
    late, _secret = channel_services.channel_create(name="Late news")
    message(late, sender=failing_senders[1], created_at=timezone.now(), total=7, sent=7)
    with CaptureQueriesContext(connection) as second:
        cached = client.get(url).content.decode()

    # Sends: one; senders: the list and the failures; queues: deliveries and messages.
    assert len(dashboard_queries(first)) == 5
    assert len(first.captured_queries) <= 15
    assert dashboard_queries(second) == []
    assert "Late news" not in section(cached, "sends")  # shown once the cache expires
    cache.clear()
    assert "Late news 7 0 0 0 0 7" in rows(section(client.get(url).content.decode(), "sends"))


def test_the_page_loads_nothing_from_another_site(client, role_user, month_of_sends):
    page = admin_page(client, role_user(None))

    sources = re.findall(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=\"([^\"]+)\"", page)
    assert any(s.endswith("ums/dashboard.js") for s in sources)
    assert any(s.endswith("ums/dashboard.css") for s in sources)
    assert [s for s in sources if re.match(r"(https?:)?//", s)] == []
    script = Path(finders.find("ums/dashboard.js")).read_text()
    style = Path(finders.find("ums/dashboard.css")).read_text()
    for needle in ("fetch(", "XMLHttpRequest", "import(", "src="):
        assert needle not in script
    assert "url(" not in style and "@import" not in style
