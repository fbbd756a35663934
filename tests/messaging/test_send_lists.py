"""Black and white lists, the suppression list and one-click unsubscribe, through the pipeline:
what the SMTP server receives, what the deliveries say, and what the callbacks report."""

from email import message_from_bytes
from urllib.parse import urlsplit

import pytest
from django.test import Client
from django.utils import timezone

from channels_app import services as channel_services
from channels_app.models import CallbackUrl
from messaging import lists, sending
from messaging.callbacks import callbacks_collect
from messaging.models import CallbackBatch, Message, RecipientList, SuppressedAddress
from messaging.services import Audience, Content, Options, message_create

pytestmark = pytest.mark.django_db


def make_list(kind, number, userids, channel=None):
    recipient_list = RecipientList.objects.create(
        kind=kind, number=number, name=f"{kind} {number}", channel=channel
    )
    lists.recipient_list_add(recipient_list=recipient_list, userids=userids)
    return recipient_list


def send(channel, audience: Audience, **options) -> Message:
    message, _created = message_create(
        channel=channel,
        audience=audience,
        content=Content(subject="Hello", html="<p>Hello</p>"),
        options=Options(**options),
        source="api",
    )
    for batch in sending.message_resolve(message_id=message.pk):
        sending.batch_send(message_id=message.pk, batch=batch)
    message.refresh_from_db()
    return message


def outcome(message: Message) -> dict[str, tuple[str, str]]:
    return {
        d.userid or d.email: (d.status, d.smtp_reply if d.status == "invalid" else "")
        for d in message.deliveries.all()
    }


def received(server) -> list[str]:
    return sorted(m.rcpt_tos[0] for m in server.recorder.messages)


@pytest.fixture
def users(bind):
    for userid in ("u1", "u2", "u3"):
        bind(userid, "all", f"{userid}@example.com")


def test_a_blacklisted_userid_gets_nothing_and_is_invalid(shop, users, plain_server):
    make_list("black", 1, ["u1"], channel=shop)

    message = send(shop, Audience(userids=["u1", "u2"]), black_id=1)

    assert outcome(message) == {"u1": ("invalid", "blacklisted"), "u2": ("sent", "")}
    assert received(plain_server) == ["u2@example.com"]
    assert (message.status, message.total, message.sent, message.invalid) == ("done", 2, 1, 1)


def test_only_whitelisted_userids_receive_a_message_with_a_whitelist(shop, users, plain_server):
    make_list("white", 2, ["u2", "u3"])

    message = send(shop, Audience(tags=[], userids=["u1", "u2", "u3", "nobody"]), white_id=2)

    assert outcome(message) == {
        "u1": ("invalid", "not in the whitelist"),
        "u2": ("sent", ""),
        "u3": ("sent", ""),
        "nobody": ("invalid", ""),
    }
    assert received(plain_server) == ["u2@example.com", "u3@example.com"]


def test_blocked_recipients_report_target_invalid_with_the_reason(shop, users, plain_server):
    CallbackUrl.objects.create(
        channel=shop, url="https://shop.example/cb", verified_at=timezone.now()
    )
    make_list("black", 1, ["u1"], channel=shop)

    send(shop, Audience(userids=["u1"]), black_id=1)
    callbacks_collect()

    [record] = CallbackBatch.objects.get().records
    assert (record["type"], record["email"], record["error"]["message"]) == (
        1,
        "u1@example.com",
        "blacklisted",
    )


def test_suppressed_addresses_get_nothing_on_their_channel_or_everywhere(shop, users, plain_server):
    games, _secret = channel_services.channel_create(name="Games")
    lists.address_suppress(email="U1@Example.com", reason=SuppressedAddress.Reason.MANUAL)
    lists.address_suppress(
        email="u2@example.com", channel=shop, reason=SuppressedAddress.Reason.UNSUBSCRIBE
    )
    lists.address_suppress(
        email="u3@example.com", channel=games, reason=SuppressedAddress.Reason.UNSUBSCRIBE
    )

    message = send(shop, Audience(userids=["u1", "u2", "u3"]))
    raw = send(shop, Audience(emails=["U2@EXAMPLE.com", "u3@example.com"]))

    assert outcome(message) == {
        "u1": ("invalid", "suppressed: added by staff"),
        "u2": ("invalid", "suppressed: unsubscribed"),
        "u3": ("sent", ""),
    }
    assert outcome(raw) == {
        "U2@EXAMPLE.com": ("invalid", "suppressed: unsubscribed"),
        "u3@example.com": ("sent", ""),
    }
    assert received(plain_server) == ["u3@example.com", "u3@example.com"]


def test_lists_do_not_filter_raw_addresses(shop, plain_server):
    make_list("white", 1, ["someone"])

    message = send(shop, Audience(emails=["a@example.com"]), white_id=1)

    assert outcome(message) == {"a@example.com": ("sent", "")}


def parsed(server):
    return [message_from_bytes(m.data) for m in server.recorder.messages]


def test_marketing_mail_carries_one_click_unsubscribe_headers_for_each_recipient(
    shop, users, plain_server, settings
):
    settings.UMS_PUBLIC_URL = "https://ums.example.com"
    send(shop, Audience(userids=["u1"]))
    assert [p["List-Unsubscribe"] for p in parsed(plain_server)] == [None]

    shop.is_marketing = True
    shop.save()
    send(shop, Audience(userids=["u1", "u2"]))

    marketing = parsed(plain_server)[1:]
    links = [p["List-Unsubscribe"] for p in marketing]
    assert all(link.startswith("<https://ums.example.com/u/") for link in links)
    assert len(set(links)) == 2
    assert {p["List-Unsubscribe-Post"] for p in marketing} == {"List-Unsubscribe=One-Click"}


def test_one_click_unsubscribe_end_to_end(shop, users, plain_server, settings):
    settings.UMS_PUBLIC_URL = "https://ums.example.com"
    shop.is_marketing = True
    shop.save()

    first = send(shop, Audience(userids=["u1"]))
    assert received(plain_server) == ["u1@example.com"]
    link = parsed(plain_server)[0]["List-Unsubscribe"].strip("<>")
    response = Client(enforce_csrf_checks=True).post(
        urlsplit(link).path, {"List-Unsubscribe": "One-Click"}
    )
    assert response.status_code == 200

    second = send(shop, Audience(userids=["u1"]))

    assert outcome(first) == {"u1": ("sent", "")}
    assert outcome(second) == {"u1": ("invalid", "suppressed: unsubscribed")}
    assert received(plain_server) == ["u1@example.com"]


async def _refuse(server, session, envelope, address, rcpt_options):
    return "550 5.1.1 no such mailbox"


@pytest.mark.parametrize("suppress", [True, False])
def test_a_permanent_failure_suppresses_the_address_when_the_channel_says_so(
    shop, users, plain_server, suppress
):
    shop.suppress_on_permanent_failure = suppress
    shop.save()
    plain_server.controller.handler.handle_RCPT = _refuse

    first = send(shop, Audience(userids=["u1"]))
    second = send(shop, Audience(userids=["u1"]))

    assert outcome(first) == {"u1": ("failed", "")}
    suppressed = SuppressedAddress.objects.filter(email="u1@example.com", channel=shop)
    assert suppressed.exists() == suppress
    if suppress:
        assert suppressed.get().reason == SuppressedAddress.Reason.FAILURE
        assert outcome(second) == {"u1": ("invalid", "suppressed: permanent failure")}
    else:
        assert outcome(second) == {"u1": ("failed", "")}
