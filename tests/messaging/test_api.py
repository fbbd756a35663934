"""The message API through HTTP: sent, broadcast, material, retract, messages (status)."""

import base64
import json
import ssl
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from kombu.exceptions import OperationalError

from channels_app import services as channel_services
from channels_app.models import Channel, EmailSender
from messaging import fetch, tasks
from messaging.api import send_request as messaging_api
from messaging.models import Delivery, Material, Message, SendnoKey

pytestmark = pytest.mark.django_db

SENT = "/v1/sent"
BROADCAST = "/v1/broadcast"
MATERIAL = "/v1/material"
PDF = b"%PDF-1.4 price list"


def basic(key: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")


@pytest.fixture(autouse=True)
def published(monkeypatch):
    """What would have gone to the broker: nothing in these tests talks to a real one."""
    calls = []
    monkeypatch.setattr(
        tasks.message_dispatch, "apply_async", lambda *a, **kw: calls.append((a, kw))
    )
    return calls


@pytest.fixture
def make_channel(make_sender):
    def make(name: str, *, with_sender: bool = True) -> Channel:
        channel, secret = channel_services.channel_create(name=name)
        if with_sender:
            sender = make_sender()
            channel_services.channel_authorize_sender(channel=channel, sender=sender)
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
    def call(url: str, channel, body: object, **extra):
        auth = channel if isinstance(channel, str) else channel.auth
        data = body if isinstance(body, str | bytes) else json.dumps(body)
        return client.post(url, data, content_type="application/json", HTTP_AUTHORIZATION=auth)

    return call


@pytest.fixture
def get(client):
    def call(url: str, channel, **params):
        return client.get(url, params, HTTP_AUTHORIZATION=channel.auth)

    return call


@pytest.fixture
def upload(client):
    def call(channel, *, files=None, **fields):
        data = {"type": "attachment", **fields}
        if files is None:
            files = [SimpleUploadedFile("prices.pdf", PDF, "application/pdf")]
        if files:
            data["file"] = files
        return client.post(MATERIAL, data, HTTP_AUTHORIZATION=channel.auth)

    return call


def body(**overrides) -> dict:
    request = {
        "aud_userid": ["zhangsan", "lisi"],
        "msg_email": [{"subject": "Spring sale", "text": "Hello from the shop"}],
    }
    request.update(overrides)
    return {key: value for key, value in request.items() if value is not None}


def email(**fields) -> list[dict]:
    return [{"subject": "Spring sale", "text": "Hello", **fields}]


def refused_with(response, status: int, code: int, starts: str = "") -> str:
    assert response.status_code == status, response.content
    answer = response.json()
    assert answer["code"] == code
    assert answer["message"].startswith(starts), answer["message"]
    return answer["message"]


def sent_message(response) -> Message:
    assert response.status_code == 200, response.content
    return Message.objects.get(msgid=response.json()["msgid"])


# --- a plain send ---------------------------------------------------------------------------


def test_sent_answers_msgid_and_echoes_sendno(post, shop):
    response = post(SENT, shop, body(option={"sendno": "order-42"}))

    assert response.status_code == 200
    answer = response.json()
    assert answer == {
        "code": 0,
        "message": "success",
        "msgid": answer["msgid"],
        "sendno": "order-42",
    }
    message = Message.objects.get(msgid=answer["msgid"])
    assert message.channel == shop
    assert message.source == Message.Source.API
    assert message.status == Message.Status.QUEUED
    assert (message.subject, message.text, message.html) == (
        "Spring sale",
        "Hello from the shop",
        "",
    )


def test_sent_without_sendno_echoes_an_empty_one(post, shop):
    assert post(SENT, shop, body()).json()["sendno"] == ""


def test_message_is_queued_once_the_transaction_commits(
    post, shop, published, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        message = sent_message(post(SENT, shop, body(option={"priority": 1})))

    assert published == [((), {"args": [message.pk], "priority": 0})]


def test_broker_down_does_not_fail_the_request(
    post, shop, monkeypatch, django_capture_on_commit_callbacks
):
    def broker_down(*args, **kwargs):
        raise OperationalError("Connection refused")

    monkeypatch.setattr(tasks.message_dispatch, "apply_async", broker_down)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = post(SENT, shop, body())

    assert len(callbacks) == 1
    assert sent_message(response).status == Message.Status.QUEUED


def test_repeated_sendno_returns_the_first_msgid_and_stores_one_message(post, shop):
    first = post(SENT, shop, body(option={"sendno": "n-1"}))
    second = post(SENT, shop, body(option={"sendno": "n-1"}, aud_userid=["wangwu"]))

    assert second.status_code == 200
    assert second.json()["msgid"] == first.json()["msgid"]
    assert second.json()["sendno"] == "n-1"
    assert Message.objects.count() == 1
    assert SendnoKey.objects.count() == 1


def test_the_same_sendno_in_two_channels_makes_two_messages(post, shop, games):
    first = post(SENT, shop, body(option={"sendno": "n-1"}))
    second = post(SENT, games, body(option={"sendno": "n-1"}))

    assert first.json()["msgid"] != second.json()["msgid"]


def test_wrong_method_is_405(client, shop):
    response = client.get(SENT, HTTP_AUTHORIZATION=shop.auth)

    refused_with(response, 405, 1016002)


def test_body_must_be_a_json_object(post, shop):
    refused_with(post(SENT, shop, []), 400, 4004, "body: must be a JSON object")
    refused_with(post(SENT, shop, "{"), 400, 4004, "body: not valid JSON")


# --- who may send ---------------------------------------------------------------------------


def test_access_key_is_refused_on_send_endpoints(post):
    key, secret = channel_services.access_key_create(label="ops")
    auth = basic(key.access_key, secret)

    refused_with(post(SENT, auth, body()), 401, 4005)
    refused_with(post(BROADCAST, auth, body(aud_userid=None)), 401, 4005)
    assert not Message.objects.exists()


def test_wrong_secret_is_401(post, shop):
    refused_with(post(SENT, basic(shop.channel_key, "0" * 32), body()), 401, 4005)


def test_closed_channel_is_403_1015005(post, shop):
    shop.status = Channel.Status.CLOSED
    shop.save()

    refused_with(post(SENT, shop, body()), 403, 1015005)


def test_channel_without_an_authorized_sender_is_1015010(post, make_channel):
    lonely = make_channel("Lonely", with_sender=False)

    refused_with(post(SENT, lonely, body()), 400, 1015010)
    assert not Message.objects.exists()


def test_channel_whose_only_sender_is_disabled_is_1015010(post, shop):
    EmailSender.objects.update(is_enabled=False)

    refused_with(post(SENT, shop, body()), 400, 1015010)


# --- audience -------------------------------------------------------------------------------


def test_audience_is_stored_as_given_without_duplicates(post, shop):
    message = sent_message(post(SENT, shop, body(aud_userid=["zhangsan", "lisi", "zhangsan"])))

    assert message.audience == {"userid": ["zhangsan", "lisi"]}


def test_aud_tag_is_stored(post, shop):
    message = sent_message(post(SENT, shop, body(aud_userid=None, aud_tag=["vip", "beta"])))

    assert message.audience == {"tag": ["vip", "beta"]}


def test_aud_email_is_stored_with_normalized_domains(post, shop):
    aud_email = [
        {"instance": "email", "data": ["Ann@Example.COM"]},
        {"instance": "email", "data": ["bob@example.com"]},
    ]
    message = sent_message(post(SENT, shop, body(aud_userid=None, aud_email=aud_email)))

    assert message.audience == {"email": ["Ann@example.com", "bob@example.com"]}


def test_more_than_1000_userids_is_1015004(post, shop):
    userids = [f"u{n}" for n in range(1001)]

    refused_with(post(SENT, shop, body(aud_userid=userids)), 400, 1015004, "aud_userid:")


def test_1000_userids_are_accepted(post, shop):
    userids = [f"u{n}" for n in range(1000)]

    assert len(sent_message(post(SENT, shop, body(aud_userid=userids))).audience["userid"]) == 1000


def test_a_bad_userid_is_named(post, shop):
    response = post(SENT, shop, body(aud_userid=["ok", "not ok"]))

    refused_with(response, 400, 4004, "aud_userid: not ok: only letters")


def test_aud_userid_must_be_a_list(post, shop):
    refused_with(
        post(SENT, shop, body(aud_userid="zhangsan")), 400, 4004, "aud_userid: must be a list"
    )


def test_more_than_20_tags_is_4004(post, shop):
    tags = [f"t{n}" for n in range(21)]

    refused_with(post(SENT, shop, body(aud_userid=None, aud_tag=tags)), 400, 4004, "aud_tag:")


def test_a_bad_tag_is_named(post, shop):
    response = post(SENT, shop, body(aud_userid=None, aud_tag=["a,b"]))

    refused_with(response, 400, 4004, "aud_tag: a,b: commas")


def test_aud_segment_is_not_supported_yet(post, shop):
    response = post(SENT, shop, body(aud_userid=None, aud_segment=["seg-1"]))

    refused_with(response, 400, 4004, "aud_segment: segments are not supported yet")


def test_a_bad_address_is_named(post, shop):
    aud_email = [{"instance": "email", "data": ["ok@example.com", "nobody@"]}]

    response = post(SENT, shop, body(aud_userid=None, aud_email=aud_email))

    refused_with(response, 400, 4004, "aud_email: nobody@: not a valid address")


def test_more_than_1000_addresses_in_all_is_4004(post, shop):
    data = [f"u{n}@example.com" for n in range(600)]
    aud_email = [{"instance": "email", "data": data}, {"instance": "email", "data": data[:401]}]

    refused_with(
        post(SENT, shop, body(aud_userid=None, aud_email=aud_email)),
        400,
        4004,
        "aud_email: at most 1000",
    )


def test_aud_email_items_must_be_email_instances(post, shop):
    aud_email = [{"instance": "sms", "data": ["13800000000"]}]

    refused_with(
        post(SENT, shop, body(aud_userid=None, aud_email=aud_email)), 400, 4004, "aud_email:"
    )


def test_user_targets_and_addresses_are_never_mixed(post, shop):
    aud_email = [{"instance": "email", "data": ["ann@example.com"]}]

    response = post(SENT, shop, body(aud_email=aud_email))

    refused_with(response, 400, 4004, "aud_email: cannot be combined")


def test_aud_userid_and_aud_tag_together_are_refused(post, shop):
    response = post(SENT, shop, body(aud_tag=["vip"]))

    refused_with(response, 400, 4004, "aud_tag: give one of aud_userid, aud_tag")


def test_sent_needs_a_target(post, shop):
    refused_with(post(SENT, shop, body(aud_userid=None)), 400, 4004, "aud_xxx: give one of")
    refused_with(post(SENT, shop, body(aud_userid=[])), 400, 4004, "aud_xxx: give one of")


def test_broadcast_goes_to_everyone(post, shop):
    message = sent_message(post(BROADCAST, shop, body(aud_userid=None)))

    assert message.audience == {"broadcast": True}


def test_broadcast_refuses_any_audience(post, shop):
    refused_with(post(BROADCAST, shop, body()), 400, 4004, "aud_userid: /v1/broadcast takes no")
    refused_with(
        post(BROADCAST, shop, body(aud_userid=None, aud_sms=["138"])), 400, 4004, "aud_sms:"
    )


def test_other_channels_keys_are_ignored(post, shop):
    response = post(
        SENT,
        shop,
        body(msg_sms={"sign_id": 1, "temp_id": 2}, aud_sms=["13800000000"], msg_app=[{}]),
    )

    assert sent_message(response).audience == {"userid": ["zhangsan", "lisi"]}


# --- msg_email ------------------------------------------------------------------------------


def test_msg_email_is_required(post, shop):
    response = post(SENT, shop, body(msg_email=None, msg_sms=[{"temp_id": 1}]))

    refused_with(response, 400, 4004, "msg_email: required")


def test_msg_email_has_exactly_one_element(post, shop):
    two = email() + email()

    refused_with(post(SENT, shop, body(msg_email=two)), 400, 4004, "msg_email: must be a list")
    refused_with(post(SENT, shop, body(msg_email=email()[0])), 400, 4004, "msg_email:")


@pytest.mark.parametrize(
    ("fields", "starts"),
    [
        ({"subject": None}, "subject: required"),
        ({"subject": "  "}, "subject: required"),
        ({"subject": "Hi\r\nBcc: x@example.com"}, "subject: line breaks"),
        ({"subject": "x" * 999}, "subject: longer than 998"),
        ({"subject": 42}, "subject: must be a string"),
        ({"text": None}, "text: required"),
        ({"text": ""}, "text: required"),
        ({"from_name": "Shop\nX"}, "from_name: line breaks"),
        ({"from_name": "x" * 101}, "from_name: longer than 100"),
        ({"reply_to": "not-an-address"}, "reply_to: not a valid address"),
    ],
)
def test_msg_email_fields_are_checked(post, shop, fields, starts):
    refused_with(post(SENT, shop, body(msg_email=email(**fields))), 400, 4004, starts)


def test_a_998_character_subject_is_accepted(post, shop):
    assert (
        len(sent_message(post(SENT, shop, body(msg_email=email(subject="x" * 998)))).subject) == 998
    )


def test_html_text_becomes_the_html_body_and_the_plain_part_is_derived(post, shop):
    html = "<p>Hello <b>Ann</b></p><p>Prices &amp; more</p>"

    message = sent_message(post(SENT, shop, body(msg_email=email(text=html))))

    assert message.html == html
    assert message.text == "Hello Ann\nPrices & more"


@pytest.mark.parametrize(
    "text", ["1 < 2 and 3 > 2", "Write to <ann@example.com>", "See <https://example.com/>"]
)
def test_text_without_tags_stays_plain(post, shop, text):
    message = sent_message(post(SENT, shop, body(msg_email=email(text=text))))

    assert (message.text, message.html) == (text, "")


def test_from_name_and_reply_to_are_stored(post, shop):
    fields = {"from_name": "Shop team", "reply_to": "help@Shop.Example"}

    message = sent_message(post(SENT, shop, body(msg_email=email(**fields))))

    assert (message.from_name, message.reply_to) == ("Shop team", "help@shop.example")


# --- rule_id, option, callback ----------------------------------------------------------------


def test_rule_id_absent_or_zero_is_the_default_sender(post, shop):
    message = sent_message(post(SENT, shop, body(rule_id=0)))

    assert message.sender == shop.authorizations.get().sender


def test_an_unknown_or_malformed_rule_id_is_1015026(post, shop):
    # Strategies themselves: tests/messaging/test_api_six.py.
    refused_with(post(SENT, shop, body(rule_id=7)), 400, 1015026, "rule_id:")
    refused_with(post(SENT, shop, body(rule_id="0")), 400, 1015026)
    refused_with(post(SENT, shop, body(rule_id=-1)), 400, 1015026)


def test_priority_defaults_to_medium(post, shop):
    assert sent_message(post(SENT, shop, body())).priority == 2


def test_priority_is_stored(post, shop):
    assert sent_message(post(SENT, shop, body(option={"priority": 3}))).priority == 3


@pytest.mark.parametrize("priority", [0, 4, "1", 1.5, True])
def test_priority_outside_1_to_3_is_4004(post, shop, priority):
    response = post(SENT, shop, body(option={"priority": priority}))

    refused_with(response, 400, 4004, "option.priority:")


def test_owner_is_stored(post, shop):
    assert sent_message(post(SENT, shop, body(option={"owner": "marketing"}))).owner == "marketing"


@pytest.mark.parametrize(
    ("option", "starts"),
    [
        ({"sendno": "x" * 65}, "option.sendno: longer than 64"),
        ({"sendno": 42}, "option.sendno: must be a string"),
        ({"owner": "x" * 65}, "option.owner: longer than 64"),
    ],
)
def test_sendno_and_owner_are_checked(post, shop, option, starts):
    refused_with(post(SENT, shop, body(option=option)), 400, 4004, starts)


def test_option_must_be_an_object(post, shop):
    refused_with(post(SENT, shop, body(option=[1])), 400, 4004, "option: must be an object")


def test_black_id_and_white_id_together_are_1015097(post, shop):
    response = post(SENT, shop, body(option={"black_id": 1, "white_id": 2}))

    refused_with(response, 400, 1015097)


def test_an_unknown_blacklist_is_1015046(post, shop):
    refused_with(post(SENT, shop, body(option={"black_id": 1})), 400, 1015046, "option.black_id:")


def test_an_unknown_whitelist_is_4004_naming_it(post, shop):
    refused_with(post(SENT, shop, body(option={"white_id": 1})), 400, 4004, "option.white_id:")


@pytest.mark.parametrize("key", ["black_id", "white_id"])
@pytest.mark.parametrize("value", ["1", 1.5, True, -1])
def test_a_list_id_that_is_not_a_whole_number_is_4004(post, shop, key, value):
    refused_with(post(SENT, shop, body(option={key: value})), 400, 4004, f"option.{key}:")


def test_send_at_in_the_future_schedules_the_message(post, shop):
    when = (timezone.now() + timedelta(hours=2)).replace(microsecond=0)

    message = sent_message(post(SENT, shop, body(option={"send_at": when.isoformat()})))

    assert message.status == Message.Status.SCHEDULED
    assert message.send_at == when


def test_send_at_in_the_past_means_now(post, shop):
    response = post(SENT, shop, body(option={"send_at": "2020-01-01T09:00:00+08:00"}))

    message = sent_message(response)
    assert (message.status, message.send_at) == (Message.Status.QUEUED, None)


@pytest.mark.parametrize(
    ("send_at", "starts"),
    [
        ("2030-01-01T09:00:00", "option.send_at: give a time zone"),
        ("tomorrow", "option.send_at: not an ISO 8601"),
        ("2030-02-30T09:00:00Z", "option.send_at: not an ISO 8601"),
        (1893456000, "option.send_at: not an ISO 8601"),
    ],
)
def test_bad_send_at_is_4004(post, shop, send_at, starts):
    refused_with(post(SENT, shop, body(option={"send_at": send_at})), 400, 4004, starts)


def test_callback_params_are_stored(post, shop):
    params = {"campaign": "spring", "n": 1}

    message = sent_message(post(SENT, shop, body(callback={"params": params})))

    assert message.callback == {"params": params}


def test_a_callback_url_the_channel_has_not_verified_is_4004(post, shop):
    # Verified URLs: tests/messaging/test_api_six.py.
    response = post(SENT, shop, body(callback={"url": "https://shop.example/cb"}))

    refused_with(response, 400, 4004, "callback.url: not a verified callback URL")


def test_a_callback_url_must_be_a_string(post, shop):
    response = post(SENT, shop, body(callback={"url": 42}))

    refused_with(response, 400, 4004, "callback.url: must be a string")


def test_callback_params_must_be_an_object(post, shop):
    response = post(SENT, shop, body(callback={"params": "x"}))

    refused_with(response, 400, 4004, "callback.params: must be an object")


# --- /v1/material -----------------------------------------------------------------------------


def test_material_upload_answers_an_absolute_url(upload, shop):
    before = timezone.now()
    response = upload(shop)

    assert response.status_code == 200, response.content
    material = Material.objects.get()
    assert response.json() == {
        "code": 0,
        "message": "success",
        "url": f"http://testserver/v1/material/{material.token}",
    }
    assert (material.channel, material.name, material.content_type) == (
        shop,
        "prices.pdf",
        "application/pdf",
    )
    assert material.file.read() == PDF
    assert (
        before + timedelta(hours=24) <= material.expires_at <= timezone.now() + timedelta(hours=24)
    )


def test_material_time_to_live_is_in_hours(upload, shop):
    upload(shop, time_to_live="168")

    assert Material.objects.get().expires_at > timezone.now() + timedelta(hours=167)


@pytest.mark.parametrize("ttl", ["0", "169", "abc", "1.5", "-1"])
def test_material_time_to_live_outside_1_to_168_is_4004(upload, shop, ttl):
    refused_with(upload(shop, time_to_live=ttl), 400, 4004, "time_to_live:")


def test_material_type_must_be_attachment(upload, shop):
    refused_with(upload(shop, type="image"), 400, 4004, "type: must be attachment")


def test_material_needs_exactly_one_file(upload, shop):
    two = [SimpleUploadedFile("a.txt", b"a"), SimpleUploadedFile("b.txt", b"b")]

    refused_with(upload(shop, files=[]), 400, 4004, "file: give exactly one file")
    refused_with(upload(shop, files=two), 400, 4004, "file: give exactly one file")


def test_material_must_be_multipart(post, shop):
    refused_with(
        post(MATERIAL, shop, {"type": "attachment"}), 400, 4004, "body: send it as multipart"
    )


def test_material_larger_than_the_cap_is_refused(upload, shop, settings):
    settings.UMS_MATERIAL_MAX_BYTES = 10

    refused_with(upload(shop), 413, 4004, "file: larger than")
    assert not Material.objects.exists()


def test_material_needs_a_channel_key(client):
    key, secret = channel_services.access_key_create(label="ops")

    response = client.post(
        MATERIAL, {"type": "attachment"}, HTTP_AUTHORIZATION=basic(key.access_key, secret)
    )

    refused_with(response, 401, 4005)


def test_a_material_url_cannot_be_downloaded(client, upload, shop):
    url = upload(shop).json()["url"]

    refused_with(client.get(url), 404, 1016001, "Materials cannot be downloaded")


# --- msg_email[].files ------------------------------------------------------------------------


def test_a_material_is_attached(post, upload, shop):
    url = upload(shop).json()["url"]

    message = sent_message(post(SENT, shop, body(msg_email=email(files=[url]))))

    assert list(message.materials.all()) == [Material.objects.get()]


def test_a_material_is_found_whatever_host_the_client_used(post, upload, shop):
    url = upload(shop).json()["url"].replace("http://testserver", "https://ums.internal:8443")

    assert sent_message(post(SENT, shop, body(msg_email=email(files=[url])))).materials.count() == 1


def test_an_expired_material_is_refused(post, upload, shop):
    url = upload(shop).json()["url"]
    Material.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    refused_with(
        post(SENT, shop, body(msg_email=email(files=[url]))), 400, 4004, f"files: {url} has expired"
    )


def test_another_channels_material_is_refused(post, upload, shop, games):
    url = upload(games).json()["url"]

    response = post(SENT, shop, body(msg_email=email(files=[url])))

    refused_with(response, 400, 4004, f"files: {url} is not a material of this channel")


def test_an_unknown_material_is_refused(post, shop):
    url = "http://testserver/v1/material/" + "x" * 43

    refused_with(post(SENT, shop, body(msg_email=email(files=[url]))), 400, 4004, "files:")


def test_at_most_10_files(post, upload, shop):
    url = upload(shop).json()["url"]

    refused_with(
        post(SENT, shop, body(msg_email=email(files=[url] * 11))), 400, 4004, "files: at most 10"
    )


def test_files_must_be_urls(post, shop):
    refused_with(post(SENT, shop, body(msg_email=email(files=[{"url": "x"}]))), 400, 4004, "files:")


# --- attachments fetched from http(s) URLs ----------------------------------------------------


class Site(BaseHTTPRequestHandler):
    """A small web server for the fetch tests; `big` is the size of /big in bytes."""

    big = 0

    def do_GET(self):
        route = getattr(
            self,
            "route_" + self.path.strip("/").split("?")[0].replace("-", "_").replace(".", "_"),
            None,
        )
        if route is None:
            self.send_error(404)
            return
        route()

    def route_prices_pdf(self):
        self.answer(PDF, "application/pdf")

    def route_export(self):
        self.answer(
            b"sku,price\n1,9.90\n",
            "text/csv",
            {"Content-Disposition": 'attachment; filename="prices.csv"'},
        )

    def route_moved(self):
        self.send_response(302)
        self.send_header("Location", "/prices.pdf")
        self.end_headers()

    def route_to_metadata(self):
        self.send_response(302)
        self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
        self.end_headers()

    def route_big(self):
        # No Content-Length: the size is known only by reading, as with a streamed response.
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        self.wfile.write(b"x" * self.big)

    def route_declared_big(self):
        self.send_response(200)
        self.send_header("Content-Length", str(10**9))
        self.end_headers()

    def route_slow(self):
        self.send_response(200)
        self.send_header("Content-Length", "100")
        self.end_headers()
        try:
            for _ in range(20):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass  # the client gave up, as it should

    def answer(self, content: bytes, content_type: str, headers: dict | None = None):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(content)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, format, *args):
        pass


def serve(tls=None):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Site)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return server


