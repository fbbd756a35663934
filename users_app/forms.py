"""Console forms for users and uploads."""

from pathlib import Path
from typing import Any

from django import forms
from django.conf import settings
from django.utils.translation import gettext_lazy as _

from channels_app.models import Channel
from ums.formats import size_label
from users_app.models import ALL_SCOPE


def scope_choices() -> list[tuple[str, str]]:
    channels = Channel.objects.order_by("name").values_list("channel_key", "name")
    return [(ALL_SCOPE, _("all (every channel)"))] + [
        (key, f"{name} ({key})") for key, name in channels
    ]


class UploadForm(forms.Form):
    file = forms.FileField(
        label=_("Spreadsheet"),
        help_text=_(
            "An .xlsx or .csv file whose first row names the columns userid and email, and "
            "optionally bind_id and tag."
        ),
    )
    default_bind_id = forms.ChoiceField(
        label=_("Bind to"),
        help_text=_("Used for rows whose bind_id cell is empty."),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["default_bind_id"].choices = scope_choices()

    def clean_file(self) -> Any:
        upload = self.cleaned_data["file"]
        if Path(upload.name).suffix.lower() not in (".xlsx", ".csv"):
            raise forms.ValidationError(_("Upload an .xlsx or .csv file."))
        if upload.size > settings.UMS_IMPORT_MAX_BYTES:
            raise forms.ValidationError(
                _("The file is larger than the limit of %(size)s.")
                % {"size": size_label(settings.UMS_IMPORT_MAX_BYTES)}
            )
        return upload


class ScopedForm(forms.ModelForm):
    """Inline rows choose their scope from `all` and the channels."""

    bind_id = forms.ChoiceField(label=_("bind_id"))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["bind_id"].choices = scope_choices()
