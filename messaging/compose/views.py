"""The compose, review and send pages: thin views over messaging.drafts and the selectors.

The admin (messaging.compose.admin) checks permissions and finds the draft; these views only
turn requests into service calls and results into pages.
"""

from email.utils import formataddr

from django import forms
from django.contrib import messages
from django.contrib.admin import ModelAdmin
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from channels_app.models import EmailSender
from channels_app.selectors import channel_default_sender, channels_for_console_sender
from messaging import drafts
from messaging.compose.forms import ComposeForm
from messaging.compose.selectors import audience_count, templates_for_compose
from messaging.drafts import DraftGone, DraftRefused, Mode
from messaging.models import Draft, Message, MessageTemplate
from messaging.services import SendRefused, html_to_text

ACTIONS = {"_test": Mode.TEST, "_review": Mode.SEND}


class ConfirmForm(forms.Form):
    version = forms.CharField(widget=forms.HiddenInput)


def compose(model_admin: ModelAdmin, request: HttpRequest, draft: Draft | None) -> HttpResponse:
    """Compose a new email (no draft) or reopen a draft.

    Every button saves the draft first, once the form is valid; when the test's or the review's
    checks fail, nothing is saved and the form shows why.
    """
    mode = next((m for name, m in ACTIONS.items() if name in request.POST), Mode.SAVE)
    if request.method == "POST":
        form = ComposeForm(request.POST, request.FILES, user=request.user, draft=draft, mode=mode)
        if form.is_valid():
            try:
                draft = drafts.draft_save(
                    user=request.user,
                    fields=form.draft_fields(),
                    draft=draft,
                    uploads=form.cleaned_data["attachments"],
                    remove=form.cleaned_data["remove_materials"],
                )
            except (SendRefused, DraftRefused) as exc:
                form.add_error("attachments", exc.message)
            else:
                return _after_save(request, draft, mode)
    else:
        form = ComposeForm(user=request.user, draft=draft)
    return _compose_page(model_admin, request, form, draft)


def _after_save(request: HttpRequest, draft: Draft, mode: str) -> HttpResponse:
    here = reverse("admin:messaging_draft_change", args=[draft.pk])
    if mode == Mode.SEND:
        return HttpResponseRedirect(reverse("admin:messaging_draft_review", args=[draft.pk]))
    if mode == Mode.SAVE:
        messages.success(request, _("The draft was saved."))
        return HttpResponseRedirect(here)
    try:
        message = drafts.draft_send_test(draft=draft, user=request.user)
    except (SendRefused, DraftRefused) as exc:
        messages.error(
            request,
            _("The draft was saved, but no test was sent: %(reason)s") % {"reason": exc.message},
        )
        return HttpResponseRedirect(here)
    messages.success(
        request,
        format_html(
            _('A test was sent to {address} only. <a href="{url}">Follow it</a> in the history.'),
            address=request.user.email,
            url=reverse("admin:messaging_message_change", args=[message.pk]),
        ),
    )
    return HttpResponseRedirect(here)


def _compose_page(
    model_admin: ModelAdmin, request: HttpRequest, form: ComposeForm, draft: Draft | None
) -> HttpResponse:
    html = form["html"].value() or ""
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": _("Compose a new email") if draft is None else _("Edit a draft"),
        "form": form,
        "draft": draft,
        "original": draft,
        "materials": form.materials,
        "plain_text": html_to_text(html),
        "templates": templates_for_compose()
        if request.user.has_perm("messaging.view_messagetemplate")
        else [],
        "has_delete_permission": draft is not None
        and model_admin.has_delete_permission(request, draft),
    }
    return TemplateResponse(request, "admin/messaging/draft/compose.html", context)


def review(
    model_admin: ModelAdmin,
    request: HttpRequest,
    draft: Draft,
    confirm: ConfirmForm | None = None,
) -> HttpResponse:
    """What will happen on Confirm send: recipients, those without an address, the sender."""
    problems = drafts.draft_problems(draft=draft, user=request.user, mode=Mode.SEND)
    sender = channel_default_sender(channel=draft.channel) if draft.channel else None
    if draft.channel and (sender is None or not sender.port_usable):
        problems["sender"] = _("The channel has no enabled, authorized email sender.")
    count = None
    if not problems.get("channel") and draft.channel:
        audience = draft.audience or {}
        count = audience_count(
            channel=draft.channel,
            kind=audience.get("kind", ""),
            values=list(audience.get("values") or []),
        )
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": _("Review and send"),
        "draft": draft,
        "original": draft,
        "problems": list(problems.values()),
        "count": count,
        "sender": sender,
        "from_header": _from_header(draft, sender),
        "audience": audience_summary(draft),
        "materials": list(draft.materials.order_by("name")),
        "confirm": confirm or ConfirmForm(initial={"version": drafts.draft_version(draft)}),
    }
    return TemplateResponse(request, "admin/messaging/draft/review.html", context)