@pytest.fixture
def site():
    server = serve()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def tls_site(server_cert):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    server = serve(context)
    yield f"https://localhost:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_an_http_url_is_fetched_and_attached(post, shop, site):
    message = sent_message(post(SENT, shop, body(msg_email=email(files=[f"{site}/prices.pdf"]))))

    material = message.materials.get()
    assert (material.channel, material.name, material.content_type) == (
        shop,
        "prices.pdf",
        "application/pdf",
    )
    assert material.file.read() == PDF
    assert (
        timezone.now() + timedelta(hours=23)
        < material.expires_at
        <= timezone.now() + timedelta(hours=24)
    )


def test_a_fetched_file_is_named_by_content_disposition(post, shop, site):
    message = sent_message(post(SENT, shop, body(msg_email=email(files=[f"{site}/export"]))))

    material = message.materials.get()
    assert (material.name, material.content_type) == ("prices.csv", "text/csv")


def test_materials_and_urls_together_keep_every_file(post, upload, shop, site):
    url = upload(shop).json()["url"]

    message = sent_message(post(SENT, shop, body(msg_email=email(files=[f"{site}/export", url]))))

    assert sorted(message.materials.values_list("name", flat=True)) == ["prices.csv", "prices.pdf"]


def test_a_redirect_on_the_same_site_is_followed(post, shop, site):
    message = sent_message(post(SENT, shop, body(msg_email=email(files=[f"{site}/moved"]))))

    assert message.materials.get().file.read() == PDF


