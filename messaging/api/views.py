"""REST endpoints of messages: send (also from a template), retract, status, deliveries, and
attachments (materials).

Each view authenticates the channel, turns the request into the services' types (see
send_request), calls one service and answers JSON. The send endpoints count against the
channel's API rate limit (channels_app.ratelimit) and carry its X-Rate-Limit-* headers.
"""

from dataclasses import replace
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.urls import reverse
from django.utils.translation import gettext as _

from channels_app.api_auth import request_authenticate
from channels_app.models import Channel
from channels_app.ratelimit import api_rate_check
from messaging.api.send_request import (
    PAGE_MAX,
    PAGE_SIZE_DEFAULT,
    PAGE_SIZE_MAX,
    audience_parse,
    content_parse,
    files_resolve,
    material_form_parse,
    options_parse,
    small_number,
    template_parse,
)
from messaging.fetch import materials_discard
from messaging.models import Delivery, Message
from messaging.selectors import sendno_message
from messaging.services import (
    SendRefused,
    material_create,
    message_create,
    message_retract,
)
from ums.api import ApiCode, ApiError, api_response, api_view, json_body


@api_view(methods=("POST",))
def sent(request: HttpRequest) -> JsonResponse:
    return _send(request, broadcast=False, template=False)


@api_view(methods=("POST",))
def broadcast(request: HttpRequest) -> JsonResponse:
    return _send(request, broadcast=True, template=False)


@api_view(methods=("POST",))
def template_sent(request: HttpRequest) -> JsonResponse:
    return _send(request, broadcast=False, template=True)


@api_view(methods=("POST",))
def template_broadcast(request: HttpRequest) -> JsonResponse:
    return _send(request, broadcast=True, template=True)


def _send(request: HttpRequest, *, broadcast: bool, template: bool) -> JsonResponse:
    """Every send endpoint: the channel's API rate limit first, its headers on every answer."""
    channel = request_authenticate(request).require_channel()
    decision = api_rate_check(channel=channel)
    headers = decision.headers()
    if not decision.allowed:
        raise ApiError(
            status=429,
            code=ApiCode.RATE_LIMITED,
            message=_(
                "Too many requests: this channel may send %(limit)d a minute; "
                "try again in %(seconds)d seconds."
            )
            % {"limit": decision.limit, "seconds": decision.reset_seconds},
            headers=headers,
        )
    try:
        response = _accept(request, channel, broadcast=broadcast, template=template)
    except ApiError as exc:
        exc.headers = {**headers, **exc.headers}
        raise
    for name, value in headers.items():
        response[name] = value
    return response


def _accept(
    request: HttpRequest, channel: Channel, *, broadcast: bool, template: bool
) -> JsonResponse:
    body = json_body(request)
    if not isinstance(body, dict):
        raise ApiError.invalid("body", _("must be a JSON object"))
    use = template_parse(body) if template else None
    audience = audience_parse(body, broadcast=broadcast)
    content, files = (None, []) if template else content_parse(body)
    options = options_parse(body)
    repeated = sendno_message(channel=channel, sendno=options.sendno)
    if repeated is not None:  # the first message stands: nothing is fetched or sent again
        return api_response(msgid=repeated.msgid, sendno=options.sendno)
    materials, fetched = files_resolve(files, channel=channel)
    try:
        message, created = message_create(
            channel=channel,
            audience=audience,
            content=replace(content, materials=materials) if content else None,
            template=use,
            options=options,
            source=Message.Source.API,
        )
    except SendRefused as exc:
        materials_discard(fetched)
        raise refused(exc) from None
    if not created:  # a repeated sendno: the first message stands, with its own attachments
        materials_discard(fetched)
    return api_response(msgid=message.msgid, sendno=options.sendno)


