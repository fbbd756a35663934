from django.contrib import admin
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import include, path
from django.utils.translation import gettext_lazy as _

admin.site.site_header = _("UMS Email console")
admin.site.site_title = _("UMS Email")
admin.site.index_title = _("Channels, senders and messages")


def home(request: HttpRequest) -> HttpResponseRedirect:
    return HttpResponseRedirect("/admin/")


urlpatterns = [
    path("", home),
    path("admin/", admin.site.urls),
    path("v1/", include("ums.api_urls")),
    path("u/", include("messaging.unsubscribe")),
]
