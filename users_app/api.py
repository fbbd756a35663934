"""REST endpoints of the user API: authenticate, parse, call the operation, answer JSON."""

from django.http import HttpRequest, JsonResponse

from channels_app.api_auth import request_authenticate
from ums.api import api_response, api_view, json_body
from users_app.operations import user_opt_apply, users_delete


@api_view(methods=("POST",))
def user_opt(request: HttpRequest) -> JsonResponse:
    principal = request_authenticate(request)
    result = user_opt_apply(principal=principal, items=json_body(request))
    return api_response(data=result)


@api_view(methods=("POST",))
def user_delete(request: HttpRequest) -> JsonResponse:
    principal = request_authenticate(request)
    result = users_delete(principal=principal, userids=json_body(request))
    return api_response(data=result)
