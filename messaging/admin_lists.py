"""Console pages for black and white lists and the suppression list: a thin UI over messaging.lists.

Data admins manage both (add, edit, upload, remove); Marketing and Reviewers only view them.
Editing a list's userids needs the permission to change the list.
"""

import re
import tempfile
from pathlib import Path
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Max, Q
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.formats import number_format
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from channels_app.models import Channel
from messaging import lists
from messaging.admin_filters import ChannelScopeFilter
from messaging.models import RecipientList, SuppressedAddress
from ums.formats import size_label
from users_app.validation import FieldError, clean_email, clean_userid

ENTRIES_PER_PAGE = 100
TYPED_MAX = 10_000  # userids typed or pasted at once; more go through an upload
SEPARATORS = re.compile(r"[\s,;\uff0c\uff1b]+")  # full-width comma and semicolon too


def amount(value: int) -> str:
    return number_format(value, force_grouping=True)


def change_summary(change: lists.ListChange, *, removed: bool = False) -> str:
    if removed:
        return _("%(added)s added, %(already)s already there, %(removed)s removed.") % {
            "added": amount(change.added),
            "already": amount(change.already),
            "removed": amount(change.removed),
        }
    return _("%(added)s added, %(already)s already there.") % {
        "added": amount(change.added),
        "already": amount(change.already),
    }


def scope_label(channel: Channel | None) -> str:
    return channel.name if channel is not None else _("Every channel")


# --- forms --------------------------------------------------------------------------------------


class OneColumnFileField(forms.FileField):
    def clean(self, *args: Any, **kwargs: Any) -> Any:
        upload = super().clean(*args, **kwargs)
        if upload and Path(upload.name).suffix.lower() not in (".xlsx", ".csv"):
            raise forms.ValidationError(_("Upload an .xlsx or .csv file."))
        if upload and upload.size > settings.UMS_IMPORT_MAX_BYTES:
            raise forms.ValidationError(
                _("The file is larger than the limit of %(size)s.")
                % {"size": size_label(settings.UMS_IMPORT_MAX_BYTES)}
            )
        return upload


class ListUploadForm(forms.Form):
    file = OneColumnFileField(
        label=gettext_lazy("File"),
        help_text=gettext_lazy(
            "An .xlsx or .csv file with one column of userids; a first row reading userid is "
            "skipped."
        ),
    )
    mode = forms.ChoiceField(
        label=gettext_lazy("What to do"),
        choices=[
            ("add", gettext_lazy("Add to the list (the userids already on it stay)")),
            ("replace", gettext_lazy("Replace the list (userids not in the file are removed)")),
        ],
        initial="add",
        widget=forms.RadioSelect,
    )


class TypedUserids(forms.Form):
    userids = forms.CharField(
        label=gettext_lazy("Userids"),
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60}),
        help_text=gettext_lazy("One per line, or separated by commas or spaces."),
    )

    def clean_userids(self) -> list[str]:
        values = [v for v in SEPARATORS.split(self.cleaned_data["userids"]) if v]
        if len(values) > TYPED_MAX:
            raise forms.ValidationError(
                _("At most %(max)s userids at once: upload a file for more.")
                % {"max": amount(TYPED_MAX)}
            )
        cleaned, errors = [], []
        for value in values:
            try:
                cleaned.append(clean_userid(value))
            except FieldError as exc:
                errors.append(f"{value[:70]}: {exc.message}")
        if errors:
            raise forms.ValidationError(errors[: lists.SHOWN_ERRORS])
        return cleaned


class RecipientListForm(forms.ModelForm):
    class Meta:
        model = RecipientList
        fields = ["kind", "number", "name", "channel"]


class SuppressedAddressForm(forms.ModelForm):
    class Meta:
        model = SuppressedAddress
        fields = ["email", "channel", "note"]

    def clean_email(self) -> str:
        try:
            return lists.normalize_address(clean_email(self.cleaned_data["email"]))
        except FieldError as exc:
            raise forms.ValidationError(exc.message) from exc

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        email, channel = data.get("email"), data.get("channel")
        if self.instance.pk is None and email:
            scope = Q(channel__isnull=True) if channel is None else Q(channel=channel)
            if SuppressedAddress.objects.filter(scope, email=email).exists():
                self.add_error(
                    "email",
                    _("%(email)s is already suppressed for %(scope)s.")
                    % {"email": email, "scope": scope_label(channel)},
                )
        return data