def test_a_redirect_to_the_metadata_service_is_refused(post, shop, site):
    response = post(SENT, shop, body(msg_email=email(files=[f"{site}/to-metadata"])))

    refused_with(response, 400, 4004, "files: could not fetch")
    assert "may not be reached" in response.json()["message"]


def test_the_cloud_metadata_address_is_refused(post, shop):
    url = "http://169.254.169.254/latest/meta-data/iam/"

    message = refused_with(
        post(SENT, shop, body(msg_email=email(files=[url]))),
        400,
        4004,
        f"files: could not fetch {url}",
    )

    assert "may not be reached" in message
    assert not Message.objects.exists()


def test_private_addresses_are_refused_unless_allowed(post, shop, site, settings):
    settings.UMS_SMTP_ALLOW_PRIVATE_NETWORKS = False

    response = post(SENT, shop, body(msg_email=email(files=[f"{site}/prices.pdf"])))

    refused_with(response, 400, 4004, "files: could not fetch")


def test_an_oversized_fetch_is_refused(post, shop, site, settings, monkeypatch):
    settings.UMS_MATERIAL_MAX_BYTES = 1000
    monkeypatch.setattr(Site, "big", 1001)

    response = post(SENT, shop, body(msg_email=email(files=[f"{site}/big"])))

    refused_with(response, 400, 4004, "files: could not fetch")
    assert "larger than" in response.json()["message"]
    assert not Material.objects.exists()


