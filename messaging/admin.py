"""Console pages for messaging: the send history down to each recipient, and the mail catcher."""

import json
import tempfile
from datetime import date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import admin
from django.contrib import messages as flash
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db.models import Q, QuerySet
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404, redirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.dateformat import format as format_date
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from messaging import selectors
from messaging.drafts import draft_from_message
from messaging.exports import deliveries_csv, deliveries_xlsx
from messaging.models import CapturedEmail, Delivery, Message
from messaging.services import (
    RETRACT_WINDOW,
    SendRefused,
    message_retract,
    message_retry_failed,
)


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


# A duplicate is a draft, and drafts are for those who may send.
DUPLICATE_PERMISSIONS = ("messaging.add_message", "messaging.add_draft")
TIME_FORMAT = "Y-m-d H:i:s"
SHORT_TIME_FORMAT = "Y-m-d H:i"
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
# The message's HTML is shown in a sandboxed iframe (no scripts, no forms, no same origin);
# this policy, put first in the frame's document, also keeps it from loading anything remote
# unless the reader asks for the images.
FRAME_POLICY = "default-src 'none'; img-src data: cid:; style-src 'unsafe-inline'; font-src data:"
FRAME_POLICY_REMOTE = (
    "default-src 'none'; img-src data: cid: http: https:; "
    "style-src 'unsafe-inline' http: https:; font-src data: http: https:"
)


def when(value: datetime | None, *, short: bool = False) -> str:
    """A time in the current time zone, to the second (to the minute in lists)."""
    if value is None:
        return "—"
    return format_date(timezone.localtime(value), SHORT_TIME_FORMAT if short else TIME_FORMAT)


class CreatedRangeFilter(admin.ListFilter):
    """Messages created from one day to another (both included), as two date inputs."""

    title = _("date created")
    template = "admin/messaging/message/created_range_filter.html"
    parameters = ("created_from", "created_to")

    def __init__(self, request: HttpRequest, params: dict, model: Any, model_admin: Any) -> None:
        super().__init__(request, params, model, model_admin)
        self.bounds: dict[str, date] = {}
        for name in self.parameters:
            values = params.pop(name, None)
            value = (values[-1] if isinstance(values, list) else values or "").strip()
            if not value:
                continue
            try:
                self.bounds[name] = date.fromisoformat(value)
            except ValueError:
                flash.warning(
                    request,
                    gettext("“%(value)s” is not a date (YYYY-MM-DD); that bound is ignored.")
                    % {"value": value},
                )
                continue
            self.used_parameters[name] = value

    def has_output(self) -> bool:
        return True

    def expected_parameters(self) -> list[str]:
        return list(self.parameters)

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if "created_from" in self.bounds:
            queryset = queryset.filter(created_at__gte=_day_start(self.bounds["created_from"]))
        if "created_to" in self.bounds:
            end = _day_start(self.bounds["created_to"] + timedelta(days=1))
            queryset = queryset.filter(created_at__lt=end)
        return queryset

    def choices(self, changelist: ChangeList) -> list[dict[str, Any]]:
        # The form submits the other filters, the search and the ordering along with the dates.
        hidden = [
            (name, value)
            for name, values in changelist.filter_params.items()
            if name not in self.parameters
            for value in values
        ]
        return [
            {
                "created_from": self.used_parameters.get("created_from", ""),
                "created_to": self.used_parameters.get("created_to", ""),
                "hidden": hidden,
                "active": bool(self.used_parameters),
                "reset_url": changelist.get_query_string(remove=list(self.parameters)),
            }
        ]


