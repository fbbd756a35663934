"""Turning a send request's JSON into the services' types, refusing a bad field with 4004.

The checks that cost nothing run first; attachments named by URL are fetched last, once
everything else is known to be valid.
"""

import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.files.uploadedfile import UploadedFile
from django.http import HttpRequest
from django.http.multipartparser import MultiPartParserError
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext as _

from channels_app.models import Channel
from messaging.fetch import FETCH_TIMEOUT, FetchFailed, material_fetch, materials_discard
from messaging.models import Material, Message
from messaging.services import Audience, Content, Options, TemplateUse
from ums.api import ApiCode, ApiError
from users_app.validation import FieldError, clean_email, clean_tag, clean_userid

MAX_USERIDS = 1000
MAX_TAGS = 20
MAX_EMAILS = 1000
MAX_FILES = 10
SUBJECT_MAX = 998
FROM_NAME_MAX = 100
SENDNO_MAX = 64
OWNER_MAX = 64
TTL_HOURS = (1, 168)
TTL_DEFAULT = 24
PAGE_SIZE_DEFAULT = 100
PAGE_SIZE_MAX = 500
PAGE_MAX = 1_000_000
FETCH_BUDGET = 20.0  # seconds for all the URLs of one request, so a worker is not held long
MULTIPART_OVERHEAD = 64 * 1024
USER_TARGETS = ("aud_userid", "aud_tag", "aud_segment")

# A start tag, an end tag, a comment or a doctype. `a < b` and `<ann@example.com>` are not.
HTML_MARKUP = re.compile(
    r"<(?:[a-z][a-z0-9-]*(?:\s[^<>]*)?/?|/[a-z][a-z0-9-]*\s*)>|<!--|<!doctype\s", re.IGNORECASE
)
# The path of a URL answered by POST /v1/material, whatever host name the client used.
MATERIAL_PATH = re.compile(r"/v1/material/(?P<token>[A-Za-z0-9_-]{1,64})/?$")


# --- views ----------------------------------------------------------------------------------


def audience_parse(body: dict[str, Any], *, broadcast: bool) -> Audience:
    """The aud_xxx keys as an Audience. Empty lists and nulls count as absent; other channels'
    targets (aud_sms …) are ignored, as a multi-channel client sends them too."""
    given = {key for key, value in body.items() if key.startswith("aud_") and _present(value)}
    if broadcast:
        if given:
            raise ApiError.invalid(min(given), _("/v1/broadcast takes no audience"))
        return Audience(everyone=True)
    if "aud_segment" in given:
        raise ApiError.invalid("aud_segment", _("segments are not supported yet"))
    if "aud_email" in given and given & set(USER_TARGETS):
        raise ApiError.invalid("aud_email", _("cannot be combined with aud_userid or aud_tag"))
    if {"aud_userid", "aud_tag"} <= given:
        raise ApiError.invalid("aud_tag", _("give one of aud_userid, aud_tag"))
    if "aud_email" in given:
        return Audience(emails=_addresses(body["aud_email"]))
    if "aud_tag" in given:
        tags = _list(body["aud_tag"], "aud_tag")
        if len(tags) > MAX_TAGS:
            raise ApiError.invalid("aud_tag", _("at most %(max)d tags") % {"max": MAX_TAGS})
        return Audience(tags=_clean_each(tags, clean_tag, "aud_tag"))
    if "aud_userid" in given:
        userids = _list(body["aud_userid"], "aud_userid")
        if len(userids) > MAX_USERIDS:
            raise ApiError(
                status=400,
                code=ApiCode.TOO_MANY_USERIDS,
                message=_("aud_userid: at most %(max)d userids") % {"max": MAX_USERIDS},
            )
        return Audience(userids=_clean_each(userids, clean_userid, "aud_userid"))
    raise ApiError.invalid("aud_xxx", _("give one of aud_userid, aud_tag, aud_email"))


def _addresses(value: object) -> list[str]:
    addresses: list[object] = []
    for group in _list(value, "aud_email"):
        if not isinstance(group, dict) or group.get("instance") != "email":
            raise ApiError.invalid(
                "aud_email", _('each item must be {"instance": "email", "data": [...]}')
            )
        addresses.extend(_list(group.get("data"), "aud_email"))
        if len(addresses) > MAX_EMAILS:
            raise ApiError.invalid(
                "aud_email", _("at most %(max)d addresses") % {"max": MAX_EMAILS}
            )
    if not addresses:
        raise ApiError.invalid("aud_email", _("no address given"))
    return _clean_each(addresses, clean_email, "aud_email")


def _clean_each(values: list[object], cleaner: Callable[[object], str], field: str) -> list[str]:
    """Each value cleaned, duplicates dropped; the first bad one is named in the 4004."""
    cleaned: list[str] = []
    for value in values:
        try:
            cleaned.append(cleaner(value))
        except FieldError as exc:
            raise ApiError.invalid(field, f"{str(value)[:64]}: {exc.message}") from None
    return list(dict.fromkeys(cleaned))


