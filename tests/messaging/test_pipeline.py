"""The delivery pipeline's services against a real aiosmtpd server: resolve, send, retry, record."""

from datetime import timedelta
from email import message_from_bytes

import pytest
from django.utils import timezone

from channels_app import services as channel_services
from channels_app.models import EmailSender
from messaging import sending
from messaging.models import Delivery, Message
from messaging.services import (
    Audience,
    Content,
    Options,
    SendRefused,
    message_create,
    message_retract,
)
from tests.smtp_server import RefusingServer

pytestmark = pytest.mark.django_db


def send(channel, audience: Audience, *, sendno: str = "", html: str = "<p>Hello</p>") -> Message:
    message, _created = message_create(
        channel=channel,
        audience=audience,
        content=Content(subject="Hello", html=html),
        options=Options(sendno=sendno),
        source="api",
    )
    return message


def run(message: Message) -> Message:
    """What the workers do, in this process: resolve, then send every batch once."""
    for batch in sending.message_resolve(message_id=message.pk):
        sending.batch_send(message_id=message.pk, batch=batch)
    message.refresh_from_db()
    return message


def deliveries(message: Message) -> dict[str, tuple[str, str]]:
    return {d.userid or d.email: (d.email, d.status) for d in message.deliveries.all()}


def make_due(message: Message) -> None:
    message.deliveries.filter(status=Delivery.Status.RETRYING).update(
        next_attempt_at=timezone.now()
    )


def test_channel_binding_wins_over_all(shop, bind, plain_server):
    bind("zhangsan", "all", "zs@home.example")
    bind("zhangsan", shop.channel_key, "zs@shop.example")
    bind("lisi", "all", "ls@home.example")
    bind("wangwu", "other-channel-key-000000", "ww@elsewhere.example")

    message = run(send(shop, Audience(userids=["zhangsan", "lisi", "wangwu", "nobody"])))

    assert deliveries(message) == {
        "zhangsan": ("zs@shop.example", "sent"),
        "lisi": ("ls@home.example", "sent"),
        "wangwu": ("", "invalid"),
        "nobody": ("", "invalid"),
    }
    assert sorted(m.rcpt_tos[0] for m in plain_server.recorder.messages) == [
        "ls@home.example",
        "zs@shop.example",
    ]
    assert (message.status, message.total, message.sent, message.invalid) == ("done", 4, 2, 2)


def test_tags_under_the_channel_or_all(shop, bind):
    bind("a", "all", "a@example.com", tags=("vip",))
    bind("b", "all", "b@example.com")
    bind("b", shop.channel_key, tags=("vip",))
    bind("c", "all", "c@example.com", tags=("other",))
    bind("d", "other-channel-key-000000", tags=("vip",))
    bind("d", "all", "d@example.com")

    message = run(send(shop, Audience(tags=["vip"])))

    assert set(deliveries(message)) == {"a", "b"}


def test_broadcast_reaches_every_user_with_a_usable_address(shop, bind, settings):
    settings.UMS_DELIVERY_BATCH_SIZE = 2
    for i in range(5):
        bind(f"u{i}", "all", f"u{i}@example.com")
    bind("shop-only", shop.channel_key, "s@example.com")
    bind("elsewhere", "other-channel-key-000000", "e@example.com")

    message = run(send(shop, Audience(everyone=True)))

    assert set(deliveries(message)) == {"u0", "u1", "u2", "u3", "u4", "shop-only"}
    assert message.deliveries.values("batch").distinct().count() == 3
    assert message.sent == 6


def test_raw_addresses_are_sent_once_each(shop, plain_server):
    message = run(send(shop, Audience(emails=["a@example.com", "b@example.com", "a@example.com"])))

    assert message.sent == 2
    assert [m.rcpt_tos for m in plain_server.recorder.messages] == [
        ["a@example.com"],
        ["b@example.com"],
    ]