def test_a_fetch_of_exactly_the_cap_is_accepted(post, shop, site, settings, monkeypatch):
    settings.UMS_MATERIAL_MAX_BYTES = 1000
    monkeypatch.setattr(Site, "big", 1000)

    message = sent_message(post(SENT, shop, body(msg_email=email(files=[f"{site}/big"]))))

    assert message.materials.get().size == 1000


def test_a_declared_oversized_body_is_refused_before_reading(post, shop, site):
    response = post(SENT, shop, body(msg_email=email(files=[f"{site}/declared-big"])))

    assert "larger than" in refused_with(response, 400, 4004, "files: could not fetch")


def test_a_slow_server_times_out(post, shop, site, monkeypatch):
    monkeypatch.setattr(messaging_api, "FETCH_TIMEOUT", 0.5)

    response = post(SENT, shop, body(msg_email=email(files=[f"{site}/slow"])))

    # The slow page takes far longer than the timeout: "timed out" means the wait was cut.
    assert "timed out" in refused_with(response, 400, 4004, "files: could not fetch")


def test_an_https_url_is_fetched_with_a_verified_certificate(post, shop, tls_site, ca, monkeypatch):
    def trusting_context():
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ca.configure_trust(context)
        return context

    monkeypatch.setattr(fetch.ssl, "create_default_context", trusting_context)

    message = sent_message(
        post(SENT, shop, body(msg_email=email(files=[f"{tls_site}/prices.pdf"])))
    )

    assert message.materials.get().file.read() == PDF


