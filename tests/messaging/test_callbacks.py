"""Status callbacks: the collector's records and batches, the poster against a real HTTP server
(auth, signature, retries, drop), the sweeper, the tasks, and the console's batch pages."""

import base64
import hashlib
import hmac
import json
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from channels_app.models import CallbackUrl, SendingRule, SendingRuleStep
from channels_app.selectors import channel_default_sender
from channels_app.services import channel_authorize_sender
from messaging import callback_tasks
from messaging.callbacks import (
    ERROR_NO_ADDRESS,
    ERROR_NOT_SENT,
    PostStatus,
    callback_batch_post,
    callback_batches_retry,
    callback_batches_sweep,
    callbacks_collect,
    callbacks_mark_retracted,
)
from messaging.models import CallbackBatch, Delivery, Message
from tests.http_server import SLOW, CallbackServer
from ums.celery import app as celery_app

pytestmark = pytest.mark.django_db

HOOK = "https://shop.example/ums/callback"
SENT_AT = timezone.make_aware(timezone.datetime(2026, 11, 27, 12, 0, 0, 123000))


@pytest.fixture
def callback_server():
    with CallbackServer() as server:
        yield server


@pytest.fixture
def eager_tasks():
    """Queued tasks run at once, in this process (the post goes to the test's HTTP server)."""
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = False


def make_message(channel, url=HOOK, params=None, status=Message.Status.DONE, **fields) -> Message:
    callback = {"url": url} if url else {}
    if params is not None:
        callback["params"] = params
    return Message.objects.create(
        channel=channel,
        sender=channel_default_sender(channel=channel),
        source=Message.Source.API,
        subject="Hello",
        callback=callback,
        status=status,
        **fields,
    )


def deliver(message, *rows, due=True) -> list[Delivery]:
    """Deliveries as the pipeline leaves them: (userid, status) or a dict of fields."""
    objects = []
    for row in rows:
        fields = row if isinstance(row, dict) else {"userid": row[0], "status": row[1]}
        fields = {**fields, "callback_due": due}
        if fields["status"] != Delivery.Status.INVALID:
            fields.setdefault("email", f"{fields['userid']}@example.com")
        if fields["status"] == Delivery.Status.SENT:
            fields.setdefault("sent_at", SENT_AT)
        objects.append(Delivery(message=message, **fields))
    return Delivery.objects.bulk_create(objects)


def records() -> list[dict]:
    return [r for batch in CallbackBatch.objects.order_by("pk") for r in batch.records]


def types_by_userid() -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for record in records():
        found.setdefault(record["userid"], []).append(record["type"])
    return found


def mark_due(message) -> None:
    Delivery.objects.filter(message=message).update(callback_due=True)


# --- the collector -------------------------------------------------------------------------------


def test_each_status_reports_its_types(shop):
    message = make_message(shop)
    deliver(
        message,
        ("nobody", Delivery.Status.INVALID),
        ("ann", Delivery.Status.SENT),
        {
            "userid": "bob",
            "status": Delivery.Status.FAILED,
            "smtp_code": 550,
            "smtp_reply": "5.1.1 No such user",
        },
    )

    queued = callbacks_collect()

    assert queued == 5
    assert types_by_userid() == {"nobody": [1], "ann": [0, 2], "bob": [0, 3]}
    errors = {(r["userid"], r["type"]): r.get("error") for r in records()}
    assert errors[("nobody", 1)]["code"] == ERROR_NO_ADDRESS
    assert errors[("bob", 3)] == {"code": 550, "message": "5.1.1 No such user"}
    assert errors[("ann", 2)] is None and errors[("bob", 0)] is None


