"""From message_create to the SMTP server through a real worker, as `make run` wires it."""

import pytest

from messaging.models import Message
from messaging.services import Audience, Content, Options, message_create
from tests.processes import celery_worker, child_env, wait_for

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_a_message_reaches_every_bound_user_through_the_worker(shop, bind, plain_server, tmp_path):
    bind("zhangsan", "all", "zs@home.example")
    bind("zhangsan", shop.channel_key, "zs@shop.example")
    bind("lisi", "all", "ls@home.example")
    log = tmp_path / "worker.log"

    # The test process and the worker share the file-system queue of the test settings.
    with celery_worker(child_env(), log):
        message, _created = message_create(
            channel=shop,
            audience=Audience(userids=["zhangsan", "lisi", "nobody"]),
            content=Content(subject="Spring sale", html="<p>Hello</p>"),
            options=Options(priority=1),
            source="api",
        )

        def finished() -> bool:
            message.refresh_from_db()
            return message.status == Message.Status.DONE

        wait_for(finished, timeout=60, what="the message to be sent", log_path=log)

    assert (message.total, message.sent, message.invalid) == (3, 2, 1)
    assert sorted(m.rcpt_tos[0] for m in plain_server.recorder.messages) == [
        "ls@home.example",
        "zs@shop.example",
    ]
