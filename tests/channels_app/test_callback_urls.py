"""A channel's callback URLs: the echostr verification against a real HTTP server, the choice of
a message's URL, and the console's inline with its Verify button, per role."""

import base64
import re
from collections.abc import Iterator

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from channels_app import services
from channels_app.callbacks import (
    CallbackUrlRefused,
    callback_url_for_message,
    callback_url_save,
    callback_url_verify,
)
from channels_app.models import CallbackUrl
from tests.http_server import ECHO, SLOW, CallbackServer

pytestmark = pytest.mark.django_db


@pytest.fixture
def callback_server() -> Iterator[CallbackServer]:
    with CallbackServer() as server:
        yield server


def basic(key: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()


# --- verification ----------------------------------------------------------------------------


@pytest.fixture
def channel_and_secret(db):
    return services.channel_create(name="Shop")


def add_url(channel, url: str, position: int = 0, verified: bool = False) -> CallbackUrl:
    callback_url = callback_url_save(
        callback_url=CallbackUrl(channel=channel, url=url, position=position)
    )
    if verified:
        CallbackUrl.objects.filter(pk=callback_url.pk).update(verified_at=timezone.now())
        callback_url.refresh_from_db()
    return callback_url


def test_a_url_that_echoes_the_echostr_is_verified(callback_server, channel_and_secret):
    channel, secret = channel_and_secret
    callback_server.reply_with(ECHO)
    callback_url = add_url(channel, callback_server.url())

    callback_url_verify(callback_url=callback_url)

    callback_url.refresh_from_db()
    assert callback_url.verified_at is not None
    assert callback_url.verification_error == ""
    [request] = callback_server.requests
    assert (request.method, request.path) == ("GET", "/ums/callback")
    assert re.fullmatch(r"[0-9a-f]{32}", request.query["echostr"][0])
    assert request.headers["authorization"] == basic(channel.channel_key, secret)


def test_each_verification_sends_a_new_echostr_and_keeps_the_urls_own_query(
    callback_server, channel_and_secret
):
    channel, _secret = channel_and_secret
    callback_server.reply_with(ECHO)
    callback_url = add_url(channel, callback_server.url("/hook?team=ops"))

    callback_url_verify(callback_url=callback_url)
    callback_url_verify(callback_url=callback_url)

    first, second = callback_server.requests
    assert first.query["team"] == ["ops"]
    assert first.query["echostr"] != second.query["echostr"]
    assert callback_url.verified_at is not None


def test_a_wrong_value_is_not_verified(callback_server, channel_and_secret):
    channel, _secret = channel_and_secret
    callback_server.reply_with((200, b"success"))
    callback_url = add_url(channel, callback_server.url())

    callback_url_verify(callback_url=callback_url)

    callback_url.refresh_from_db()
    assert callback_url.verified_at is None
    assert "not the echostr value" in callback_url.verification_error
    assert "success" in callback_url.verification_error


def test_an_echo_with_another_status_than_200_is_not_verified(callback_server, channel_and_secret):
    channel, _secret = channel_and_secret
    callback_url = add_url(channel, callback_server.url())
    callback_server.reply_with((404, b""))

    callback_url_verify(callback_url=callback_url)

    callback_url.refresh_from_db()
    assert callback_url.verified_at is None
    assert callback_url.verification_error == "The URL answered HTTP 404 instead of 200."


def test_a_url_that_does_not_answer_in_time_is_not_verified(
    callback_server, channel_and_secret, settings
):
    settings.UMS_CALLBACK_TIMEOUT = 0.5
    channel, _secret = channel_and_secret
    callback_server.reply_with(SLOW)
    callback_url = add_url(channel, callback_server.url())

    callback_url_verify(callback_url=callback_url)

    callback_url.refresh_from_db()
    assert callback_url.verified_at is None
    assert callback_url.verification_error == "The URL could not be reached: timed out."


def test_a_private_address_is_refused_unless_allowed(callback_server, channel_and_secret, settings):
    settings.UMS_SMTP_ALLOW_PRIVATE_NETWORKS = False
    channel, _secret = channel_and_secret
    callback_server.reply_with(ECHO)
    callback_url = add_url(channel, callback_server.url())

    callback_url_verify(callback_url=callback_url)

    callback_url.refresh_from_db()
    assert callback_url.verified_at is None
    assert "may not be reached from this server" in callback_url.verification_error
    assert callback_server.requests == []


def test_a_metadata_address_is_refused_even_when_private_networks_are_allowed(
    channel_and_secret,
):
    channel, _secret = channel_and_secret
    callback_url = add_url(channel, "http://169.254.169.254/latest/meta-data")

    callback_url_verify(callback_url=callback_url)

    assert callback_url.verified_at is None
    assert "may not be reached" in callback_url.verification_error


def test_a_verified_url_that_fails_again_is_no_longer_used(callback_server, channel_and_secret):
    channel, _secret = channel_and_secret
    callback_url = add_url(channel, callback_server.url(), verified=True)
    callback_server.reply_with((500, b"down"))

    callback_url_verify(callback_url=callback_url)

    assert callback_url_for_message(channel=channel, url=None) is None


def test_changing_a_url_clears_its_verification(channel_and_secret):
    channel, _secret = channel_and_secret
    callback_url = add_url(channel, "https://shop.example/cb", verified=True)
    callback_url.position = 3
    callback_url_save(callback_url=callback_url)
    kept = callback_url.verified_at

    callback_url.url = "https://shop.example/other"
    callback_url_save(callback_url=callback_url)

    callback_url.refresh_from_db()
    assert kept is not None
    assert callback_url.verified_at is None


def test_a_channel_has_at_most_five_urls(channel_and_secret):
    channel, _secret = channel_and_secret
    for n in range(5):
        add_url(channel, f"https://shop.example/cb{n}")

    with pytest.raises(ValidationError, match="at most 5"):
        add_url(channel, "https://shop.example/cb5")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://shop.example/cb", "only http and https"),
        ("https://user:pw@shop.example/cb", "user name or password"),
    ],
)
def test_urls_that_can_never_be_verified_are_refused(channel_and_secret, url, reason):
    channel, _secret = channel_and_secret

    with pytest.raises(ValidationError, match=reason):
        add_url(channel, url)


