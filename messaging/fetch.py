"""Attachments named by an http(s) URL in msg_email[].files: fetched once, kept as a material.

The URL comes from an API client, so this server must not become its proxy into internal
networks: every connection, redirects included, goes through channels_app.netguard, which
resolves the host once, checks its addresses and connects to a checked one. One deadline bounds
connecting, redirects and reading, and the body is streamed to a temporary file with a size cap,
never held whole in memory.
"""

import http.client
import io
import ipaddress
import mimetypes
import re
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

from django.conf import settings
from django.core.files.uploadedfile import TemporaryUploadedFile
from django.utils.translation import gettext as _

from channels_app import netguard
from channels_app.models import Channel
from messaging.models import Material
from messaging.services import SendRefused, material_create

FETCH_TIMEOUT = 5.0  # seconds for one URL: connecting, redirects and the whole body
MATERIAL_HOURS = 24
MAX_REDIRECTS = 3
MAX_URL_LENGTH = 2048
CHUNK_BYTES = 64 * 1024
REDIRECTS = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "UMS-Email attachment fetcher"
_UNSAFE_NAME = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]+')


class FetchFailed(Exception):
    """The URL could not be fetched; the message says why, in words fit for the API client."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str


def material_fetch(*, channel: Channel, url: str, deadline: float | None = None) -> Material:
    """Download `url` and store it as a material of `channel` that expires in 24 hours."""
    upload = url_download(url, deadline=deadline or time.monotonic() + FETCH_TIMEOUT)
    try:
        return material_create(channel=channel, upload=upload, hours=MATERIAL_HOURS)
    except SendRefused as exc:
        raise FetchFailed(exc.message) from None
    finally:
        upload.close()


def materials_discard(materials: list[Material]) -> None:
    """Delete materials fetched for a request that then stored no message."""
    for material in materials:
        material.file.delete(save=False)
        material.delete()


def url_download(url: str, *, deadline: float) -> TemporaryUploadedFile:
    """The body of `url` (after at most 3 redirects) in a temporary file the caller closes."""
    for _hop in range(MAX_REDIRECTS + 1):
        target = url_target(url)
        connection = _Connection(target, deadline)
        try:
            response = _get(connection, target)
            if response.status in REDIRECTS and response.getheader("Location"):
                url = urljoin(url, response.getheader("Location", ""))
                continue
            if response.status != 200:
                raise FetchFailed(
                    _("the server answered HTTP %(status)d") % {"status": response.status}
                )
            return _save_body(response, url)
        except netguard.HostUnresolvable:
            raise FetchFailed(_("the host name does not resolve")) from None
        except netguard.DestinationRefused:
            raise FetchFailed(_("the host's address may not be reached from this server")) from None
        except (OSError, http.client.HTTPException) as exc:
            raise _transfer_failure(exc, deadline) from None
        finally:
            connection.release()
    raise FetchFailed(_("too many redirects"))


def url_target(url: str) -> Target:
    """Where a GET of `url` goes; FetchFailed unless it is a plain http(s) URL."""
    if len(url) > MAX_URL_LENGTH:
        raise FetchFailed(_("the URL is longer than %(max)d characters") % {"max": MAX_URL_LENGTH})
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise FetchFailed(_("not a valid URL")) from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise FetchFailed(_("only http and https URLs can be fetched"))
    if parts.username is not None or parts.password is not None:
        raise FetchFailed(_("URLs with a user name or password are not supported"))
    scheme = parts.scheme.lower()
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    if parts.query:
        path += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
    default_port = 443 if scheme == "https" else 80
    return Target(scheme, _ascii_host(parts.hostname), port or default_port, path)


def _ascii_host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        raise FetchFailed(_("the host is not a valid host name")) from None


class _Connection(http.client.HTTPConnection):
    """HTTP or HTTPS to a host checked by netguard; every read and write gets the time left."""

    def __init__(self, target: Target, deadline: float) -> None:
        super().__init__(target.host, target.port, timeout=FETCH_TIMEOUT)
        self.tls = target.scheme == "https"
        self.default_port = 443 if self.tls else 80  # for the Host header
        self.deadline = deadline
        self.socket: socket.socket | None = None

    def connect(self) -> None:
        self.socket = netguard.connect(self.host, self.port, timeout=_remaining(self.deadline))
        if self.tls:
            context = ssl.create_default_context()
            self.socket = context.wrap_socket(self.socket, server_hostname=self.host)
        self.sock = _DeadlineSocket(self.socket, self.deadline)

    def release(self) -> None:
        """Close the socket: http.client's own close() leaves it to a response still reading."""
        self.close()
        if self.socket is not None:
            self.socket.close()


class _DeadlineSocket:
    """The part of a socket that http.client uses, bounded by the deadline as a whole, so a
    server that trickles a byte at a time cannot hold the request open."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(_remaining(self._deadline))
        self._sock.sendall(data)

    def makefile(self, *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))

    def close(self) -> None:
        """Nothing: the connection's release() closes the socket once the body is read."""


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self._sock.settimeout(_remaining(self._deadline))
        return self._sock.recv_into(buffer)


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    return remaining


def _get(connection: http.client.HTTPConnection, target: Target) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT, "Accept": "*/*", "Accept-Encoding": "identity"}
    connection.request("GET", target.path, headers=headers)
    return connection.getresponse()


def _save_body(response: http.client.HTTPResponse, url: str) -> TemporaryUploadedFile:
    limit = settings.UMS_MATERIAL_MAX_BYTES
    declared = response.getheader("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    name = _file_name(response, url)
    upload = TemporaryUploadedFile(name, _content_type(response, name), 0, None)
    try:
        size = 0
        while chunk := response.read1(CHUNK_BYTES):
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            upload.write(chunk)
    except BaseException:
        upload.close()
        raise
    upload.size = size
    upload.seek(0)
    return upload


def _file_name(response: http.client.HTTPResponse, url: str) -> str:
    name = response.msg.get_filename() or unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    name = _UNSAFE_NAME.sub("_", name).strip(" ._") or "attachment"
    if "." not in name and response.getheader("Content-Type"):
        name += mimetypes.guess_extension(response.msg.get_content_type()) or ""
    return name


def _content_type(response: http.client.HTTPResponse, name: str) -> str:
    if response.getheader("Content-Type"):
        return response.msg.get_content_type()
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _too_large(limit: int) -> FetchFailed:
    return FetchFailed(_("larger than %(mb)d MB") % {"mb": max(1, limit // 2**20)})


def _transfer_failure(exc: Exception, deadline: float) -> FetchFailed:
    if isinstance(exc, TimeoutError) or time.monotonic() >= deadline:
        return FetchFailed(_("timed out"))
    if isinstance(exc, ssl.SSLCertVerificationError):
        return FetchFailed(_("the server's TLS certificate is not valid"))
    if isinstance(exc, ssl.SSLError):
        return FetchFailed(_("the TLS handshake failed"))
    if isinstance(exc, http.client.HTTPException):
        return FetchFailed(_("the server's answer is not valid HTTP"))
    return FetchFailed(_("the connection failed"))
