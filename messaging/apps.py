from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class MessagingConfig(AppConfig):
    name = "messaging"
    verbose_name = _("Messaging")

    def ready(self) -> None:
        # The compose page registers the drafts' admin; it lives apart from messaging/admin.py.
        import messaging.admin_callbacks  # noqa: F401
        from messaging import admin_lists  # noqa: F401
        from messaging import admin_templates as _templates  # noqa: F401
        from messaging.compose import admin  # noqa: F401
