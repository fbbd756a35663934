"""HTTP Basic authentication of the REST API: ChannelKey:MasterSecret or AccessKey:secret.

Both secrets are 128 random bits, so one SHA-256 is enough (a slow password hash per request
would be a denial of service of our own). Every attempt hashes the presented secret and makes
exactly one constant-time comparison of two digests, whether the key is a channel's, an access
key's or unknown, so a wrong key and a wrong secret cost the same and answer the same.
"""

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

from django.http import HttpRequest
from django.utils.translation import gettext as _

from channels_app.models import AccessKey, Channel
from ums.api import ApiCode, ApiError
from users_app.models import ALL_SCOPE

# The digest an unknown key is compared with: no secret hashes to it in practice.
_UNKNOWN_KEY_DIGEST = hashlib.sha256(b"ums-unknown-key").hexdigest()
_MAX_HEADER_LENGTH = 512


@dataclass(frozen=True)
class ApiPrincipal:
    """Who is calling: a channel (by its ChannelKey) or the global AccessKey."""

    channel: Channel | None = None
    access_key: AccessKey | None = None

    def __str__(self) -> str:
        if self.access_key is not None:
            return f"AccessKey {self.access_key.access_key}"
        return f"channel {self.channel.channel_key if self.channel else '?'}"

    @property
    def is_access_key(self) -> bool:
        return self.access_key is not None

    def can_write_scope(self, bind_id: str) -> bool:
        """A channel writes only `all` and its own ChannelKey; the AccessKey writes any scope."""
        if self.access_key is not None:
            return True
        return self.channel is not None and bind_id in (ALL_SCOPE, self.channel.channel_key)

    def require_access_key(self) -> None:
        if not self.is_access_key:
            raise ApiError(
                status=403,
                code=ApiCode.ACCESS_KEY_REQUIRED,
                message=_("This endpoint needs the AccessKey, not a ChannelKey."),
            )

    def require_channel(self) -> Channel:
        """The message endpoints speak for a channel: the AccessKey does not authenticate there."""
        if self.channel is None:
            raise auth_failed()
        return self.channel


def request_authenticate(request: HttpRequest) -> ApiPrincipal:
    key, secret = basic_credentials_parse(request.headers.get("Authorization", ""))
    return credentials_authenticate(key=key, secret=secret)


def basic_credentials_parse(header: str) -> tuple[str, str]:
    """`Basic base64(key:secret)` into (key, secret); anything else fails with 401 4005."""
    scheme, _space, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded or len(header) > _MAX_HEADER_LENGTH:
        raise auth_failed()
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise auth_failed() from None
    key, colon, secret = decoded.partition(":")
    if not colon or not key or not secret:
        raise auth_failed()
    return key, secret


def credentials_authenticate(*, key: str, secret: str) -> ApiPrincipal:
    """The principal for key:secret; 401 4005 when they do not match, 403 when closed."""
    # Both lookups always run, so an unknown key costs the same queries as a known one.
    channel = Channel.objects.filter(channel_key=key).first()
    access_key = AccessKey.objects.filter(access_key=key).first()
    if channel is not None:
        access_key = None
    if channel is not None:
        expected = _digest(channel.get_master_secret())
    elif access_key is not None:
        expected = access_key.secret_hash
    else:
        expected = _UNKNOWN_KEY_DIGEST
    matches = hmac.compare_digest(_digest(secret).encode(), expected.encode())
    if not matches or (channel is None and access_key is None):
        raise auth_failed()
    if access_key is not None:
        if not access_key.is_active:
            raise auth_failed()
        return ApiPrincipal(access_key=access_key)
    if not channel.is_enabled:
        # Only after the secret matched: a stranger must not learn that a channel is closed.
        raise ApiError(status=403, code=ApiCode.CHANNEL_CLOSED, message=_("The channel is closed."))
    return ApiPrincipal(channel=channel)


def auth_failed() -> ApiError:
    return ApiError(
        status=401,
        code=ApiCode.AUTH_FAILED,
        message=_("Authentication failed."),
        headers={"WWW-Authenticate": 'Basic realm="UMS", charset="UTF-8"'},
    )


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
