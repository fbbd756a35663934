from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ChannelsAppConfig(AppConfig):
    name = "channels_app"
    verbose_name = _("Channels and senders")

    def ready(self) -> None:
        # The sending strategies' pages live apart from channels_app/admin.py.
        from channels_app import admin_rules  # noqa: F401
