"""The send history in the console: the message list, the message page, its exports and actions."""

import csv
import io
import json
import re
from datetime import timedelta

import openpyxl
import pytest
from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from kombu.exceptions import OperationalError

from channels_app import services as channel_services
from channels_app.models import Channel
from messaging import exports, sending, tasks
from messaging.models import Delivery, Draft, Material, Message
from messaging.services import (
    Audience,
    Content,
    Options,
    materials_purge,
    message_create,
    message_retry_failed,
)
from tests.processes import celery_worker, child_env, wait_for
from tests.smtp_server import PASSWORD

pytestmark = pytest.mark.django_db

LIST = reverse("admin:messaging_message_changelist")
ROLE_NAMES = {"reviewer": "Reviewer", "data_admin": "Data admin", "marketing": "Marketing"}


# --- helpers ----------------------------------------------------------------------------------


def stored(channel, *, subject: str = "Spring sale", html: str = "<p>Hello</p>", **options):
    """A message as the API or the compose page stores it (not yet resolved)."""
    source = options.pop("source", "api")
    created_by = options.pop("created_by", None)
    message, _created = message_create(
        channel=channel,
        audience=Audience(emails=["a@example.com"]),
        content=Content(subject=subject, html=html),
        options=Options(**options),
        source=source,
        created_by=created_by,
    )
    return message


def deliver(message: Message, rows, *, status: str = Message.Status.SENDING) -> Message:
    """Give the message these deliveries ((userid, email, status) ...) and matching counters."""
    Delivery.objects.bulk_create(
        Delivery(
            message=message,
            userid=userid,
            email=email,
            status=state,
            attempts=0 if state == "pending" else 1,
            smtp_code={"sent": 250, "failed": 550}.get(state),
            smtp_reply={"sent": "2.0.0 Ok", "failed": "5.1.1 No such mailbox"}.get(state, ""),
            sent_at=timezone.now() if state == "sent" else None,
        )
        for userid, email, state in rows
    )
    sending.message_recount(message_id=message.pk)
    Message.objects.filter(pk=message.pk).update(status=status, dispatched_at=timezone.now())
    message.refresh_from_db()
    return message


def listed(response) -> list[str]:
    return [message.msgid for message in response.context["cl"].result_list]


def page_url(message: Message) -> str:
    return reverse("admin:messaging_message_change", args=[message.pk])


def action_url(name: str, message: Message) -> str:
    return reverse(f"admin:messaging_message_{name}", args=[message.pk])


@pytest.fixture
def login(client, role_user):
    def as_role(role: str | None):
        client.force_login(role_user(role))
        return client

    return as_role


@pytest.fixture
def reviewer(login):
    return login("Reviewer")


@pytest.fixture
def marketing(login):
    return login("Marketing")


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")


# --- the list ---------------------------------------------------------------------------------


def test_history_lists_msgid_channel_subject_source_owner_and_a_progress_bar(
    shop, reviewer, role_user
):
    api = deliver(
        stored(shop, subject="Spring sale", owner="crm-system"),
        [("u1", "a@example.com", "sent")] * 3
        + [("u2", "b@example.com", "failed"), ("u3", "c@example.com", "pending")],
    )
    console = stored(shop, subject="Welcome", source="console", created_by=role_user("Marketing"))

    response = reviewer.get(LIST)

    html = response.content.decode()
    assert response.status_code == 200
    assert listed(response) == [console.msgid, api.msgid]
    assert "Spring sale" in html and "Welcome" in html
    assert ">crm-system<" in html and ">marketing<" in html
    assert "API" in html and "Console" in html
    assert 'title="3 sent, 1 failed, 0 invalid, 0 cancelled, 1 pending of 5"' in html
    assert 'data-segment="sent" style="width: 60.0%"' in html
    assert 'data-segment="failed" style="width: 20.0%"' in html
    assert "80%" in html  # settled: all but the pending one
    assert 'class="ums-status ums-status-sending">Sending<' in html
    assert "/static/messaging/history.css" in html


def test_reviewer_sees_the_history_read_only_and_a_data_admin_not_at_all(shop, login):
    stored(shop)

    reviewer = login("Reviewer").get(LIST)
    assert reviewer.status_code == 200
    assert 'name="action"' not in reviewer.content.decode()  # no retract for a reviewer
    assert login("Data admin").get(LIST).status_code == 403


