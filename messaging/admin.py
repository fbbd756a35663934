"""Console pages for messaging: the send history down to each recipient, and the mail catcher."""

from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib import messages as flash
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from messaging.models import CapturedEmail, Delivery, Message
from messaging.services import SendRefused, message_retract


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


class ReadOnlyMixin:
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Message)
class MessageAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["msgid", "channel", "subject", "source", "status", "progress", "created_at"]
    list_filter = ["status", "source", "channel", "priority"]
    list_select_related = ["channel"]
    search_fields = ["=msgid", "=sendno", "subject"]
    date_hierarchy = "created_at"
    show_full_result_count = False
    actions = ["retract"]
    exclude = ["materials"]

    @admin.display(description=_("progress"))
    def progress(self, message: Message) -> str:
        url = reverse("admin:messaging_delivery_changelist") + f"?message__id__exact={message.pk}"
        return format_html(
            '<a href="{}">{}</a>',
            url,
            gettext("%(sent)d sent, %(failed)d failed, %(invalid)d invalid, %(pending)d pending")
            % {
                "sent": message.sent,
                "failed": message.failed,
                "invalid": message.invalid,
                "pending": message.pending,
            },
        )

    def has_retract_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("messaging.retract_message")

    @admin.action(description=_("Retract: cancel what has not been sent"), permissions=["retract"])
    def retract(self, request: HttpRequest, queryset: QuerySet) -> None:
        cancelled = 0
        for message in queryset:
            try:
                cancelled += message_retract(message=message)["cancelled"]
            except SendRefused as exc:
                self.message_user(request, f"{message.msgid}: {exc.message}", flash.WARNING)
        self.message_user(
            request,
            ngettext("%(count)d delivery cancelled.", "%(count)d deliveries cancelled.", cancelled)
            % {"count": cancelled},
        )


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = [
        "message",
        "userid",
        "email",
        "status",
        "attempts",
        "smtp_code",
        "smtp_reply",
        "sent_at",
    ]
    list_filter = ["status"]
    list_select_related = ["message"]
    search_fields = ["=email", "=userid", "=message__msgid"]
    show_full_result_count = False
    raw_id_fields = ["message"]
