"""The user API through HTTP: /v1/user/opt and /v1/user/delete, and the JSON errors of /v1/."""

import base64
import json
import logging

import pytest
from django.test import override_settings

from channels_app import services
from users_app import api as users_api
from users_app.models import UmsUser, UserEmailBinding

pytestmark = pytest.mark.django_db

OPT = "/v1/user/opt"
DELETE = "/v1/user/delete"


def basic(key: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()


@pytest.fixture
def shop():
    channel, secret = services.channel_create(name="Shop")
    channel.auth = basic(channel.channel_key, secret)
    return channel


@pytest.fixture
def games():
    channel, secret = services.channel_create(name="Games")
    channel.auth = basic(channel.channel_key, secret)
    return channel


@pytest.fixture
def admin_auth():
    key, secret = services.access_key_create(label="ops")
    return basic(key.access_key, secret)


@pytest.fixture
def call(client):
    def post(url: str, auth: str, body: object, **extra):
        data = body if isinstance(body, str | bytes) else json.dumps(body)
        extra.setdefault("content_type", "application/json")
        return client.post(url, data, HTTP_AUTHORIZATION=auth, **extra)

    return post


def address_for(userid: str, channel) -> str | None:
    """What a send from `channel` resolves: its own scope's address, else the `all` one."""
    bindings = dict(
        UserEmailBinding.objects.filter(user__userid=userid).values_list("bind_id", "email")
    )
    return bindings.get(channel.channel_key) or bindings.get("all")


# --- /v1/user/opt ---------------------------------------------------------------------------


def test_opt_answers_the_vendor_response_shape(call, admin_auth):
    response = call(OPT, admin_auth, [{"userid": "u1", "set": {"email": {"all": "a@x.cn"}}}])

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "code": 0,
        "message": "success",
        "data": {"success": ["u1"], "fail": []},
    }


def test_channel_key_writes_all_and_its_own_scope(call, shop, games):
    response = call(
        OPT,
        shop.auth,
        [{"userid": "u1", "set": {"email": {"all": "all@x.cn", shop.channel_key: "shop@x.cn"}}}],
    )

    assert response.json()["data"] == {"success": ["u1"], "fail": []}
    assert address_for("u1", shop) == "shop@x.cn"
    assert address_for("u1", games) == "all@x.cn"


def test_channel_key_is_refused_a_foreign_scope_while_other_items_succeed(call, shop, games):
    response = call(
        OPT,
        shop.auth,
        [
            {"userid": "u1", "set": {"email": {games.channel_key: "g@x.cn"}}},
            {"userid": "u2", "set": {"email": {"all": "u2@x.cn"}}},
        ],
    )

    assert response.status_code == 200
    data = response.json()["data"]
    assert data["success"] == ["u2"]
    assert data["fail"][0]["userid"] == "u1"
    assert data["fail"][0]["errcode"] == 1016010
    assert games.channel_key in data["fail"][0]["errmsg"]
    assert not UmsUser.objects.filter(userid="u1").exists()


def test_access_key_writes_any_scope_and_each_channel_resolves_its_own(
    call, admin_auth, shop, games
):
    call(
        OPT,
        admin_auth,
        [{"userid": "u1", "email": {"all": "all@x.cn", games.channel_key: "games@x.cn"}}],
    )

    assert address_for("u1", games) == "games@x.cn"
    assert address_for("u1", shop) == "all@x.cn"


def test_removing_the_channel_address_falls_back_to_all(call, admin_auth, shop):
    call(
        OPT, admin_auth, [{"userid": "u1", "email": {"all": "a@x.cn", shop.channel_key: "s@x.cn"}}]
    )

    call(OPT, shop.auth, [{"userid": "u1", "del": {"email": {shop.channel_key: None}}}])

    assert address_for("u1", shop) == "a@x.cn"


def test_bad_email_fails_its_item_with_4004_naming_email(call, admin_auth):
    response = call(
        OPT,
        admin_auth,
        [
            {"userid": "u1", "email": {"all": "nope"}},
            {"userid": "u2", "email": {"all": "u2@x.cn"}},
        ],
    )

    assert response.status_code == 200
    assert response.json()["data"] == {
        "success": ["u2"],
        "fail": [{"userid": "u1", "errcode": 4004, "errmsg": "email: not a valid address"}],
    }