class SuppressionUploadForm(forms.Form):
    file = OneColumnFileField(
        label=gettext_lazy("File"),
        help_text=gettext_lazy(
            "An .xlsx or .csv file with one column of email addresses; a first row reading "
            "email is skipped."
        ),
    )
    channel = forms.ModelChoiceField(
        label=gettext_lazy("Suppress for"),
        queryset=Channel.objects.order_by("name"),
        required=False,
        empty_label=gettext_lazy("Every channel"),
    )
    note = forms.CharField(label=gettext_lazy("Note"), max_length=500, required=False)


def read_upload(upload: Any, reader: Any) -> list[str]:
    """The values of an uploaded file, read by lists.userids_read or lists.addresses_read."""
    with tempfile.NamedTemporaryFile(suffix=Path(upload.name).suffix.lower()) as handle:
        for chunk in upload.chunks():
            handle.write(chunk)
        handle.flush()
        return reader(path=Path(handle.name))


# --- black and white lists ----------------------------------------------------------------------


class RecipientListAdmin(admin.ModelAdmin):
    form = RecipientListForm
    list_display = ["number", "name", "kind", "scope", "userids", "updated_at"]
    list_display_links = ["number", "name"]
    list_filter = ["kind", ChannelScopeFilter]
    list_select_related = ["channel"]
    search_fields = ["name", "=number"]
    readonly_fields = ["size", "created_at", "updated_at"]
    change_form_template = "admin/messaging/recipientlist/change_form.html"

    @admin.display(description=gettext_lazy("channel"), ordering="channel__name")
    def scope(self, recipient_list: RecipientList) -> str:
        return scope_label(recipient_list.channel)

    @admin.display(description=gettext_lazy("userids"), ordering="size")
    def userids(self, recipient_list: RecipientList) -> str:
        url = reverse("admin:messaging_recipientlist_entries", args=[recipient_list.pk])
        return format_html('<a href="{}">{}</a>', url, amount(recipient_list.size))

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        highest = RecipientList.objects.aggregate(n=Max("number"))["n"] or 0
        return {
            "kind": RecipientList.Kind.BLACK,
            "number": highest + 1,
            **super().get_changeform_initial_data(request),
        }

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple:
        """The lists and how many userids go with them, not every userid on its own line."""
        if not self.has_delete_permission(request):
            return [], {}, {self.opts.verbose_name}, []
        shown = [
            ngettext(
                "%(list)s, with its %(count)s userid",
                "%(list)s, with its %(count)s userids",
                item.size,
            )
            % {"list": str(item), "count": amount(item.size)}
            for item in objs
        ]
        return shown, {self.opts.verbose_name_plural: len(shown)}, set(), []

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path(
                "<int:pk>/userids/",
                wrap(self.entries_view),
                name="messaging_recipientlist_entries",
            ),
            path("<int:pk>/upload/", wrap(self.upload_view), name="messaging_recipientlist_upload"),
            *super().get_urls(),
        ]

    def _list(self, request: HttpRequest, pk: int, *, change: bool) -> RecipientList:
        recipient_list = get_object_or_404(RecipientList.objects.select_related("channel"), pk=pk)
        allowed = (
            self.has_change_permission(request, recipient_list)
            if change
            else self.has_view_permission(request, recipient_list)
        )
        if not allowed:
            raise PermissionDenied
        return recipient_list

    def entries_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        recipient_list = self._list(request, pk, change=request.method == "POST")
        typed = TypedUserids(request.POST if request.method == "POST" else None)
        if request.method == "POST":
            done = self._entries_post(request, recipient_list, typed)
            if done:
                return HttpResponseRedirect(request.get_full_path())
        query = request.GET.get("q", "").strip()
        entries = recipient_list.entries.order_by("userid")
        if query:
            entries = entries.filter(userid__icontains=query)
        page = Paginator(entries.values_list("userid", flat=True), ENTRIES_PER_PAGE).get_page(
            request.GET.get("p")
        )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": recipient_list,
            "title": _("Userids of %(list)s") % {"list": recipient_list},
            "page": page,
            "query": query,
            "typed": typed,
            "can_change": self.has_change_permission(request, recipient_list),
        }
        return TemplateResponse(request, "admin/messaging/recipientlist/entries.html", context)

    def _entries_post(
        self, request: HttpRequest, recipient_list: RecipientList, typed: TypedUserids
    ) -> bool:
        action = request.POST.get("action")
        if action == "remove_selected":
            selected = request.POST.getlist("selected")[:TYPED_MAX]
            change = lists.recipient_list_remove(recipient_list=recipient_list, userids=selected)
        elif action in ("add", "remove") and typed.is_valid():
            userids = typed.cleaned_data["userids"]
            if action == "add":
                change = lists.recipient_list_add(recipient_list=recipient_list, userids=userids)
            else:
                change = lists.recipient_list_remove(recipient_list=recipient_list, userids=userids)
        else:
            return False
        if action == "add":
            summary = change_summary(change)
        else:
            summary = _("%(removed)s removed.") % {"removed": amount(change.removed)}
        self.log_change(request, recipient_list, summary)
        messages.success(request, summary)
        return True

    def upload_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        recipient_list = self._list(request, pk, change=True)
        form = ListUploadForm(request.POST or None, request.FILES or None)
        rejected = None
        if request.method == "POST" and form.is_valid():
            try:
                userids = read_upload(form.cleaned_data["file"], lists.userids_read)
            except lists.UploadRejected as exc:
                rejected = exc
            else:
                replace = form.cleaned_data["mode"] == "replace"
                service = lists.recipient_list_replace if replace else lists.recipient_list_add
                change = service(recipient_list=recipient_list, userids=userids)
                summary = change_summary(change, removed=replace)
                self.log_change(request, recipient_list, _("Upload: %(s)s") % {"s": summary})
                messages.success(request, summary)
                return HttpResponseRedirect(
                    reverse("admin:messaging_recipientlist_entries", args=[recipient_list.pk])
                )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": recipient_list,
            "title": _("Upload userids"),
            "form": form,
            "rejected": rejected,
            "max_size": size_label(settings.UMS_IMPORT_MAX_BYTES),
        }
        return TemplateResponse(request, "admin/messaging/recipientlist/upload.html", context)