def test_an_untrusted_certificate_is_a_fetch_failure(post, shop, tls_site):
    response = post(SENT, shop, body(msg_email=email(files=[f"{tls_site}/prices.pdf"])))

    assert "certificate" in refused_with(response, 400, 4004, "files: could not fetch")


def test_an_http_error_is_a_fetch_failure(post, shop, site):
    response = post(SENT, shop, body(msg_email=email(files=[f"{site}/missing"])))

    assert "HTTP 404" in refused_with(response, 400, 4004, f"files: could not fetch {site}/missing")


@pytest.mark.parametrize(
    "url", ["ftp://example.com/a.pdf", "file:///etc/passwd", "http://u:p@example.com/a"]
)
def test_only_plain_http_urls_are_fetched(post, shop, url):
    refused_with(
        post(SENT, shop, body(msg_email=email(files=[url]))), 400, 4004, "files: could not fetch"
    )


def test_files_fetched_for_a_failed_request_are_deleted(post, shop, site):
    files = [f"{site}/prices.pdf", f"{site}/missing"]

    refused_with(post(SENT, shop, body(msg_email=email(files=files))), 400, 4004, "files:")

    assert not Material.objects.exists()


def test_files_fetched_for_a_refused_send_are_deleted(post, make_channel, site):
    lonely = make_channel("Lonely", with_sender=False)

    refused_with(
        post(SENT, lonely, body(msg_email=email(files=[f"{site}/prices.pdf"]))), 400, 1015010
    )

    assert not Material.objects.exists()


