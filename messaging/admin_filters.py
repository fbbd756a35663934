"""List filters shared by the console pages of things that belong to one channel or to all."""

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from channels_app.models import Channel


class ChannelScopeFilter(admin.SimpleListFilter):
    """One channel's rows, or those for every channel (no channel set)."""

    title = gettext_lazy("channel")
    parameter_name = "scope"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        channels = Channel.objects.order_by("name").values_list("pk", "name")
        return [("all", _("Every channel"))] + [(str(pk), name) for pk, name in channels]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if not value:
            return queryset
        if value == "all":
            return queryset.filter(channel__isnull=True)
        return queryset.filter(channel_id=value) if value.isdigit() else queryset.none()