# --- the suppression list -----------------------------------------------------------------------


class SuppressedAddressAdmin(admin.ModelAdmin):
    form = SuppressedAddressForm
    list_display = ["email", "scope", "reason", "note", "created_by", "created_at"]
    list_filter = ["reason", ChannelScopeFilter]
    list_select_related = ["channel", "created_by"]
    search_fields = ["email"]
    change_list_template = "admin/messaging/suppressedaddress/change_list.html"

    @admin.display(description=gettext_lazy("channel"), ordering="channel__name")
    def scope(self, row: SuppressedAddress) -> str:
        return scope_label(row.channel)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return []
        return ["email", "channel", "reason", "created_by", "created_at"]

    def save_model(
        self, request: HttpRequest, obj: SuppressedAddress, form: Any, change: bool
    ) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        row, _created = lists.address_suppress(
            email=obj.email,
            channel=obj.channel,
            reason=SuppressedAddress.Reason.MANUAL,
            note=obj.note,
            user=request.user,
        )
        obj.pk, obj.reason, obj.created_at = row.pk, row.reason, row.created_at

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("upload/", wrap(self.upload_view), name="messaging_suppressedaddress_upload"),
            *super().get_urls(),
        ]

    def upload_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = SuppressionUploadForm(request.POST or None, request.FILES or None)
        rejected = None
        if request.method == "POST" and form.is_valid():
            try:
                emails = read_upload(form.cleaned_data["file"], lists.addresses_read)
            except lists.UploadRejected as exc:
                rejected = exc
            else:
                change = lists.addresses_suppress(
                    emails=emails,
                    channel=form.cleaned_data["channel"],
                    reason=SuppressedAddress.Reason.MANUAL,
                    note=form.cleaned_data["note"],
                    user=request.user,
                )
                messages.success(request, change_summary(change))
                return HttpResponseRedirect(reverse("admin:messaging_suppressedaddress_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": _("Upload addresses to suppress"),
            "form": form,
            "rejected": rejected,
            "max_size": size_label(settings.UMS_IMPORT_MAX_BYTES),
        }
        return TemplateResponse(request, "admin/messaging/suppressedaddress/upload.html", context)


admin.site.register(RecipientList, RecipientListAdmin)
admin.site.register(SuppressedAddress, SuppressedAddressAdmin)
