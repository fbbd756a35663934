"""Shared plumbing of the REST API under /v1/: JSON responses, error codes, body parsing.

Every answer under /v1/ is JSON with `code` (0 = success) and `message`, errors included: a
client written against the vendor's API reads `code`, so it must never get an HTML page.
"""

import functools
import json
import logging
from collections.abc import Callable, Iterable
from enum import IntEnum
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt

from users_app.validation import FieldError

logger = logging.getLogger(__name__)

JSON_CHARSETS = {"utf-8", "utf8"}


class ApiCode(IntEnum):
    SUCCESS = 0
    INVALID_PARAMETER = 4004
    AUTH_FAILED = 4005
    SERVER_ERROR = 5000
    TOO_MANY_USERIDS = 1015004
    CHANNEL_CLOSED = 1015005
    NO_SENDER = 1015010
    RULE_INVALID = 1015026
    BROADCAST_QUOTA_USED = 1015029
    RATE_LIMITED = 1015030
    TEMPLATE_UNKNOWN = 1015031
    TEMPLATE_UNUSABLE = 1015032
    LIST_UNKNOWN = 1015046
    ALREADY_RETRACTED = 1015055
    MSG_IN_TEMPLATE_SEND = 1015094
    BLACK_AND_WHITE = 1015097
    # Our own codes, for cases the vendor does not document (docs/api.md lists them).
    NOT_FOUND = 1016001
    METHOD_NOT_ALLOWED = 1016002
    BODY_TOO_LARGE = 1016003
    UNKNOWN_MSGID = 1016004
    SCOPE_NOT_WRITABLE = 1016010
    ACCESS_KEY_REQUIRED = 1016011
    RETRACT_TOO_LATE = 1016020


class ApiError(Exception):
    """A request-level failure, answered as JSON with its HTTP status and API code."""

    def __init__(
        self, *, status: int, code: ApiCode, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    @classmethod
    def invalid(cls, field: str, reason: str) -> "ApiError":
        return cls(status=400, code=ApiCode.INVALID_PARAMETER, message=f"{field}: {reason}")


def api_response(
    *,
    code: int = ApiCode.SUCCESS,
    message: str = "success",
    status: int = 200,
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> JsonResponse:
    body = {"code": int(code), "message": message, **fields}
    response = JsonResponse(body, status=status, json_dumps_params={"ensure_ascii": False})
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def error_response(error: ApiError) -> JsonResponse:
    return api_response(
        code=error.code, message=error.message, status=error.status, headers=error.headers
    )


def json_body(request: HttpRequest) -> Any:
    """The request body decoded as JSON, or ApiError (4004 naming `body`, or 413)."""
    if request.content_type != "application/json":
        raise ApiError.invalid("body", _("send it as Content-Type: application/json"))
    charset = request.content_params.get("charset", "utf-8").lower()
    if charset not in JSON_CHARSETS:
        raise ApiError.invalid("body", _("must be encoded as UTF-8"))
    try:
        raw = request.body
    except RequestDataTooBig:
        raise ApiError(
            status=413, code=ApiCode.BODY_TOO_LARGE, message=_("The request body is too large.")
        ) from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ApiError.invalid("body", _("not valid JSON")) from None


ViewFunc = Callable[..., HttpResponse]


def api_view(*, methods: Iterable[str] = ("POST",)) -> Callable[[ViewFunc], ViewFunc]:
    """Make a view answer JSON in every case: wrong method, ApiError, FieldError, any crash.

    The API authenticates every call with its own credentials and sets no cookies, so the
    views are exempt from the console's CSRF protection.
    """
    allowed = [method.upper() for method in methods]

    def decorate(view: ViewFunc) -> ViewFunc:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in allowed:
                return error_response(method_not_allowed(allowed))
            try:
                return view(request, *args, **kwargs)
            except ApiError as exc:
                return error_response(exc)
            except FieldError as exc:
                return error_response(ApiError.invalid(exc.field, exc.message))
            except Exception:
                logger.exception("API %s %s failed", request.method, request.path)
                return error_response(server_error())

        return csrf_exempt(wrapper)

    return decorate


def method_not_allowed(allowed: list[str]) -> ApiError:
    return ApiError(
        status=405,
        code=ApiCode.METHOD_NOT_ALLOWED,
        message=_("Use %(methods)s for this endpoint.") % {"methods": ", ".join(allowed)},
        headers={"Allow": ", ".join(allowed)},
    )


def server_error() -> ApiError:
    return ApiError(
        status=500, code=ApiCode.SERVER_ERROR, message=_("Server error; try again later.")
    )


@csrf_exempt
def not_found(request: HttpRequest, path: str = "") -> JsonResponse:
    """Any URL under /v1/ that names no endpoint."""
    return error_response(
        ApiError(
            status=404,
            code=ApiCode.NOT_FOUND,
            message=_("No such endpoint: %(path)s") % {"path": request.path[:200]},
        )
    )
