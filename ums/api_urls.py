"""Everything under /v1/. The last pattern answers unknown paths with the API's JSON 404."""

from django.urls import path, re_path

from messaging.api import views as messaging_api
from ums.api import not_found
from users_app import api as users_api

urlpatterns = [
    path("user/opt", users_api.user_opt, name="api-user-opt"),
    path("user/delete", users_api.user_delete, name="api-user-delete"),
    path("sent", messaging_api.sent, name="api-sent"),
    path("broadcast", messaging_api.broadcast, name="api-broadcast"),
    path("template/sent", messaging_api.template_sent, name="api-template-sent"),
    path("template/broadcast", messaging_api.template_broadcast, name="api-template-broadcast"),
    path("retract/<str:msgid>", messaging_api.retract, name="api-retract"),
    path("material", messaging_api.material_upload, name="api-material-upload"),
    path("material/<str:token>", messaging_api.material_detail, name="api-material"),
    path("messages/<str:msgid>", messaging_api.message_status, name="api-message"),
    path(
        "messages/<str:msgid>/deliveries",
        messaging_api.message_deliveries,
        name="api-message-deliveries",
    ),
    re_path(r"^(?P<path>.*)$", not_found, name="api-not-found"),
]
