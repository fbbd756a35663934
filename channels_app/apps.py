from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ChannelsAppConfig(AppConfig):
    name = "channels_app"
    verbose_name = _("Channels and senders")

    def ready(self) -> None:
        # The sending strategies' pages live apart from channels_app/admin.py; the rate
        # limiter registers its system check.
        from channels_app import admin_rules, ratelimit  # noqa: F401
