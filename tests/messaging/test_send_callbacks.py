"""Status callbacks fed by the pipeline: the statements that record a final status mark the rows
due when the message has a callback URL, and the collector reports what the recipient saw."""

import base64
import json
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from channels_app import services as channel_services
from channels_app.models import CallbackUrl
from messaging import sending
from messaging.callbacks import ERROR_NO_REPLY, callbacks_collect
from messaging.models import CallbackBatch, Delivery, Message
from messaging.services import Audience, Content, Options, message_create
from tests.smtp_server import free_port
from ums.celery import beat_schedule

pytestmark = pytest.mark.django_db

HOOK = "https://shop.example/ums/callback"


@pytest.fixture
def api_shop(db, plain_server, make_sender):
    """A channel with a verified callback URL (its messages' default), and its API auth."""
    channel, secret = channel_services.channel_create(name="Shop")
    sender = make_sender(plain_server, account="", password="", from_name="Shop")
    channel_services.channel_authorize_sender(channel=channel, sender=sender, is_default=True)
    CallbackUrl.objects.create(channel=channel, url=HOOK, verified_at=timezone.now())
    channel.auth = "Basic " + base64.b64encode(f"{channel.channel_key}:{secret}".encode()).decode()
    return channel


def send(channel, *userids: str, callback: dict | None = None) -> Message:
    message, _created = message_create(
        channel=channel,
        audience=Audience(userids=list(userids)),
        content=Content(subject="Hello", html="<p>Hello</p>"),
        options=Options(callback=callback or {}),
        source="api",
    )
    return message


def run(message: Message) -> Message:
    for batch in sending.message_resolve(message_id=message.pk):
        sending.batch_send(message_id=message.pk, batch=batch)
    message.refresh_from_db()
    return message


def reported() -> dict[str, list[dict]]:
    callbacks_collect()
    found: dict[str, list[dict]] = {}
    for batch in CallbackBatch.objects.order_by("pk"):
        for record in batch.records:
            found.setdefault(record["userid"], []).append(record)
    return found


def types(found: dict[str, list[dict]]) -> dict[str, list[int]]:
    return {userid: [r["type"] for r in records] for userid, records in found.items()}


def due(message: Message) -> dict[str, bool]:
    return dict(message.deliveries.values_list("userid", "callback_due"))


def test_sent_rows_are_due_and_report_0_and_2(api_shop, bind, plain_server):
    bind("ann", "all", "ann@example.com")
    bind("bob", "all", "bob@example.com")

    message = run(send(api_shop, "ann", "bob", callback={"params": {"order": 7}}))

    assert message.callback["url"] == HOOK
    assert due(message) == {"ann": True, "bob": True}
    found = reported()
    assert types(found) == {"ann": [0, 2], "bob": [0, 2]}
    assert all(r["params"] == {"order": 7} for records in found.values() for r in records)
    assert not message.deliveries.filter(callback_due=True).exists()


def test_without_a_callback_url_no_row_is_due(shop, bind, plain_server):
    bind("ann", "all", "ann@example.com")

    message = run(send(shop, "ann", "nobody"))

    assert message.callback == {}
    assert due(message) == {"ann": False, "nobody": False}
    assert reported() == {}


def test_invalid_targets_are_due_right_after_resolution(api_shop, bind):
    bind("ann", "all", "ann@example.com")
    message = send(api_shop, "ann", "nobody")

    sending.message_resolve(message_id=message.pk)

    assert due(message) == {"ann": False, "nobody": True}
    assert types(reported()) == {"nobody": [1]}


def test_a_550_reports_0_and_3_with_its_code(api_shop, bind, plain_server):
    bind("ann", "all", "ann@example.com")
    plain_server.controller.handler.handle_RCPT = _refuse

    message = run(send(api_shop, "ann"))

    assert message.failed == 1
    [first, failed] = reported()["ann"]
    assert (first["type"], failed["type"]) == (0, 3)
    assert failed["error"]["code"] == 550
    assert "no such mailbox" in failed["error"]["message"]


async def _refuse(server, session, envelope, address, rcpt_options):
    return "550 5.1.1 no such mailbox"