def content_parse(body: dict[str, Any]) -> tuple[Content, list[str]]:
    """msg_email's one element as Content (without attachments) and its list of file URLs."""
    part = _email_part(body.get("msg_email"))
    subject = _text(part.get("subject"), "subject", required=True, limit=SUBJECT_MAX, line=True)
    text = _text(part.get("text"), "text", required=True, strip=False)
    html, plain = (text, "") if HTML_MARKUP.search(text) else ("", text)
    content = Content(
        subject=subject,
        html=html,
        text=plain,
        from_name=_text(part.get("from_name"), "from_name", limit=FROM_NAME_MAX, line=True),
        reply_to=_reply_to(part.get("reply_to")),
    )
    return content, _file_urls(part.get("files"))


def _email_part(value: object) -> dict[str, Any]:
    if not _present(value):
        raise ApiError.invalid("msg_email", _("required"))
    if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict):
        raise ApiError.invalid("msg_email", _("must be a list of exactly one object"))
    return value[0]


def _reply_to(value: object) -> str:
    if not _present(value):
        return ""
    try:
        return clean_email(value)
    except FieldError as exc:
        raise ApiError.invalid("reply_to", exc.message) from None


def _file_urls(value: object) -> list[str]:
    if not _present(value):
        return []
    urls = _list(value, "files")
    if len(urls) > MAX_FILES:
        raise ApiError.invalid("files", _("at most %(max)d files") % {"max": MAX_FILES})
    if not all(isinstance(url, str) and url.strip() for url in urls):
        raise ApiError.invalid("files", _("each file must be a URL"))
    return [url.strip() for url in urls]


def rule_id_parse(value: object) -> int | None:
    """`rule_id`: a whole number; absent or 0 is the channel's default sender."""
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise ApiError(
            status=400,
            code=ApiCode.RULE_INVALID,
            message=_("rule_id: must be the whole number of a sending strategy, or 0"),
        )
    return value or None


def options_parse(body: dict[str, Any]) -> Options:
    option = _object(body.get("option"), "option")
    return Options(
        sendno=_text(option.get("sendno"), "option.sendno", limit=SENDNO_MAX, strip=False),
        owner=_text(option.get("owner"), "option.owner", limit=OWNER_MAX),
        priority=_priority(option.get("priority")),
        send_at=_send_at(option.get("send_at")),
        callback=callback_parse(body.get("callback")),
        rule_id=rule_id_parse(body.get("rule_id")),
        black_id=_list_id(option.get("black_id"), "option.black_id"),
        white_id=_list_id(option.get("white_id"), "option.white_id"),
    )


def _list_id(value: object, field: str) -> int | None:
    """A black or white list's number; the service checks that it exists (1015046, 1015097)."""
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise ApiError.invalid(field, _("must be the whole number of a list"))
    return value


def _priority(value: object) -> int:
    if value is None:
        return Message.Priority.MEDIUM
    if type(value) is not int or value not in Message.Priority.values:
        raise ApiError.invalid("option.priority", _("must be 1 (high), 2 (medium) or 3 (low)"))
    return value


