"""The compose page as the admin of drafts: add composes a new email, change reopens a draft.

Only staff who may send (messaging.add_message) see it, and each sees only their own drafts
(a superuser sees everyone's).
"""

from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.urls import path
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST

from messaging import drafts
from messaging.compose import views
from messaging.compose.selectors import can_compose, drafts_visible_to
from messaging.models import Draft


class DraftAdmin(admin.ModelAdmin):
    list_display = ["title", "channel", "recipients", "send_at", "updated_at"]
    list_display_links = ["title"]
    list_select_related = ["channel", "created_by"]
    search_fields = ["subject"]
    ordering = ["-updated_at"]

    @admin.display(description=gettext_lazy("subject"), ordering="subject")
    def title(self, draft: Draft) -> str:
        return str(draft)

    @admin.display(description=gettext_lazy("recipients"))
    def recipients(self, draft: Draft) -> str:
        return views.audience_summary(draft)

    def get_list_display(self, request: HttpRequest) -> list[str]:
        if request.user.is_superuser:
            return [*self.list_display, "created_by"]
        return self.list_display

    def get_queryset(self, request: HttpRequest) -> QuerySet[Draft]:
        return drafts_visible_to(user=request.user)

    # --- who may do what -------------------------------------------------------------------

    def _owns(self, request: HttpRequest, draft: Draft | None) -> bool:
        user = request.user
        return draft is None or user.is_superuser or draft.created_by_id == user.pk

    def has_module_permission(self, request: HttpRequest) -> bool:
        return can_compose(request.user) and super().has_module_permission(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return can_compose(request.user) and super().has_add_permission(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_change_permission(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return (
            can_compose(request.user)
            and super().has_change_permission(request, obj)
            and self._owns(request, obj)
        )

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return (
            can_compose(request.user)
            and super().has_delete_permission(request, obj)
            and self._owns(request, obj)
        )

    # --- pages -----------------------------------------------------------------------------

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("<int:pk>/review/", wrap(self.review_view), name="messaging_draft_review"),
            path("<int:pk>/send/", wrap(self.send_view), name="messaging_draft_send"),
            path("plain-text/", wrap(self.plain_text_view), name="messaging_draft_plain_text"),
            path(
                "template-fill/",
                wrap(self.template_fill_view),
                name="messaging_draft_template_fill",
            ),
            *super().get_urls(),
        ]

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> Any:
        title = _("Drafts") if request.user.is_superuser else _("Your drafts")
        return super().changelist_view(request, {"title": title, **(extra_context or {})})

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        return views.compose(self, request, None)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict | None = None,
    ) -> HttpResponse:
        return views.compose(self, request, self._draft(request, unquote(object_id)))

    def review_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        return views.review(self, request, self._draft(request, pk))

    def send_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_change_permission(request):
            raise PermissionDenied
        draft = self.get_object(request, str(pk))
        if draft is None:  # sent by the first of two presses, or deleted
            return views.already_sent(request)
        return views.send(self, request, draft)

    def plain_text_view(self, request: HttpRequest) -> HttpResponse:
        if not can_compose(request.user):
            raise PermissionDenied
        return require_POST(views.plain_text)(request)

    def template_fill_view(self, request: HttpRequest) -> HttpResponse:
        if not can_compose(request.user) or not request.user.has_perm(
            "messaging.view_messagetemplate"
        ):
            raise PermissionDenied
        return require_POST(views.template_fill)(request)

    def _draft(self, request: HttpRequest, object_id: Any) -> Draft:
        """The user's own draft (a superuser's: any), or 404; 403 for who may not compose."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        draft = self.get_object(request, str(object_id))
        if draft is None:
            raise Http404(_("No such draft."))
        return draft

    def delete_model(self, request: HttpRequest, obj: Draft) -> None:
        drafts.draft_delete(draft=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Draft]) -> None:
        for draft in queryset:
            drafts.draft_delete(draft=draft)


admin.site.register(Draft, DraftAdmin)