def test_exhausted_retries_report_0_and_3_without_an_smtp_code(
    api_shop, bind, make_sender, settings
):
    settings.UMS_DELIVERY_MAX_ATTEMPTS = 1
    bind("ann", "all", "ann@example.com")
    message = send(api_shop, "ann")
    nobody_listens = make_sender(None, port=free_port(), encryption="none", account="")
    Message.objects.filter(pk=message.pk).update(sender=nobody_listens)

    message = run(message)

    assert message.failed == 1
    row = message.deliveries.get()
    assert (row.status, row.smtp_code, row.callback_due) == ("failed", None, True)
    assert row.updated_at > timezone.now() - timedelta(minutes=1)
    [first, failed] = reported()["ann"]
    assert (first["type"], failed["type"]) == (0, 3)
    assert failed["error"]["code"] == ERROR_NO_REPLY


def test_the_sweepers_last_attempt_failures_are_due(api_shop, bind, settings):
    bind("ann", "all", "ann@example.com")
    message = send(api_shop, "ann")
    sending.message_resolve(message_id=message.pk)
    long_ago = timezone.now() - timedelta(hours=1)
    message.deliveries.update(
        status=Delivery.Status.SENDING,
        claimed_at=long_ago,
        attempts=settings.UMS_DELIVERY_MAX_ATTEMPTS,
        updated_at=long_ago,
    )

    sending.sweep()

    row = message.deliveries.get()
    assert (row.status, row.callback_due) == ("failed", True)
    assert row.updated_at > long_ago
    assert types(reported()) == {"ann": [0, 3]}


def test_retract_reports_7_for_cancelled_rows_and_8_for_one_sent_afterwards(
    api_shop, bind, plain_server, client, settings
):
    settings.UMS_DELIVERY_BATCH_SIZE = 1
    bind("ann", "all", "ann@example.com")
    bind("bob", "all", "bob@example.com")
    message = send(api_shop, "ann", "bob")
    sending.message_resolve(message_id=message.pk)
    message.refresh_from_db()
    in_flight = sending._claim(message, 0)  # a worker took ann's batch before the retract

    response = client.post(f"/v1/retract/{message.msgid}", HTTP_AUTHORIZATION=api_shop.auth)
    assert response.status_code == 200
    sending._send_group(message, message.sender, in_flight, True)  # and sends it after

    assert dict(message.deliveries.values_list("userid", "status")) == {
        "ann": "sent",
        "bob": "cancelled",
    }
    assert types(reported()) == {"ann": [0, 2, 8], "bob": [0, 7]}


def test_retracting_a_finished_message_reports_8_exactly_once(api_shop, bind, plain_server, client):
    bind("ann", "all", "ann@example.com")
    message = run(send(api_shop, "ann"))
    assert types(reported()) == {"ann": [0, 2]}

    for _twice in range(2):
        response = client.post(f"/v1/retract/{message.msgid}", HTTP_AUTHORIZATION=api_shop.auth)
        assert response.status_code == 200
        callbacks_collect()

    message.refresh_from_db()
    assert message.status == Message.Status.DONE
    assert types(reported()) == {"ann": [0, 2, 8]}


def test_the_beat_runs_the_collector_and_the_sweeper_of_callbacks():
    schedule = beat_schedule(django_settings)

    assert schedule["callbacks-collect"] == {
        "task": "messaging.callback_tasks.callbacks_collect_task",
        "schedule": 10.0,
    }
    assert schedule["callbacks-sweep"] == {
        "task": "messaging.callback_tasks.callbacks_sweep_task",
        "schedule": 30.0,
    }


def test_the_hourly_purge_deletes_delivered_batches_after_a_week(api_shop):
    from messaging.tasks import purge

    now = timezone.now()

    def batch(status, finished):
        return CallbackBatch.objects.create(
            channel=api_shop, url=HOOK, records=[], status=status, finished_at=finished
        )

    old = batch(CallbackBatch.Status.DELIVERED, now - timedelta(days=8))
    recent = batch(CallbackBatch.Status.DELIVERED, now - timedelta(days=6))
    dropped = batch(CallbackBatch.Status.DROPPED, now - timedelta(days=30))

    purge()

    assert set(CallbackBatch.objects.values_list("pk", flat=True)) == {recent.pk, dropped.pk}
    assert not CallbackBatch.objects.filter(pk=old.pk).exists()
    assert json.dumps(dropped.records) == "[]"
