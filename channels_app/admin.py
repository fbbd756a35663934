"""Console pages for channels, email senders and access keys: a thin UI over the services."""

from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.cache import add_never_cache_headers
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext
from django.views.decorators.debug import sensitive_post_parameters
from kombu.exceptions import OperationalError

from channels_app import callbacks, services, tasks
from channels_app.forms import (
    CallbackUrlForm,
    CallbackUrlFormSet,
    ChannelSenderFormSet,
    ConfirmForm,
    EmailSenderForm,
    SendTestEmailForm,
)
from channels_app.models import AccessKey, CallbackUrl, Channel, ChannelSender, EmailSender


class ChannelSenderInline(admin.TabularInline):
    model = ChannelSender
    formset = ChannelSenderFormSet
    extra = 0
    fields = ["sender", "is_default"]
    autocomplete_fields = ["sender"]
    verbose_name = gettext_lazy("authorized email sender")
    verbose_name_plural = gettext_lazy("authorized email senders")


class CallbackUrlInline(admin.TabularInline):
    """The channel's callback URLs, each with its verification state and a Verify button."""

    model = CallbackUrl
    form = CallbackUrlForm
    formset = CallbackUrlFormSet
    extra = 0
    max_num = CallbackUrl.MAX_PER_CHANNEL
    fields = ["url", "position", "verification", "verify_button"]
    readonly_fields = ["verification", "verify_button"]
    verbose_name = gettext_lazy("callback URL")
    verbose_name_plural = gettext_lazy(
        "callback URLs (at most 5; the verified one with the lowest position is the default)"
    )

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list:
        fields = super().get_fields(request, obj)
        if not request.user.has_perm("channels_app.change_callbackurl"):
            return [name for name in fields if name != "verify_button"]
        return fields

    @admin.display(description=gettext_lazy("verification"))
    def verification(self, callback_url: CallbackUrl) -> str:
        if not callback_url.pk:
            return _("Save the channel, then verify the URL.")
        if callback_url.verified_at:
            default = callbacks.callback_url_default(channel=callback_url.channel)
            text = _("Verified on %(when)s.") % {
                "when": date_format(callback_url.verified_at, "DATETIME_FORMAT")
            }
            if default is not None and default.pk == callback_url.pk:
                text = f"{text} {_('The default URL.')}"
            return format_html('<span style="color:#2e7d32">●</span> {}', text)
        if callback_url.verification_error:
            return format_html(
                '<span style="color:#c62828">●</span> {} {}',
                _("Not verified, not used:"),
                callback_url.verification_error,
            )
        return format_html(
            '<span style="color:#757575">●</span> {}', _("Not verified yet, not used: verify it.")
        )

    @admin.display(description="")
    def verify_button(self, callback_url: CallbackUrl) -> str:
        if not callback_url.pk:
            return ""
        url = reverse(
            "admin:channels_app_channel_verify_callback",
            args=[callback_url.channel_id, callback_url.pk],
        )
        return format_html('<a class="button" href="{}">{}</a>', url, _("Verify"))


