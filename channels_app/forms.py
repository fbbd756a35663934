"""Console forms for channels and senders."""

import json
from typing import Any

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.forms.models import BaseInlineFormSet
from django.utils.translation import gettext_lazy as _

from channels_app import callbacks, services
from channels_app.models import CallbackUrl, EmailSender
from channels_app.presets import PRESETS
from channels_app.smtp import Encryption


class EmailSenderForm(forms.ModelForm):
    preset = forms.ChoiceField(
        label=_("Provider preset"),
        required=False,
        choices=[("", _("— choose to fill in server, port and encryption —"))]
        + [(p["key"], p["label"]) for p in PRESETS],
    )
    password = forms.CharField(
        label=_("Password"),
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=_(
            "Stored encrypted and never shown again; leave blank to keep the current one. "
            "QQ Mail, 163 and 126 need an <em>authorization code</em> (QQ Mail: Settings → "
            "Account → POP3/IMAP/SMTP service), not the login password."
        ),
    )

    class Meta:
        model = EmailSender
        fields = [
            "name",
            "code",
            "is_enabled",
            "account",
            "from_address",
            "from_name",
            "host",
            "port",
            "encryption",
            "trust_self_signed",
            "pinned_fingerprint",
            "port_exception_reason",
            "rate_per_second",
            "rate_per_minute",
            "rate_per_day",
        ]
        help_texts = {
            "rate_per_second": _("Empty: no limit. Kept across all workers and machines."),
            "rate_per_minute": _("Empty: no limit."),
            "rate_per_day": _("Empty: no limit. Set it to the provider's daily quota."),
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A user who may only view senders gets this form without its editable fields.
        if "preset" in self.fields:
            self.fields["preset"].widget.attrs["data-presets"] = json.dumps(
                {p["key"]: {k: p[k] for k in ("host", "port", "encryption")} for p in PRESETS}
            )
        if "port" in self.fields:
            allowed = ", ".join(str(p) for p in sorted(settings.UMS_SMTP_ALLOWED_PORTS))
            self.fields["port"].help_text = _(
                "Allowed: %(ports)s. Any other port needs a justification and an approval."
            ) % {"ports": allowed}
        if "password" in self.fields and self.instance.pk and self.instance.has_password:
            self.fields["password"].widget.attrs["placeholder"] = _("(unchanged)")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        account = data.get("account", "")
        if account and not data.get("password") and not self.instance.has_password:
            self.add_error(
                "password", _("Enter the password (or authorization code) for this account.")
            )
        if not account and data.get("encryption") not in (None, Encryption.NONE):
            self.add_error("account", _("An account is required unless encryption is none."))
        port = data.get("port")
        if port and port not in settings.UMS_SMTP_ALLOWED_PORTS:
            if not (data.get("port_exception_reason") or "").strip():
                self.add_error(
                    "port_exception_reason",
                    _("Port %(port)s is not in the allowed list: explain why this sender needs it.")
                    % {"port": port},
                )
        if data.get("host") and port and not self.errors.get("host"):
            try:
                services.sender_validate_host(host=data["host"], port=port)
            except ValidationError as exc:
                self.add_error(None, exc)
        return data


class ChannelSenderFormSet(BaseInlineFormSet):
    """A channel with authorized senders has exactly one default among them."""

    def clean(self) -> None:
        super().clean()
        rows = [
            form.cleaned_data
            for form in self.forms
            if form.cleaned_data and not form.cleaned_data.get("DELETE")
        ]
        defaults = sum(1 for row in rows if row.get("is_default"))
        if rows and defaults != 1:
            raise ValidationError(_("Mark exactly one authorized sender as the default."))


class CallbackUrlForm(forms.ModelForm):
    url = forms.URLField(
        label=_("URL"),
        max_length=500,
        assume_scheme="https",
        widget=forms.URLInput(attrs={"size": 60}),
    )

    class Meta:
        model = CallbackUrl
        fields = ["url", "position"]

    def clean_url(self) -> str:
        url = self.cleaned_data["url"].strip()
        callbacks.callback_url_validate(url)
        return url


class CallbackUrlFormSet(BaseInlineFormSet):
    """At most CallbackUrl.MAX_PER_CHANNEL URLs, each once."""

    def clean(self) -> None:
        super().clean()
        urls = [
            form.cleaned_data["url"]
            for form in self.forms
            if form.cleaned_data.get("url") and not form.cleaned_data.get("DELETE")
        ]
        if len(urls) > CallbackUrl.MAX_PER_CHANNEL:
            raise ValidationError(
                _("A channel has at most %(max)d callback URLs.")
                % {"max": CallbackUrl.MAX_PER_CHANNEL}
            )


class SendTestEmailForm(forms.Form):
    recipient = forms.EmailField(label=_("Send the test email to"))


class ConfirmForm(forms.Form):
    """A POST with a CSRF token: destructive or logged actions are never a plain GET."""