def test_history_filters_by_channel_status_source_and_test_sends(shop, reviewer, make_sender):
    other, _secret = channel_services.channel_create(name="Games")
    channel_services.channel_authorize_sender(channel=other, sender=make_sender(), is_default=True)
    api = stored(shop)
    console = stored(shop, source="console")
    test = stored(shop, source="console", test=True)
    games = deliver(stored(other), [("u", "u@example.com", "sent")], status="done")

    def filtered(**params) -> set[str]:
        return set(listed(reviewer.get(LIST, params)))

    assert filtered(channel__id__exact=other.pk) == {games.msgid}
    assert filtered(status__exact="done") == {games.msgid}
    assert filtered(source__exact="console") == {console.msgid, test.msgid}
    assert filtered(source__exact="api") == {api.msgid, games.msgid}
    assert filtered(is_test__exact="1") == {test.msgid}


def test_history_filters_by_a_range_of_creation_days(shop, reviewer):
    now = timezone.localtime()
    old = stored(shop, subject="old")
    middle = stored(shop, subject="middle")
    new = stored(shop, subject="new")
    Message.objects.filter(pk=old.pk).update(created_at=now - timedelta(days=10))
    Message.objects.filter(pk=middle.pk).update(created_at=now - timedelta(days=5))

    def day(days_ago: int) -> str:
        return (now - timedelta(days=days_ago)).date().isoformat()

    between = reviewer.get(LIST, {"created_from": day(6), "created_to": day(4)})
    since = reviewer.get(LIST, {"created_from": day(5)})
    until = reviewer.get(LIST, {"created_to": day(5)})

    assert listed(between) == [middle.msgid]
    assert listed(since) == [new.msgid, middle.msgid]
    assert listed(until) == [middle.msgid, old.msgid]
    html = between.content.decode()
    assert f'name="created_from" value="{day(6)}"' in html
    assert 'type="date"' in html


def test_a_date_that_is_not_one_is_ignored_with_a_warning(shop, reviewer):
    message = stored(shop)

    response = reviewer.get(LIST, {"created_from": "yesterday"}, follow=True)

    assert listed(response) == [message.msgid]
    assert "“yesterday” is not a date (YYYY-MM-DD)" in response.content.decode()


def test_search_by_userid_or_email_finds_each_message_once(shop, reviewer):
    to_zhangsan = deliver(
        stored(shop, subject="First"),
        [("zhangsan", "zs@shop.example", "sent"), ("lisi", "ls@shop.example", "sent")],
    )
    # Reached twice (an address given twice in two recipients): listed once all the same.
    twice = deliver(
        stored(shop, subject="Second"),
        [("zhangsan", "zs@shop.example", "sent"), ("", "zs@shop.example", "failed")],
    )
    deliver(stored(shop, subject="Third"), [("wangwu", "ww@shop.example", "sent")])

    def search(term: str) -> list[str]:
        return listed(reviewer.get(LIST, {"q": term}))

    assert search("zhangsan") == [twice.msgid, to_zhangsan.msgid]
    assert search("zs@shop.example") == [twice.msgid, to_zhangsan.msgid]
    assert search("zs@SHOP.example") == [twice.msgid, to_zhangsan.msgid]  # domains are lowercased
    assert search("lisi") == [to_zhangsan.msgid]
    assert search("zhang") == []  # userids and emails match exactly
    assert search("nobody@shop.example") == []


def test_search_by_msgid_sendno_and_subject(shop, reviewer):
    first = stored(shop, subject="Spring sale", sendno="order-1")
    second = stored(shop, subject="Autumn news")

    def search(term: str) -> list[str]:
        return listed(reviewer.get(LIST, {"q": term}))

    assert search(second.msgid) == [second.msgid]
    assert search("order-1") == [first.msgid]
    assert search("spring") == [first.msgid]


def counts_deliveries(sql: str) -> bool:
    return bool(re.search(r'COUNT\([^)]*\)[^"]* FROM "messaging_delivery"', sql, re.I))


def history_queries(client, **params) -> list[str]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(LIST, params)
    assert response.status_code == 200
    return [query["sql"] for query in queries.captured_queries]