def test_a_record_has_the_vendors_fields(shop):
    message = make_message(shop, params={"campaign": "spring", "n": 2})
    deliver(message, ("ann", Delivery.Status.SENT))

    callbacks_collect()

    submitted = next(r for r in records() if r["type"] == 2)
    assert submitted == {
        "type": 2,
        "channelkey": shop.channel_key,
        "msgid": message.msgid,
        "userid": "ann",
        "email": "ann@example.com",
        "sender_id": message.sender.code,
        "sender": 4,
        "sent_time": int(SENT_AT.timestamp() * 1000),
        "params": {"campaign": "spring", "n": 2},
    }


def test_raw_addresses_have_an_empty_userid_and_no_params_without_them(shop):
    message = make_message(shop)
    deliver(message, {"userid": "", "email": "raw@example.com", "status": Delivery.Status.SENT})

    callbacks_collect()

    assert all(r["userid"] == "" and r["email"] == "raw@example.com" for r in records())
    assert all("params" not in r for r in records())


def test_nothing_is_reported_twice(shop):
    message = make_message(shop)
    [sent, invalid] = deliver(
        message, ("ann", Delivery.Status.SENT), ("nobody", Delivery.Status.INVALID)
    )
    callbacks_collect()
    mark_due(message)  # the pipeline records the same statuses again

    again = callbacks_collect()

    assert again == 0
    assert CallbackBatch.objects.count() == 1
    sent.refresh_from_db()
    invalid.refresh_from_db()
    assert (sent.callback_due, sent.callback_reported) == (False, 0b101)
    assert (invalid.callback_due, invalid.callback_reported) == (False, 0b10)


def test_a_failure_retried_later_reports_only_the_new_submitted_record(shop):
    message = make_message(shop)
    [row] = deliver(message, {"userid": "ann", "status": Delivery.Status.FAILED, "smtp_code": 451})
    callbacks_collect()
    Delivery.objects.filter(pk=row.pk).update(
        status=Delivery.Status.SENT, sent_at=SENT_AT, callback_due=True
    )

    callbacks_collect()

    assert types_by_userid() == {"ann": [0, 3, 2]}


def test_a_retract_after_sending_reports_8_once(shop):
    message = make_message(shop)
    deliver(message, ("ann", Delivery.Status.SENT))
    callbacks_collect()

    marked = callbacks_mark_retracted(message_id=message.pk)
    callbacks_collect()
    callbacks_mark_retracted(message_id=message.pk)
    callbacks_collect()

    assert marked == 1
    assert types_by_userid() == {"ann": [0, 2, 8]}
    message.refresh_from_db()
    assert message.status == Message.Status.DONE  # a finished message keeps its status


def test_a_retracted_message_reports_7_for_what_it_stopped_and_8_for_what_had_gone(shop):
    message = make_message(shop, status=Message.Status.RETRACTED)
    deliver(message, ("ann", Delivery.Status.SENT), ("bob", Delivery.Status.CANCELLED))

    callbacks_collect()

    assert types_by_userid() == {"ann": [0, 2, 8], "bob": [0, 7]}


def test_rows_cancelled_because_the_channel_closed_failed(shop):
    message = make_message(shop)
    deliver(message, ("ann", Delivery.Status.CANCELLED))

    callbacks_collect()

    [valid, failed] = records()
    assert (valid["type"], failed["type"]) == (0, 3)
    assert failed["error"]["code"] == ERROR_NOT_SENT


def test_the_sender_of_a_strategy_step_is_named(shop, make_sender):
    first = channel_default_sender(channel=shop)
    second = make_sender()
    channel_authorize_sender(channel=shop, sender=second)
    rule = SendingRule.objects.create(channel=shop, rule_id=7, name="fallback")
    SendingRuleStep.objects.create(rule=rule, sender=first, position=0)
    SendingRuleStep.objects.create(rule=rule, sender=second, position=1)
    message = make_message(shop, rule=rule)
    deliver(
        message,
        {"userid": "ann", "status": Delivery.Status.SENT, "step": 0},
        {"userid": "bob", "status": Delivery.Status.SENT, "step": 1},
    )

    callbacks_collect()

    senders = {r["userid"]: r["sender_id"] for r in records()}
    assert senders == {"ann": first.code, "bob": second.code}


