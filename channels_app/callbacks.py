"""A channel's callback URLs: where its status records go, each verified with an echostr first.

A URL is verified by `GET url?echostr=<random>`, which must answer HTTP 200 with that value as
its body. Only verified URLs are ever used; changing a URL clears its verification. The lowest
verified position is the channel's default, used by messages that name no URL of their own.

Every connection, the verification's and the status records' (messaging.callbacks), goes
through the same network guard as the SMTP hosts and the attachment fetcher: a URL whose host
resolves to a private, loopback or metadata address is refused (UMS_SMTP_ALLOW_PRIVATE_NETWORKS
lets private and loopback addresses through, never metadata ones).
"""

import base64
import http.client
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from channels_app import netguard
from channels_app.models import CallbackUrl, Channel

USER_AGENT = "UMS-Email callbacks"
ECHOSTR_BYTES = 16  # 32 hex characters, like the vendor's
MAX_REPLY_BYTES = 64 * 1024  # more than a verification or an acknowledgement ever needs
SHOWN_REPLY_CHARS = 80


def callback_timeout() -> float:
    """Seconds for one request (connecting, sending and reading the answer)."""
    return float(getattr(settings, "UMS_CALLBACK_TIMEOUT", 10.0))


class CallbackUrlRefused(Exception):
    """A send request names a callback URL that is not one of the channel's verified URLs.

    The API answers it with 4004 and the message `callback.url: <reason>`.
    """

    field = "callback.url"

    def __init__(self, reason: str) -> None:
        super().__init__(f"{self.field}: {reason}")
        self.reason = reason


class CallbackUnreachable(Exception):
    """No HTTP answer: the URL is not valid, refused by the network guard, or did not answer."""


@dataclass(frozen=True)
class HttpReply:
    status: int
    body: bytes


# --- choosing a URL for a message -------------------------------------------------------------


def callback_url_default(*, channel: Channel) -> CallbackUrl | None:
    """The channel's default: its verified URL with the lowest position, or None."""
    return (
        CallbackUrl.objects.filter(channel=channel, verified_at__isnull=False)
        .order_by("position", "pk")
        .first()
    )


def callback_url_for_message(*, channel: Channel, url: str | None) -> CallbackUrl | None:
    """The callback URL a new message reports to (its `callback.url`).

    No URL (None or ""): the channel's default verified URL, or None when it has none, and the
    message reports nothing. A URL that is not one of the channel's verified URLs raises
    CallbackUrlRefused (API code 4004 naming `callback.url`).
    """
    if not url:
        return callback_url_default(channel=channel)
    found = CallbackUrl.objects.filter(channel=channel, url=url, verified_at__isnull=False).first()
    if found is None:
        raise CallbackUrlRefused(_("not a verified callback URL of this channel"))
    return found


def callback_url_is_usable(*, channel_id: int, url: str) -> bool:
    """Whether `url` is still a verified callback URL of the channel (checked before a POST)."""
    return CallbackUrl.objects.filter(
        channel_id=channel_id, url=url, verified_at__isnull=False
    ).exists()


# --- editing and verifying ------------------------------------------------------------------


def callback_url_validate(url: str) -> None:
    """Refuse what can never be verified: not http(s), a user name or password, no host."""
    from messaging import fetch  # imported here: messaging imports this module

    try:
        fetch.url_target(url)
    except fetch.FetchFailed as exc:
        raise ValidationError(str(exc)) from None


@transaction.atomic
def callback_url_save(*, callback_url: CallbackUrl) -> CallbackUrl:
    """Save a new or edited URL. A new or changed URL starts unverified; at most 5 per channel."""
    callback_url.url = callback_url.url.strip()
    callback_url_validate(callback_url.url)
    before = None
    if callback_url.pk:
        stored = CallbackUrl.objects.filter(pk=callback_url.pk).values_list("url", flat=True)
        before = stored.first()
    else:
        # Lock the channel's row so that two concurrent saves cannot both add the fifth URL.
        Channel.objects.select_for_update().filter(pk=callback_url.channel_id).first()
        count = CallbackUrl.objects.filter(channel_id=callback_url.channel_id).count()
        if count >= CallbackUrl.MAX_PER_CHANNEL:
            raise ValidationError(
                _("A channel has at most %(max)d callback URLs.")
                % {"max": CallbackUrl.MAX_PER_CHANNEL}
            )
    if before != callback_url.url:
        callback_url.verified_at = None
        callback_url.verification_error = ""
    callback_url.full_clean()
    callback_url.save()
    return callback_url