def _day_start(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


class MessageChangeList(ChangeList):
    """The history lists messages without their bodies and audiences."""

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet:
        queryset = super().get_queryset(request, exclude_parameters)
        return queryset.defer("html", "text", "audience", "callback")


@admin.register(Message)
class MessageAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = [
        "msgid",
        "channel",
        "subject_column",
        "status_column",
        "progress",
        "origin_column",
        "created_column",
    ]
    list_display_links = ["msgid"]
    list_filter = ["channel", "status", "source", "is_test", "priority", CreatedRangeFilter]
    list_select_related = ["channel", "created_by"]
    # The search itself is selectors.messages_search (see get_search_results).
    search_fields = ["subject"]
    search_help_text = _(
        "An exact msgid, sendno, userid or email address, or a part of the subject."
    )
    show_full_result_count = False
    actions = ["retract"]
    exclude = ["materials"]
    change_form_template = "admin/messaging/message/change_form.html"
    deliveries_per_page = 100

    class Media:
        css = {"all": ["messaging/history.css"]}
        js = ["messaging/history.js"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("channel", "created_by")

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return MessageChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        return selectors.messages_search(messages=queryset, term=search_term), False

    # --- list columns -----------------------------------------------------------------------

    @admin.display(description=_("subject"), ordering="subject")
    def subject_column(self, message: Message) -> str:
        if message.is_test:
            return format_html(
                '{} <span class="ums-badge">{}</span>', message.subject, gettext("test")
            )
        return message.subject

    # Source and owner, creation and schedule share a column each: the list must fit beside the
    # menu and the filters on a laptop's screen.
    @admin.display(description=_("source / owner"), ordering="source")
    def origin_column(self, message: Message) -> str:
        owner = message.owner or (message.created_by.get_username() if message.created_by else "")
        return format_html(
            '{}<br><span class="ums-quiet">{}</span>',
            message.get_source_display(),
            owner or "—",
        )

    @admin.display(description=_("created / scheduled"), ordering="created_at")
    def created_column(self, message: Message) -> str:
        created = when(message.created_at, short=True)
        if message.send_at is None:
            return created
        return format_html(
            '{}<br><span class="ums-quiet" title="{}">{} {}</span>',
            created,
            gettext("scheduled for"),
            "⏱",
            when(message.send_at, short=True),
        )

    @admin.display(description=_("progress"))
    def progress(self, message: Message) -> str:
        return render_to_string(
            "admin/messaging/message/progress_bar.html",
            {"progress": selectors.message_progress(message=message)},
        )

    @admin.display(description=_("status"), ordering="status")
    def status_column(self, message: Message) -> str:
        return format_html(
            '<span class="ums-status ums-status-{}">{}</span>',
            message.status,
            message.get_status_display(),
        )

    # --- the list's action --------------------------------------------------------------------

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

    # --- the message page ---------------------------------------------------------------------

    def get_urls(self) -> list:
        view = self.admin_site.admin_view
        return [
            path("<int:pk>/progress/", view(self.progress_view), name="messaging_message_progress"),
            path(
                "<int:pk>/deliveries.<str:fmt>",
                view(self.export_view),
                name="messaging_message_export",
            ),
            path("<int:pk>/retry/", view(self.retry_view), name="messaging_message_retry"),
            path("<int:pk>/retract/", view(self.retract_view), name="messaging_message_retract"),
            path(
                "<int:pk>/duplicate/",
                view(self.duplicate_view),
                name="messaging_message_duplicate",
            ),
            *super().get_urls(),
        ]

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Any = None,
    ) -> HttpResponse:
        # The message page: the admin has checked the view permission and fetched the message.
        if obj is not None:
            context.update(self._detail_context(request, obj))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _detail_context(self, request: HttpRequest, message: Message) -> dict[str, Any]:
        user = request.user
        context: dict[str, Any] = {
            "message": message,
            "sender": message.sender,
            "audience": audience_summary(message.audience),
            "audience_json": json.dumps(message.audience, ensure_ascii=False, indent=2),
            "materials": list(message.materials.all()),
            "remote_images": request.GET.get("images") == "1",
            "progress_url": reverse("admin:messaging_message_progress", args=[message.pk]),
            "can_retry": user.has_perm("messaging.retry_message"),
            # Only offered while the server would still accept it.
            "can_retract": user.has_perm("messaging.retract_message")
            and message.created_at >= timezone.now() - RETRACT_WINDOW,
            "can_duplicate": user.has_perms(DUPLICATE_PERMISSIONS),
            **progress_payload(message),
        }
        context["srcdoc"] = frame_document(message.html, remote=context["remote_images"])
        if user.has_perm("messaging.view_delivery"):
            context.update(self._deliveries_context(request, message, context["counts"]))
        return context

    def _deliveries_context(
        self, request: HttpRequest, message: Message, counts: dict[str, int]
    ) -> dict[str, Any]:
        status = request.GET.get("dstatus", "")
        status = status if status in selectors.STATUS_GROUPS else ""
        search = request.GET.get("dq", "").strip()
        page = selectors.message_deliveries_page(
            message=message,
            status=status,
            search=search,
            after=_int(request.GET.get("after")),
            before=_int(request.GET.get("before")),
            size=self.deliveries_per_page,
        )

        def link(**params: Any) -> str:
            query = {"dstatus": status, "dq": search, **params}
            return "?" + urlencode({k: v for k, v in query.items() if v not in ("", None)})

        groups = [("", gettext("All"), counts["total"])] + [
            (name, label, counts[name]) for name, label in status_group_labels()
        ]
        exports = {
            fmt: reverse("admin:messaging_message_export", args=[message.pk, fmt])
            + (f"?dstatus={status}" if status else "")
            for fmt in ("csv", "xlsx")
        }
        return {
            "show_deliveries": True,
            "deliveries": page.rows,
            "delivery_status": status,
            "delivery_search": search,
            "status_links": [
                {
                    "key": key,
                    "label": label,
                    "count": count,
                    "selected": key == status,
                    "url": link(dstatus=key),
                }
                for key, label, count in groups
            ],
            "first_url": link() if page.has_previous else "",
            "previous_url": link(before=page.first_id) if page.has_previous else "",
            "next_url": link(after=page.last_id) if page.has_next else "",
            "clear_search_url": link(dq=""),
            "export_csv_url": exports["csv"],
            "export_xlsx_url": exports["xlsx"],
        }

    def _message(self, request: HttpRequest, pk: int, permission: str = "") -> Message:
        """The message, for a user who may view messages and holds the permission."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        if permission and not request.user.has_perm(permission):
            raise PermissionDenied
        return get_object_or_404(Message, pk=pk)

    @staticmethod
    def _page(message: Message) -> HttpResponse:
        return redirect("admin:messaging_message_change", message.pk)

    def progress_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        message = self._message(request, pk)
        payload = progress_payload(message)
        response = JsonResponse(
            {
                "msgid": message.msgid,
                "status": message.status,
                "status_label": message.get_status_display(),
                "finished": payload["finished"],
                "counts": payload["counts"],
                "percents": payload["percents"],
                "done_percent": payload["progress"].done_percent,
                "title": payload["progress"].title,
                "timeline": {
                    entry["key"]: {"label": entry["label"], "value": entry["value"]}
                    for entry in payload["timeline"]
                },
            }
        )
        add_never_cache_headers(response)
        return response

    def export_view(self, request: HttpRequest, pk: int, fmt: str) -> HttpResponse:
        message = self._message(request, pk, "messaging.view_delivery")
        status = request.GET.get("dstatus", "")
        status = status if status in selectors.STATUS_GROUPS else ""
        name = f"message-{message.msgid}-deliveries{'-' + status if status else ''}"
        if fmt == "csv":
            response = StreamingHttpResponse(
                deliveries_csv(message=message, status=status),
                content_type="text/csv; charset=utf-8",
            )
            response["Content-Disposition"] = f'attachment; filename="{name}.csv"'
            return response
        if fmt == "xlsx":
            out = tempfile.TemporaryFile()  # closed by the response once sent
            deliveries_xlsx(message=message, out=out, status=status)
            out.seek(0)
            return FileResponse(
                out, as_attachment=True, filename=f"{name}.xlsx", content_type=XLSX_TYPE
            )
        raise Http404

    def retry_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        message = self._message(request, pk, "messaging.retry_message")
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        try:
            count = message_retry_failed(message=message)
        except ValidationError as exc:
            flash.error(request, " ".join(exc.messages))
        else:
            flash.success(
                request,
                ngettext(
                    "%(count)d failed delivery is being sent again.",
                    "%(count)d failed deliveries are being sent again.",
                    count,
                )
                % {"count": count},
            )
        return self._page(message)

    def retract_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        message = self._message(request, pk, "messaging.retract_message")
        if request.method == "POST":
            try:
                result = message_retract(message=message)
            except SendRefused as exc:
                flash.error(request, exc.message)
            else:
                flash.success(request, retract_summary(message, result))
            return self._page(message)
        return TemplateResponse(
            request,
            "admin/ums_confirm.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "original": message,
                "title": gettext("Retract message %(msgid)s?") % {"msgid": message.msgid},
                "text": gettext(
                    "Every delivery not yet handed to the SMTP server is cancelled (%(pending)d "
                    "pending now). Emails already sent cannot be called back, and those being "
                    "sent at this moment still get their result recorded."
                )
                % {"pending": message.pending},
                "button": gettext("Retract"),
            },
        )

    def duplicate_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        message = self._message(request, pk)
        if not request.user.has_perms(DUPLICATE_PERMISSIONS):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        draft = draft_from_message(message=message, user=request.user)
        flash.success(
            request,
            gettext("A new draft was made from message %(msgid)s.") % {"msgid": message.msgid},
        )
        return redirect(reverse("admin:messaging_draft_change", args=[draft.pk]))


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def status_group_labels() -> list[tuple[str, str]]:
    return [
        ("sent", gettext("Sent")),
        ("failed", gettext("Failed")),
        ("invalid", gettext("Invalid target")),
        ("cancelled", gettext("Cancelled")),
        ("pending", gettext("Pending")),
    ]


def progress_payload(message: Message) -> dict[str, Any]:
    """Counters, bar widths and timeline: the parts of the message page that refresh."""
    progress = selectors.message_progress(message=message)
    return {
        "progress": progress,
        "counts": progress.counts(),
        "percents": progress.percents(),
        "finished": selectors.message_is_finished(message=message),
        "timeline": [
            {"key": entry.key, "label": entry.label, "value": when(entry.at)}
            for entry in selectors.message_timeline(message=message)
        ],
    }


def audience_summary(audience: dict[str, Any]) -> dict[str, Any]:
    """The audience as given, in words: its kind and its first values."""
    if audience.get("broadcast"):
        return {"kind": gettext("Every user of the channel (broadcast)"), "values": [], "more": 0}
    kinds = [
        ("userid", gettext("Userids")),
        ("tag", gettext("Tags")),
        ("email", gettext("Email addresses")),
    ]
    for key, label in kinds:
        values = audience.get(key) or []
        if values:
            shown = [str(value) for value in values[:200]]
            return {
                "kind": label,
                "count": len(values),
                "values": shown,
                "more": len(values) - len(shown),
            }
    return {"kind": gettext("(none)"), "values": [], "more": 0}


def frame_document(markup: str, *, remote: bool) -> str:
    policy = FRAME_POLICY_REMOTE if remote else FRAME_POLICY
    return f'<meta http-equiv="Content-Security-Policy" content="{policy}">{markup}'


def retract_summary(message: Message, result: dict[str, int]) -> str:
    if message.status == Message.Status.DONE:  # it finished first: nothing was left to cancel
        return gettext(
            "The message had already finished, so nothing was cancelled (%(sent)d sent)."
        ) % {"sent": result["sent"]}
    return (
        gettext(
            "Retracted. Cancelled: %(cancelled)d. Already sent: %(sent)d. Being sent at this "
            "moment (their result is still recorded): %(in_flight)d."
        )
        % result
    )


# --- deliveries -------------------------------------------------------------------------------


class CappedPaginator(Paginator):
    """Counts at most CAP rows: pages enough to browse, without counting a million deliveries."""

    cap = 10_000

    @cached_property
    def count(self) -> int:
        return min(self.found, self.cap)

    @cached_property
    def found(self) -> int:
        return self.object_list[: self.cap + 1].count()

    @property
    def capped(self) -> bool:
        return self.found > self.cap


class DeliveryChangeList(ChangeList):
    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet:
        queryset = super().get_queryset(request, exclude_parameters)
        return queryset.only(*selectors.DELIVERY_COLUMNS, "message__msgid")


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = [
        "message_link",
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
    # The search itself is exact, along the indexes (see get_search_results).
    search_fields = ["email"]
    search_help_text = _("An exact email address, userid or msgid.")
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = CappedPaginator
    list_per_page = 100

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return DeliveryChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        # The msgid is looked up first, so that each condition has an index of its own.
        messages = list(Message.objects.filter(msgid=term).values_list("pk", flat=True))
        return queryset.filter(
            Q(userid=term)
            | Q(email__in=selectors.address_variants(term))
            | Q(message_id__in=messages)
        ), False

    @admin.display(description=_("message"), ordering="message")
    def message_link(self, delivery: Delivery) -> str:
        url = reverse("admin:messaging_message_change", args=[delivery.message_id])
        return format_html('<a href="{}">{}</a>', url, delivery.message.msgid)