def _send_at(value: object) -> datetime | None:
    """An aware datetime in the future, or None (now) for an absent or past time."""
    if not _present(value):
        return None
    try:
        moment = parse_datetime(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None:
        raise ApiError.invalid("option.send_at", _("not an ISO 8601 date and time"))
    if timezone.is_naive(moment):
        raise ApiError.invalid(
            "option.send_at", _("give a time zone, e.g. 2025-05-01T09:00:00+08:00")
        )
    return moment if moment > timezone.now() else None


def callback_parse(value: object) -> dict[str, Any]:
    """`callback` as given: the service checks that `url` is a verified URL of the channel."""
    callback = _object(value, "callback")
    requested: dict[str, Any] = {}
    url = callback.get("url")
    if _present(url):
        if not isinstance(url, str):
            raise ApiError.invalid("callback.url", _("must be a string"))
        requested["url"] = url.strip()
    params = callback.get("params")
    if params is not None:
        if not isinstance(params, dict):
            raise ApiError.invalid("callback.params", _("must be an object"))
        requested["params"] = params
    return requested


# --- template sends ---------------------------------------------------------------------------


def template_parse(body: dict[str, Any]) -> TemplateUse:
    """`template_id` and `template_para` of a template send, which takes no `msg_xxx` at all."""
    given = sorted(key for key, value in body.items() if key.startswith("msg_") and _present(value))
    if given:
        raise ApiError(
            status=400,
            code=ApiCode.MSG_IN_TEMPLATE_SEND,
            message=_("%(field)s: a template send takes no msg_xxx; the template is the content")
            % {"field": given[0]},
        )
    template_id = body.get("template_id")
    if template_id is None:
        raise ApiError.invalid("template_id", _("required"))
    if type(template_id) is not int or template_id < 1:
        raise ApiError.invalid("template_id", _("must be the whole number of a template"))
    para = body.get("template_para")
    if para is None:
        para = {}
    if not isinstance(para, dict):
        raise ApiError.invalid("template_para", _("must be an object"))
    return TemplateUse(template_id=template_id, para=para)


def _present(value: object) -> bool:
    return value is not None and value != [] and value != ""


def _list(value: object, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise ApiError.invalid(field, _("must be a list"))
    return value


def _object(value: object, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError.invalid(field, _("must be an object"))
    return value


def _text(
    value: object,
    field: str,
    *,
    required: bool = False,
    limit: int | None = None,
    line: bool = False,
    strip: bool = True,
) -> str:
    """A string field: `line` refuses line breaks (header fields), `limit` caps its length."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ApiError.invalid(field, _("must be a string"))
    if required and not value.strip():
        raise ApiError.invalid(field, _("required"))
    if line and ("\r" in value or "\n" in value):
        raise ApiError.invalid(field, _("line breaks are not allowed"))
    text = value.strip() if strip else value
    if limit is not None and len(text) > limit:
        raise ApiError.invalid(field, _("longer than %(max)d characters") % {"max": limit})
    return text


# --- attachments ------------------------------------------------------------------------------


def files_resolve(urls: list[str], *, channel: Channel) -> tuple[list[Material], list[Material]]:
    """The materials for msg_email[].files, in order, and those of them fetched just now.

    Material URLs are checked before anything is downloaded, so a bad one costs no fetch.
    """
    found: dict[int, Material] = {}
    for index, url in enumerate(urls):
        match = MATERIAL_PATH.search(_url_path(url))
        if match:
            found[index] = own_material(channel, match["token"], url)
    fetched: list[Material] = []
    budget_end = time.monotonic() + FETCH_BUDGET
    try:
        for index, url in enumerate(urls):
            if index not in found:
                deadline = min(time.monotonic() + FETCH_TIMEOUT, budget_end)
                found[index] = material_fetch(channel=channel, url=url, deadline=deadline)
                fetched.append(found[index])
    except FetchFailed as exc:
        materials_discard(fetched)
        raise ApiError.invalid(
            "files", _("could not fetch %(url)s: %(reason)s") % {"url": url[:200], "reason": exc}
        ) from None
    return [found[index] for index in range(len(urls))], fetched


def own_material(channel: Channel, token: str, url: str) -> Material:
    """The channel's material; another channel's is answered like an unknown one."""
    material = Material.objects.filter(channel=channel, token=token).first()
    if material is None:
        raise ApiError.invalid(
            "files", _("%(url)s is not a material of this channel") % {"url": url[:200]}
        )
    if material.expires_at <= timezone.now():
        raise ApiError.invalid("files", _("%(url)s has expired") % {"url": url[:200]})
    return material


def _url_path(url: str) -> str:
    return url.split("?", 1)[0].split("#", 1)[0]


def material_form_parse(request: HttpRequest) -> tuple[UploadedFile, int]:
    """The multipart form of POST /v1/material: type=attachment, one file, time_to_live."""
    if request.content_type != "multipart/form-data":
        raise ApiError.invalid("body", _("send it as multipart/form-data"))
    _refuse_oversized_body(request)
    try:
        form, files = request.POST, request.FILES
    except RequestDataTooBig:
        raise _body_too_large() from None
    except (MultiPartParserError, SuspiciousOperation):
        raise ApiError.invalid("body", _("not a valid multipart form")) from None
    if form.get("type") != "attachment":
        raise ApiError.invalid("type", _("must be attachment"))
    uploads = files.getlist("file")
    if len(uploads) != 1:
        raise ApiError.invalid("file", _("give exactly one file"))
    return uploads[0], _time_to_live(form.get("time_to_live", ""))


def _time_to_live(raw: str) -> int:
    raw = raw.strip()
    if not raw:
        return TTL_DEFAULT
    low, high = TTL_HOURS
    if not small_number(raw) or not low <= int(raw) <= high:
        raise ApiError.invalid(
            "time_to_live",
            _("must be a whole number of hours from %(low)d to %(high)d")
            % {"low": low, "high": high},
        )
    return int(raw)


def _refuse_oversized_body(request: HttpRequest) -> None:
    """Refuse by Content-Length before reading a body far beyond the material size cap."""
    limit = settings.UMS_MATERIAL_MAX_BYTES
    declared = request.META.get("CONTENT_LENGTH") or ""
    if declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
        raise ApiError(
            status=413,
            code=ApiCode.INVALID_PARAMETER,
            message=_("file: larger than %(mb)d MB") % {"mb": max(1, limit // 2**20)},
        )


def _body_too_large() -> ApiError:
    return ApiError(
        status=413, code=ApiCode.BODY_TOO_LARGE, message=_("The request body is too large.")
    )


def small_number(raw: str) -> bool:
    """Digits only, and few enough that int() is cheap (it refuses thousands of digits)."""
    return raw.isascii() and raw.isdigit() and len(raw) <= 9