def test_the_list_costs_the_same_queries_for_2_or_30_messages_and_counts_no_deliveries(
    shop, reviewer, role_user
):
    marketing = role_user("Marketing")
    for _ in range(2):
        deliver(stored(shop, created_by=marketing), [("u", "u@example.com", "sent")] * 3)
    few = history_queries(reviewer)
    few_searched = history_queries(reviewer, q="u@example.com", status__exact="sending")

    for n in range(28):
        deliver(
            stored(shop, created_by=marketing, source="console"),
            [(f"u{n}-{i}", f"u{n}-{i}@example.com", "sent") for i in range(40)],
        )
    many = history_queries(reviewer)
    many_searched = history_queries(reviewer, q="u@example.com", status__exact="sending")

    assert len(many) == len(few)
    assert len(many_searched) == len(few_searched)
    for sql in many + many_searched:
        assert not counts_deliveries(sql), sql


def test_the_list_stays_within_a_fixed_number_of_queries(
    shop, reviewer, django_assert_max_num_queries
):
    for _ in range(30):
        deliver(stored(shop), [("u", "u@example.com", "sent")])

    with django_assert_max_num_queries(12):
        reviewer.get(LIST)


# --- the message page -------------------------------------------------------------------------


def test_the_page_shows_the_html_only_in_a_sandboxed_frame_and_never_runs_its_script(
    shop, reviewer
):
    message = stored(
        shop,
        subject="<b>Sale</b>",
        html='<p onclick="steal()">Hello</p><script>alert("pwned")</script>',
    )

    html = reviewer.get(page_url(message)).content.decode()

    frames = re.findall(r"<iframe[^>]*>", html)
    assert len(frames) == 1
    assert 'sandbox=""' in frames[0]
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in frames[0]
    assert "Content-Security-Policy" in frames[0]  # nothing remote is loaded by default
    assert "<script>alert" not in html
    assert 'onclick="steal()"' not in html
    assert "&lt;b&gt;Sale&lt;/b&gt;" in html


def test_the_page_shows_the_text_part_attachments_audience_sender_and_facts(
    reviewer, media, make_sender
):
    shop, _secret = channel_services.channel_create(name="Shop")
    sender = make_sender(name="Shop mailer")  # with an SMTP account and its password
    channel_services.channel_authorize_sender(channel=shop, sender=sender, is_default=True)
    material = Material.objects.create(
        channel=shop,
        file=ContentFile(b"%PDF-1.4", name="prices.pdf"),
        name="prices.pdf",
        content_type="application/pdf",
        size=2048,
        expires_at=timezone.now() + timedelta(days=1),
    )
    message, _created = message_create(
        channel=shop,
        audience=Audience(userids=["zhangsan", "lisi"]),
        content=Content(subject="Prices", html="<h1>New prices</h1>", materials=[material]),
        options=Options(sendno="batch-7", priority=1, test=True),
        source="api",
    )

    html = reviewer.get(page_url(message)).content.decode()

    assert '<pre class="ums-pre" id="message-text">New prices</pre>' in html
    assert "prices.pdf (2.0\xa0KB, application/pdf)" in html
    assert "Userids</strong> (2)" in html and "zhangsan, lisi" in html
    assert "&quot;userid&quot;: [" in html  # the audience as received
    assert "Shop mailer &lt;noreply@shop.example.com&gt;" in html
    assert "batch-7" in html and "High" in html
    assert PASSWORD not in html and sender.password_encrypted not in html


def test_the_timeline_comes_from_the_fields_and_the_sent_times(shop, reviewer):
    message = stored(shop, send_at=timezone.now() + timedelta(hours=2))
    deliver(message, [("a", "a@example.com", "sent"), ("b", "b@example.com", "sent")])
    first, last = timezone.now() - timedelta(minutes=5), timezone.now() - timedelta(minutes=1)
    rows = list(message.deliveries.order_by("pk"))
    Delivery.objects.filter(pk=rows[0].pk).update(sent_at=first)
    Delivery.objects.filter(pk=rows[1].pk).update(sent_at=last)

    html = reviewer.get(page_url(message)).content.decode()

    def shown(key: str) -> str:
        return re.search(rf'data-timeline="{key}">([^<]*)<', html).group(1)

    def local(value) -> str:
        return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S")

    assert shown("created") == local(message.created_at)
    assert shown("scheduled") == local(message.send_at)
    assert shown("first_sent") == local(first)
    assert shown("last_sent") == local(last)
    assert shown("finished") == "—"