def test_every_email_has_one_recipient_its_own_message_id_and_the_msgid(shop, bind, plain_server):
    bind("a", "all", "a@example.com")
    bind("b", "all", "b@example.com")

    message = run(send(shop, Audience(userids=["a", "b"])))

    parsed = [message_from_bytes(m.data) for m in plain_server.recorder.messages]
    assert [p["To"] for p in parsed] == ["a@example.com", "b@example.com"]
    assert len({p["Message-ID"] for p in parsed}) == 2
    assert all(p["X-UMS-Msgid"] == message.msgid for p in parsed)
    assert parsed[0].get_content_type() == "multipart/alternative"
    stored = set(message.deliveries.values_list("smtp_message_id", flat=True))
    assert stored == {p["Message-ID"] for p in parsed}


def test_a_4xx_reply_is_retried_and_then_sent(shop, bind, plain_server):
    bind("a", "all", "a@example.com")
    replies = iter(["451 4.7.1 Try again later", None])

    async def rcpt(server, session, envelope, address, options):
        reply = next(replies)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    plain_server.controller.handler.handle_RCPT = rcpt
    message = run(send(shop, Audience(userids=["a"])))
    first = message.deliveries.get()
    assert (first.status, first.smtp_code, first.attempts) == ("retrying", 451, 1)
    assert first.next_attempt_at > timezone.now()

    make_due(message)
    sending.batch_send(message_id=message.pk, batch=0)

    delivery = message.deliveries.get()
    message.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.smtp_code) == ("sent", 2, 250)
    assert message.status == "done"


def test_a_5xx_reply_fails_at_once_with_its_code(shop, bind, plain_server):
    bind("a", "all", "a@example.com")
    bind("b", "all", "b@example.com")

    async def rcpt(server, session, envelope, address, options):
        if address == "a@example.com":
            return "550 5.1.1 No such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    plain_server.controller.handler.handle_RCPT = rcpt
    message = run(send(shop, Audience(userids=["a", "b"])))

    failed = message.deliveries.get(userid="a")
    assert (failed.status, failed.smtp_code, failed.attempts) == ("failed", 550, 1)
    assert "No such mailbox" in failed.smtp_reply
    assert (message.sent, message.failed, message.status) == (1, 1, "done")


def test_retries_end_in_failed_after_the_last_attempt(shop, bind, plain_server, settings):
    settings.UMS_DELIVERY_MAX_ATTEMPTS = 2
    bind("a", "all", "a@example.com")

    async def rcpt(server, session, envelope, address, options):
        return "452 4.2.2 Mailbox full"

    plain_server.controller.handler.handle_RCPT = rcpt
    message = run(send(shop, Audience(userids=["a"])))
    make_due(message)
    sending.batch_send(message_id=message.pk, batch=0)

    delivery = message.deliveries.get()
    assert (delivery.status, delivery.attempts, delivery.smtp_code) == ("failed", 2, 452)


def test_a_hung_server_times_out_and_the_delivery_is_retried(
    db, silent_server, make_sender, bind, settings
):
    settings.UMS_SMTP_TIMEOUT = 1
    channel, _secret = channel_services.channel_create(name="Slow")
    sender = make_sender(silent_server, encryption="none", account="", password="")
    channel_services.channel_authorize_sender(channel=channel, sender=sender)
    bind("a", "all", "a@example.com")

    message = run(send(channel, Audience(userids=["a"])))

    delivery = message.deliveries.get()
    assert delivery.status == "retrying"
    assert "did not answer in time" in delivery.smtp_reply
    assert message.status == "sending"


def test_wrong_credentials_stop_the_batch_and_mark_the_sender(
    db, ssl_server, trust_test_ca, make_sender, bind
):
    channel, _secret = channel_services.channel_create(name="Locked")
    sender = make_sender(ssl_server, password="wrong")
    channel_services.channel_authorize_sender(channel=channel, sender=sender)
    for name in ("a", "b", "c"):
        bind(name, "all", f"{name}@example.com")

    message = run(send(channel, Audience(userids=["a", "b", "c"])))
    make_due(message)
    sending.batch_send(message_id=message.pk, batch=0)  # a retry must not log in again

    assert set(message.deliveries.values_list("status", flat=True)) == {"retrying"}
    sender.refresh_from_db()
    assert (sender.health, sender.health_error_kind) == (EmailSender.Health.FAILED, "auth")
    assert len(ssl_server.recorder.auth_attempts) == 1
    assert ssl_server.recorder.messages == []