@admin.register(Channel)
class ChannelAdmin(admin.ModelAdmin):
    list_display = ["name", "channel_key", "status", "default_sender", "created_at"]
    list_filter = ["status"]
    search_fields = ["name", "channel_key"]
    readonly_fields = ["channel_key", "master_secret", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["name", "channel_key", "master_secret", "status", "description"]}),
        (None, {"fields": ["members"]}),
        (
            gettext_lazy("Marketing mail and suppression"),
            {"fields": ["is_marketing", "suppress_on_permanent_failure"]},
        ),
        (gettext_lazy("API limits"), {"fields": ["api_rate_per_minute", "daily_broadcast_quota"]}),
        (None, {"fields": ["created_at", "updated_at"]}),
    ]
    filter_horizontal = ["members"]
    inlines = [ChannelSenderInline, CallbackUrlInline]

    def get_inlines(self, request: HttpRequest, obj: Channel | None) -> list:
        # Callback URLs are verified with the channel's credentials: they need a saved channel.
        if obj is None:
            return [ChannelSenderInline]
        return self.inlines

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).prefetch_related("authorizations__sender")

    def formfield_for_manytomany(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "members":
            kwargs["queryset"] = get_user_model().objects.filter(is_staff=True, is_active=True)
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    @admin.display(description=gettext_lazy("default sender"))
    def default_sender(self, channel: Channel) -> str:
        for authorization in channel.authorizations.all():
            if authorization.is_default:
                return authorization.sender.name
        return "—"

    @admin.display(description=gettext_lazy("MasterSecret"))
    def master_secret(self, channel: Channel) -> str:
        if not channel.pk:
            return _("Generated when the channel is saved, and shown once.")
        return _("Hidden. Channel admins can show or reset it with the buttons above.")

    def render_change_form(
        self, request: HttpRequest, context: dict, *args: Any, **kwargs: Any
    ) -> HttpResponse:
        context["can_manage_secret"] = bool(kwargs.get("obj")) and self.has_secret_permission(
            request
        )
        return super().render_change_form(request, context, *args, **kwargs)

    def has_secret_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("channels_app.view_master_secret")

    def save_model(self, request: HttpRequest, obj: Channel, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
        else:
            request._ums_new_secret = services.channel_save_new(channel=obj)

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        if formset.model is not CallbackUrl:
            super().save_formset(request, form, formset, change)
            return
        saved = formset.save(commit=False)
        for callback_url in formset.deleted_objects:  # first: they make room for new ones
            callback_url.delete()
        for callback_url in saved:
            callbacks.callback_url_save(callback_url=callback_url)

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        """The confirmation also counts the bindings and tags scoped to the channels' keys."""
        from users_app.selectors import scope_counts

        deleted, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        counts = [scope_counts(bind_id=channel.channel_key) for channel in objs]
        model_count[_("email bindings of the channel")] = sum(c["bindings"] for c in counts)
        model_count[_("tags of the channel")] = sum(c["tags"] for c in counts)
        return deleted, model_count, perms_needed, protected

    def delete_model(self, request: HttpRequest, obj: Channel) -> None:
        services.channel_delete(channel=obj)

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        for channel in queryset:
            services.channel_delete(channel=channel)

    def response_add(
        self, request: HttpRequest, obj: Channel, post_url_continue: Any = None
    ) -> HttpResponse:
        secret = getattr(request, "_ums_new_secret", None)
        if secret is None:
            return super().response_add(request, obj, post_url_continue)
        return self._secret_page(request, obj, secret, _("Channel created"))

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path(
                "<int:pk>/secret/",
                wrap(self.reveal_secret_view),
                name="channels_app_channel_secret",
            ),
            path(
                "<int:pk>/secret/reset/",
                wrap(self.reset_secret_view),
                name="channels_app_channel_secret_reset",
            ),
            path(
                "<int:pk>/callback-urls/<int:url_pk>/verify/",
                wrap(self.verify_callback_view),
                name="channels_app_channel_verify_callback",
            ),
            *super().get_urls(),
        ]

    def verify_callback_view(self, request: HttpRequest, pk: int, url_pk: int) -> HttpResponse:
        callback_url = get_object_or_404(
            CallbackUrl.objects.select_related("channel"), pk=url_pk, channel_id=pk
        )
        if not request.user.has_perm("channels_app.change_callbackurl"):
            raise PermissionDenied
        if request.method == "POST" and ConfirmForm(request.POST).is_valid():
            callbacks.callback_url_verify(callback_url=callback_url)
            if callback_url.verified_at:
                messages.success(
                    request,
                    _("%(url)s is verified: it answered with the echostr.")
                    % {"url": callback_url.url},
                )
            else:
                messages.error(
                    request,
                    _("%(url)s is not verified and will not be used. %(error)s")
                    % {"url": callback_url.url, "error": callback_url.verification_error},
                )
            change_page = reverse("admin:channels_app_channel_change", args=[pk])
            return HttpResponseRedirect(f"{change_page}#callback_urls-group")
        return self._confirm_page(
            request,
            callback_url.channel,
            title=_("Verify %(url)s?") % {"url": callback_url.url},
            text=_(
                "This server sends GET %(url)s?echostr=<random value>, authenticated with the "
                "channel's ChannelKey and MasterSecret (HTTP Basic). The URL passes if it "
                "answers HTTP 200 with exactly that value as its body; only verified URLs "
                "receive status records."
            )
            % {"url": callback_url.url},
            button=_("Verify"),
        )

    def reveal_secret_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        channel = self._secret_channel(request, pk)
        if request.method == "POST" and ConfirmForm(request.POST).is_valid():
            secret = services.channel_reveal_secret(channel=channel, user=request.user)
            return self._secret_page(request, channel, secret, _("MasterSecret"))
        return self._confirm_page(
            request,
            channel,
            title=_("Show the MasterSecret of %(name)s?") % {"name": channel.name},
            text=_("Revealing the secret is recorded in the channel's history."),
            button=_("Show secret"),
        )

    def reset_secret_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        channel = self._secret_channel(request, pk)
        if request.method == "POST" and ConfirmForm(request.POST).is_valid():
            secret = services.channel_reset_secret(channel=channel, user=request.user)
            return self._secret_page(request, channel, secret, _("New MasterSecret"))
        return self._confirm_page(
            request,
            channel,
            title=_("Reset the MasterSecret of %(name)s?") % {"name": channel.name},
            text=_(
                "A new secret is generated and the current one stops working at once: every "
                "system calling the API with it must be updated."
            ),
            button=_("Reset secret"),
        )

    def _secret_channel(self, request: HttpRequest, pk: int) -> Channel:
        channel = get_object_or_404(Channel, pk=pk)
        if not self.has_secret_permission(request):
            raise PermissionDenied
        return channel

    def _secret_page(
        self, request: HttpRequest, channel: Channel, secret: str, title: str
    ) -> HttpResponse:
        response = TemplateResponse(
            request,
            "admin/channels_app/channel/secret.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "original": channel,
                "title": title,
                "channel": channel,
                "secret": secret,
            },
        )
        add_never_cache_headers(response)
        return response

    def _confirm_page(
        self, request: HttpRequest, obj: Any, *, title: str, text: str, button: str
    ) -> HttpResponse:
        return TemplateResponse(
            request,
            "admin/ums_confirm.html",
            {
                **self.admin_site.each_context(request),
                "opts": obj._meta,
                "original": obj,
                "title": title,
                "text": text,
                "button": button,
            },
        )


