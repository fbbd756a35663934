"""API authentication: HTTP Basic with ChannelKey:MasterSecret or AccessKey:secret."""

import base64
import hmac
import json

import pytest

from channels_app import api_auth, services
from channels_app.api_auth import ApiPrincipal, credentials_authenticate
from channels_app.models import Channel
from ums.api import ApiError

pytestmark = pytest.mark.django_db

URL = "/v1/user/opt"


def basic(key: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()


def post(client, authorization: str | None, body: object = ()):
    extra = {"HTTP_AUTHORIZATION": authorization} if authorization is not None else {}
    return client.post(URL, json.dumps(list(body)), content_type="application/json", **extra)


@pytest.fixture
def channel():
    return services.channel_create(name="Shop")


@pytest.fixture
def access_key():
    return services.access_key_create(label="ops")


@pytest.fixture
def comparisons(monkeypatch):
    """Every constant-time comparison made while authenticating, with its arguments."""
    calls = []
    real = hmac.compare_digest

    def recording(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api_auth.hmac, "compare_digest", recording)
    return calls


def test_channel_key_with_its_master_secret_is_the_channel(client, channel):
    channel_obj, secret = channel

    principal = credentials_authenticate(key=channel_obj.channel_key, secret=secret)

    assert principal.channel == channel_obj
    assert principal.access_key is None
    assert post(client, basic(channel_obj.channel_key, secret)).json()["code"] == 0


def test_access_key_with_its_secret_is_the_access_key(client, access_key):
    key, secret = access_key

    principal = credentials_authenticate(key=key.access_key, secret=secret)

    assert principal.access_key == key
    assert principal.is_access_key
    assert post(client, basic(key.access_key, secret)).json()["code"] == 0


@pytest.mark.parametrize("who", ["channel", "access key"])
def test_wrong_secret_is_401_4005(client, channel, access_key, who):
    key = channel[0].channel_key if who == "channel" else access_key[0].access_key

    response = post(client, basic(key, "0" * 32))

    assert response.status_code == 401
    assert response.json()["code"] == 4005
    assert response["WWW-Authenticate"].startswith("Basic")


def test_unknown_key_answers_exactly_like_a_wrong_secret(client, channel):
    wrong_secret = post(client, basic(channel[0].channel_key, "0" * 32))
    unknown_key = post(client, basic("f" * 24, "0" * 32))

    assert unknown_key.status_code == wrong_secret.status_code == 401
    assert unknown_key.json() == wrong_secret.json()


@pytest.mark.parametrize("case", ["unknown key", "wrong channel secret", "wrong access secret"])
def test_every_failed_attempt_makes_one_comparison_of_digests(
    channel, access_key, comparisons, case
):
    key = {
        "unknown key": "f" * 24,
        "wrong channel secret": channel[0].channel_key,
        "wrong access secret": access_key[0].access_key,
    }[case]

    with pytest.raises(ApiError):
        credentials_authenticate(key=key, secret="0" * 32)

    assert len(comparisons) == 1
    presented, expected = comparisons[0]
    assert len(presented) == len(expected) == 64  # SHA-256 digests, whatever the key was


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer abc",
        "Basic",
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(b"key-without-secret:").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
    ],
)
def test_missing_or_malformed_authorization_is_401_4005(client, header):
    response = post(client, header)

    assert response.status_code == 401
    assert response.json()["code"] == 4005


def test_scheme_name_is_case_insensitive(client, channel):
    header = basic(channel[0].channel_key, channel[1]).replace("Basic", "basic")

    assert post(client, header).status_code == 200


def test_closed_channel_is_refused_with_1015005(client, channel):
    channel_obj, secret = channel
    Channel.objects.filter(pk=channel_obj.pk).update(status=Channel.Status.CLOSED)

    response = post(client, basic(channel_obj.channel_key, secret))

    assert response.status_code == 403
    assert response.json()["code"] == 1015005


def test_closed_channel_with_a_wrong_secret_does_not_say_it_is_closed(client, channel):
    channel_obj, _secret = channel
    Channel.objects.filter(pk=channel_obj.pk).update(status=Channel.Status.CLOSED)

    response = post(client, basic(channel_obj.channel_key, "0" * 32))

    assert response.status_code == 401
    assert response.json()["code"] == 4005


def test_inactive_access_key_is_401_4005(client, access_key):
    key, secret = access_key
    key.is_active = False
    key.save()

    response = post(client, basic(key.access_key, secret))

    assert response.status_code == 401
    assert response.json()["code"] == 4005


def test_master_secret_reset_invalidates_the_old_secret(client, channel):
    channel_obj, old_secret = channel
    new_secret = services.channel_reset_secret(channel=channel_obj, user=None)

    assert post(client, basic(channel_obj.channel_key, old_secret)).status_code == 401
    assert post(client, basic(channel_obj.channel_key, new_secret)).status_code == 200


def test_channel_writes_only_all_and_its_own_scope(channel):
    channel_obj = channel[0]
    principal = ApiPrincipal(channel=channel_obj)

    assert principal.can_write_scope("all")
    assert principal.can_write_scope(channel_obj.channel_key)
    assert not principal.can_write_scope("a" * 24)


def test_access_key_writes_any_scope(access_key):
    principal = ApiPrincipal(access_key=access_key[0])

    assert principal.can_write_scope("all")
    assert principal.can_write_scope("a" * 24)


def test_only_the_access_key_passes_the_access_key_requirement(channel, access_key):
    ApiPrincipal(access_key=access_key[0]).require_access_key()

    with pytest.raises(ApiError) as refused:
        ApiPrincipal(channel=channel[0]).require_access_key()

    assert refused.value.status == 403


def test_access_key_does_not_authenticate_where_a_channel_is_needed(channel, access_key):
    assert ApiPrincipal(channel=channel[0]).require_channel() == channel[0]

    with pytest.raises(ApiError) as refused:
        ApiPrincipal(access_key=access_key[0]).require_channel()

    assert (refused.value.status, refused.value.code) == (401, 4005)