def callback_url_verify(*, callback_url: CallbackUrl) -> CallbackUrl:
    """GET the URL with a fresh echostr and record the result on it.

    Passing stores `verified_at`; failing clears it and stores why in `verification_error`
    (a URL that stops answering is not used until it is verified again).
    """
    echostr = secrets.token_hex(ECHOSTR_BYTES)
    channel = callback_url.channel
    separator = "&" if urlsplit(callback_url.url).query else "?"
    auth = basic_auth(channel_key=channel.channel_key, secret=channel.get_master_secret())
    headers = {"Authorization": auth, "Accept": "text/plain, */*"}
    try:
        reply = http_exchange(
            method="GET", url=f"{callback_url.url}{separator}echostr={echostr}", headers=headers
        )
        error = _verification_error(reply, echostr)
    except CallbackUnreachable as exc:
        error = _("The URL could not be reached: %(reason)s.") % {"reason": exc}
    verified_at = None if error else timezone.now()
    # Only the URL that was checked: an edit saved meanwhile keeps its own (cleared) state.
    CallbackUrl.objects.filter(pk=callback_url.pk, url=callback_url.url).update(
        verified_at=verified_at, verification_error=error
    )
    callback_url.verified_at, callback_url.verification_error = verified_at, error
    return callback_url


def _verification_error(reply: HttpReply, echostr: str) -> str:
    if reply.status != 200:
        return _("The URL answered HTTP %(status)d instead of 200.") % {"status": reply.status}
    # Surrounding white space (a trailing newline) is forgiven; anything else is not.
    body = reply.body.decode("utf-8", errors="replace").strip()
    if body != echostr:
        shown = body[:SHOWN_REPLY_CHARS] + ("…" if len(body) > SHOWN_REPLY_CHARS else "")
        return _(
            "The URL answered HTTP 200, but its body was not the echostr value "
            "(expected %(expected)s, got “%(got)s”)."
        ) % {"expected": echostr, "got": shown}
    return ""


# --- HTTP through the network guard -----------------------------------------------------------


def basic_auth(*, channel_key: str, secret: str) -> str:
    """`Basic base64(ChannelKey:MasterSecret)`, as the vendor signs its callbacks."""
    pair = f"{channel_key}:{secret}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def http_exchange(
    *,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes = b"",
    timeout: float | None = None,
) -> HttpReply:
    """One request, no redirects followed, bounded as a whole by the timeout.

    The connection is the attachment fetcher's: the host is resolved once, its addresses are
    checked by channels_app.netguard, and the socket connects to a checked one.
    """
    from messaging import fetch

    deadline = time.monotonic() + (timeout if timeout is not None else callback_timeout())
    try:
        target = fetch.url_target(url)
    except fetch.FetchFailed as exc:
        raise CallbackUnreachable(str(exc)) from None
    # The fetcher's connection: guarded by netguard, every read and write within the deadline.
    connection = fetch._Connection(target, deadline)
    try:
        connection.request(
            method, target.path, body=body or None, headers={"User-Agent": USER_AGENT, **headers}
        )
        response = connection.getresponse()
        return HttpReply(response.status, response.read(MAX_REPLY_BYTES))
    except netguard.HostUnresolvable:
        raise CallbackUnreachable(_("the host name does not resolve")) from None
    except netguard.DestinationRefused:
        raise CallbackUnreachable(
            _("the host's address may not be reached from this server")
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        failure = fetch._transfer_failure(exc, deadline)
        raise CallbackUnreachable(str(failure)) from None
    finally:
        connection.release()