def test_records_are_batched_per_channel_and_url(shop, make_sender):
    from channels_app.services import channel_create

    other, _secret = channel_create(name="Other")
    channel_authorize_sender(channel=other, sender=make_sender(), is_default=True)
    deliver(make_message(shop, url=HOOK), ("a1", Delivery.Status.INVALID))
    deliver(make_message(shop, url=HOOK), ("a2", Delivery.Status.INVALID))
    deliver(make_message(shop, url=HOOK + "/b"), ("b1", Delivery.Status.INVALID))
    deliver(make_message(other, url=HOOK), ("c1", Delivery.Status.INVALID))

    callbacks_collect()

    batches = {
        (b.channel.name, b.url): sorted(r["userid"] for r in b.records)
        for b in CallbackBatch.objects.select_related("channel")
    }
    assert batches == {
        ("Shop", HOOK): ["a1", "a2"],
        ("Shop", HOOK + "/b"): ["b1"],
        ("Other", HOOK): ["c1"],
    }


def test_250_due_rows_make_three_batches_of_at_most_100(shop):
    message = make_message(shop)
    deliver(message, *((f"user{n}", Delivery.Status.INVALID) for n in range(250)))

    callbacks_collect()

    sizes = sorted(CallbackBatch.objects.values_list("size", flat=True))
    assert sizes == [50, 100, 100]
    assert sorted(len(b.records) for b in CallbackBatch.objects.all()) == [50, 100, 100]
    assert len({r["userid"] for r in records()}) == 250


def test_messages_without_a_callback_url_report_nothing(shop):
    message = make_message(shop, url="", params={"kept": True})
    [row] = deliver(message, ("ann", Delivery.Status.SENT))

    assert callbacks_collect() == 0

    row.refresh_from_db()
    assert not CallbackBatch.objects.exists()
    assert (row.callback_due, row.callback_reported) == (False, 0)


def test_collecting_takes_a_few_queries_whatever_the_number_of_rows(
    shop, django_assert_max_num_queries
):
    for n in range(10):
        message = make_message(shop, params={"n": n})
        deliver(message, *((f"user{n}-{k}", Delivery.Status.SENT) for k in range(150)))

    with django_assert_max_num_queries(12):
        queued = callbacks_collect()

    assert queued == 3000
    assert not Delivery.objects.filter(callback_due=True).exists()


# --- the poster ----------------------------------------------------------------------------------


@pytest.fixture
def hook(shop, callback_server) -> CallbackUrl:
    """A verified callback URL of the shop, served by the test's HTTP server."""
    return CallbackUrl.objects.create(
        channel=shop, url=callback_server.url(), verified_at=timezone.now()
    )


def collected_batch(shop, hook, params=None) -> CallbackBatch:
    message = make_message(shop, url=hook.url, params=params)
    deliver(message, ("ann", Delivery.Status.SENT), ("nobody", Delivery.Status.INVALID))
    callbacks_collect()
    return CallbackBatch.objects.get()


