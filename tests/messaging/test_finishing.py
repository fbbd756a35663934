"""A message becomes done only when nothing of it is left open, also when a retry of its
failed deliveries commits while its last batch is finishing (two database sessions)."""

import threading

import pytest
from django.db import connection, connections, transaction

from channels_app.selectors import channel_default_sender
from messaging import sending, services
from messaging.models import Delivery, Message
from tests.processes import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_retry_committed_while_the_last_batch_finishes_keeps_the_message_sending(
    shop, monkeypatch
):
    """message_finish_if_done waits for a retry of the failed rows that holds the message's
    lock, and then sees the rows it put back: the message is not marked done under them."""
    if connection.vendor != "postgresql":
        pytest.skip("two sessions holding and waiting for a row lock")
    message = Message.objects.create(
        channel=shop,
        sender=channel_default_sender(channel=shop),
        source=Message.Source.API,
        subject="Hello",
        status=Message.Status.SENDING,
    )
    Delivery.objects.create(message=message, userid="a", email="a@example.com", status="sent")
    Delivery.objects.create(message=message, userid="b", email="b@example.com", status="failed")
    inside, go = threading.Event(), threading.Event()
    results: dict[str, object] = {}
    on_commit = transaction.on_commit

    def paused_on_commit(func, using=None, robust=False):
        if threading.current_thread().name == "retry":
            inside.set()  # its rows are pending, not committed yet, and it holds the lock
            go.wait(timeout=30)
        return on_commit(func, using=using, robust=robust)

    monkeypatch.setattr(services.transaction, "on_commit", paused_on_commit)

    def in_thread(name, call):
        try:
            results[name] = call()
        finally:
            connections.close_all()

    retry = threading.Thread(
        name="retry",
        target=in_thread,
        args=("retry", lambda: services.message_retry_failed(message=message)),
    )
    finish = threading.Thread(
        target=in_thread,
        args=("finish", lambda: sending.message_finish_if_done(message_id=message.pk)),
    )
    retry.start()
    assert inside.wait(timeout=30)
    finish.start()

    def finisher_waits_for_the_lock() -> bool:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE '%%FOR UPDATE%%'"
            )
            return cursor.fetchone()[0] == 1

    wait_for(finisher_waits_for_the_lock, timeout=30, what="the finisher to wait for the lock")
    go.set()
    retry.join(timeout=30)
    finish.join(timeout=30)

    message.refresh_from_db()
    assert (results["retry"], results["finish"]) == (1, False)
    assert message.status == Message.Status.SENDING
    assert message.deliveries.filter(status="pending").count() == 1