def _from_header(draft: Draft, sender: EmailSender | None) -> str:
    if sender is None:
        return ""
    return formataddr((draft.from_name or sender.from_name, sender.from_address))


def send(model_admin: ModelAdmin, request: HttpRequest, draft: Draft) -> HttpResponse:
    """Confirm send: the same message_create as the API; the draft is consumed."""
    confirm = ConfirmForm(request.POST)
    if not confirm.is_valid():
        return review(model_admin, request, draft, confirm)
    try:
        message = drafts.draft_send(
            draft_id=draft.pk, user=request.user, version=confirm.cleaned_data["version"]
        )
    except DraftGone:
        return already_sent(request)
    except (SendRefused, DraftRefused) as exc:
        confirm.add_error(None, exc.message)
        return review(model_admin, request, draft, confirm)
    messages.success(request, _sent_notice(message))
    return HttpResponseRedirect(reverse("admin:messaging_message_change", args=[message.pk]))


def already_sent(request: HttpRequest) -> HttpResponse:
    messages.warning(
        request,
        format_html(
            _(
                "This draft was already sent or deleted: nothing more was sent. "
                '<a href="{url}">See the messages</a>.'
            ),
            url=reverse("admin:messaging_message_changelist"),
        ),
    )
    return HttpResponseRedirect(reverse("admin:messaging_draft_changelist"))


def _sent_notice(message: Message) -> str:
    if message.status == Message.Status.SCHEDULED:
        return _("Message %(msgid)s is scheduled for %(when)s.") % {
            "msgid": message.msgid,
            "when": date_format(timezone.localtime(message.send_at), "DATETIME_FORMAT"),
        }
    return _("Message %(msgid)s is on its way.") % {"msgid": message.msgid}


def plain_text(request: HttpRequest) -> JsonResponse:
    """The plain-text part derived from an HTML body, for the live preview."""
    return JsonResponse({"text": html_to_text(request.POST.get("html", ""))})


def template_fill(request: HttpRequest) -> JsonResponse:
    """ "Start from a template": the template's subject and HTML with the typed values.

    POST `template` (its id), `channel` (optional: the channel chosen so far) and
    `para.<name>` for each variable. Answers the filled subject, HTML and plain text, or 400
    with `error`.
    """
    template_id, channel_id = _number(request, "template"), _number(request, "channel")
    template = MessageTemplate.objects.filter(pk=template_id).first() if template_id else None
    if template is None:
        return JsonResponse({"error": _("Choose a template.")}, status=400)
    channel = None
    if channel_id:
        channel = channels_for_console_sender(user=request.user).filter(pk=channel_id).first()
        if channel is None:
            return JsonResponse({"error": _("You may not send on this channel.")}, status=400)
    values = {
        key.removeprefix("para."): value
        for key, value in request.POST.items()
        if key.startswith("para.")
    }
    try:
        rendered = drafts.draft_content_from_template(
            template=template, channel=channel, values=values
        )
    except DraftRefused as exc:
        return JsonResponse({"error": exc.message}, status=400)
    return JsonResponse(
        {
            "subject": rendered.subject,
            "html": rendered.html,
            "text": html_to_text(rendered.html),
            "personalized": rendered.personalized,
        }
    )


def _number(request: HttpRequest, name: str) -> int | None:
    raw = request.POST.get(name, "").strip()
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 9 else None


def audience_summary(draft: Draft) -> str:
    audience = draft.audience or {}
    kind, values = audience.get("kind"), audience.get("values") or []
    if kind == drafts.AudienceKind.ALL:
        return _("All users of the channel")
    if kind == drafts.AudienceKind.TAG:
        return _("Tags: %(tags)s") % {"tags": ", ".join(values)}
    if kind == drafts.AudienceKind.EMAIL:
        return ngettext("%(count)d email address", "%(count)d email addresses", len(values)) % {
            "count": len(values)
        }
    return ngettext("%(count)d userid", "%(count)d userids", len(values)) % {"count": len(values)}
