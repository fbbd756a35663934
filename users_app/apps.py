from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class UsersAppConfig(AppConfig):
    """Users and their email bindings per channel (the upload and the user API)."""

    name = "users_app"
    verbose_name = _("Users and email bindings")
