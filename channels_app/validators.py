import ipaddress
import re

from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def validate_host(value: str) -> None:
    """A host name or an IP address: no scheme, no port, no spaces."""
    try:
        ipaddress.ip_address(value)
        return
    except ValueError:
        pass
    labels = value.rstrip(".").split(".")
    try:
        ascii_labels = [label.encode("idna").decode("ascii") for label in labels]
    except UnicodeError:
        ascii_labels = []
    if not value or len(value) > 253 or not all(HOST_LABEL.match(x) for x in ascii_labels or [""]):
        raise ValidationError(
            _("Enter a host name such as smtp.example.com or an IP address (no port, no scheme)."),
            code="invalid_host",
        )


def validate_header_text(value: str) -> None:
    if "\r" in value or "\n" in value:
        raise ValidationError(_("Line breaks are not allowed here."), code="header_injection")