# Read-only fields that report on a sender; the add page leaves them out.
STATE_FIELDS = (
    "port_exception_state",
    "health",
    "health_checked_at",
    "health_error",
    "created_at",
    "updated_at",
)


@admin.register(EmailSender)
class EmailSenderAdmin(admin.ModelAdmin):
    form = EmailSenderForm
    list_display = [
        "name",
        "code",
        "server",
        "encryption",
        "is_enabled",
        "port_state",
        "health_badge",
    ]
    list_filter = ["is_enabled", "health", "encryption"]
    search_fields = ["name", "code", "host", "from_address", "account"]
    actions = ["check_selected"]
    readonly_fields = STATE_FIELDS
    fieldsets = [
        (None, {"fields": ["preset", "name", "code", "is_enabled"]}),
        (
            gettext_lazy("SMTP account (the six items)"),
            {
                "fields": [
                    "account",
                    "password",
                    ("from_address", "from_name"),
                    "host",
                    "port",
                    "encryption",
                ]
            },
        ),
        (
            gettext_lazy("Certificate"),
            {"fields": ["trust_self_signed", "pinned_fingerprint"], "classes": ["collapse"]},
        ),
        (
            gettext_lazy("Sending limits"),
            {
                "fields": ["rate_per_second", "rate_per_minute", "rate_per_day"],
                "description": gettext_lazy(
                    "The provider's quota, kept across all workers and machines. "
                    "Empty fields: no limit."
                ),
            },
        ),
        (
            gettext_lazy("Port exception"),
            {"fields": ["port_exception_reason", "port_exception_state"]},
        ),
        (gettext_lazy("Health"), {"fields": ["health", "health_checked_at", "health_error"]}),
        (None, {"fields": ["created_at", "updated_at"]}),
    ]

    class Media:
        js = ["channels_app/sender_presets.js"]

    def get_fieldsets(self, request: HttpRequest, obj: EmailSender | None = None) -> Any:
        if obj is not None:
            return super().get_fieldsets(request, obj)
        # Nothing to report about a sender that does not exist yet.
        return [
            (title, {**options, "fields": [f for f in options["fields"] if f not in STATE_FIELDS]})
            for title, options in self.fieldsets
            if not set(options["fields"]) <= set(STATE_FIELDS)
        ]

    @admin.display(description=gettext_lazy("server"))
    def server(self, sender: EmailSender) -> str:
        return f"{sender.host}:{sender.port}"

    @admin.display(description=gettext_lazy("port"))
    def port_state(self, sender: EmailSender) -> str:
        if sender.port_allowed:
            return _("allowed")
        return _("exception approved") if sender.port_exception_approved else _("awaiting approval")

    @admin.display(description=gettext_lazy("port exception"))
    def port_exception_state(self, sender: EmailSender) -> str:
        if sender.port_allowed:
            return _("Not needed: the port is in the allowed list.")
        if sender.port_exception_approved and sender.port_exception_approved_by is None:
            return _("Approved on the command line on %(when)s.") % {
                "when": date_format(sender.port_exception_approved_at, "DATETIME_FORMAT")
            }
        if sender.port_exception_approved:
            return _("Approved by %(user)s on %(when)s.") % {
                "user": sender.port_exception_approved_by,
                "when": date_format(sender.port_exception_approved_at, "DATETIME_FORMAT"),
            }
        return _("Awaiting approval: the sender cannot be used until it is approved.")

    @admin.display(description=gettext_lazy("health"), ordering="health")
    def health_badge(self, sender: EmailSender) -> str:
        colours = {"ok": "#2e7d32", "failed": "#c62828", "unknown": "#757575"}
        checked = (
            date_format(sender.health_checked_at, "DATETIME_FORMAT")
            if sender.health_checked_at
            else _("never")
        )
        return format_html(
            '<span title="{}"><span style="color:{}">●</span> {}</span>',
            _("Last checked: %(when)s. %(error)s")
            % {"when": checked, "error": sender.health_error},
            colours[sender.health],
            sender.get_health_display(),
        )

    @transaction.atomic
    def save_model(self, request: HttpRequest, obj: EmailSender, form: Any, change: bool) -> None:
        services.sender_save(sender=obj, password=form.cleaned_data.get("password", ""))
        if not obj.port_usable:
            messages.warning(
                request,
                _("Port %(port)s needs an approved port exception before %(name)s can send.")
                % {"port": obj.port, "name": obj.name},
            )

    def changeform_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return sensitive_post_parameters("password")(super().changeform_view)(
            request, *args, **kwargs
        )

    def render_change_form(
        self, request: HttpRequest, context: dict, *args: Any, **kwargs: Any
    ) -> HttpResponse:
        obj = kwargs.get("obj")
        context["can_test"] = bool(obj) and self.has_test_permission(request)
        context["can_approve"] = (
            bool(obj)
            and not obj.port_allowed
            and not obj.port_exception_approved
            and request.user.has_perm("channels_app.approve_port_exception")
        )
        return super().render_change_form(request, context, *args, **kwargs)

    def has_test_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("channels_app.test_emailsender")

    @admin.action(
        description=gettext_lazy("Check connection (in the background)"), permissions=["test"]
    )
    def check_selected(self, request: HttpRequest, queryset: Any) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        try:
            for sender_id in ids:
                tasks.sender_check.delay(sender_id)
        except OperationalError:
            self.message_user(
                request, _("The task queue is not reachable; try again later."), messages.ERROR
            )
            return
        message = ngettext(
            "Queued %(count)d connection check; the health column shows its result.",
            "Queued %(count)d connection checks; the health column shows their results.",
            len(ids),
        )
        self.message_user(request, message % {"count": len(ids)})

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path(
                "<int:pk>/test-connection/",
                wrap(self.test_connection_view),
                name="channels_app_emailsender_test",
            ),
            path(
                "<int:pk>/send-test/",
                wrap(self.send_test_view),
                name="channels_app_emailsender_send_test",
            ),
            path(
                "<int:pk>/approve-port/",
                wrap(self.approve_port_view),
                name="channels_app_emailsender_approve_port",
            ),
            *super().get_urls(),
        ]

    def _sender(self, request: HttpRequest, pk: int, permission: str) -> EmailSender:
        sender = get_object_or_404(EmailSender, pk=pk)
        if not request.user.has_perm(permission):
            raise PermissionDenied
        return sender

    def test_connection_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        sender = self._sender(request, pk, "channels_app.test_emailsender")
        if request.method != "POST" or not ConfirmForm(request.POST).is_valid():
            return HttpResponseRedirect(reverse("admin:channels_app_emailsender_change", args=[pk]))
        check = services.sender_check_connection(sender=sender)
        return self._result_page(request, sender, check, _("Connection test"))

    def send_test_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        sender = self._sender(request, pk, "channels_app.test_emailsender")
        form = SendTestEmailForm(request.POST or None, initial={"recipient": request.user.email})
        if request.method == "POST" and form.is_valid():
            check = services.sender_check_connection(
                sender=sender, send_to=form.cleaned_data["recipient"]
            )
            return self._result_page(request, sender, check, _("Test email"))
        return TemplateResponse(
            request,
            "admin/channels_app/emailsender/send_test.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "original": sender,
                "title": _("Send a test email"),
                "form": form,
            },
        )

    def approve_port_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        sender = self._sender(request, pk, "channels_app.approve_port_exception")
        if request.method == "POST" and ConfirmForm(request.POST).is_valid():
            try:
                services.sender_approve_port_exception(sender=sender, user=request.user)
            except ValidationError as exc:
                messages.error(request, " ".join(exc.messages))
            else:
                messages.success(
                    request, _("Port exception approved for %(name)s.") % {"name": sender.name}
                )
            return HttpResponseRedirect(reverse("admin:channels_app_emailsender_change", args=[pk]))
        return TemplateResponse(
            request,
            "admin/ums_confirm.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "original": sender,
                "title": _("Approve port %(port)s for %(name)s?")
                % {"port": sender.port, "name": sender.name},
                "text": _("Justification: %(reason)s")
                % {"reason": sender.port_exception_reason or _("(none written)")},
                "button": _("Approve port exception"),
            },
        )

    def _result_page(
        self, request: HttpRequest, sender: EmailSender, check: Any, title: str
    ) -> HttpResponse:
        return TemplateResponse(
            request,
            "admin/channels_app/emailsender/check_result.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "original": sender,
                "title": title,
                "check": check,
                "mailcatcher_url": reverse("admin:messaging_capturedemail_changelist")
                if settings.UMS_MAILCATCHER
                else "",
            },
        )


@admin.register(AccessKey)
class AccessKeyAdmin(admin.ModelAdmin):
    list_display = ["access_key", "label", "is_active", "created_at"]
    fields = ["access_key", "label", "is_active", "created_at"]
    readonly_fields = ["access_key", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Created with `manage.py create_access_key`, which prints the secret once.
        return False