@pytest.fixture
def big(shop):
    """A message with 250 deliveries: 200 sent, 30 failed, 20 pending."""
    rows = (
        [(f"s{i}", f"s{i}@example.com", "sent") for i in range(200)]
        + [(f"f{i}", f"f{i}@example.com", "failed") for i in range(30)]
        + [(f"p{i}", f"p{i}@example.com", "pending") for i in range(20)]
    )
    return deliver(stored(shop), rows)


def shown_userids(response) -> list[str]:
    return [delivery.userid for delivery in response.context["deliveries"]]


def test_deliveries_are_paged_by_a_hundred_forwards_and_back(big, reviewer):
    first = reviewer.get(page_url(big))
    assert shown_userids(first) == [f"s{i}" for i in range(100)]
    assert first.context["previous_url"] == ""

    second = reviewer.get(page_url(big) + first.context["next_url"])
    assert shown_userids(second) == [f"s{i}" for i in range(100, 200)]

    third = reviewer.get(page_url(big) + second.context["next_url"])
    assert shown_userids(third) == [f"f{i}" for i in range(30)] + [f"p{i}" for i in range(20)]
    assert third.context["next_url"] == ""

    back = reviewer.get(page_url(big) + third.context["previous_url"])
    assert shown_userids(back) == shown_userids(second)
    assert reviewer.get(page_url(big) + back.context["first_url"]).context["previous_url"] == ""


def test_deliveries_filter_by_status_with_counts_from_the_counters(big, reviewer):
    response = reviewer.get(page_url(big), {"dstatus": "failed"})

    assert shown_userids(response) == [f"f{i}" for i in range(30)]
    assert response.context["next_url"] == ""
    links = {link["key"]: link["count"] for link in response.context["status_links"]}
    assert links == {
        "": 250,
        "sent": 200,
        "failed": 30,
        "invalid": 0,
        "cancelled": 0,
        "pending": 20,
    }
    html = response.content.decode()
    assert '<li class="selected"><a href="?dstatus=failed">Failed' in html
    pending = reviewer.get(page_url(big), {"dstatus": "pending"})
    assert shown_userids(pending) == [f"p{i}" for i in range(20)]


def test_deliveries_show_each_recipients_smtp_result(big, reviewer):
    html = reviewer.get(page_url(big), {"dstatus": "failed", "dq": "f3"}).content.decode()

    row = re.search(r"<tbody>(.*?)</tbody>", html, re.S).group(1)
    assert "f3@example.com" in row and "f30" not in row
    for cell in ("Failed", "550", "5.1.1 No such mailbox", "<td>1</td>"):
        assert cell in row


def test_deliveries_search_by_exact_email_or_userid_within_the_message(big, reviewer):
    by_email = reviewer.get(page_url(big), {"dq": "s150@example.com"})
    by_userid = reviewer.get(page_url(big), {"dq": "p3"})
    partial = reviewer.get(page_url(big), {"dq": "s15"})

    assert shown_userids(by_email) == ["s150"]
    assert shown_userids(by_userid) == ["p3"]
    assert shown_userids(partial) == ["s15"]


def test_the_message_page_costs_the_same_queries_for_any_number_of_deliveries(shop, reviewer):
    small = deliver(stored(shop), [("u", "u@example.com", "sent")] * 3)
    large = deliver(stored(shop), [(f"u{i}", f"u{i}@example.com", "sent") for i in range(400)])

    counts = []
    for message in (small, large):
        with CaptureQueriesContext(connection) as queries:
            assert reviewer.get(page_url(message)).status_code == 200
        counts.append(len(queries))
        for query in queries.captured_queries:
            assert not counts_deliveries(query["sql"]), query["sql"]

    assert counts[0] == counts[1]


# --- exports ----------------------------------------------------------------------------------


@pytest.fixture
def risky(shop):
    """Deliveries whose cells a spreadsheet would otherwise run as formulas."""
    message = deliver(
        stored(shop),
        [
            ('=HYPERLINK("http://evil")', "a@example.com", "sent"),
            ("+1", "b@example.com", "failed"),
            ("plain", "c@example.com", "pending"),
        ],
    )
    Delivery.objects.filter(message=message, userid="+1").update(smtp_reply="-ERR @SUM(A1)")
    return message