# --- the URL of a message --------------------------------------------------------------------


def test_a_message_without_a_url_reports_to_the_first_verified_url(channel_and_secret):
    channel, _secret = channel_and_secret
    add_url(channel, "https://shop.example/unverified", position=0)
    second = add_url(channel, "https://shop.example/second", position=2, verified=True)
    first = add_url(channel, "https://shop.example/first", position=1, verified=True)

    assert callback_url_for_message(channel=channel, url=None) == first
    assert callback_url_for_message(channel=channel, url="") == first
    assert callback_url_for_message(channel=channel, url=second.url) == second


def test_a_channel_without_verified_urls_reports_nothing(channel_and_secret):
    channel, _secret = channel_and_secret
    add_url(channel, "https://shop.example/unverified")

    assert callback_url_for_message(channel=channel, url=None) is None


@pytest.mark.parametrize(
    "url",
    ["https://shop.example/unverified", "https://elsewhere.example/cb", "https://other.example/cb"],
)
def test_a_message_may_only_name_a_verified_url_of_its_channel(channel_and_secret, url):
    channel, _secret = channel_and_secret
    other, _other_secret = services.channel_create(name="Other")
    add_url(channel, "https://shop.example/unverified")
    add_url(other, "https://other.example/cb", verified=True)

    with pytest.raises(CallbackUrlRefused) as refused:
        callback_url_for_message(channel=channel, url=url)

    assert str(refused.value) == "callback.url: not a verified callback URL of this channel"
    assert refused.value.field == "callback.url"


# --- the console -----------------------------------------------------------------------------


def channel_form(channel, urls: list[tuple[str, int, CallbackUrl | None]], **overrides) -> dict:
    """The POST of the channel's page: its fields and both inlines' management forms."""
    data = {
        "name": channel.name,
        "status": channel.status,
        "description": "",
        "authorizations-TOTAL_FORMS": "0",
        "authorizations-INITIAL_FORMS": "0",
        "callback_urls-TOTAL_FORMS": str(len(urls)),
        "callback_urls-INITIAL_FORMS": str(sum(1 for *_x, existing in urls if existing)),
    }
    for n, (url, position, existing) in enumerate(urls):
        data[f"callback_urls-{n}-url"] = url
        data[f"callback_urls-{n}-position"] = str(position)
        data[f"callback_urls-{n}-channel"] = str(channel.pk)
        if existing:
            data[f"callback_urls-{n}-id"] = str(existing.pk)
    data.update(overrides)
    return data


