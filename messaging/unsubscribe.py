"""One-click unsubscribe (RFC 8058): the headers of marketing mail and the page they point at.

Each marketing email carries

    List-Unsubscribe: <https://HOST/u/TOKEN>
    List-Unsubscribe-Post: List-Unsubscribe=One-Click

TOKEN is the channel's id and the recipient's address, signed with django.core.signing under
its own salt: the page needs no login, and nobody can make a token for another address. Tokens
do not expire: an unsubscribe link must keep working for as long as the mail is kept (the law
asks for at least 30 days, readers open mail years later); there is nothing to gain from
refusing an old one. They stay valid across a SECRET_KEY rotation while the old key is in
SECRET_KEY_FALLBACKS.

A mail provider unsubscribes with `POST` and the body `List-Unsubscribe=One-Click`: no login,
no CSRF token (the signed token is the authorization). A person clicking the link gets a page
with a button that makes that same POST: a `GET` never unsubscribes, so link scanners that
fetch every URL of a mail unsubscribe nobody.

The URLconf is included at `/u/` by ums/urls.py.
"""

import functools
from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path, reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from channels_app.models import Channel
from messaging.lists import address_suppress, emails_suppressed
from messaging.models import Message, SuppressedAddress

SALT = "messaging.unsubscribe"
ONE_CLICK = "One-Click"


@dataclass(frozen=True)
class Unsubscribe:
    channel_id: int
    email: str


def _signer() -> signing.Signer:
    # "." cannot occur in the URL-safe base64 of the value, so the token splits unambiguously.
    return signing.Signer(salt=SALT, sep=".")


def unsubscribe_token(*, channel_id: int, email: str) -> str:
    """The signed, URL-safe token of (channel, address); the same inputs give the same token."""
    value = signing.b64_encode(f"{channel_id}:{email}".encode()).decode()
    return _signer().sign(value)


def unsubscribe_token_read(token: str) -> Unsubscribe | None:
    """The (channel, address) of a token, or None for a forged, altered or garbled one."""
    try:
        value = _signer().unsign(token)
        channel_id, _sep, email = signing.b64_decode(value.encode()).decode().partition(":")
        return Unsubscribe(channel_id=int(channel_id), email=email) if email else None
    except (signing.BadSignature, ValueError):
        return None


@functools.cache
def _path_prefix() -> str:
    # Resolved once: reverse() costs more than signing, and this runs once per recipient.
    return reverse("messaging_unsubscribe", args=["-"]).removesuffix("-")


def unsubscribe_url(*, channel_id: int, email: str) -> str:
    base = getattr(settings, "UMS_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
    return base + _path_prefix() + unsubscribe_token(channel_id=channel_id, email=email)


def unsubscribe_headers(*, channel_id: int, is_marketing: bool, email: str) -> dict[str, str]:
    """The RFC 8058 headers for one recipient; empty for a channel that is not marketing.

    For the MIME stamping step, once per recipient: no database query, about 10 µs.
    """
    if not is_marketing:
        return {}
    return {
        "List-Unsubscribe": f"<{unsubscribe_url(channel_id=channel_id, email=email)}>",
        "List-Unsubscribe-Post": f"List-Unsubscribe={ONE_CLICK}",
    }


def list_unsubscribe_headers(*, message: Message, email: str) -> dict[str, str]:
    """unsubscribe_headers for a message's recipient.

    Reads `message.channel.is_marketing`: load the message with select_related("channel") (or
    call unsubscribe_headers with the flag) so that calling it per recipient costs no query.
    """
    return unsubscribe_headers(
        channel_id=message.channel_id, is_marketing=message.channel.is_marketing, email=email
    )


def mask_address(email: str) -> str:
    """An address shown partly, so a forwarded link does not tell a stranger whose it is."""
    local, _at, domain = email.rpartition("@")
    if len(local) <= 2:
        return f"{local[:1]}***@{domain}"
    return f"{local[0]}***{local[-1]}@{domain}"


# --- the page ----------------------------------------------------------------------------------


@csrf_exempt
@never_cache
@require_http_methods(["GET", "HEAD", "POST"])
def unsubscribe_view(request: HttpRequest, token: str) -> HttpResponse:
    target = unsubscribe_token_read(token)
    if target is None:
        return _page(request, "messaging/unsubscribe_invalid.html", {}, status=400)
    channel = Channel.objects.filter(pk=target.channel_id).first()
    if channel is None:
        return _page(request, "messaging/unsubscribe_invalid.html", {}, status=404)
    context = {"channel": channel, "address": mask_address(target.email)}
    if request.method == "POST":
        if request.POST.get("List-Unsubscribe") != ONE_CLICK:
            return _page(request, "messaging/unsubscribe_invalid.html", {}, status=400)
        address_suppress(
            email=target.email, channel=channel, reason=SuppressedAddress.Reason.UNSUBSCRIBE
        )
        return _page(request, "messaging/unsubscribe_done.html", context)
    done = bool(emails_suppressed(channel=channel, emails=[target.email]))
    return _page(request, "messaging/unsubscribe.html", {**context, "already": done})


def _page(request: HttpRequest, template: str, context: dict, status: int = 200) -> HttpResponse:
    response = render(request, template, context, status=status)
    # The token is in the URL: keep it out of search engines and of other sites' logs.
    response["X-Robots-Tag"] = "noindex, nofollow"
    response["Referrer-Policy"] = "no-referrer"
    return response


urlpatterns = [path("<str:token>", unsubscribe_view, name="messaging_unsubscribe")]
