"""Console pages for users, bindings and spreadsheet uploads: a thin UI over the services."""

import io
from collections import defaultdict
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import OuterRef, Q, QuerySet, Subquery
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from import_export.admin import ExportMixin
from import_export.formats import base_formats

from channels_app.models import Channel
from ums.formats import size_label
from users_app import reports, services
from users_app.forms import ScopedForm, UploadForm
from users_app.models import (
    ALL_SCOPE,
    ImportJob,
    ImportRowError,
    UmsUser,
    UserEmailBinding,
    UserTag,
)
from users_app.resources import BindingResource
from users_app.validation import FieldError, clean_email, clean_tag, clean_userid

SHOWN_ERRORS = 200


def channel_names() -> dict[str, str]:
    return dict(Channel.objects.values_list("channel_key", "name"))


def scope_label(bind_id: str, names: dict[str, str]) -> str:
    if bind_id == ALL_SCOPE:
        return _("all")
    name = names.get(bind_id) or _("deleted channel")
    return f"{name} ({bind_id})"


class ScopeFilter(admin.SimpleListFilter):
    title = gettext_lazy("scope")
    parameter_name = "bind_id"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        names = channel_names()
        return [(ALL_SCOPE, _("all"))] + [
            (key, name) for key, name in sorted(names.items(), key=lambda kv: kv[1])
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if not self.value():
            return queryset
        if queryset.model is UmsUser:
            return queryset.filter(bindings__bind_id=self.value()).distinct()
        return queryset.filter(bind_id=self.value())


class TagFilter(admin.SimpleListFilter):
    title = gettext_lazy("tag")
    parameter_name = "tag"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        tags = UserTag.objects.values_list("tag", flat=True).distinct().order_by("tag")[:100]
        return [(tag, tag) for tag in tags]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if not self.value():
            return queryset
        return queryset.filter(tags__tag=self.value()).distinct()


def form_clean(cleaner: Any, value: object) -> str:
    """A shared validator (users_app.validation) as a form field's clean step."""
    try:
        return cleaner(value)
    except FieldError as exc:
        raise forms.ValidationError(exc.message) from exc


class UserForm(forms.ModelForm):
    class Meta:
        model = UmsUser
        fields = ["userid"]

    def clean_userid(self) -> str:
        return form_clean(clean_userid, self.cleaned_data["userid"])


class BindingForm(ScopedForm):
    class Meta:
        model = UserEmailBinding
        fields = ["bind_id", "email"]

    def clean_email(self) -> str:
        return form_clean(clean_email, self.cleaned_data["email"])


class TagForm(ScopedForm):
    class Meta:
        model = UserTag
        fields = ["bind_id", "tag"]

    def clean_tag(self) -> str:
        return form_clean(clean_tag, self.cleaned_data["tag"])


class StandaloneBindingForm(BindingForm):
    class Meta:
        model = UserEmailBinding
        fields = ["user", "bind_id", "email"]


class BindingInline(admin.TabularInline):
    model = UserEmailBinding
    form = BindingForm
    extra = 0
    verbose_name = gettext_lazy("email binding")


class TagInline(admin.TabularInline):
    model = UserTag
    form = TagForm
    extra = 0


@admin.register(UmsUser)
class UmsUserAdmin(admin.ModelAdmin):
    form = UserForm
    list_display = ["userid", "addresses", "created_at"]
    list_filter = [ScopeFilter, TagFilter]
    search_fields = ["userid"]
    search_help_text = gettext_lazy("A userid (or its beginning), or an exact email address.")
    readonly_fields = ["scopes", "created_at", "updated_at"]
    fields = ["userid", "scopes", "created_at", "updated_at"]
    inlines = [BindingInline, TagInline]
    show_full_result_count = False  # no COUNT(*) over a million users on every page

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).prefetch_related("bindings")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        by_userid = Q(userid__startswith=term)
        if "@" in term:  # maybe an address (exact, on the email index); userids may hold @ too
            users = UserEmailBinding.objects.filter(email=term).values("user_id")
            return queryset.filter(by_userid | Q(pk__in=users)), False
        return queryset.filter(by_userid), False

    @admin.display(description=gettext_lazy("email addresses"))
    def addresses(self, user: UmsUser) -> str:
        return ", ".join(sorted({b.email for b in user.bindings.all()}))

    @admin.display(description=gettext_lazy("by scope"))
    def scopes(self, user: UmsUser) -> str:
        """Every binding and tag of the user, grouped by scope (`all` first)."""
        if not user.pk:
            return "—"
        names = channel_names()
        grouped: dict[str, dict[str, Any]] = defaultdict(lambda: {"email": "", "tags": []})
        for binding in user.bindings.all():
            grouped[binding.bind_id]["email"] = binding.email
        for tag in user.tags.all():
            grouped[tag.bind_id]["tags"].append(tag.tag)
        order = sorted(grouped, key=lambda key: (key != ALL_SCOPE, scope_label(key, names)))
        rows = format_html_join(
            "",
            "<tr><th>{}</th><td>{}</td><td>{}</td></tr>",
            (
                (
                    scope_label(k, names),
                    grouped[k]["email"] or "—",
                    ", ".join(sorted(grouped[k]["tags"])) or "—",
                )
                for k in order
            ),
        )
        return format_html(
            '<table class="ums-scopes"><thead><tr><th>{}</th><th>{}</th><th>{}</th></tr></thead>'
            "<tbody>{}</tbody></table>",
            _("scope"),
            _("email"),
            _("tags"),
            rows,
        )