def test_retract_cancels_what_was_not_handed_to_smtp(shop, bind, plain_server):
    for name in ("a", "b", "c"):
        bind(name, "all", f"{name}@example.com")
    message = send(shop, Audience(userids=["a", "b", "c"]))
    sending.message_resolve(message_id=message.pk)
    message.deliveries.filter(userid="a").update(status=Delivery.Status.SENT)
    Message.objects.filter(pk=message.pk).update(sent=1)

    result = message_retract(message=message)
    sending.batch_send(message_id=message.pk, batch=0)

    assert result == {"cancelled": 2, "sent": 1, "in_flight": 0}
    assert plain_server.recorder.messages == []
    with pytest.raises(SendRefused) as info:
        message_retract(message=message)
    assert info.value.code == 1015055


def test_a_repeated_sendno_returns_the_first_message(shop, bind):
    bind("a", "all", "a@example.com")
    first = send(shop, Audience(userids=["a"]), sendno="order-42")
    again = send(shop, Audience(userids=["a"]), sendno="order-42")

    assert again.pk == first.pk
    assert Message.objects.count() == 1


def test_a_sendno_older_than_a_day_starts_a_new_message(shop, bind):
    first = send(shop, Audience(userids=["a"]), sendno="order-42")
    Message.objects.filter(pk=first.pk).update(created_at=timezone.now() - timedelta(days=2))
    first.refresh_from_db()
    from messaging.models import SendnoKey

    SendnoKey.objects.update(created_at=first.created_at)

    again = send(shop, Audience(userids=["a"]), sendno="order-42")

    assert again.pk != first.pk


def test_a_closed_channel_or_one_without_a_sender_is_refused(shop, db):
    shop.status = "closed"
    shop.save()
    with pytest.raises(SendRefused) as closed:
        send(shop, Audience(userids=["a"]))
    bare, _secret = channel_services.channel_create(name="Bare")
    with pytest.raises(SendRefused) as no_sender:
        send(bare, Audience(userids=["a"]))

    assert (closed.value.code, closed.value.status) == (1015005, 403)
    assert no_sender.value.code == 1015010


def test_the_plain_text_part_is_derived_from_the_html(shop):
    message = send(
        shop,
        Audience(emails=["a@example.com"]),
        html="<h1>Sale</h1><p>50% off&nbsp;today<br>only</p>",
    )

    assert message.text == "Sale\n50% off\xa0today\nonly"


def test_resolving_twice_writes_each_recipient_once(shop, bind):
    bind("a", "all", "a@example.com")
    message = send(shop, Audience(userids=["a"]))
    sending.message_resolve(message_id=message.pk)
    Message.objects.filter(pk=message.pk).update(status=Message.Status.RESOLVING)

    sending.message_resolve(message_id=message.pk)

    assert message.deliveries.count() == 1


def test_sweeper_takes_back_stuck_claims_and_lost_messages(shop, bind, settings):
    bind("a", "all", "a@example.com")
    lost = send(shop, Audience(userids=["a"]))
    stuck = send(shop, Audience(userids=["a"]))
    sending.message_resolve(message_id=stuck.pk)
    long_ago = timezone.now() - timedelta(hours=1)
    stuck.deliveries.update(status=Delivery.Status.SENDING, claimed_at=long_ago)
    Message.objects.filter(pk=lost.pk).update(created_at=long_ago)

    outcome = sending.sweep()

    assert outcome.messages == [lost.pk]
    assert outcome.released == 1
    assert outcome.batches == [(stuck.pk, 0, Message.Priority.MEDIUM)]
    assert sending.sweep().batches == []  # a second sweep right after hands nothing out again


def test_expired_materials_are_purged_unless_a_message_still_needs_them(shop):
    from django.core.files.base import ContentFile

    from messaging.models import Material
    from messaging.services import materials_purge

    def material(name: str, hours: int) -> Material:
        return Material.objects.create(
            channel=shop,
            file=ContentFile(b"data", name=name),
            name=name,
            content_type="text/plain",
            size=4,
            expires_at=timezone.now() + timedelta(hours=hours),
        )

    expired, needed, fresh = (
        material("old.txt", -1),
        material("needed.txt", -1),
        material("new.txt", 5),
    )
    pending = send(shop, Audience(emails=["a@example.com"]))
    pending.materials.add(needed)
    path = expired.file.path

    assert materials_purge() == 1
    assert set(Material.objects.values_list("name", flat=True)) == {"needed.txt", "new.txt"}
    import os

    assert not os.path.exists(path)
    assert fresh.file.storage.exists(fresh.file.name)


