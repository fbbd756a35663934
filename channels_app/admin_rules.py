"""Console pages for sending strategies (`rule_id`): a thin UI over channels_app.rules.

Registered from ChannelsAppConfig.ready(), apart from channels_app/admin.py.
"""

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse
from django.utils.translation import gettext_lazy

from channels_app import rules
from channels_app.models import ChannelSender, EmailSender, SendingRule, SendingRuleStep


class SendingRuleStepFormSet(BaseInlineFormSet):
    """The strategy's senders in the order of their numbers (ties: as listed on the page)."""

    def get_form_kwargs(self, index: int | None) -> dict[str, Any]:
        kwargs = super().get_form_kwargs(index)
        # A row added at the bottom comes after the senders already listed (the page numbers
        # the rows that "Add another" clones from the blank form).
        if index is None:
            kwargs["initial"] = {"position": self.total_form_count() + 1}
        elif index >= self.initial_form_count():
            kwargs["initial"] = {"position": index + 1}
        return kwargs

    def ordered_senders(self) -> list[EmailSender]:
        rows = [
            (form.cleaned_data.get("position") or 0, index, form.cleaned_data["sender"])
            for index, form in enumerate(self.forms)
            if form.cleaned_data.get("sender") and not form.cleaned_data.get("DELETE")
        ]
        return [sender for _position, _index, sender in sorted(rows, key=lambda r: r[:2])]

    def clean(self) -> None:
        super().clean()
        if any(self.errors) or not self.instance.channel_id:
            return  # the rows' own errors, or the channel's, are shown first
        try:
            rules.rule_validate_senders(
                channel=self.instance.channel, senders=self.ordered_senders()
            )
        except ValidationError as exc:
            raise ValidationError(exc.messages) from exc


class SendingRuleStepInline(admin.TabularInline):
    model = SendingRuleStep
    formset = SendingRuleStepFormSet
    fields = ["position", "sender"]
    min_num = 1
    verbose_name = gettext_lazy("sender")
    verbose_name_plural = gettext_lazy("senders, tried in this order")

    def get_extra(self, request: HttpRequest, obj: SendingRule | None = None, **kwargs: Any) -> int:
        return 0 if obj is not None else 1

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Whoever may see a strategy may see its senders.
        return super().has_view_permission(request, obj) or request.user.has_perm(
            "channels_app.view_sendingrule"
        )

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "sender":
            kwargs["queryset"] = _sender_choices(request)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_dbfield(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if db_field.name == "sender" and field is not None:
            # A sender made or edited from here would not be authorized to the channel yet.
            field.widget.can_add_related = False
            field.widget.can_change_related = False
            field.widget.can_delete_related = False
        return field


def _sender_choices(request: HttpRequest) -> Any:
    """Senders authorized to the strategy's channel (on the add page: to any channel; the page
    narrows them to the chosen channel and the formset checks them again)."""
    rule = getattr(request, "_ums_sending_rule", None)
    senders = EmailSender.objects.filter(authorizations__isnull=False)
    if rule is not None:
        senders = EmailSender.objects.filter(authorizations__channel_id=rule.channel_id)
    return senders.distinct().order_by("name")


class SendingRuleForm(forms.ModelForm):
    class Meta:
        model = SendingRule
        fields = ["channel", "rule_id", "name", "is_enabled"]
        labels = {"rule_id": "rule_id"}  # the API's field name, as callers write it


@admin.register(SendingRule)
class SendingRuleAdmin(admin.ModelAdmin):
    form = SendingRuleForm
    list_display = ["rule_id", "name", "channel", "is_enabled", "sender_order"]
    list_display_links = ["rule_id", "name"]
    list_filter = ["channel", "is_enabled"]
    list_select_related = ["channel"]
    search_fields = ["name", "channel__name"]
    ordering = ["channel__name", "rule_id"]
    fields = ["channel", "rule_id", "name", "is_enabled"]
    inlines = [SendingRuleStepInline]

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).prefetch_related("steps__sender")

    def get_readonly_fields(self, request: HttpRequest, obj: SendingRule | None = None) -> Any:
        # A strategy's senders are authorized to its channel: moving it would break them.
        return ["channel"] if obj is not None else []

    def get_object(self, request: HttpRequest, object_id: str, from_field: Any = None) -> Any:
        rule = super().get_object(request, object_id, from_field)
        request._ums_sending_rule = rule
        return rule

    @admin.display(description=gettext_lazy("senders, in order"))
    def sender_order(self, rule: SendingRule) -> str:
        return " → ".join(step.sender.name for step in rule.steps.all()) or "—"

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        if not isinstance(formset, SendingRuleStepFormSet):
            super().save_formset(request, form, formset, change)
            return
        formset.save(commit=False)  # only records what changed, for the history
        rules.rule_set_senders(rule=form.instance, senders=formset.ordered_senders())

    def render_change_form(
        self, request: HttpRequest, context: dict, *args: Any, **kwargs: Any
    ) -> HttpResponse:
        if kwargs.get("obj") is None:
            context["rule_channel_senders"] = _authorizations_by_channel()
        return super().render_change_form(request, context, *args, **kwargs)


def _authorizations_by_channel() -> dict[str, list[int]]:
    """Channel id → its authorized senders' ids, for the add page to narrow the choices."""
    mapping: dict[str, list[int]] = {}
    for channel_id, sender_id in ChannelSender.objects.values_list("channel_id", "sender_id"):
        mapping.setdefault(str(channel_id), []).append(sender_id)
    return mapping
