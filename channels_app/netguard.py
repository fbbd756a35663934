"""Which network addresses an SMTP (or later, callback) connection may reach.

Staff choose the host and port of a sender, which would otherwise let them point this server
at internal services. The host is resolved here and every address is checked, once when the
sender is saved and again for the exact address the socket connects to (DNS may change).
"""

import ipaddress
import socket
from dataclasses import dataclass

from django.conf import settings
from django.utils.translation import gettext as _

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata services, refused whatever the settings say.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")
)
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")


class DestinationRefused(OSError):
    """The host resolves to an address that this server must not connect to."""


class HostUnresolvable(DestinationRefused):
    """The host name does not resolve (here and now)."""


@dataclass(frozen=True)
class Resolved:
    address: IPAddress
    family: int
    sockaddr: tuple


def address_refusal(address: IPAddress, *, allow_private: bool) -> str | None:
    """Why `address` may not be reached, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if address in METADATA_ADDRESSES:
        return _("a cloud metadata address")
    if address.is_link_local:
        return _("a link-local address")
    if address.is_loopback:  # before is_reserved, which ::1 also is
        return None if allow_private else _("a loopback address")
    if address.is_multicast or address.is_unspecified or address.is_reserved:
        return _("a multicast, unspecified or reserved address")
    if allow_private:
        return None
    if address.is_private or address in SHARED_ADDRESS_SPACE:
        return _("a private network address")
    return None


def resolve(host: str, port: int) -> list[Resolved]:
    """Resolve `host` and refuse it if any of its addresses is off limits."""
    allow_private = settings.UMS_SMTP_ALLOW_PRIVATE_NETWORKS
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise HostUnresolvable(
            _("The host name %(host)s does not resolve.") % {"host": host}
        ) from exc
    resolved: list[Resolved] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
        reason = address_refusal(address, allow_private=allow_private)
        if reason:
            raise DestinationRefused(
                _("%(host)s resolves to %(reason)s, which senders may not use.")
                % {"host": host, "reason": reason}
            )
        if all(r.address != address for r in resolved):
            resolved.append(Resolved(address, family, sockaddr))
    return resolved


def connect(
    host: str, port: int, timeout: float, source_address: tuple[str, int] | None = None
) -> socket.socket:
    """Open a TCP connection to one of `host`'s checked addresses (as socket.create_connection)."""
    last_error: OSError | None = None
    for target in resolve(host, port):
        sock = socket.socket(target.family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(target.sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            last_error = exc
    raise last_error or DestinationRefused(_("%(host)s has no address.") % {"host": host})