@api_view(methods=("POST",))
def material_upload(request: HttpRequest) -> JsonResponse:
    channel = request_authenticate(request).require_channel()
    upload, hours = material_form_parse(request)
    try:
        material = material_create(channel=channel, upload=upload, hours=hours)
    except SendRefused as exc:
        raise refused(exc) from None
    url = request.build_absolute_uri(reverse("api-material", args=[material.token]))
    return api_response(url=url)


@api_view(methods=("GET", "HEAD"))
def material_detail(request: HttpRequest, token: str) -> JsonResponse:
    """Materials are not served: their URL only names an attachment inside msg_email[].files."""
    raise ApiError(
        status=404,
        code=ApiCode.NOT_FOUND,
        message=_("Materials cannot be downloaded; use the URL in msg_email[].files."),
    )


@api_view(methods=("POST",))
def retract(request: HttpRequest, msgid: str) -> JsonResponse:
    channel = request_authenticate(request).require_channel()
    message = own_message(channel, msgid)
    try:
        result = message_retract(message=message)
    except SendRefused as exc:
        raise refused(exc) from None
    return api_response(data=result)


@api_view(methods=("GET",))
def message_status(request: HttpRequest, msgid: str) -> JsonResponse:
    message = own_message(request_authenticate(request).require_channel(), msgid)
    data = {
        "msgid": message.msgid,
        "sendno": message.sendno,
        "status": message.status,
        "created_at": message.created_at,
        "finished_at": message.finished_at,
        "total": message.total,
        "sent": message.sent,
        "failed": message.failed,
        "invalid": message.invalid,
        "cancelled": message.cancelled,
        "pending": message.pending,
    }
    return api_response(data=data)


@api_view(methods=("GET",))
def message_deliveries(request: HttpRequest, msgid: str) -> JsonResponse:
    """One page of recipients in a stable order; `next_page` instead of a count of all rows."""
    message = own_message(request_authenticate(request).require_channel(), msgid)
    status = request.GET.get("status", "")
    if status and status not in Delivery.Status.values:
        raise ApiError.invalid(
            "status", _("must be one of %(values)s") % {"values": ", ".join(Delivery.Status.values)}
        )
    page = query_int(request, "page", default=1, maximum=PAGE_MAX)
    size = query_int(request, "page_size", default=PAGE_SIZE_DEFAULT, maximum=PAGE_SIZE_MAX)
    rows = Delivery.objects.filter(message=message).order_by("pk")
    if status:
        rows = rows.filter(status=status)
    start = (page - 1) * size
    fields = ("userid", "email", "status", "attempts", "smtp_code", "smtp_reply", "sent_at")
    page_rows = list(rows.values(*fields, "smtp_message_id")[start : start + size + 1])
    results = [delivery_json(row) for row in page_rows[:size]]
    next_page = page + 1 if len(page_rows) > size else None
    return api_response(
        data={"page": page, "page_size": size, "next_page": next_page, "results": results}
    )


# --- shared helpers of the views ------------------------------------------------------------


def refused(exc: SendRefused) -> ApiError:
    return ApiError(status=exc.status, code=exc.code, message=exc.message)


def own_message(channel: Channel, msgid: str) -> Message:
    """The caller's message; another channel's is as unknown as one that never existed."""
    message = Message.objects.filter(channel=channel, msgid=msgid).first()
    if message is None:
        raise ApiError(
            status=404,
            code=ApiCode.UNKNOWN_MSGID,
            message=_("This channel has no message %(msgid)s.") % {"msgid": msgid[:40]},
        )
    return message


def delivery_json(row: dict[str, Any]) -> dict[str, Any]:
    row["message_id"] = row.pop("smtp_message_id")
    return row


def query_int(request: HttpRequest, name: str, *, default: int, maximum: int) -> int:
    raw = request.GET.get(name, "").strip()
    if not raw:
        return default
    if not small_number(raw) or not 1 <= int(raw) <= maximum:
        raise ApiError.invalid(
            name, _("must be a whole number from 1 to %(max)d") % {"max": maximum}
        )
    return int(raw)


# --- the send request ------------------------------------------------------------------------