def test_more_than_1000_items_is_400_and_writes_nothing(call, admin_auth):
    body = [{"userid": f"u{n}"} for n in range(1001)]

    response = call(OPT, admin_auth, body)

    assert response.status_code == 400
    assert response.json() == {"code": 4004, "message": "body: at most 1000 items"}
    assert not UmsUser.objects.exists()


def test_body_that_is_not_an_array_is_400_4004(call, admin_auth):
    response = call(OPT, admin_auth, {"userid": "u1"})

    assert response.status_code == 400
    assert response.json()["code"] == 4004
    assert response.json()["message"].startswith("body: ")


# --- /v1/user/delete ------------------------------------------------------------------------


def test_delete_with_the_access_key_removes_the_users(call, admin_auth):
    call(OPT, admin_auth, [{"userid": "u1", "email": {"all": "a@x.cn"}, "tag": {"all": ["t"]}}])

    response = call(DELETE, admin_auth, ["u1", "ghost", "bad id"])

    assert response.status_code == 200
    data = response.json()["data"]
    assert data["success"] == ["u1", "ghost"]
    assert [(f["userid"], f["errcode"]) for f in data["fail"]] == [("bad id", 4004)]
    assert data["fail"][0]["errmsg"].startswith("userid: ")
    assert not UmsUser.objects.exists()
    assert not UserEmailBinding.objects.exists()


def test_delete_with_a_channel_key_is_refused(call, shop):
    UmsUser.objects.create(userid="u1")

    response = call(DELETE, shop.auth, ["u1"])

    assert response.status_code == 403
    assert response.json()["code"] == 1016011
    assert UmsUser.objects.filter(userid="u1").exists()


def test_delete_without_credentials_is_401(call):
    response = call(DELETE, "", ["u1"])

    assert response.status_code == 401
    assert response.json()["code"] == 4005


# --- errors of /v1/ are always JSON ---------------------------------------------------------


def test_malformed_json_is_400_4004_naming_body(call, admin_auth):
    response = call(OPT, admin_auth, '[{"userid": "u1",')

    assert response.status_code == 400
    assert response.json() == {"code": 4004, "message": "body: not valid JSON"}


def test_body_that_is_not_utf8_is_400_4004(call, admin_auth):
    response = call(OPT, admin_auth, b'["\xff"]')

    assert response.status_code == 400
    assert response.json()["message"].startswith("body: ")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_wrong_content_type_is_400_4004(call, admin_auth, content_type):
    response = call(OPT, admin_auth, "[]", content_type=content_type)

    assert response.status_code == 400
    assert response.json()["code"] == 4004
    assert response.json()["message"].startswith("body: ")


def test_json_with_a_utf8_charset_is_accepted(call, admin_auth):
    response = call(OPT, admin_auth, "[]", content_type="application/json; charset=UTF-8")

    assert response.status_code == 200


def test_json_in_another_charset_is_refused(call, admin_auth):
    response = call(OPT, admin_auth, "[]", content_type="application/json; charset=latin-1")

    assert response.status_code == 400
    assert response.json()["code"] == 4004


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=100)
def test_oversized_body_is_413_json(call, admin_auth):
    body = [{"userid": f"user{n}", "email": {"all": f"user{n}@x.cn"}} for n in range(10)]

    response = call(OPT, admin_auth, body)

    assert response.status_code == 413
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == 1016003
    assert not UmsUser.objects.exists()


def test_credentials_are_checked_before_the_body_is_read(call):
    response = call(OPT, basic("f" * 24, "0" * 32), "not json")

    assert response.status_code == 401


@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize("path", ["/v1/", "/v1/nope", "/v1/user/opt/", "/v1/user/opt/x"])
def test_unknown_path_under_v1_is_404_json(client, method, path):
    response = getattr(client, method)(path)

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == 1016001


@pytest.mark.parametrize("method", ["get", "put", "delete", "patch"])
def test_wrong_method_is_405_json(client, admin_auth, method):
    response = getattr(client, method)(OPT, HTTP_AUTHORIZATION=admin_auth)

    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert response.json()["code"] == 1016002


def test_unexpected_error_is_500_5000_without_details(call, admin_auth, monkeypatch, caplog):
    def crash(**kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(users_api, "user_opt_apply", crash)

    with caplog.at_level(logging.ERROR, logger="ums.api"):
        response = call(OPT, admin_auth, [])

    assert response.status_code == 500
    assert response.json()["code"] == 5000
    assert "secret internals" not in response.content.decode()
    assert "Traceback" not in response.content.decode()
    assert "secret internals" in caplog.text