def test_files_fetched_for_a_repeated_sendno_are_deleted(post, shop, site):
    request = body(msg_email=email(files=[f"{site}/prices.pdf"]), option={"sendno": "s"})
    first = post(SENT, shop, request)
    second = post(SENT, shop, request)

    assert first.json()["msgid"] == second.json()["msgid"]
    assert Material.objects.count() == 1


# --- /v1/retract ------------------------------------------------------------------------------


def add_deliveries(message: Message, *statuses: str) -> None:
    Delivery.objects.bulk_create(
        Delivery(message=message, userid=f"u{n}", email=f"u{n}@example.com", status=status)
        for n, status in enumerate(statuses)
    )


def test_retract_cancels_what_was_not_handed_to_smtp(post, shop):
    message = sent_message(post(SENT, shop, body()))
    add_deliveries(message, "pending", "retrying", "sending", "sent")
    Message.objects.filter(pk=message.pk).update(total=4, sent=1)

    response = post(f"/v1/retract/{message.msgid}", shop, "")

    assert response.status_code == 200, response.content
    assert response.json() == {
        "code": 0,
        "message": "success",
        "data": {"cancelled": 2, "sent": 1, "in_flight": 1},
    }
    message.refresh_from_db()
    assert message.status == Message.Status.RETRACTED


