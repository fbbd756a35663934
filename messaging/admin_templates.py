"""Console pages for message templates: a thin UI over messaging.templating.

Marketing manages templates (add, edit, delete); Reviewers only view them. The change page
previews the template live, with sample values typed on the page and rendered on the server by
the same renderer as a template send.
"""

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Max, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.urls import path, reverse
from django.utils.formats import date_format, number_format
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from messaging.admin_filters import ChannelScopeFilter
from messaging.models import MessageTemplate
from messaging.templating import (
    RECIPIENT_VARIABLES,
    TemplateError,
    message_template_save,
    template_all_variables,
    template_preview,
    template_problems,
)

SAMPLE_PREFIX = "sample."
SAMPLE_MAX = 1000  # characters of one sample value
SOURCE_MAX = 500_000  # characters of subject and HTML sent for a preview


def placeholder(name: str) -> str:
    return "{{" + name + "}}"


class MessageTemplateForm(forms.ModelForm):
    class Meta:
        model = MessageTemplate
        fields = ["name", "channel", "is_enabled", "subject", "html"]
        widgets = {
            "subject": forms.TextInput(attrs={"class": "vLargeTextField"}),
            "html": forms.Textarea(attrs={"rows": 20, "spellcheck": "false"}),
        }
        help_texts = {
            "subject": gettext_lazy(
                "One line. Placeholders like {{first_name}} are filled as written, without "
                "line breaks."
            ),
            "html": gettext_lazy(
                "Placeholders: {{name}}, with letters, digits and underscores. Values are "
                "HTML-escaped. {{userid}} and {{email}} are filled for each recipient."
            ),
        }

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        subject, html = data.get("subject"), data.get("html")
        if subject is not None and html is not None:
            for field, problem in template_problems(subject=subject.strip(), html=html).items():
                self.add_error(field, problem)
        return data


class MessageTemplateAdmin(admin.ModelAdmin):
    form = MessageTemplateForm
    change_form_template = "admin/messaging/messagetemplate/change_form.html"
    list_display = ["name", "scope", "variables_shown", "is_enabled", "usage", "last_used"]
    list_filter = ["is_enabled", ChannelScopeFilter]
    list_select_related = ["channel"]
    search_fields = ["name", "subject"]
    readonly_fields = ["variables_shown", "usage", "last_used", "created_by", "updated_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[MessageTemplate]:
        # One grouped count over the messages' template index, not one count per row.
        return (
            super()
            .get_queryset(request)
            .annotate(usage_count=Count("messages"), last_used_at=Max("messages__created_at"))
        )

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> list:
        fieldsets: list = [
            (None, {"fields": ["name", "channel", "is_enabled"]}),
            (_("Content"), {"fields": ["subject", "html", "variables_shown"]}),
        ]
        if obj is not None:
            fieldsets.append(
                (_("Use"), {"fields": ["usage", "last_used", "created_by", "updated_at"]})
            )
        return fieldsets

    @admin.display(description=gettext_lazy("channel"), ordering="channel__name")
    def scope(self, template: MessageTemplate) -> str:
        return template.channel.name if template.channel else _("Every channel")

    @admin.display(description=gettext_lazy("variables"))
    def variables_shown(self, template: MessageTemplate) -> str:
        given = [placeholder(n) for n in template.variables if n not in RECIPIENT_VARIABLES]
        personal = [placeholder(n) for n in template.variables if n in RECIPIENT_VARIABLES]
        shown = ", ".join(given) or "—"
        if personal:
            shown += " · " + _("per recipient: %(names)s") % {"names": ", ".join(personal)}
        return shown

    @admin.display(description=gettext_lazy("messages sent"), ordering="usage_count")
    def usage(self, template: MessageTemplate) -> str:
        return number_format(getattr(template, "usage_count", 0), force_grouping=True)

    @admin.display(description=gettext_lazy("last used"), ordering="last_used_at")
    def last_used(self, template: MessageTemplate) -> str:
        used = getattr(template, "last_used_at", None)
        return date_format(used, "SHORT_DATETIME_FORMAT") if used else "—"

    def save_model(
        self, request: HttpRequest, obj: MessageTemplate, form: Any, change: bool
    ) -> None:
        message_template_save(template=obj, user=request.user)

    # --- the live preview --------------------------------------------------------------------

    def get_urls(self) -> list:
        preview = self.admin_site.admin_view(self.preview_view)
        return [
            path("preview/", preview, name="messaging_messagetemplate_preview"),
            *super().get_urls(),
        ]

    def preview_view(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_view_permission(request):
            raise PermissionDenied
        subject = request.POST.get("subject", "")[:SOURCE_MAX]
        html = request.POST.get("html", "")[:SOURCE_MAX]
        return JsonResponse(preview_json(subject, html, samples_from(request.POST)))

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: MessageTemplate | None = None,
    ) -> Any:
        form = context["adminform"].form
        # A view-only page's form has no fields: the stored template is shown.
        subject = _value(form, "subject", obj)
        html = _value(form, "html", obj)
        context["preview"] = preview = preview_json(subject, html, {})
        context["preview_samples"] = [
            {"name": name, "shown": placeholder(name)} for name in preview["variables"]
        ]
        context["preview_source"] = {"subject": subject, "html": html}
        context["preview_url"] = reverse("admin:messaging_messagetemplate_preview")
        return super().render_change_form(request, context, add, change, form_url, obj)


def _value(form: forms.Form, name: str, obj: MessageTemplate | None) -> str:
    if name in form.fields:
        return form[name].value() or ""
    return getattr(obj, name, "") if obj is not None else ""


def samples_from(data: Any) -> dict[str, str]:
    return {
        key.removeprefix(SAMPLE_PREFIX): value[:SAMPLE_MAX]
        for key, value in data.items()
        if key.startswith(SAMPLE_PREFIX)
    }


def preview_json(subject: str, html: str, samples: dict[str, str]) -> dict[str, Any]:
    """The preview's answer: what a recipient would see, the variables, and any problems."""
    try:
        shown = template_preview(
            subject=subject,
            html=html,
            samples=samples,
            userid=samples.get("userid", ""),
            email=samples.get("email", ""),
        )
    except TemplateError as exc:  # the filled subject is too long
        return {
            "subject": "",
            "html": "",
            "variables": template_all_variables(subject=subject, html=html),
            "problems": {"subject": exc.message},
        }
    return {
        "subject": shown.subject,
        "html": shown.html,
        "variables": shown.variables,
        "problems": shown.problems,
    }


admin.site.register(MessageTemplate, MessageTemplateAdmin)
