"""The compose form: what the author typed, cleaned into DraftFields for the draft services."""

from typing import Any

from django import forms
from django.conf import settings
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from channels_app.models import Channel
from channels_app.selectors import channels_for_console_sender
from messaging.api.send_request import FROM_NAME_MAX, MAX_FILES, SUBJECT_MAX
from messaging.compose import recipients
from messaging.drafts import AudienceKind, DraftFields, Mode, compose_problems
from messaging.models import Draft, Material, Message
from ums.formats import size_label
from users_app.validation import FieldError, clean_email

DATETIME_LOCAL = "%Y-%m-%dT%H:%M"


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """Any number of files from one input (Django's FileField takes one)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("widget", MultipleFileInput())
        super().__init__(*args, **kwargs)

    def clean(self, data: Any, initial: Any = None) -> list[Any]:
        single = super().clean
        if isinstance(data, list | tuple):
            return [single(item, initial) for item in data if item]
        return [single(data, initial)] if data else []


class ChannelChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Channel) -> str:
        return obj.name


class ComposeForm(forms.Form):
    channel = ChannelChoiceField(
        label=gettext_lazy("Channel"),
        queryset=Channel.objects.none(),
        required=False,
        empty_label=gettext_lazy("Choose a channel"),
    )
    audience_kind = forms.ChoiceField(
        label=gettext_lazy("Send to"),
        choices=AudienceKind.choices,
        initial=AudienceKind.USERID,
        widget=forms.RadioSelect,
    )
    userids = forms.CharField(
        label=gettext_lazy("Userids"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false"}),
        help_text=gettext_lazy("Separated by line breaks, commas or spaces."),
    )
    userid_file = forms.FileField(
        label=gettext_lazy("or a file of userids"),
        required=False,
        help_text=gettext_lazy(
            "An .xlsx or .csv file with one userid a row in its first column; a header row "
            "named userid is skipped. Its userids are added to those typed above."
        ),
    )
    tags = forms.CharField(
        label=gettext_lazy("Tags"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text=gettext_lazy(
            "Users with any of these tags (up to 20), separated by line breaks or commas."
        ),
    )
    emails = forms.CharField(
        label=gettext_lazy("Email addresses"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false"}),
        help_text=gettext_lazy("Separated by line breaks, commas or spaces."),
    )
    subject = forms.CharField(label=gettext_lazy("Subject"), required=False, max_length=SUBJECT_MAX)
    from_name = forms.CharField(
        label=gettext_lazy("Display name"),
        required=False,
        max_length=FROM_NAME_MAX,
        help_text=gettext_lazy("Shown as the sender's name; empty: the email sender's own."),
    )
    reply_to = forms.CharField(label=gettext_lazy("Reply to"), required=False, max_length=254)
    html = forms.CharField(
        label=gettext_lazy("Body (HTML)"),
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 18, "spellcheck": "false"}),
        help_text=gettext_lazy("The plain-text part is derived from it."),
    )
    attachments = MultipleFileField(label=gettext_lazy("Attach files"), required=False)
    remove_materials = forms.ModelMultipleChoiceField(
        label=gettext_lazy("Remove"),
        queryset=Material.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
    )
    priority = forms.TypedChoiceField(
        label=gettext_lazy("Priority"),
        choices=Message.Priority.choices,
        coerce=int,
        initial=Message.Priority.MEDIUM,
    )
    send_at = forms.DateTimeField(
        label=gettext_lazy("Send at"),
        required=False,
        input_formats=[DATETIME_LOCAL, "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"],
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format=DATETIME_LOCAL),
    )

    def __init__(
        self,
        *args: Any,
        user: Any,
        draft: Draft | None = None,
        mode: str = Mode.SAVE,
        **kwargs: Any,
    ) -> None:
        if draft is not None and not args and "initial" not in kwargs:
            kwargs["initial"] = draft_initial(draft)
        super().__init__(*args, **kwargs)
        self.user, self.draft, self.mode = user, draft, mode
        self.fields["channel"].queryset = channels_for_console_sender(user=user).order_by("name")
        self.materials = list(draft.materials.order_by("name")) if draft else []
        self.fields["remove_materials"].queryset = Material.objects.filter(
            pk__in=[m.pk for m in self.materials]
        )
        self.fields["send_at"].help_text = _("Empty: at once. Time zone: %(zone)s.") % {
            "zone": timezone.get_current_timezone_name()
        }
        self.fields["attachments"].help_text = _(
            "Up to %(count)d files of %(size)s each; they are kept with the draft."
        ) % {"count": MAX_FILES, "size": size_label(settings.UMS_MATERIAL_MAX_BYTES)}

    def clean_subject(self) -> str:
        return _one_line(self.cleaned_data["subject"].strip())

    def clean_from_name(self) -> str:
        return _one_line(self.cleaned_data["from_name"].strip())

    def clean_reply_to(self) -> str:
        value = self.cleaned_data["reply_to"].strip()
        if not value:
            return ""
        try:
            return clean_email(value)
        except FieldError as exc:
            raise forms.ValidationError(exc.message) from None

    def clean_attachments(self) -> list[Any]:
        uploads = self.cleaned_data["attachments"]
        limit = settings.UMS_MATERIAL_MAX_BYTES
        for upload in uploads:
            if upload.size > limit:
                raise forms.ValidationError(
                    _("%(name)s is larger than %(size)s.")
                    % {"name": upload.name, "size": size_label(limit)}
                )
        return uploads

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        data["audience_values"] = self._audience_values(data.get("audience_kind"))
        kept = [m for m in self.materials if m not in data.get("remove_materials", [])]
        if len(kept) + len(data.get("attachments") or []) > MAX_FILES:
            self.add_error("attachments", _("At most %(max)d files.") % {"max": MAX_FILES})
        if data.get("attachments") and not data.get("channel"):
            self.add_error("channel", _("Choose the channel before attaching files."))
        if not self.errors:
            problems = compose_problems(
                user=self.user, fields=self.draft_fields(), materials=kept, mode=self.mode
            )
            for field, message in problems.items():
                self.add_error(self._field_of(field), message)
        return data

    def _audience_values(self, kind: str | None) -> tuple[str, ...]:
        """The chosen kind's recipients; what the other boxes hold is not looked at."""
        field = {
            AudienceKind.USERID: "userids",
            AudienceKind.TAG: "tags",
            AudienceKind.EMAIL: "emails",
        }.get(kind)
        if field is None:
            return ()
        try:
            return self._clean_audience(kind)
        except recipients.RecipientsRefused as exc:
            self.add_error(field, exc.message)
            return ()

    def _clean_audience(self, kind: str) -> tuple[str, ...]:
        data = self.cleaned_data
        if kind == AudienceKind.TAG:
            return recipients.clean_tags(data.get("tags", ""))
        if kind == AudienceKind.EMAIL:
            return recipients.clean_emails(data.get("emails", ""))
        typed = recipients.clean_userids(data.get("userids", ""))
        if not data.get("userid_file"):
            return typed
        try:
            from_file = recipients.userids_from_file(data["userid_file"])
        except recipients.RecipientsRefused as exc:
            self.add_error("userid_file", exc.message)
            return typed
        userids = tuple(dict.fromkeys(typed + from_file))
        if len(userids) > recipients.MAX_USERIDS:
            raise recipients.RecipientsRefused(
                _("At most %(max)d userids.") % {"max": recipients.MAX_USERIDS}
            )
        return userids

    def _field_of(self, problem: str) -> str | None:
        if problem == "audience":
            return {
                AudienceKind.TAG: "tags",
                AudienceKind.EMAIL: "emails",
                AudienceKind.ALL: "audience_kind",
            }.get(self.cleaned_data.get("audience_kind"), "userids")
        return problem or None

    def draft_fields(self) -> DraftFields:
        data = self.cleaned_data
        return DraftFields(
            channel=data.get("channel"),
            audience_kind=data.get("audience_kind") or AudienceKind.USERID,
            audience_values=data.get("audience_values", ()),
            subject=data.get("subject", ""),
            html=data.get("html", ""),
            from_name=data.get("from_name", ""),
            reply_to=data.get("reply_to", ""),
            priority=data.get("priority") or Message.Priority.MEDIUM,
            send_at=data.get("send_at"),
        )


def _one_line(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise forms.ValidationError(_("Line breaks are not allowed."))
    return value


def draft_initial(draft: Draft) -> dict[str, Any]:
    audience = draft.audience or {}
    kind = audience.get("kind") or AudienceKind.USERID
    values = "\n".join(audience.get("values") or [])
    box = {AudienceKind.TAG: "tags", AudienceKind.EMAIL: "emails"}.get(kind, "userids")
    return {
        "channel": draft.channel_id,
        "audience_kind": kind,
        box: values,
        "subject": draft.subject,
        "from_name": draft.from_name,
        "reply_to": draft.reply_to,
        "html": draft.html,
        "priority": draft.priority,
        "send_at": timezone.localtime(draft.send_at) if draft.send_at else None,
    }
