from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class UmsConfig(AppConfig):
    name = "ums"
    verbose_name = _("UMS Email")

    def ready(self) -> None:
        from ums import checks  # noqa: F401  (registers the system checks)