def test_retract_twice_is_1015055(post, shop):
    message = sent_message(post(SENT, shop, body()))
    post(f"/v1/retract/{message.msgid}", shop, "")

    refused_with(post(f"/v1/retract/{message.msgid}", shop, ""), 400, 1015055)


def test_retract_of_another_channels_message_is_404(post, shop, games):
    message = sent_message(post(SENT, games, body()))

    refused_with(post(f"/v1/retract/{message.msgid}", shop, ""), 404, 1016004)
    message.refresh_from_db()
    assert message.status == Message.Status.QUEUED


def test_retract_of_an_unknown_msgid_is_404(post, shop):
    refused_with(post("/v1/retract/123", shop, ""), 404, 1016004)


def test_retract_after_24_hours_is_refused(post, shop):
    message = sent_message(post(SENT, shop, body()))
    Message.objects.filter(pk=message.pk).update(created_at=timezone.now() - timedelta(hours=25))

    refused_with(post(f"/v1/retract/{message.msgid}", shop, ""), 400, 1016020)


# --- /v1/messages -----------------------------------------------------------------------------


def test_message_status_reports_counts(post, get, shop):
    message = sent_message(post(SENT, shop, body(option={"sendno": "s-1"})))
    Message.objects.filter(pk=message.pk).update(
        status=Message.Status.SENDING, total=10, sent=4, failed=1, invalid=2, cancelled=0
    )

    response = get(f"/v1/messages/{message.msgid}", shop)

    assert response.status_code == 200
    data = response.json()["data"]
    assert data == {
        "msgid": message.msgid,
        "sendno": "s-1",
        "status": "sending",
        "created_at": data["created_at"],
        "finished_at": None,
        "total": 10,
        "sent": 4,
        "failed": 1,
        "invalid": 2,
        "cancelled": 0,
        "pending": 3,
    }
    assert data["created_at"].startswith(str(message.created_at.date()))