def test_csv_export_lists_every_delivery_and_escapes_formulas(risky, reviewer, monkeypatch):
    monkeypatch.setattr(exports, "CHUNK", 2)  # several chunks for three rows

    response = reviewer.get(reverse("admin:messaging_message_export", args=[risky.pk, "csv"]))

    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert f"message-{risky.msgid}-deliveries.csv" in response["Content-Disposition"]
    text = b"".join(response.streaming_content).decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][:4] == ["msgid", "userid", "email", "status"]
    assert [row[1] for row in rows[1:]] == ['\'=HYPERLINK("http://evil")', "'+1", "plain"]
    assert rows[2][3:7] == ["Failed", "1", "550", "'-ERR @SUM(A1)"]
    assert rows[1][0] == risky.msgid


def test_xlsx_export_lists_every_delivery_and_escapes_formulas(risky, reviewer, monkeypatch):
    monkeypatch.setattr(exports, "CHUNK", 2)

    response = reviewer.get(reverse("admin:messaging_message_export", args=[risky.pk, "xlsx"]))

    assert f"message-{risky.msgid}-deliveries.xlsx" in response["Content-Disposition"]
    workbook = openpyxl.load_workbook(io.BytesIO(b"".join(response.streaming_content)))
    rows = list(workbook.active.iter_rows(values_only=True))
    assert rows[0][1:4] == ("userid", "email", "status")
    assert [row[1] for row in rows[1:]] == ['\'=HYPERLINK("http://evil")', "'+1", "plain"]
    assert rows[2][5:7] == (550, "'-ERR @SUM(A1)")
    assert rows[1][8] is not None and rows[3][8] is None  # sent time only when sent


def test_export_follows_the_status_filter(big, reviewer):
    url = reverse("admin:messaging_message_export", args=[big.pk, "csv"])

    response = reviewer.get(url, {"dstatus": "failed"})

    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode("utf-8-sig"))))
    assert len(rows) == 1 + 30
    assert {row[3] for row in rows[1:]} == {"Failed"}


def test_only_staff_who_see_deliveries_export_them(big, login):
    url = reverse("admin:messaging_message_export", args=[big.pk, "csv"])

    assert login("Data admin").get(url).status_code == 403
    assert login("Marketing").get(url).status_code == 200


# --- live progress ----------------------------------------------------------------------------


def test_progress_json_has_the_counters_widths_status_and_timeline(big, reviewer):
    response = reviewer.get(action_url("progress", big))

    data = response.json()
    assert response["Cache-Control"].startswith("max-age=0")
    assert data["counts"] == {
        "total": 250,
        "sent": 200,
        "failed": 30,
        "invalid": 0,
        "cancelled": 0,
        "pending": 20,
    }
    assert data["percents"]["sent"] == 80.0 and data["percents"]["pending"] == 8.0
    assert (data["status"], data["finished"], data["done_percent"]) == ("sending", False, 92)
    assert data["timeline"]["finished"] == {"label": "Finished", "value": "—"}
    assert data["timeline"]["first_sent"]["value"] != "—"


def test_progress_says_finished_once_done_and_the_page_stops_polling(shop, reviewer):
    message = deliver(stored(shop), [("a", "a@example.com", "sent")], status="done")

    assert reviewer.get(action_url("progress", message)).json()["finished"] is True
    html = reviewer.get(page_url(message)).content.decode()
    assert 'data-finished="true"' in html
    assert "/static/messaging/history.js" in html


def test_a_sending_message_page_polls_its_progress_url(big, reviewer):
    html = reviewer.get(page_url(big)).content.decode()

    assert f'data-progress-url="{action_url("progress", big)}"' in html
    assert 'data-finished="false"' in html


def test_progress_needs_the_view_permission(big, login):
    assert login("Data admin").get(action_url("progress", big)).status_code == 403


# --- actions ----------------------------------------------------------------------------------


@pytest.fixture
def published(monkeypatch):
    """The batches handed to the broker."""
    calls = []
    monkeypatch.setattr(tasks.deliver_batch, "apply_async", lambda *a, **kw: calls.append((a, kw)))
    return calls


