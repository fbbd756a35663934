"""Nothing is lost when a worker is killed or Redis restarts, and little is sent twice.

Real processes: Redis, Celery workers and an aiosmtpd server that counts what it accepts.
"""

import asyncio
import os
import shutil
import signal
from collections import Counter
from pathlib import Path

import pytest

from channels_app import services as channel_services
from messaging import sending, tasks
from messaging.models import Delivery, Message
from messaging.services import Audience, Content, Options, celery_priority, message_create
from tests.conftest import skip_or_fail
from tests.processes import celery_worker, child_env, publish, redis_server, wait_for
from tests.smtp_server import SmtpTestServer, free_port
from ums.celery import REDIS_OPTIONS
from users_app.models import UmsUser, UserEmailBinding

pytestmark = [pytest.mark.worker, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

WORKER_SETTINGS = {
    "UMS_DELIVERY_BATCH_SIZE": "25",
    "UMS_DELIVERY_LEASE": "2",
    "UMS_DISPATCH_GRACE": "1",
    "UMS_DELIVERY_RETRY_BASE": "0.5",
}


class SlowHandler:
    """Accepts everything, a little slowly, so a worker can be killed in the middle of a batch."""

    def __init__(self, recorder, delay: float) -> None:
        self.recorder = recorder
        self.delay = delay

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        await asyncio.sleep(self.delay)
        self.recorder.messages.append(envelope)
        return "250 2.0.0 Ok"


@pytest.fixture(autouse=True)
def redis_binary():
    if shutil.which("redis-server") is None:
        skip_or_fail("redis-server is not installed")


@pytest.fixture
def slow_shop(db, make_sender):
    with SmtpTestServer(mode="plain", require_auth=False) as server:
        server.controller.handler = SlowHandler(server.recorder, delay=0.02)
        channel, _secret = channel_services.channel_create(name="Shop")
        sender = make_sender(server, account="", password="")
        channel_services.channel_authorize_sender(channel=channel, sender=sender)
        yield channel, server


def users(count: int) -> list[str]:
    ids = [f"u{i:04d}" for i in range(count)]
    created = UmsUser.objects.bulk_create([UmsUser(userid=i) for i in ids])
    UserEmailBinding.objects.bulk_create(
        [UserEmailBinding(user=u, bind_id="all", email=f"{u.userid}@example.com") for u in created]
    )
    return ids


def create(channel, userids: list[str]) -> Message:
    message, _created = message_create(
        channel=channel,
        audience=Audience(userids=userids),
        content=Content(subject="Hello", text="Hi"),
        options=Options(),
        source="api",
    )
    return message


def queue(url: str, task, *args, priority: int | None = None) -> None:
    publish(task, *args, url=url, transport_options=REDIS_OPTIONS, priority=priority)


def received(server) -> Counter:
    return Counter(envelope.rcpt_tos[0] for envelope in server.recorder.messages)


def sweep_until_done(url: str, message: Message, server, log: Path, *, expected: int) -> None:
    def done() -> bool:
        outcome = sending.sweep()
        for message_id in outcome.messages:
            queue(url, tasks.message_dispatch, message_id)
        for message_id, batch, _priority in outcome.batches:
            queue(url, tasks.deliver_batch, message_id, batch)
        message.refresh_from_db()
        return message.status == Message.Status.DONE and len(received(server)) == expected

    wait_for(done, timeout=90, what="every recipient to be delivered", log_path=log)


@pytest.mark.parametrize(
    ("delay", "recipients", "most_sent_twice"),
    [
        # A server slower than RECORD_WITHIN: each acceptance is recorded before the next email
        # goes, so only the email in flight can go twice.
        pytest.param(sending.RECORD_WITHIN + 0.02, 100, 1, id="slow-server"),
        # A fast server: acceptances are recorded in groups, one being written while the next
        # fills up: at most 2 x RECORD_EVERY of them late.
        pytest.param(0.002, 1000, 2 * sending.RECORD_EVERY, id="fast-server"),
    ],
)
def test_killing_the_worker_mid_batch_loses_nothing(
    db, make_sender, settings, tmp_path, delay, recipients, most_sent_twice
):
    settings.UMS_DELIVERY_LEASE = 2
    settings.UMS_DISPATCH_GRACE = 1
    with SmtpTestServer(mode="plain", require_auth=False) as server:
        server.controller.handler = SlowHandler(server.recorder, delay=delay)
        channel, _secret = channel_services.channel_create(name="Shop")
        sender = make_sender(server, account="", password="")
        channel_services.channel_authorize_sender(channel=channel, sender=sender)
        message = create(channel, users(recipients))
        port = free_port()
        url = f"redis://127.0.0.1:{port}/0"
        log = tmp_path / "worker.log"
        env = child_env(CELERY_BROKER_URL=url, **WORKER_SETTINGS)

        with redis_server(port, tmp_path / "redis.log"):
            with celery_worker(env, tmp_path / "first-worker.log") as first:
                queue(url, tasks.message_dispatch, message.pk)
                wait_for(
                    lambda: len(server.recorder.messages) >= 40,
                    timeout=60,
                    what="sending to start",
                    log_path=tmp_path / "first-worker.log",
                )
                os.killpg(first.pid, signal.SIGKILL)  # the worker and its pool, without warning
                first.wait()
            sent_before_kill = len(server.recorder.messages)
            assert sent_before_kill < recipients  # it really died in the middle
            with celery_worker(env, log):
                sweep_until_done(url, message, server, log, expected=recipients)

    counts = received(server)
    duplicates = sum(n - 1 for n in counts.values())
    assert len(counts) == recipients
    # At most the emails accepted but not yet recorded when the worker died.
    assert duplicates <= most_sent_twice
    assert set(message.deliveries.values_list("status", flat=True)) == {Delivery.Status.SENT}


def test_a_redis_restart_without_persistence_loses_nothing(slow_shop, settings, tmp_path):
    settings.UMS_DISPATCH_GRACE = 1
    channel, server = slow_shop
    ids = users(60)
    queued = create(channel, ids[:30])  # its dispatch task will be lost
    resolved = create(channel, ids[30:])  # resolved, but its batch tasks will be lost
    sending.message_resolve(message_id=resolved.pk)
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    log = tmp_path / "worker.log"

    with redis_server(port, tmp_path / "redis-1.log"):
        queue(url, tasks.message_dispatch, queued.pk)
        for batch in resolved.deliveries.values_list("batch", flat=True).distinct():
            queue(url, tasks.deliver_batch, resolved.pk, batch)
    # Redis went away with its queue; a new one starts empty.
    with (
        redis_server(port, tmp_path / "redis-2.log"),
        celery_worker(child_env(CELERY_BROKER_URL=url, **WORKER_SETTINGS), log),
    ):
        sweep_until_done(url, queued, server, log, expected=60)
        resolved.refresh_from_db()

    assert resolved.status == Message.Status.DONE
    assert sorted(received(server).values()) == [1] * 60


def test_high_priority_messages_go_first(slow_shop, tmp_path):
    channel, server = slow_shop
    ids = users(4)
    low = [create(channel, [userid]) for userid in ids[:3]]
    high = create(channel, ids[3:])
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    log = tmp_path / "worker.log"

    with redis_server(port, tmp_path / "redis.log"):
        # Queued while no worker runs: three low-priority messages, then a high one.
        for message in low:
            queue(url, tasks.message_dispatch, message.pk, priority=celery_priority(3))
        queue(url, tasks.message_dispatch, high.pk, priority=celery_priority(1))
        with celery_worker(child_env(CELERY_BROKER_URL=url, **WORKER_SETTINGS), log):
            wait_for(
                lambda: len(server.recorder.messages) == 4,
                timeout=60,
                what="all four",
                log_path=log,
            )

    assert server.recorder.messages[0].rcpt_tos == [f"{ids[3]}@example.com"]
