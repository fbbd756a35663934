"""Console pages for messaging. For now: the local mail catcher's inbox."""

from typing import Any

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import path
from django.utils.translation import gettext_lazy as _

from messaging.models import CapturedEmail


class CapturedEmailAdmin(admin.ModelAdmin):
    list_display = ["subject", "envelope_from", "recipients", "received_at"]
    search_fields = ["subject", "envelope_from", "envelope_to"]
    date_hierarchy = "received_at"
    change_form_template = "admin/messaging/capturedemail/view.html"

    @admin.display(description=_("to"))
    def recipients(self, mail: CapturedEmail) -> str:
        return ", ".join(mail.envelope_to)

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).defer("raw")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict | None = None,
    ) -> HttpResponse:
        mail = get_object_or_404(CapturedEmail, pk=object_id)
        message = mail.parsed()
        context = {
            "headers": [(k, str(v)) for k, v in message.items()],
            "text_body": mail.body("plain"),
            "html_body": mail.body("html"),
            "attachments": [part.get_filename() for part in message.iter_attachments()],
        }
        return super().change_view(
            request, object_id, form_url, {**context, **(extra_context or {})}
        )

    def get_urls(self) -> list:
        return [
            path(
                "<int:pk>/raw/",
                self.admin_site.admin_view(self.raw_view),
                name="messaging_capturedemail_raw",
            ),
            *super().get_urls(),
        ]

    def raw_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        if not self.has_view_permission(request):
            return HttpResponse(status=403)
        mail = get_object_or_404(CapturedEmail, pk=pk)
        response = HttpResponse(bytes(mail.raw), content_type="message/rfc822")
        response["Content-Disposition"] = f'attachment; filename="captured-{mail.pk}.eml"'
        return response


if settings.UMS_MAILCATCHER:
    admin.site.register(CapturedEmail, CapturedEmailAdmin)