@pytest.fixture
def partly_failed(shop, settings):
    settings.UMS_DELIVERY_BATCH_SIZE = 2
    message = stored(shop, priority=1)
    deliver(
        message,
        [
            ("a", "a@example.com", "sent"),
            ("b", "b@example.com", "failed"),
            ("c", "c@example.com", "sent"),
            ("d", "d@example.com", "sent"),
            ("e", "e@example.com", "failed"),
            ("f", "f@example.com", "failed"),
        ],
        status="done",
    )
    for index, delivery in enumerate(message.deliveries.order_by("pk")):
        Delivery.objects.filter(pk=delivery.pk).update(batch=index // 2)
    Message.objects.filter(pk=message.pk).update(finished_at=timezone.now())
    return message


def test_retry_puts_the_failed_deliveries_back_and_queues_their_batches_after_commit(
    partly_failed, published, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        count = message_retry_failed(message=partly_failed)
        assert published == []  # nothing goes to the broker before the commit
    for callback in callbacks:
        callback()

    assert count == 3
    assert (partly_failed.status, partly_failed.failed, partly_failed.finished_at) == (
        "sending",
        0,
        None,
    )
    assert partly_failed.sent == 3 and partly_failed.pending == 3
    retried = partly_failed.deliveries.filter(userid__in=["b", "e", "f"])
    assert {(d.status, d.attempts, d.next_attempt_at) for d in retried} == {("pending", 0, None)}
    # The last SMTP result stays visible until the new attempt replaces it.
    assert {d.smtp_code for d in retried} == {550}
    assert published == [
        ((), {"args": [partly_failed.pk, 0], "priority": 0}),
        ((), {"args": [partly_failed.pk, 2], "priority": 0}),
    ]


def test_retry_with_the_broker_down_is_picked_up_by_the_sweeper(
    partly_failed, monkeypatch, settings, django_capture_on_commit_callbacks
):
    def broker_down(*args, **kwargs):
        raise OperationalError("Connection refused")

    monkeypatch.setattr(tasks.deliver_batch, "apply_async", broker_down)
    Message.objects.filter(pk=partly_failed.pk).update(
        dispatched_at=timezone.now() - timedelta(hours=1)
    )
    with django_capture_on_commit_callbacks(execute=True):
        message_retry_failed(message=partly_failed)

    assert sending.sweep().batches == []  # the queued tasks get their grace period first
    later = timezone.now() + timedelta(seconds=settings.UMS_DISPATCH_GRACE + 1)
    assert sending.sweep(now=later).batches == [
        (partly_failed.pk, 0, Message.Priority.HIGH),
        (partly_failed.pk, 2, Message.Priority.HIGH),
    ]


def test_retry_refuses_a_message_without_failed_deliveries(shop, published):
    message = deliver(stored(shop), [("a", "a@example.com", "sent")], status="done")

    with pytest.raises(Exception, match="no failed deliveries"):
        message_retry_failed(message=message)

    message.refresh_from_db()
    assert message.status == "done"


def test_retry_refuses_a_retracted_message(partly_failed, published):
    Message.objects.filter(pk=partly_failed.pk).update(status=Message.Status.RETRACTED)

    with pytest.raises(Exception, match="retracted"):
        message_retry_failed(message=partly_failed)

    assert partly_failed.deliveries.filter(status="failed").count() == 3


def test_retry_refuses_a_message_of_a_closed_channel(partly_failed, shop, published):
    shop.status = Channel.Status.CLOSED
    shop.save()

    with pytest.raises(Exception, match="channel is closed"):
        message_retry_failed(message=partly_failed)


def role_client(client, role_user, role: str):
    client.force_login(role_user(ROLE_NAMES[role]))
    return client


@pytest.mark.parametrize("role", ["reviewer", "data_admin"])
@pytest.mark.parametrize("action", ["retry", "retract", "duplicate"])
def test_actions_are_forbidden_without_their_permission(
    partly_failed, client, role_user, role, action, published
):
    staff = role_client(client, role_user, role)

    assert staff.post(action_url(action, partly_failed)).status_code == 403
    assert staff.get(action_url(action, partly_failed)).status_code == 403
    partly_failed.refresh_from_db()
    assert (partly_failed.status, partly_failed.failed) == ("done", 3)
    assert not Draft.objects.exists()


def test_reviewer_page_has_no_action_buttons(partly_failed, reviewer):
    html = reviewer.get(page_url(partly_failed)).content.decode()

    assert 'id="message-actions"' not in html
    assert action_url("retry", partly_failed) not in html


def test_marketing_retries_the_failed_ones_from_the_page(partly_failed, marketing, published):
    html = marketing.get(page_url(partly_failed)).content.decode()
    assert f'action="{action_url("retry", partly_failed)}"' in html

    response = marketing.post(action_url("retry", partly_failed), follow=True)

    assert response.redirect_chain[-1][0] == page_url(partly_failed)
    assert "3 failed deliveries are being sent again." in response.content.decode()
    assert partly_failed.deliveries.filter(status="pending").count() == 3


def test_retrying_twice_says_there_is_nothing_left(partly_failed, marketing, published):
    marketing.post(action_url("retry", partly_failed))

    response = marketing.post(action_url("retry", partly_failed), follow=True)

    assert "The message has no failed deliveries to retry." in response.content.decode()


def test_actions_are_post_only(partly_failed, marketing):
    assert marketing.get(action_url("retry", partly_failed)).status_code == 405
    assert marketing.get(action_url("duplicate", partly_failed)).status_code == 405


def test_csrf_protects_the_actions(partly_failed, role_user, published):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(role_user("Marketing"))

    assert client.post(action_url("retry", partly_failed)).status_code == 403
    assert client.post(action_url("retract", partly_failed)).status_code == 403
    assert partly_failed.deliveries.filter(status="failed").count() == 3


def test_marketing_retracts_after_confirming_and_sees_what_was_cancelled(shop, marketing):
    message = deliver(
        stored(shop),
        [
            ("a", "a@example.com", "sent"),
            ("b", "b@example.com", "pending"),
            ("c", "c@example.com", "pending"),
        ],
    )
    assert (
        f'href="{action_url("retract", message)}"'
        in marketing.get(page_url(message)).content.decode()
    )

    confirm = marketing.get(action_url("retract", message))
    assert confirm.status_code == 200
    assert "2 pending now" in confirm.content.decode()
    assert message.deliveries.filter(status="pending").count() == 2  # nothing happened yet

    done = marketing.post(action_url("retract", message), follow=True)

    html = done.content.decode()
    assert "Retracted. Cancelled: 2. Already sent: 1." in html
    message.refresh_from_db()
    assert (message.status, message.cancelled) == ("retracted", 2)


def test_retract_is_not_offered_past_its_24_hours(shop, marketing):
    message = deliver(stored(shop), [("b", "b@example.com", "pending")])
    Message.objects.filter(pk=message.pk).update(created_at=timezone.now() - timedelta(hours=25))

    html = marketing.get(page_url(message)).content.decode()

    assert action_url("retract", message) not in html
    assert "Duplicate as a new draft" in html


def test_retracting_twice_says_so(shop, marketing):
    message = deliver(stored(shop), [("a", "a@example.com", "pending")])
    marketing.post(action_url("retract", message))

    response = marketing.post(action_url("retract", message), follow=True)

    assert "The message has already been retracted." in response.content.decode()


def test_retracting_a_finished_message_says_nothing_was_cancelled(shop, marketing):
    message = deliver(stored(shop), [("a", "a@example.com", "sent")], status="done")

    response = marketing.post(action_url("retract", message), follow=True)

    html = response.content.decode()
    assert "The message had already finished, so nothing was cancelled (1 sent)." in html
    message.refresh_from_db()
    assert message.status == "done"


def test_marketing_duplicates_a_message_as_a_new_draft(shop, marketing):
    message = stored(shop, subject="Spring sale", html="<p>50% off</p>")

    response = marketing.post(action_url("duplicate", message))

    draft = Draft.objects.get()
    assert (draft.subject, draft.html, draft.source_message) == (
        "Spring sale",
        "<p>50% off</p>",
        message,
    )
    assert draft.audience == {"kind": "email", "values": ["a@example.com"]}
    assert response.status_code == 302
    assert response.url == reverse("admin:messaging_draft_change", args=[draft.pk])


# --- the deliveries list ----------------------------------------------------------------------


def test_delivery_list_searches_exact_email_userid_and_msgid(big, shop, reviewer):
    other = deliver(stored(shop), [("s1", "x@example.com", "sent")])
    url = reverse("admin:messaging_delivery_changelist")

    def search(term: str) -> set[tuple[str, str]]:
        results = reviewer.get(url, {"q": term}).context["cl"].result_list
        return {(d.message.msgid, d.userid) for d in results}

    assert search("s1") == {(big.msgid, "s1"), (other.msgid, "s1")}
    assert search("x@example.com") == {(other.msgid, "s1")}
    assert search(other.msgid) == {(other.msgid, "s1")}


def test_delivery_list_never_counts_more_than_its_cap(big, reviewer, monkeypatch):
    from messaging.admin import CappedPaginator

    monkeypatch.setattr(CappedPaginator, "cap", 120)

    response = reviewer.get(reverse("admin:messaging_delivery_changelist"))

    assert response.status_code == 200
    assert "More than 120 deliveries" in response.content.decode()


# --- retry, end to end ------------------------------------------------------------------------


@pytest.fixture
def staff_roles(transactional_db):
    """The role groups with their permissions (the flush after another transactional test
    removes them, and may remove the permissions too)."""
    from django.apps import apps as global_apps

    from ums.roles import sync_roles

    sync_roles(global_apps, None)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_retry_sends_what_the_server_refused_before_through_the_worker(
    shop, bind, plain_server, client, role_user, staff_roles, tmp_path
):
    bind("a", "all", "a@example.com")
    bind("b", "all", "b@example.com")
    refusing = {"a@example.com"}

    async def rcpt(server, session, envelope, address, options):
        if address in refusing:
            return "550 5.1.1 Mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    plain_server.controller.handler.handle_RCPT = rcpt
    client.force_login(role_user("Marketing"))
    log = tmp_path / "worker.log"

    with celery_worker(child_env(), log):
        message, _created = message_create(
            channel=shop,
            audience=Audience(userids=["a", "b"]),
            content=Content(subject="Spring sale", html="<p>Hello</p>"),
            options=Options(),
            source="api",
        )

        def done() -> bool:
            message.refresh_from_db()
            return message.status == Message.Status.DONE

        wait_for(done, timeout=60, what="the first send", log_path=log)
        assert (message.sent, message.failed) == (1, 1)
        page = client.get(page_url(message)).content.decode()
        assert "Mailbox unavailable" in page

        refusing.clear()  # the mailbox exists now
        response = client.post(action_url("retry", message), follow=True)
        assert "1 failed delivery is being sent again." in response.content.decode()

        wait_for(done, timeout=60, what="the retry", log_path=log)

    retried = message.deliveries.get(userid="a")
    assert (retried.status, retried.smtp_code, retried.attempts) == ("sent", 250, 1)
    assert (message.total, message.sent, message.failed, message.pending) == (2, 2, 0, 0)
    assert sorted(m.rcpt_tos[0] for m in plain_server.recorder.messages) == [
        "a@example.com",
        "b@example.com",
    ]
    progress = client.get(action_url("progress", message)).json()
    assert progress["finished"] is True and progress["counts"]["failed"] == 0
    assert json.dumps(progress)  # a plain JSON document


def test_retry_refuses_a_message_that_finished_more_than_a_week_ago(partly_failed, published):
    Message.objects.filter(pk=partly_failed.pk).update(
        finished_at=timezone.now() - timedelta(days=8)
    )
    partly_failed.refresh_from_db()

    with pytest.raises(ValidationError, match="last 7 days"):
        message_retry_failed(message=partly_failed)
    assert partly_failed.deliveries.filter(status="failed").count() == 3


def test_attachments_stay_while_failures_can_be_retried_then_go(partly_failed, media):
    attachment = Material.objects.create(
        channel=partly_failed.channel,
        file=ContentFile(b"data", name="terms.pdf"),
        name="terms.pdf",
        content_type="application/pdf",
        size=4,
        expires_at=timezone.now() - timedelta(hours=1),
    )
    partly_failed.materials.add(attachment)
    Message.objects.filter(pk=partly_failed.pk).update(finished_at=timezone.now())

    assert materials_purge() == 0
    assert materials_purge(now=timezone.now() + timedelta(days=8)) == 1
    assert not Material.objects.filter(pk=attachment.pk).exists()


def test_duplicating_needs_the_right_to_send_not_only_to_keep_drafts(
    shop, client, django_user_model
):
    message = stored(shop)
    user = django_user_model.objects.create_user("drafter", password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(codename__in=["view_message", "add_draft", "view_draft"])
    )
    client.force_login(user)

    assert "Duplicate as a new draft" not in client.get(page_url(message)).content.decode()
    assert client.post(action_url("duplicate", message)).status_code == 403
    assert not Draft.objects.exists()
