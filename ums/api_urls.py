"""Everything under /v1/. The last pattern answers unknown paths with the API's JSON 404."""

from django.urls import path, re_path

from ums.api import not_found
from users_app import api as users_api

urlpatterns = [
    path("user/opt", users_api.user_opt, name="api-user-opt"),
    path("user/delete", users_api.user_delete, name="api-user-delete"),
    re_path(r"^(?P<path>.*)$", not_found, name="api-not-found"),
]