def test_channel_admin_adds_urls_on_the_channel_page(client, role_user, channel_and_secret):
    channel, _secret = channel_and_secret
    client.force_login(role_user("Channel admin"))
    url = reverse("admin:channels_app_channel_change", args=[channel.pk])

    response = client.post(
        url,
        channel_form(
            channel, [("https://shop.example/a", 0, None), ("https://shop.example/b", 1, None)]
        ),
    )

    assert response.status_code == 302, response.content.decode()[-3000:]
    assert list(channel.callback_urls.values_list("url", "verified_at")) == [
        ("https://shop.example/a", None),
        ("https://shop.example/b", None),
    ]
    page = client.get(url).content.decode()
    assert "Not verified yet, not used" in page
    assert page.count(">Verify</a>") == 2


def test_editing_a_url_on_the_channel_page_clears_its_verification(
    admin_client, channel_and_secret
):
    channel, _secret = channel_and_secret
    callback_url = add_url(channel, "https://shop.example/a", verified=True)
    url = reverse("admin:channels_app_channel_change", args=[channel.pk])

    response = admin_client.post(
        url, channel_form(channel, [("https://shop.example/changed", 0, callback_url)])
    )

    assert response.status_code == 302
    callback_url.refresh_from_db()
    assert (callback_url.url, callback_url.verified_at) == ("https://shop.example/changed", None)


def test_the_channel_page_refuses_a_sixth_url_and_a_duplicate(admin_client, channel_and_secret):
    channel, _secret = channel_and_secret
    url = reverse("admin:channels_app_channel_change", args=[channel.pk])
    six = [(f"https://shop.example/{n}", n, None) for n in range(6)]
    twice = [("https://shop.example/same", 0, None), ("https://shop.example/same", 1, None)]

    too_many = admin_client.post(url, channel_form(channel, six))
    duplicate = admin_client.post(url, channel_form(channel, twice))

    assert "at most 5" in too_many.content.decode()
    assert "Please correct the duplicate data" in duplicate.content.decode()
    assert not CallbackUrl.objects.exists()


def test_the_verify_button_verifies_and_says_so(
    client, role_user, callback_server, channel_and_secret
):
    channel, _secret = channel_and_secret
    callback_url = add_url(channel, callback_server.url())
    callback_server.reply_with(ECHO)
    client.force_login(role_user("Channel admin"))
    verify = reverse(
        "admin:channels_app_channel_verify_callback", args=[channel.pk, callback_url.pk]
    )

    confirm = client.get(verify)
    response = client.post(verify, follow=True)

    assert callback_url.url in confirm.content.decode()
    assert callback_server.requests[0].method == "GET"
    assert len(callback_server.requests) == 1  # the confirmation page sent nothing
    page = response.content.decode()
    assert "is verified: it answered with the echostr" in page
    assert "The default URL." in page
    callback_url.refresh_from_db()
    assert callback_url.verified_at is not None


def test_the_verify_button_shows_why_a_url_failed(
    client, role_user, callback_server, channel_and_secret
):
    channel, _secret = channel_and_secret
    callback_url = add_url(channel, callback_server.url())
    callback_server.reply_with((403, b"<b>forbidden</b>"))
    client.force_login(role_user("Channel admin"))
    verify = reverse(
        "admin:channels_app_channel_verify_callback", args=[channel.pk, callback_url.pk]
    )

    page = client.post(verify, follow=True).content.decode()

    assert "is not verified and will not be used" in page
    assert "HTTP 403 instead of 200" in page


@pytest.mark.parametrize("role", ["Marketing", "Reviewer", "Data admin"])
def test_other_roles_neither_see_nor_verify_callback_urls(
    client, role_user, callback_server, channel_and_secret, role
):
    channel, _secret = channel_and_secret
    callback_url = add_url(channel, callback_server.url("/secret-hook"))
    client.force_login(role_user(role))
    verify = reverse(
        "admin:channels_app_channel_verify_callback", args=[channel.pk, callback_url.pk]
    )

    page = client.get(reverse("admin:channels_app_channel_change", args=[channel.pk]))

    assert page.status_code == 200
    assert "/secret-hook" not in page.content.decode()
    assert client.post(verify).status_code == 403
    assert callback_server.requests == []


def test_the_add_page_has_no_callback_urls_yet(admin_client):
    page = admin_client.get(reverse("admin:channels_app_channel_add")).content.decode()

    assert "callback_urls-TOTAL_FORMS" not in page
    assert "authorizations-TOTAL_FORMS" in page
