"""The send API's part of templates, strategies, lists, callbacks and limits, through HTTP:
/v1/template/sent and /v1/template/broadcast, rule_id, option.black_id / white_id,
callback.url, the channel's API rate limit and its daily broadcast quota."""

import base64
import json
import time
import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from channels_app import rules
from channels_app import services as channel_services
from channels_app.models import CallbackUrl, Channel, EmailSender
from messaging import tasks
from messaging.models import Message, MessageTemplate, RecipientList
from messaging.services import Audience, Content, Options, SendRefused, message_create
from messaging.templating import message_template_save

pytestmark = pytest.mark.django_db

SENT = "/v1/sent"
BROADCAST = "/v1/broadcast"
TEMPLATE_SENT = "/v1/template/sent"
TEMPLATE_BROADCAST = "/v1/template/broadcast"
HOOK = "https://hooks.shop.example/ums"


def basic(key: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()


@pytest.fixture(autouse=True)
def published(monkeypatch):
    """Nothing in these tests talks to a broker."""
    monkeypatch.setattr(tasks.message_dispatch, "apply_async", lambda *a, **kw: None)


@pytest.fixture(autouse=True)
def limiter(settings, tmp_path):
    """The rate limiter's one-machine store, fresh for each test."""
    settings.CELERY_BROKER_URL = ""
    settings.UMS_RATE_LIMIT_REDIS_URL = ""
    settings.UMS_RATE_LIMIT_FILE = str(tmp_path / "ratelimit.sqlite3")
    settings.UMS_RATE_LIMIT_PREFIX = f"test:{uuid.uuid4().hex}:"


@pytest.fixture
def make_channel(make_sender):
    def make(name: str, **fields) -> Channel:
        channel, secret = channel_services.channel_create(name=name)
        sender = make_sender(name=f"{name} default", code=f"{name.upper()}DEFAULT")
        channel_services.channel_authorize_sender(channel=channel, sender=sender, is_default=True)
        if fields:
            Channel.objects.filter(pk=channel.pk).update(**fields)
            channel.refresh_from_db()
        channel.auth = basic(channel.channel_key, secret)
        return channel

    return make


@pytest.fixture
def shop(make_channel):
    return make_channel("Shop")


@pytest.fixture
def games(make_channel):
    return make_channel("Games")


@pytest.fixture
def post(client):
    def call(url: str, channel, body: object):
        return client.post(
            url, json.dumps(body), content_type="application/json", HTTP_AUTHORIZATION=channel.auth
        )

    return call


def make_template(channel=None, *, subject="Hello {{name}}", html="<p>{{name}}</p>", **fields):
    return message_template_save(
        template=MessageTemplate(
            name="Welcome", channel=channel, subject=subject, html=html, **fields
        )
    )


def plain(**overrides) -> dict:
    body = {
        "aud_userid": ["zhangsan", "lisi"],
        "msg_email": [{"subject": "Spring sale", "text": "Hello"}],
    }
    body.update(overrides)
    return body


def templated(template: MessageTemplate, **overrides) -> dict:
    body = {
        "aud_userid": ["zhangsan"],
        "template_id": template.pk,
        "template_para": {"name": "Ann"},
    }
    body.update(overrides)
    return {key: value for key, value in body.items() if value is not None}


def refused_with(response, status: int, code: int, starts: str = "") -> dict:
    assert response.status_code == status, response.content
    answer = response.json()
    assert answer["code"] == code, answer
    assert answer["message"].startswith(starts), answer["message"]
    return answer


def stored(response) -> Message:
    assert response.status_code == 200, response.content
    return Message.objects.get(msgid=response.json()["msgid"])


# --- template sends ---------------------------------------------------------------------------


def test_a_template_send_stores_the_rendered_content_the_template_and_its_values(post, shop):
    template = make_template(
        subject="Hi {{name}}", html="<p>{{name}}: {{coupon}}</p>", channel=shop
    )
    para = {"name": "Ann & Bob", "coupon": "<SPRING>", "extra": [1]}

    response = post(TEMPLATE_SENT, shop, templated(template, template_para=para))

    answer = response.json()
    assert answer == {"code": 0, "message": "success", "msgid": answer["msgid"], "sendno": ""}
    message = stored(response)
    assert (message.subject, message.html) == (
        "Hi Ann & Bob",
        "<p>Ann &amp; Bob: &lt;SPRING&gt;</p>",
    )
    assert message.text == "Ann & Bob: <SPRING>"
    assert (message.template, message.template_para) == (template, para)
    assert message.personalized is False
    assert message.audience == {"userid": ["zhangsan"]}


def test_a_template_with_userid_or_email_is_stored_personalized_with_them_in_place(post, shop):
    template = make_template(subject="For {{ userid }}", html="<p>{{name}} at {{email}}</p>")

    message = stored(post(TEMPLATE_SENT, shop, templated(template)))

    assert message.personalized is True
    assert (message.subject, message.html) == ("For {{userid}}", "<p>Ann at {{email}}</p>")


def test_a_template_broadcast_goes_to_everyone(post, shop):
    template = make_template()

    message = stored(post(TEMPLATE_BROADCAST, shop, templated(template, aud_userid=None)))

    assert message.audience == {"broadcast": True}
    assert message.subject == "Hello Ann"


def test_a_template_broadcast_takes_no_audience(post, shop):
    response = post(TEMPLATE_BROADCAST, shop, templated(make_template()))

    refused_with(response, 400, 4004, "aud_userid: /v1/broadcast takes no audience")


def test_a_template_send_needs_an_audience(post, shop):
    response = post(TEMPLATE_SENT, shop, templated(make_template(), aud_userid=None))

    refused_with(response, 400, 4004, "aud_xxx:")


def test_template_para_may_be_left_out_when_the_template_has_no_variables(post, shop):
    template = make_template(subject="Hi", html="<p>Hi</p>")

    message = stored(post(TEMPLATE_SENT, shop, templated(template, template_para=None)))

    assert (message.subject, message.template_para) == ("Hi", {})


@pytest.mark.parametrize(
    ("template_id", "starts"),
    [
        (None, "template_id: required"),
        ("1", "template_id: must be the whole number"),
        (1.0, "template_id: must be the whole number"),
        (True, "template_id: must be the whole number"),
        (0, "template_id: must be the whole number"),
    ],
)
def test_template_id_is_required_and_a_whole_number(post, shop, template_id, starts):
    body = templated(make_template())
    body["template_id"] = template_id

    refused_with(post(TEMPLATE_SENT, shop, body), 400, 4004, starts)


def test_an_unknown_template_is_1015031(post, shop):
    response = post(TEMPLATE_SENT, shop, templated(make_template(), template_id=999_999))

    refused_with(response, 400, 1015031, "template_id:")


def test_a_disabled_template_is_1015032(post, shop):
    response = post(TEMPLATE_SENT, shop, templated(make_template(is_enabled=False)))

    refused_with(response, 400, 1015032, "template_id:")


def test_another_channels_template_is_1015032_and_a_shared_one_serves_all(post, shop, games):
    refused_with(post(TEMPLATE_SENT, shop, templated(make_template(games))), 400, 1015032)

    assert stored(post(TEMPLATE_SENT, games, templated(make_template(None)))).channel == games


def test_a_missing_variable_is_4004_naming_it(post, shop):
    template = make_template(html="<p>{{name}} {{coupon}}</p>")

    response = post(TEMPLATE_SENT, shop, templated(template))

    refused_with(response, 400, 4004, "template_para.coupon: required by the template")
    assert not Message.objects.exists()


@pytest.mark.parametrize("value", [{"a": 1}, ["Ann"], False, None])
def test_a_value_that_is_not_a_string_or_a_number_is_4004(post, shop, value):
    response = post(TEMPLATE_SENT, shop, templated(make_template(), template_para={"name": value}))

    refused_with(response, 400, 4004, "template_para.name:")


def test_template_para_must_be_an_object(post, shop):
    response = post(TEMPLATE_SENT, shop, templated(make_template(), template_para=["Ann"]))

    refused_with(response, 400, 4004, "template_para: must be an object")


@pytest.mark.parametrize(
    "extra",
    [
        {"msg_email": [{"subject": "x", "text": "y"}]},
        {"msg_sms": [{"text": "y"}]},
    ],
)
@pytest.mark.parametrize("url", [TEMPLATE_SENT, TEMPLATE_BROADCAST])
def test_any_msg_xxx_in_a_template_send_is_1015094(post, shop, url, extra):
    body = templated(make_template(), aud_userid=None if url == TEMPLATE_BROADCAST else ["u1"])

    response = post(url, shop, {**body, **extra})

    refused_with(response, 400, 1015094, next(iter(extra)))


def test_an_empty_msg_email_counts_as_absent(post, shop):
    assert stored(post(TEMPLATE_SENT, shop, {**templated(make_template()), "msg_email": None}))


def test_a_template_send_repeating_a_sendno_answers_the_first_msgid(post, shop):
    template = make_template()
    first = post(TEMPLATE_SENT, shop, templated(template, option={"sendno": "t-1"}))
    second = post(TEMPLATE_SENT, shop, templated(template, option={"sendno": "t-1"}))

    assert second.json()["msgid"] == first.json()["msgid"]
    assert Message.objects.count() == 1


# --- rule_id ----------------------------------------------------------------------------------


@pytest.fixture
def strategy(shop, make_sender):
    """Strategy 5 of the shop: Bravo first, then Charlie (the default sender is not in it)."""
    bravo = make_sender(name="Bravo", code="BRAVO")
    charlie = make_sender(name="Charlie", code="CHARLIE")
    for sender in (bravo, charlie):
        channel_services.channel_authorize_sender(channel=shop, sender=sender)
    return rules.rule_create(channel=shop, rule_id=5, name="Two", senders=[bravo, charlie])


@pytest.mark.parametrize("url", [SENT, TEMPLATE_SENT])
def test_a_rule_id_stores_the_strategy_and_its_first_sender(post, shop, strategy, url):
    body = plain(rule_id=5) if url == SENT else templated(make_template(), rule_id=5)

    message = stored(post(url, shop, body))

    assert message.rule == strategy
    assert message.sender.name == "Bravo"


def test_the_first_sender_that_can_send_is_the_messages(post, shop, strategy):
    EmailSender.objects.filter(code="BRAVO").update(is_enabled=False)

    assert stored(post(SENT, shop, plain(rule_id=5))).sender.name == "Charlie"


def test_rule_id_0_is_the_default_sender(post, shop, strategy):
    message = stored(post(SENT, shop, plain(rule_id=0)))

    assert (message.rule, message.sender.name) == (None, "Shop default")


def test_a_disabled_or_another_channels_strategy_is_1015026(post, shop, games, strategy):
    strategy.is_enabled = False
    strategy.save()

    refused_with(post(SENT, shop, plain(rule_id=5)), 400, 1015026, "rule_id:")
    refused_with(post(SENT, games, plain(rule_id=5)), 400, 1015026, "rule_id:")
    assert not Message.objects.exists()


# --- option.black_id / white_id ---------------------------------------------------------------


def make_list(kind: str, number: int, channel=None) -> RecipientList:
    return RecipientList.objects.create(kind=kind, number=number, name="List", channel=channel)


@pytest.mark.parametrize("url", [SENT, BROADCAST, TEMPLATE_SENT])
def test_black_id_and_white_id_are_stored_on_the_message(post, shop, url):
    black, white = make_list("black", 3, shop), make_list("white", 4)

    def body(**option):
        if url == TEMPLATE_SENT:
            return templated(make_template(), option=option)
        return plain(option=option, aud_userid=None) if url == BROADCAST else plain(option=option)

    on_black = stored(post(url, shop, body(black_id=3)))
    on_white = stored(post(url, shop, body(white_id=4)))

    assert (on_black.black_list, on_black.white_list) == (black, None)
    assert (on_white.black_list, on_white.white_list) == (None, white)


def test_both_lists_are_1015097(post, shop):
    make_list("black", 3, shop)
    make_list("white", 4, shop)

    refused_with(post(SENT, shop, plain(option={"black_id": 3, "white_id": 4})), 400, 1015097)


def test_an_unknown_or_another_channels_blacklist_is_1015046(post, shop, games):
    make_list("black", 3, games)

    refused_with(post(SENT, shop, plain(option={"black_id": 3})), 400, 1015046, "option.black_id")
    refused_with(post(SENT, shop, plain(option={"black_id": 9})), 400, 1015046)


def test_an_unknown_whitelist_is_4004_naming_it(post, shop):
    response = post(SENT, shop, plain(option={"white_id": 4}))

    refused_with(response, 400, 4004, "option.white_id:")


# --- callback ---------------------------------------------------------------------------------


def hook(channel, url=HOOK, *, position=0, verified=True) -> CallbackUrl:
    return CallbackUrl.objects.create(
        channel=channel,
        url=url,
        position=position,
        verified_at=timezone.now() if verified else None,
    )


def test_a_verified_callback_url_is_stored_with_the_params(post, shop):
    hook(shop)
    hook(shop, HOOK + "/second", position=1)
    params = {"campaign": "spring"}

    message = stored(post(SENT, shop, plain(callback={"url": HOOK + "/second", "params": params})))

    assert message.callback == {"url": HOOK + "/second", "params": params}


def test_without_a_url_the_channels_default_verified_url_is_used(post, shop):
    hook(shop, HOOK + "/unverified", position=0, verified=False)
    hook(shop, HOOK, position=1)

    template_message = stored(post(TEMPLATE_SENT, shop, templated(make_template())))
    plain_message = stored(post(SENT, shop, plain(callback={"params": {"n": 1}})))

    assert template_message.callback == {"url": HOOK}
    assert plain_message.callback == {"url": HOOK, "params": {"n": 1}}


def test_without_a_verified_url_the_message_reports_nowhere(post, shop):
    hook(shop, verified=False)

    assert stored(post(SENT, shop, plain())).callback == {}


@pytest.mark.parametrize("url", [HOOK + "/unverified", HOOK + "/unknown", HOOK])
def test_a_url_that_is_not_a_verified_url_of_the_channel_is_4004(post, shop, games, url):
    hook(shop, HOOK + "/unverified", verified=False)
    hook(games, HOOK)

    response = post(SENT, shop, plain(callback={"url": url}))

    refused_with(response, 400, 4004, "callback.url: not a verified callback URL")


def test_a_console_test_send_reports_to_no_callback_url(shop):
    hook(shop)

    message, _created = message_create(
        channel=shop,
        audience=Audience(emails=["me@example.com"]),
        content=Content(subject="Test", html="<p>x</p>"),
        options=Options(test=True),
        source=Message.Source.CONSOLE,
    )

    assert message.callback == {}


# --- the API rate limit -----------------------------------------------------------------------


def fresh_minute() -> None:
    """The limit counts per calendar minute: do not start a test in its last seconds."""
    into = time.time() % 60
    if into > 55:
        time.sleep(60.2 - into)


def rate_headers(response) -> tuple[str, str, int]:
    return (
        response["X-Rate-Limit-Limit"],
        response["X-Rate-Limit-Remaining"],
        int(response["X-Rate-Limit-Reset"]),
    )


def test_past_the_limit_a_send_is_429_1015030_with_the_rate_headers(post, make_channel):
    limited = make_channel("Limited", api_rate_per_minute=2)
    fresh_minute()

    first = post(SENT, limited, plain())
    second = post(TEMPLATE_SENT, limited, templated(make_template()))
    third = post(BROADCAST, limited, plain(aud_userid=None))

    assert first.status_code == second.status_code == 200
    assert rate_headers(first)[:2] == ("2", "1")
    assert rate_headers(second)[:2] == ("2", "0")
    answer = refused_with(third, 429, 1015030, "Too many requests")
    limit, remaining, reset = rate_headers(third)
    assert (limit, remaining) == ("2", "0")
    assert 1 <= reset <= 60
    assert Message.objects.count() == 2
    assert "2 a minute" in answer["message"]


def test_a_refused_request_still_counts_and_carries_the_headers(post, make_channel):
    limited = make_channel("Limited", api_rate_per_minute=3)
    fresh_minute()

    bad = post(SENT, limited, plain(aud_userid=None))

    refused_with(bad, 400, 4004, "aud_xxx:")
    assert rate_headers(bad)[:2] == ("3", "2")


def test_each_channel_has_its_own_limit_and_an_unlimited_one_gets_no_headers(
    post, shop, make_channel
):
    limited = make_channel("Limited", api_rate_per_minute=1)
    fresh_minute()
    post(SENT, limited, plain())

    for _ in range(3):
        response = post(SENT, shop, plain())
        assert response.status_code == 200
        assert "X-Rate-Limit-Limit" not in response
    refused_with(post(SENT, limited, plain()), 429, 1015030)


def test_status_queries_do_not_count_against_the_send_limit(client, post, make_channel):
    limited = make_channel("Limited", api_rate_per_minute=1)
    fresh_minute()
    msgid = post(SENT, limited, plain()).json()["msgid"]

    for _ in range(3):
        status = client.get(f"/v1/messages/{msgid}", HTTP_AUTHORIZATION=limited.auth)
        assert status.status_code == 200 and "X-Rate-Limit-Limit" not in status


# --- the daily broadcast quota ----------------------------------------------------------------


def test_past_the_daily_quota_a_broadcast_is_1015029(post, make_channel):
    channel = make_channel("Quota", daily_broadcast_quota=2)

    stored(post(BROADCAST, channel, plain(aud_userid=None)))
    stored(post(TEMPLATE_BROADCAST, channel, templated(make_template(), aud_userid=None)))
    refused = post(BROADCAST, channel, plain(aud_userid=None))

    refused_with(refused, 400, 1015029)
    assert Message.objects.count() == 2
    # Sends to named recipients are not broadcasts.
    stored(post(SENT, channel, plain()))


def test_a_broadcast_refused_for_another_reason_uses_none_of_the_quota(post, make_channel):
    channel = make_channel("Quota", daily_broadcast_quota=1)
    broadcast = plain(aud_userid=None)

    refused_with(post(BROADCAST, channel, {**broadcast, "rule_id": 9}), 400, 1015026)
    refused_with(post(BROADCAST, channel, {**broadcast, "option": {"black_id": 9}}), 400, 1015046)
    refused_with(post(BROADCAST, channel, {**broadcast, "callback": {"url": HOOK}}), 400, 4004)
    body = templated(make_template(html="{{name}} {{coupon}}"), aud_userid=None)
    refused_with(post(TEMPLATE_BROADCAST, channel, body), 400, 4004, "template_para.coupon")

    stored(post(BROADCAST, channel, broadcast))
    refused_with(post(BROADCAST, channel, broadcast), 400, 1015029)


def test_a_repeated_sendno_uses_none_of_the_quota(post, make_channel):
    channel = make_channel("Quota", daily_broadcast_quota=1)
    body = plain(aud_userid=None, option={"sendno": "daily"})

    first = stored(post(BROADCAST, channel, body))
    again = post(BROADCAST, channel, body)

    assert stored(again) == first


# --- speed ------------------------------------------------------------------------------------


def test_a_1000_userid_send_costs_the_same_queries_as_a_one_userid_send(post, shop, strategy):
    make_list("black", 3, shop)
    hook(shop)
    options = {"rule_id": 5, "option": {"black_id": 3}}

    def queries(userids: list[str]) -> int:
        with CaptureQueriesContext(connection) as captured:
            stored(post(SENT, shop, plain(aud_userid=userids, **options)))
        return len(captured)

    one = queries(["u0"])
    thousand = queries([f"u{n}" for n in range(1000)])

    assert thousand == one


def test_a_console_broadcast_counts_against_the_quota_too(make_channel):
    channel = make_channel("Quota", daily_broadcast_quota=1)

    def broadcast():
        return message_create(
            channel=channel,
            audience=Audience(everyone=True),
            content=Content(subject="News", html="<p>x</p>"),
            options=Options(),
            source=Message.Source.CONSOLE,
        )

    broadcast()
    with pytest.raises(SendRefused) as caught:
        broadcast()

    assert caught.value.code == 1015029