def test_a_retract_during_resolution_stands(shop, bind, monkeypatch, plain_server):
    bind("a", "all", "a@example.com")
    message = send(shop, Audience(userids=["a"]))
    write = sending._write_deliveries

    def write_then_retract(msg):
        written = write(msg)
        message_retract(message=Message.objects.get(pk=msg.pk))  # lands in the middle
        return written

    monkeypatch.setattr(sending, "_write_deliveries", write_then_retract)
    run(message)

    assert message.status == Message.Status.RETRACTED
    assert (message.total, message.cancelled) == (1, 1)
    assert plain_server.recorder.messages == []


def test_a_message_that_cannot_be_built_fails_its_recipients_in_the_end(shop, bind, settings):
    from django.core.files.base import ContentFile

    from messaging.models import Material

    settings.UMS_DELIVERY_MAX_ATTEMPTS = 2
    bind("a", "all", "a@example.com")
    material = Material.objects.create(
        channel=shop,
        file=ContentFile(b"data", name="gone.txt"),
        name="gone.txt",
        content_type="text/plain",
        size=4,
        expires_at=timezone.now() + timedelta(hours=1),
    )
    message = send(shop, Audience(userids=["a"]))
    message.materials.add(material)
    material.file.delete(save=False)  # the attachment's file is gone

    run(message)
    make_due(message)
    sending.batch_send(message_id=message.pk, batch=0)

    delivery = message.deliveries.get()
    message.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("failed", 2)
    assert message.status == "done"


def test_a_closed_channel_stops_what_is_still_queued(shop, bind, plain_server):
    bind("a", "all", "a@example.com")
    message = send(shop, Audience(userids=["a"]))
    sending.message_resolve(message_id=message.pk)
    shop.status = "closed"
    shop.save()

    sending.batch_send(message_id=message.pk, batch=0)

    message.refresh_from_db()
    assert message.deliveries.get().status == "cancelled"
    assert message.cancelled == 1
    assert plain_server.recorder.messages == []


def test_a_disabled_sender_gives_way_to_the_channels_next_one(
    shop, bind, make_sender, plain_server
):
    bind("a", "all", "a@example.com")
    message = send(shop, Audience(userids=["a"]))
    backup = make_sender(plain_server, account="", password="", name="Backup")
    channel_services.channel_authorize_sender(channel=shop, sender=backup)
    message.sender.is_enabled = False
    message.sender.save()

    run(message)

    assert message.sent == 1
    assert "Backup" not in str(
        plain_server.recorder.messages[0].data
    )  # the From stays the message's


def test_a_refused_greeting_is_not_the_recipients_fault(db, make_sender, bind):
    channel, _secret = channel_services.channel_create(name="Refusing")
    bind("a", "all", "a@example.com")
    bind("b", "all", "b@example.com")
    with RefusingServer() as server:
        sender = make_sender(server, encryption="none", account="", password="")
        channel_services.channel_authorize_sender(channel=channel, sender=sender)
        message = run(send(channel, Audience(userids=["a", "b"])))

    assert set(message.deliveries.values_list("status", "attempts", "smtp_code")) == {
        ("retrying", 1, 554)
    }
    assert len(server.accepted) == 1  # one connection for the batch, not one per recipient


def test_the_sender_being_refused_does_not_use_up_the_recipients_tries(
    db, ssl_server, trust_test_ca, make_sender, bind
):
    channel, _secret = channel_services.channel_create(name="Locked")
    sender = make_sender(ssl_server, password="wrong")
    channel_services.channel_authorize_sender(channel=channel, sender=sender)
    bind("a", "all", "a@example.com")

    message = run(send(channel, Audience(userids=["a"])))

    assert message.deliveries.get().attempts == 0


