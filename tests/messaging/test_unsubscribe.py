"""One-click unsubscribe (RFC 8058): the headers of marketing mail, the signed token, the page."""

from urllib.parse import urlsplit

import pytest
from django.core import signing
from django.test import Client

from channels_app import services as channel_services
from messaging import lists
from messaging.models import Message, SuppressedAddress
from messaging.unsubscribe import (
    list_unsubscribe_headers,
    mask_address,
    unsubscribe_headers,
    unsubscribe_token,
    unsubscribe_token_read,
)

pytestmark = pytest.mark.django_db

ONE_CLICK = {"List-Unsubscribe": "One-Click"}


@pytest.fixture
def channel(db):
    channel = channel_services.channel_create(name="Shop news")[0]
    channel.is_marketing = True
    channel.save()
    return channel


@pytest.fixture
def other_channel(db):
    return channel_services.channel_create(name="Receipts")[0]


@pytest.fixture
def csrf_client():
    """A client that enforces CSRF, as a mail provider's POST meets the server."""
    return Client(enforce_csrf_checks=True)


def link(channel, email="Ann.Lee@example.com") -> str:
    header = unsubscribe_headers(channel_id=channel.pk, is_marketing=True, email=email)
    return urlsplit(header["List-Unsubscribe"].strip("<>")).path


# --- headers and tokens -------------------------------------------------------------------------


def test_marketing_mail_carries_the_one_click_headers(channel, settings):
    settings.UMS_PUBLIC_URL = "https://mail.example.com/"

    headers = unsubscribe_headers(channel_id=channel.pk, is_marketing=True, email="a@example.com")

    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = headers["List-Unsubscribe"]
    assert url.startswith("<https://mail.example.com/u/") and url.endswith(">")
    assert "a@example.com" not in url


def test_other_mail_carries_no_unsubscribe_headers(other_channel):
    assert (
        unsubscribe_headers(channel_id=other_channel.pk, is_marketing=False, email="a@b.co") == {}
    )


def test_a_messages_headers_follow_its_channel_without_a_query(
    channel, other_channel, make_sender, django_assert_num_queries
):
    sender = make_sender()
    for each in (channel, other_channel):
        Message.objects.create(channel=each, sender=sender, source="api", subject="Hi")
    marketing, other = Message.objects.select_related("channel").order_by("-channel__name")

    with django_assert_num_queries(0):
        marketing_headers = list_unsubscribe_headers(message=marketing, email="a@example.com")
        other_headers = list_unsubscribe_headers(message=other, email="a@example.com")

    assert marketing.channel == channel and "List-Unsubscribe" in marketing_headers
    assert other_headers == {}


def test_a_token_gives_back_its_channel_and_address(channel):
    token = unsubscribe_token(channel_id=channel.pk, email="ann@example.com")

    read = unsubscribe_token_read(token)

    assert (read.channel_id, read.email) == (channel.pk, "ann@example.com")
    assert token != unsubscribe_token(channel_id=channel.pk, email="bob@example.com")


def test_an_altered_or_foreign_token_is_refused(channel):
    token = unsubscribe_token(channel_id=channel.pk, email="ann@example.com")
    _value, signature = token.split(".")
    other_value = signing.b64_encode(f"{channel.pk}:bob@example.com".encode()).decode()

    assert unsubscribe_token_read(f"{other_value}.{signature}") is None
    assert unsubscribe_token_read(token[:-2]) is None
    assert unsubscribe_token_read(signing.Signer(sep=".").sign(other_value)) is None
    assert unsubscribe_token_read("garbage") is None


def test_addresses_are_shown_partly_masked():
    assert mask_address("ann.lee@example.com") == "a***e@example.com"
    assert mask_address("ab@example.com") == "a***@example.com"


# --- the page -----------------------------------------------------------------------------------


def test_opening_the_link_asks_and_unsubscribes_nobody(client, channel):
    response = client.get(link(channel))

    html = response.content.decode()
    assert response.status_code == 200
    assert "A***e@example.com" in html and "Ann.Lee@example.com" not in html
    assert "Shop news" in html
    assert 'name="List-Unsubscribe" value="One-Click"' in html
    assert "<link" not in html and "<script" not in html  # nothing loaded from elsewhere
    assert response["X-Robots-Tag"] == "noindex, nofollow"
    assert client.head(link(channel)).status_code == 200
    assert not SuppressedAddress.objects.exists()


def test_the_one_click_post_unsubscribes_without_login_or_csrf(csrf_client, channel, other_channel):
    response = csrf_client.post(link(channel), ONE_CLICK)

    assert response.status_code == 200
    assert "will receive no more marketing email from Shop news" in response.content.decode()
    row = SuppressedAddress.objects.get()
    assert (row.email, row.channel, row.reason) == ("ann.lee@example.com", channel, "unsubscribe")
    assert lists.emails_suppressed(channel=channel, emails=["Ann.Lee@example.com"]) == {
        "Ann.Lee@example.com"
    }
    assert lists.emails_suppressed(channel=other_channel, emails=["Ann.Lee@example.com"]) == set()


def test_unsubscribing_twice_is_fine(csrf_client, channel):
    first = csrf_client.post(link(channel), ONE_CLICK)
    second = csrf_client.post(link(channel), ONE_CLICK)
    page = csrf_client.get(link(channel))

    assert first.status_code == second.status_code == 200
    assert SuppressedAddress.objects.count() == 1
    assert "already receives no more marketing email" in page.content.decode()
    assert 'value="One-Click"' not in page.content.decode()


def test_a_post_without_the_one_click_body_unsubscribes_nobody(csrf_client, channel):
    response = csrf_client.post(link(channel), {"List-Unsubscribe": "yes"})

    assert response.status_code == 400
    assert not SuppressedAddress.objects.exists()


def test_a_forged_link_is_refused_and_writes_nothing(csrf_client, channel):
    token = link(channel).removeprefix("/u/")
    forged_value = signing.b64_encode(f"{channel.pk}:victim@example.com".encode()).decode()
    forged = f"/u/{forged_value}.{token.split('.')[1]}"

    get = csrf_client.get(forged)
    post = csrf_client.post(forged, ONE_CLICK)

    assert get.status_code == post.status_code == 400
    assert "This unsubscribe link is not valid" in post.content.decode()
    assert not SuppressedAddress.objects.exists()


def test_a_link_of_a_deleted_channel_is_not_found(csrf_client, channel):
    url = link(channel)
    channel.delete()

    response = csrf_client.post(url, ONE_CLICK)

    assert response.status_code == 404
    assert not SuppressedAddress.objects.exists()


def test_other_methods_are_not_allowed(csrf_client, channel):
    assert csrf_client.put(link(channel)).status_code == 405