def test_message_status_of_another_channel_is_404(post, get, shop, games):
    message = sent_message(post(SENT, games, body()))

    refused_with(get(f"/v1/messages/{message.msgid}", shop), 404, 1016004)
    refused_with(get(f"/v1/messages/{message.msgid}/deliveries", shop), 404, 1016004)


def test_deliveries_are_paged_with_next_page(post, get, shop):
    message = sent_message(post(SENT, shop, body()))
    add_deliveries(message, "sent", "failed", "sent", "invalid", "sent")
    Delivery.objects.filter(status="failed").update(
        attempts=5, smtp_code=550, smtp_reply="5.1.1 no such user"
    )

    first = get(f"/v1/messages/{message.msgid}/deliveries", shop, page_size=2).json()["data"]
    last = get(f"/v1/messages/{message.msgid}/deliveries", shop, page_size=2, page=3).json()["data"]

    assert (first["page"], first["page_size"], first["next_page"]) == (1, 2, 2)
    assert first["results"][1] == {
        "userid": "u1",
        "email": "u1@example.com",
        "status": "failed",
        "attempts": 5,
        "smtp_code": 550,
        "smtp_reply": "5.1.1 no such user",
        "sent_at": None,
        "message_id": "",
    }
    assert "count" not in first
    assert last["next_page"] is None
    assert [row["userid"] for row in last["results"]] == ["u4"]


def test_deliveries_filter_by_status(post, get, shop):
    message = sent_message(post(SENT, shop, body()))
    add_deliveries(message, "sent", "failed", "sent")

    data = get(f"/v1/messages/{message.msgid}/deliveries", shop, status="sent").json()["data"]

    assert [row["userid"] for row in data["results"]] == ["u0", "u2"]
    assert data["page_size"] == 100


@pytest.mark.parametrize(
    ("params", "starts"),
    [
        ({"status": "delivered"}, "status: must be one of"),
        ({"page_size": "501"}, "page_size:"),
        ({"page_size": "0"}, "page_size:"),
        ({"page": "0"}, "page:"),
        ({"page": "x"}, "page:"),
        ({"page": "9" * 5000}, "page:"),
    ],
)
def test_bad_delivery_queries_are_4004(post, get, shop, params, starts):
    message = sent_message(post(SENT, shop, body()))

    refused_with(get(f"/v1/messages/{message.msgid}/deliveries", shop, **params), 400, 4004, starts)