def test_retracting_a_finished_message_cancels_nothing_and_keeps_it_done(shop, bind):
    bind("a", "all", "a@example.com")
    message = run(send(shop, Audience(userids=["a"])))

    result = message_retract(message=message)

    message.refresh_from_db()
    assert result == {"cancelled": 0, "sent": 1, "in_flight": 0}
    assert message.status == "done"


def test_each_acceptance_is_recorded_with_its_own_reply_and_message_id(shop, bind, plain_server):
    userids = [f"u{i:02d}" for i in range(sending.RECORD_EVERY * 2 + 5)]  # several groups
    for userid in userids:
        bind(userid, "all", f"{userid}@example.com")
    received = plain_server.recorder.messages

    async def data(server, session, envelope):
        received.append(envelope)
        return f"250 2.0.0 Ok: queued as Q{len(received)}"

    plain_server.controller.handler.handle_DATA = data
    message = run(send(shop, Audience(userids=userids)))

    expected = {
        e.rcpt_tos[0]: (f"2.0.0 Ok: queued as Q{n}", message_from_bytes(e.content)["Message-ID"])
        for n, e in enumerate(received, start=1)
    }
    stored = {
        d.email: (d.smtp_reply, d.smtp_message_id)
        for d in message.deliveries.filter(status="sent", smtp_code=250, sent_at__isnull=False)
    }
    assert len(received) == len(userids)
    assert stored == expected
    assert (message.status, message.sent) == ("done", len(userids))


def test_batches_hold_only_the_recipients_with_an_address_in_the_order_given(shop, bind, settings):
    settings.UMS_DELIVERY_BATCH_SIZE = 2
    for name in ("a", "b", "c"):
        bind(name, "all", f"{name}@example.com")
    message = send(shop, Audience(userids=["c", "nobody", "a", "c", "b"]))

    batches = sending.message_resolve(message_id=message.pk)

    rows = message.deliveries.order_by("pk").values_list("userid", "status", "batch")
    assert list(rows) == [
        ("c", "pending", 0),
        ("nobody", "invalid", 0),
        ("a", "pending", 0),
        ("b", "pending", 1),
    ]
    assert batches == [0, 1]
    message.refresh_from_db()
    assert (message.status, message.total, message.invalid) == ("sending", 4, 1)


def test_the_sweeper_keeps_the_first_dispatch_time_and_still_waits_before_handing_out_again(
    shop, bind, settings
):
    bind("a", "all", "a@example.com")
    message = send(shop, Audience(userids=["a"]))
    sending.message_resolve(message_id=message.pk)
    long_ago = timezone.now() - timedelta(hours=1)
    Message.objects.filter(pk=message.pk).update(dispatched_at=long_ago)
    message.deliveries.update(updated_at=long_ago)  # its task was lost: nothing moved since

    assert sending.sweep().batches == [(message.pk, 0, Message.Priority.MEDIUM)]
    assert sending.sweep().batches == []  # the next sweep gives the task time to run

    message.refresh_from_db()
    assert message.dispatched_at == long_ago


@pytest.mark.django_db(transaction=True)
def test_a_failed_record_stops_the_batch_and_leaves_its_rows_to_the_sweeper(
    shop, bind, plain_server, monkeypatch
):
    from django.db import DatabaseError, connection

    if connection.vendor != "postgresql":
        pytest.skip("the group writer is PostgreSQL's")
    userids = [f"u{i:02d}" for i in range(sending.RECORD_EVERY + 5)]
    for userid in userids:
        bind(userid, "all", f"{userid}@example.com")
    message = send(shop, Audience(userids=userids))
    (batch,) = sending.message_resolve(message_id=message.pk)
    broken = b"UPDATE messaging_delivery SET status = $1 WHERE no_such_column AND $2 AND $3 AND $4"
    monkeypatch.setattr(sending, "_SENT_JSON_SQL", broken)

    with pytest.raises(DatabaseError):
        sending.batch_send(message_id=message.pk, batch=batch)

    # Sent but not recorded: still claimed, so the sweeper hands them out again after the lease.
    assert len(plain_server.recorder.messages) == len(userids)
    assert set(message.deliveries.values_list("status", flat=True)) == {Delivery.Status.SENDING}