@admin.register(UserEmailBinding)
class UserEmailBindingAdmin(ExportMixin, admin.ModelAdmin):
    resource_classes = [BindingResource]
    formats = [base_formats.XLSX, base_formats.CSV]
    change_list_template = "admin/users_app/useremailbinding/change_list.html"
    list_display = ["user", "scope", "email", "updated_at"]
    list_filter = [ScopeFilter]
    list_select_related = ["user"]
    search_fields = ["=email", "user__userid"]
    autocomplete_fields = ["user"]
    show_full_result_count = False

    form = StandaloneBindingForm

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        channel = Channel.objects.filter(channel_key=OuterRef("bind_id")).values("name")[:1]
        return super().get_queryset(request).annotate(channel_name=Subquery(channel))

    @admin.display(description=gettext_lazy("scope"), ordering="bind_id")
    def scope(self, binding: UserEmailBinding) -> str:
        return scope_label(binding.bind_id, {binding.bind_id: binding.channel_name})


@admin.register(ImportJob)
class ImportJobAdmin(admin.ModelAdmin):
    list_display = [
        "original_name",
        "scope",
        "status",
        "total_rows",
        "error_count",
        "created_by",
        "created_at",
    ]
    list_filter = ["status"]
    list_select_related = ["created_by"]

    @admin.display(description=gettext_lazy("default bind_id"))
    def scope(self, job: ImportJob) -> str:
        return scope_label(job.default_bind_id, channel_names())

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # uploads change through their own actions, not a form

    def delete_model(self, request: HttpRequest, obj: ImportJob) -> None:
        services.import_job_delete(job=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for job in queryset:
            services.import_job_delete(job=job)

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("template.xlsx", wrap(self.template_view), name="users_app_importjob_template"),
            path("<int:pk>/status/", wrap(self.status_view), name="users_app_importjob_status"),
            path("<int:pk>/confirm/", wrap(self.confirm_view), name="users_app_importjob_confirm"),
            path("<int:pk>/discard/", wrap(self.discard_view), name="users_app_importjob_discard"),
            path(
                "<int:pk>/rejected.xlsx", wrap(self.report_view), name="users_app_importjob_report"
            ),
            *super().get_urls(),
        ]

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = UploadForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["file"]
            job = services.import_job_create(
                file=upload,
                original_name=upload.name,
                default_bind_id=form.cleaned_data["default_bind_id"],
                created_by=request.user,
            )
            services.import_job_start(job)
            return HttpResponseRedirect(reverse("admin:users_app_importjob_change", args=[job.pk]))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": _("Upload users and email bindings"),
            "form": form,
            "max_size": size_label(settings.UMS_IMPORT_MAX_BYTES),
        }
        return TemplateResponse(request, "admin/users_app/importjob/upload.html", context)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict | None = None,
    ) -> HttpResponse:
        job = get_object_or_404(ImportJob, pk=object_id)
        if not self.has_view_permission(request, job):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": job,
            "title": job.original_name,
            "job": job,
            "scope": scope_label(job.default_bind_id, channel_names()),
            "errors": ImportRowError.objects.filter(job=job)[:SHOWN_ERRORS],
            "shown_errors": SHOWN_ERRORS,
            "can_act": self.has_add_permission(request),
            "in_progress": job.status in IN_PROGRESS,
        }
        return TemplateResponse(request, "admin/users_app/importjob/job.html", context)

    def status_view(self, request: HttpRequest, pk: int) -> JsonResponse:
        job = get_object_or_404(ImportJob, pk=pk)
        if not self.has_view_permission(request, job):
            raise PermissionDenied
        return JsonResponse(job_progress(job))

    def confirm_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        job = self._acted_on(request, pk)
        try:
            services.import_job_confirm(job)
        except FieldError as exc:
            messages.error(request, exc.message)
        return HttpResponseRedirect(reverse("admin:users_app_importjob_change", args=[pk]))

    def discard_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        job = self._acted_on(request, pk)
        if job.status in (
            ImportJob.Status.VALIDATED,
            ImportJob.Status.REJECTED,
            ImportJob.Status.FAILED,
        ):
            services.import_job_discard(job)
            messages.info(request, _("The upload was discarded; nothing was imported."))
        return HttpResponseRedirect(reverse("admin:users_app_importjob_changelist"))

    def _acted_on(self, request: HttpRequest, pk: int) -> ImportJob:
        if request.method != "POST" or not self.has_add_permission(request):
            raise PermissionDenied
        return get_object_or_404(ImportJob, pk=pk)

    def report_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        job = get_object_or_404(ImportJob, pk=pk)
        if not self.has_view_permission(request, job):
            raise PermissionDenied
        return _workbook_response(
            lambda out: reports.error_report_workbook(job, out), f"rejected-rows-{job.pk}.xlsx"
        )

    def template_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        return _workbook_response(reports.template_workbook, "ums-bindings-template.xlsx")


IN_PROGRESS = {ImportJob.Status.QUEUED, ImportJob.Status.VALIDATING, ImportJob.Status.APPLYING}


def job_progress(job: ImportJob) -> dict[str, Any]:
    """What the progress bar shows: rows done of the total, errors so far, time left."""
    eta = None
    if (
        job.status == ImportJob.Status.VALIDATING
        and job.started_at
        and job.total_rows
        and job.processed_rows
    ):
        elapsed = (timezone.now() - job.started_at).total_seconds()
        eta = round(elapsed / job.processed_rows * max(0, job.total_rows - job.processed_rows))
    return {
        "status": job.status,
        "status_label": job.get_status_display(),
        "processed": job.processed_rows,
        "total": job.total_rows,
        "errors": job.error_count,
        "eta_seconds": eta,
        "in_progress": job.status in IN_PROGRESS,
    }


def _workbook_response(write: Any, filename: str) -> FileResponse:
    buffer = io.BytesIO()
    write(buffer)
    buffer.seek(0)
    return FileResponse(
        buffer,
        as_attachment=True,
        filename=filename,
        content_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    )
