"""Validation of userids, emails, tags and bind_ids, shared by the upload and the user API.

Each cleaner returns the normalized value or raises FieldError naming the field, so the upload
can say "row 12, column email: …" and the API can answer 4004 with "email: …".
"""

import re
from collections.abc import Iterable

from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator
from django.utils.translation import gettext as _

from users_app.models import ALL_SCOPE

USERID_PATTERN = re.compile(r"^[A-Za-z0-9_@!#$&*+=.|￥]{1,64}$")
TAG_MAX_BYTES = 40
EMAIL_MAX_LENGTH = 254
_email_validator = EmailValidator()
# A strict subset of what EmailValidator accepts: dot-atom local part, ASCII host names.
COMMON_EMAIL = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}\Z"
)


class FieldError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def clean_userid(value: object) -> str:
    text = _text(value, "userid")
    if not text:
        raise FieldError("userid", _("required"))
    if len(text) > 64:
        raise FieldError("userid", _("longer than 64 characters"))
    if not USERID_PATTERN.match(text):
        raise FieldError(
            "userid", _("only letters, digits and _ @ ! # $ & * + = . | ￥ are allowed")
        )
    return text


def clean_email(value: object) -> str:
    """A valid address with its domain lower-cased and IDNA-encoded."""
    text = _text(value, "email")
    if len(text) <= EMAIL_MAX_LENGTH and COMMON_EMAIL.match(text):
        # The everyday ASCII address, which Django's validator accepts too: a million of them in
        # an upload are checked in a fraction of the time.
        local, _at, domain = text.rpartition("@")
        return f"{local}@{domain.lower()}"
    if not text:
        raise FieldError("email", _("required"))
    if "\r" in text or "\n" in text:
        raise FieldError("email", _("line breaks are not allowed"))
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        raise FieldError("email", _("not a valid address"))
    try:
        domain = domain.lower().encode("idna").decode("ascii")
    except UnicodeError:
        raise FieldError("email", _("the domain is not a valid host name")) from None
    address = f"{local}@{domain}"
    if len(address) > EMAIL_MAX_LENGTH:
        raise FieldError("email", _("longer than 254 characters"))
    try:
        _email_validator(address)
    except ValidationError:
        raise FieldError("email", _("not a valid address")) from None
    return address


def clean_tag(value: object) -> str:
    text = _text(value, "tag")
    if not text:
        raise FieldError("tag", _("empty tag"))
    if len(text.encode()) > TAG_MAX_BYTES:
        raise FieldError("tag", _("%(tag)s is longer than 40 bytes") % {"tag": text[:20]})
    if any(ch in text for ch in ",\r\n\t"):
        raise FieldError("tag", _("commas, tabs and line breaks are not allowed in a tag"))
    return text


def clean_tags(value: object) -> list[str]:
    """A comma-separated cell (full-width commas too) into distinct tags, in order."""
    text = _text(value, "tag").replace(
        "\uff0c", ","
    )  # a full-width comma, as Chinese keyboards type
    tags = [clean_tag(part) for part in text.split(",") if part.strip()]
    return list(dict.fromkeys(tags))


def clean_bind_id(value: object, *, channel_keys: Iterable[str], default: str | None = None) -> str:
    """`all` or a known ChannelKey; an empty value takes `default` (an upload form's choice)."""
    text = _text(value, "bind_id") or default
    if not text:
        raise FieldError("bind_id", _("required"))
    if text.lower() == ALL_SCOPE:
        return ALL_SCOPE
    if text not in channel_keys:
        raise FieldError(
            "bind_id", _("%(value)s is not `all` or a ChannelKey") % {"value": text[:30]}
        )
    return text


def _text(value: object, field: str) -> str:
    """A cell or JSON value as text: spreadsheet numbers such as 10001.0 become "10001"."""
    if type(value) is str:  # the usual case, first
        return value.strip()
    if value is None:
        return ""
    if isinstance(value, bool | list | dict):
        raise FieldError(field, _("must be text"))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()