def test_a_batch_is_posted_with_basic_auth_and_a_verifiable_signature(shop, hook, callback_server):
    batch = collected_batch(shop, hook)
    secret = shop.get_master_secret()

    outcome = callback_batch_post(batch_id=batch.pk)

    assert outcome.status == PostStatus.DELIVERED
    [request] = callback_server.requests
    assert (request.method, request.path) == ("POST", "/ums/callback")
    assert request.headers["content-type"] == "application/json"
    expected_auth = base64.b64encode(f"{shop.channel_key}:{secret}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {expected_auth}"
    scheme, signature = request.headers["x-ums-signature"].split("=", 1)
    assert scheme == "sha256"
    mac = hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(signature, mac)
    assert json.loads(request.body) == batch.records
    assert [r["type"] for r in json.loads(request.body)] == [0, 2, 1]
    batch.refresh_from_db()
    assert (batch.status, batch.attempts, batch.last_status_code) == ("delivered", 1, 200)
    assert batch.finished_at is not None and batch.claimed_at is None


def test_the_signature_does_not_verify_with_another_secret(shop, hook, callback_server):
    callback_batch_post(batch_id=collected_batch(shop, hook).pk)

    [request] = callback_server.requests
    forged = hmac.new(b"0" * 32, request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-ums-signature"] != f"sha256={forged}"


def test_500_then_200_is_delivered_after_a_retry(shop, hook, callback_server):
    callback_server.reply_with((500, b"busy"), (200, b"ok"))
    batch = collected_batch(shop, hook)
    start = timezone.now()

    first = callback_batch_post(batch_id=batch.pk, now=start)
    batch.refresh_from_db()
    waiting = (batch.status, batch.attempts, batch.last_status_code, batch.next_attempt_at)
    too_early = callback_batch_post(batch_id=batch.pk, now=start + timedelta(seconds=10))
    second = callback_batch_post(batch_id=batch.pk, now=start + timedelta(seconds=50))

    assert (first.status, first.retry_in) == (PostStatus.RETRYING, 50.0)
    assert waiting == ("pending", 1, 500, start + timedelta(seconds=50))
    assert too_early.status == PostStatus.SKIPPED
    assert second.status == PostStatus.DELIVERED
    first_post, second_post = callback_server.requests
    assert first_post.body == second_post.body
    batch.refresh_from_db()
    assert (batch.status, batch.attempts, batch.last_status_code) == ("delivered", 2, 200)


def test_always_500_is_dropped_after_three_retries_and_shown_in_the_console(
    shop, hook, callback_server, client, role_user
):
    callback_server.reply_with((500, b"down"))
    batch = collected_batch(shop, hook)
    start = timezone.now()

    outcomes = [
        callback_batch_post(batch_id=batch.pk, now=start + timedelta(seconds=50 * n))
        for n in range(5)
    ]

    assert [o.status for o in outcomes] == ["retrying"] * 3 + ["dropped", "skipped"]
    assert len(callback_server.requests) == 4
    batch.refresh_from_db()
    assert (batch.status, batch.attempts, batch.last_status_code) == ("dropped", 4, 500)
    assert batch.last_error == "HTTP 500"
    client.force_login(role_user("Channel admin"))
    changelist = reverse("admin:messaging_callbackbatch_changelist")
    dropped = client.get(changelist, {"status__exact": "dropped"}).content.decode()
    delivered = client.get(changelist, {"status__exact": "delivered"}).content.decode()
    assert "Dropped" in dropped and "HTTP 500" in dropped and hook.url in dropped
    assert hook.url not in delivered


def test_the_retries_and_their_spacing_are_settings(shop, hook, callback_server, settings):
    settings.UMS_CALLBACK_RETRIES = 1
    settings.UMS_CALLBACK_RETRY_SECONDS = 5
    callback_server.reply_with((503, b""))
    batch = collected_batch(shop, hook)
    start = timezone.now()

    first = callback_batch_post(batch_id=batch.pk, now=start)
    second = callback_batch_post(batch_id=batch.pk, now=start + timedelta(seconds=5))

    assert (first.status, first.retry_in) == ("retrying", 5.0)
    assert second.status == "dropped"


def test_a_timeout_is_retried_with_its_reason(shop, hook, callback_server, settings):
    settings.UMS_CALLBACK_TIMEOUT = 0.5
    callback_server.reply_with(SLOW)
    batch = collected_batch(shop, hook)

    outcome = callback_batch_post(batch_id=batch.pk)

    assert outcome.status == PostStatus.RETRYING
    batch.refresh_from_db()
    assert (batch.last_status_code, batch.last_error) == (None, "timed out")


def test_a_private_address_is_refused_unless_allowed(shop, hook, callback_server, settings):
    settings.UMS_SMTP_ALLOW_PRIVATE_NETWORKS = False
    batch = collected_batch(shop, hook)

    outcome = callback_batch_post(batch_id=batch.pk)

    assert outcome.status == PostStatus.RETRYING
    assert "may not be reached from this server" in outcome.error
    assert callback_server.requests == []


def test_a_url_no_longer_verified_is_dropped_without_posting(shop, hook, callback_server):
    batch = collected_batch(shop, hook)
    CallbackUrl.objects.filter(pk=hook.pk).update(verified_at=None)

    outcome = callback_batch_post(batch_id=batch.pk)

    assert outcome.status == PostStatus.DROPPED
    assert "no longer a verified callback URL" in outcome.error
    assert callback_server.requests == []


def test_a_claimed_batch_is_not_posted_twice(shop, hook, callback_server):
    batch = collected_batch(shop, hook)
    CallbackBatch.objects.filter(pk=batch.pk).update(claimed_at=timezone.now())  # a worker has it

    outcome = callback_batch_post(batch_id=batch.pk)

    assert outcome.status == PostStatus.SKIPPED
    assert callback_server.requests == []


def test_a_delivered_batch_is_not_posted_again(shop, hook, callback_server):
    batch = collected_batch(shop, hook)
    callback_batch_post(batch_id=batch.pk)

    again = callback_batch_post(batch_id=batch.pk)

    assert again.status == PostStatus.SKIPPED
    assert len(callback_server.requests) == 1


# --- sweeping, retrying, the tasks ---------------------------------------------------------------


def test_the_sweeper_releases_dead_claims_and_hands_out_lost_posts(shop):
    now = timezone.now()

    def batch(**fields) -> CallbackBatch:
        return CallbackBatch.objects.create(channel=shop, url=HOOK, records=[], size=0, **fields)

    dead = batch(claimed_at=now - timedelta(minutes=10), attempts=1)
    dead_on_last_try = batch(claimed_at=now - timedelta(minutes=10), attempts=4)
    lost = batch(next_attempt_at=now - timedelta(minutes=5))
    fresh = batch(next_attempt_at=now)
    posting = batch(claimed_at=now - timedelta(seconds=5), attempts=1)

    handed_out = callback_batches_sweep(now=now)
    again = callback_batches_sweep(now=now + timedelta(seconds=1))

    assert sorted(handed_out) == sorted([dead.pk, lost.pk])
    assert again == []
    dead_on_last_try.refresh_from_db()
    assert dead_on_last_try.status == CallbackBatch.Status.DROPPED
    assert "worker stopped" in dead_on_last_try.last_error
    for untouched in (fresh, posting):
        untouched.refresh_from_db()
        assert untouched.status == CallbackBatch.Status.PENDING
    posting.refresh_from_db()
    assert posting.claimed_at is not None


def test_retry_now_puts_dropped_and_waiting_batches_back_but_not_delivered_ones(shop):
    def batch(status, **fields) -> CallbackBatch:
        return CallbackBatch.objects.create(
            channel=shop, url=HOOK, records=[], size=0, status=status, attempts=4, **fields
        )

    dropped = batch(CallbackBatch.Status.DROPPED, finished_at=timezone.now())
    delivered = batch(CallbackBatch.Status.DELIVERED, finished_at=timezone.now())
    posting = batch(CallbackBatch.Status.PENDING, claimed_at=timezone.now())

    retried = callback_batches_retry(batch_ids=[dropped.pk, delivered.pk, posting.pk])

    assert retried == [dropped.pk]
    dropped.refresh_from_db()
    assert (dropped.status, dropped.attempts, dropped.finished_at) == ("pending", 0, None)
    delivered.refresh_from_db()
    assert delivered.status == CallbackBatch.Status.DELIVERED


def test_the_tasks_collect_and_post_end_to_end(
    shop, hook, callback_server, eager_tasks, django_capture_on_commit_callbacks
):
    message = make_message(shop, url=hook.url, params={"order": 42})
    deliver(message, *((f"user{n}", Delivery.Status.SENT) for n in range(60)))

    with django_capture_on_commit_callbacks(execute=True):
        queued = callback_tasks.callbacks_collect_task()

    assert queued == 120
    assert sorted(len(r.json()) for r in callback_server.requests) == [20, 100]
    assert all(r["params"] == {"order": 42} for req in callback_server.requests for r in req.json())
    assert set(CallbackBatch.objects.values_list("status", flat=True)) == {"delivered"}


# --- the console ---------------------------------------------------------------------------------


ROLE_PAGES = {
    # role: (list, batch page, may retry)
    None: (200, 200, True),
    "Channel admin": (200, 200, True),
    "Reviewer": (200, 200, False),
    "Marketing": (403, 403, False),
    "Data admin": (403, 403, False),
}


@pytest.mark.parametrize("role", list(ROLE_PAGES))
def test_batch_pages_per_role(client, role_user, shop, role):
    batch = CallbackBatch.objects.create(
        channel=shop, url=HOOK, records=[{"type": 1}], size=1, status="dropped"
    )
    client.force_login(role_user(role))
    listing = client.get(reverse("admin:messaging_callbackbatch_changelist"))
    page = client.get(reverse("admin:messaging_callbackbatch_change", args=[batch.pk]))
    retry = reverse("admin:messaging_callbackbatch_retry", args=[batch.pk])

    list_status, page_status, may_retry = ROLE_PAGES[role]
    assert (listing.status_code, page.status_code) == (list_status, page_status)
    if page_status == 200:
        assert (retry in page.content.decode()) == may_retry
        assert ("Retry now" in listing.content.decode()) == may_retry
        assert 'name="_save"' not in page.content.decode()
    assert (client.post(retry).status_code == 302) == may_retry
    batch.refresh_from_db()
    assert batch.status == ("pending" if may_retry else "dropped")


def test_a_batch_page_shows_its_records_pretty_printed_and_escaped(admin_client, shop, hook):
    batch = collected_batch(shop, hook, params={"note": "<script>alert(1)</script>"})

    page = admin_client.get(
        reverse("admin:messaging_callbackbatch_change", args=[batch.pk])
    ).content.decode()

    # One record per block, a field per line (PostgreSQL stores the keys in its own order).
    assert f"\n    &quot;channelkey&quot;: &quot;{shop.channel_key}&quot;" in page
    assert "\n  {\n    &quot;" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert(1)" not in page
    assert shop.get_master_secret() not in page


def test_retry_now_in_the_list_posts_the_batches_again(
    client, role_user, shop, hook, callback_server, eager_tasks, django_capture_on_commit_callbacks
):
    callback_server.reply_with((500, b"down"))
    batch = collected_batch(shop, hook)
    start = timezone.now()
    for n in range(4):
        callback_batch_post(batch_id=batch.pk, now=start + timedelta(seconds=50 * n))
    callback_server.reply_with((200, b"ok"))
    client.force_login(role_user("Channel admin"))

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("admin:messaging_callbackbatch_changelist"),
            {"action": "retry_now", "_selected_action": [batch.pk]},
            follow=True,
        )

    assert "1 batch will be posted again now." in response.content.decode()
    assert len(callback_server.requests) == 5
    batch.refresh_from_db()
    assert (batch.status, batch.attempts, batch.last_status_code) == ("delivered", 1, 200)


def test_retry_now_on_a_delivered_batch_says_there_is_nothing_to_do(admin_client, shop):
    batch = CallbackBatch.objects.create(
        channel=shop, url=HOOK, records=[], size=0, status="delivered"
    )

    response = admin_client.post(
        reverse("admin:messaging_callbackbatch_retry", args=[batch.pk]), follow=True
    )

    assert "Nothing to retry" in response.content.decode()
