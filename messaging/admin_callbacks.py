"""Console pages for the status callbacks: every batch POSTed to a channel's callback URL.

Read-only: a batch is never edited. The list shows what was delivered, what waits for a retry
and what was dropped with the last answer; "Retry now" puts batches back and posts them.
"""

import json
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.text import Truncator
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from channels_app.forms import ConfirmForm
from messaging.callbacks import callback_batches_retry
from messaging.models import CallbackBatch

STATUS_COLOURS = {
    CallbackBatch.Status.PENDING: "#1b5faa",
    CallbackBatch.Status.DELIVERED: "#1d6b35",
    CallbackBatch.Status.DROPPED: "#9b1c1f",
}


@admin.register(CallbackBatch)
class CallbackBatchAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "channel",
        "url",
        "size",
        "status_column",
        "attempts",
        "last_status_code",
        "last_error_column",
        "finished_at",
    ]
    list_filter = ["status", "channel"]
    list_select_related = ["channel"]
    search_fields = ["url"]
    show_full_result_count = False
    actions = ["retry_now"]
    fields = [
        "channel",
        "url",
        "status_column",
        "size",
        "attempts",
        "next_attempt_at",
        "last_status_code",
        "last_error",
        "created_at",
        "finished_at",
        "records_json",
    ]
    readonly_fields = fields
    change_form_template = "admin/messaging/callbackbatch/change_form.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # Up to 100 records each: the list never loads them, the page of one batch does.
        return super().get_queryset(request).select_related("channel").defer("records")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The permission is the list's "Retry now"; a batch itself is never edited.
        return obj is None and super().has_change_permission(request)

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("messaging.change_callbackbatch")

    @admin.display(description=_("status"), ordering="status")
    def status_column(self, batch: CallbackBatch) -> str:
        return format_html(
            '<span class="ums-callback-{}" style="color:{}; font-weight:bold">{}</span>',
            batch.status,
            STATUS_COLOURS.get(batch.status, "#555"),
            batch.get_status_display(),
        )

    @admin.display(description=_("last error"))
    def last_error_column(self, batch: CallbackBatch) -> str:
        if not batch.last_error:
            return "—"
        return format_html(
            '<span title="{}">{}</span>',
            batch.last_error,
            Truncator(batch.last_error).chars(80),
        )

    @admin.display(description=_("records"))
    def records_json(self, batch: CallbackBatch) -> str:
        pretty = json.dumps(batch.records, ensure_ascii=False, indent=2)
        return format_html(
            '<pre style="max-height:40em; overflow:auto; white-space:pre-wrap">{}</pre>', pretty
        )

    @admin.action(description=_("Retry now"), permissions=["retry"])
    def retry_now(self, request: HttpRequest, queryset: QuerySet) -> None:
        ids = callback_batches_retry(batch_ids=queryset.values_list("pk", flat=True))
        self._report_retry(request, len(ids))

    def _report_retry(self, request: HttpRequest, count: int) -> None:
        if not count:
            self.message_user(
                request,
                gettext("Nothing to retry: delivered batches and batches being posted stay."),
                messages.WARNING,
            )
            return
        self.message_user(
            request,
            ngettext(
                "%(count)d batch will be posted again now.",
                "%(count)d batches will be posted again now.",
                count,
            )
            % {"count": count},
        )

    def get_urls(self) -> list:
        return [
            path(
                "<int:pk>/retry/",
                self.admin_site.admin_view(self.retry_view),
                name="messaging_callbackbatch_retry",
            ),
            *super().get_urls(),
        ]

    def retry_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        batch = get_object_or_404(CallbackBatch, pk=pk)
        if not self.has_retry_permission(request):
            raise PermissionDenied
        if request.method == "POST" and ConfirmForm(request.POST).is_valid():
            self._report_retry(request, len(callback_batches_retry(batch_ids=[batch.pk])))
        return HttpResponseRedirect(reverse("admin:messaging_callbackbatch_change", args=[pk]))

    def render_change_form(
        self, request: HttpRequest, context: dict, *args: Any, **kwargs: Any
    ) -> HttpResponse:
        batch = kwargs.get("obj")
        context["can_retry"] = (
            batch is not None
            and batch.status != CallbackBatch.Status.DELIVERED
            and self.has_retry_permission(request)
        )
        return super().render_change_form(request, context, *args, **kwargs)
