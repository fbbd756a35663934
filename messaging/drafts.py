"""Writes for console drafts: a message being composed, saved to be reopened, tested and sent.

A draft can start from a template: the template's variables are filled with the values the
author types, once, into the draft's subject and HTML, which stay editable. `{{userid}}` and
`{{email}}` stay in place and are filled for each recipient when the message is sent.

A draft's attachments are materials of its channel. While a draft holds them their expiry is
pushed far out, so the purge of expired materials leaves them alone; when the draft goes (sent
or deleted) they get an ordinary expiry back, and a message still sending keeps them as usual.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.files.uploadedfile import UploadedFile
from django.db import models, transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from channels_app.models import Channel
from channels_app.selectors import channels_for_console_sender
from messaging.models import Draft, Material, Message, MessageTemplate
from messaging.services import Audience, Content, Options, material_create, message_create
from messaging.templating import (
    RenderedTemplate,
    TemplateError,
    has_recipient_variables,
    required_variables,
    template_all_variables,
    template_render,
    template_variables,
)
from users_app.validation import FieldError, clean_email

DRAFT_MATERIAL_HOLD = timedelta(days=3650)  # "while the draft exists": drafts have no expiry
RELEASED_MATERIAL_TTL = timedelta(hours=24)  # the API's default time_to_live
UPLOAD_HOURS = 168  # material_create's longest; the hold above replaces it at once


class AudienceKind(models.TextChoices):
    USERID = "userid", gettext_lazy("Userids")
    TAG = "tag", gettext_lazy("Tags")
    ALL = "all", gettext_lazy("All users of the channel")
    EMAIL = "email", gettext_lazy("Email addresses")


class Mode(models.TextChoices):
    """What the author asked for; each asks more of the draft than the one before."""

    SAVE = "save", gettext_lazy("Save draft")
    TEST = "test", gettext_lazy("Send a test to me")
    SEND = "send", gettext_lazy("Review and send")


class DraftRefused(Exception):
    """The draft cannot be tested or sent as it stands; `message` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DraftGone(Exception):
    """The draft was sent or deleted meanwhile (a second press of Confirm send finds this)."""


@dataclass(frozen=True)
class DraftFields:
    channel: Channel | None = None
    audience_kind: str = AudienceKind.USERID
    audience_values: tuple[str, ...] = ()
    subject: str = ""
    html: str = ""
    from_name: str = ""
    reply_to: str = ""
    priority: int = Message.Priority.MEDIUM
    send_at: datetime | None = None


def draft_fields(draft: Draft) -> DraftFields:
    audience = draft.audience or {}
    return DraftFields(
        channel=draft.channel,
        audience_kind=audience.get("kind") or AudienceKind.USERID,
        audience_values=tuple(audience.get("values") or ()),
        subject=draft.subject,
        html=draft.html,
        from_name=draft.from_name,
        reply_to=draft.reply_to,
        priority=draft.priority,
        send_at=draft.send_at,
    )


def draft_version(draft: Draft) -> str:
    """Changes whenever the draft is saved: a confirmation is only good for what was reviewed."""
    return draft.updated_at.isoformat()


def compose_problems(
    *, user: Any, fields: DraftFields, materials: Sequence[Material], mode: str
) -> dict[str, str]:
    """What stops the draft from being saved, tested or sent, by field ("" for the whole draft).

    Saving asks little: attachments must belong to the channel. A test needs the content and an
    address of the author's own; sending needs everything, and a schedule time still ahead.
    """
    problems: dict[str, str] = {}
    if fields.channel is not None:
        foreign = [m.name for m in materials if m.channel_id != fields.channel.pk]
        if foreign:
            problems["attachments"] = _(
                "%(names)s belong to another channel: remove them, or attach them again."
            ) % {"names": ", ".join(foreign)}
    if mode == Mode.SAVE:
        return problems
    if fields.channel is None:
        problems["channel"] = _("Choose the channel to send on.")
    elif not channels_for_console_sender(user=user).filter(pk=fields.channel.pk).exists():
        problems["channel"] = _("You may not send on this channel.")
    if not fields.subject.strip():
        problems["subject"] = _("Give the email a subject.")
    if not fields.html.strip():
        problems["html"] = _("Write the body of the email.")
    if mode == Mode.TEST:
        if not _own_address(user):
            problems[""] = _(
                "Your account has no valid email address, so a test cannot be sent to you. "
                "Ask an administrator to add one to your account."
            )
        return problems
    if fields.audience_kind != AudienceKind.ALL and not fields.audience_values:
        problems["audience"] = _("Give at least one recipient.")
    for field, text in (("subject", fields.subject), ("html", fields.html)):
        unfilled = required_variables(template_variables(text))
        if unfilled and field not in problems:
            problems[field] = _(
                "%(placeholders)s would reach the recipients as written: replace it with its "
                "value. Only {{userid}} and {{email}} are filled for each recipient."
            ) % {"placeholders": ", ".join("{{" + name + "}}" for name in unfilled)}
    if fields.send_at is not None and fields.send_at <= timezone.now():
        problems["send_at"] = _("The scheduled time has passed: choose a later one, or clear it.")
    return problems


def draft_problems(*, draft: Draft, user: Any, mode: str) -> dict[str, str]:
    return compose_problems(
        user=user, fields=draft_fields(draft), materials=list(draft.materials.all()), mode=mode
    )


def _own_address(user: Any) -> str:
    try:
        return clean_email(user.email or "")
    except FieldError:
        return ""


@transaction.atomic
def draft_save(
    *,
    user: Any,
    fields: DraftFields,
    draft: Draft | None = None,
    uploads: Sequence[UploadedFile] = (),
    remove: Iterable[Material] = (),
) -> Draft:
    """Create or update a draft; new attachments become materials of its channel.

    Raises SendRefused (from material_create) for an attachment it refuses.
    """
    if uploads and fields.channel is None:
        raise DraftRefused(_("Choose the channel before attaching files."))
    draft = draft or Draft(created_by=user)
    draft.channel = fields.channel
    draft.audience = {"kind": fields.audience_kind, "values": list(fields.audience_values)}
    draft.subject = fields.subject
    draft.html = fields.html
    draft.from_name = fields.from_name
    draft.reply_to = fields.reply_to
    draft.priority = fields.priority
    draft.send_at = fields.send_at
    draft.save()
    removed = list(remove)
    if removed:
        draft.materials.remove(*removed)
        materials_release(removed)
    for upload in uploads:
        draft.materials.add(
            material_create(channel=fields.channel, upload=upload, hours=UPLOAD_HOURS)
        )
    draft_hold_materials(draft)
    return draft


def draft_hold_materials(draft: Draft) -> None:
    Material.objects.filter(drafts=draft).update(expires_at=timezone.now() + DRAFT_MATERIAL_HOLD)


def materials_release(materials: Iterable[Material]) -> None:
    """An ordinary expiry for materials no draft holds any more."""
    Material.objects.filter(pk__in=[m.pk for m in materials], drafts__isnull=True).update(
        expires_at=timezone.now() + RELEASED_MATERIAL_TTL
    )


@transaction.atomic
def draft_delete(*, draft: Draft) -> None:
    materials = list(draft.materials.all())
    draft.delete()
    materials_release(materials)


def draft_audience(draft: Draft) -> Audience:
    fields = draft_fields(draft)
    values = list(fields.audience_values)
    if fields.audience_kind == AudienceKind.ALL:
        return Audience(everyone=True)
    if fields.audience_kind == AudienceKind.TAG:
        return Audience(tags=values)
    if fields.audience_kind == AudienceKind.EMAIL:
        return Audience(emails=values)
    return Audience(userids=values)


def _content(draft: Draft) -> Content:
    return Content(
        subject=draft.subject,
        html=draft.html,
        from_name=draft.from_name,
        reply_to=draft.reply_to,
        materials=list(draft.materials.all()),
        personalized=has_recipient_variables(draft.subject, draft.html),
    )


def draft_content_from_template(
    *, template: MessageTemplate, channel: Channel | None, values: dict[str, str]
) -> RenderedTemplate:
    """A template's subject and HTML with the author's values filled in, for the compose page.

    The same renderer as a template send: values are escaped in the HTML, `{{userid}}` and
    `{{email}}` stay for each recipient. An empty value counts as missing. Raises DraftRefused
    for a disabled template, another channel's, or missing values.
    """
    if not template.is_enabled:
        raise DraftRefused(_("The template %(name)s is disabled.") % {"name": template.name})
    if channel is not None and template.channel_id not in (None, channel.pk):
        raise DraftRefused(
            _("The template %(name)s belongs to another channel.") % {"name": template.name}
        )
    variables = template_all_variables(subject=template.subject, html=template.html)
    missing = [name for name in required_variables(variables) if not values.get(name, "").strip()]
    if missing:
        raise DraftRefused(_("Give a value for %(names)s.") % {"names": ", ".join(missing)})
    try:
        return template_render(template=template, para=values)
    except TemplateError as exc:
        raise DraftRefused(exc.message) from None


def draft_send_test(*, draft: Draft, user: Any) -> Message:
    """The draft's content to the author's own address only, as a test message.

    Raises DraftRefused when the draft is not ready, SendRefused when the channel refuses.
    """
    _refuse_problems(draft_problems(draft=draft, user=user, mode=Mode.TEST))
    message, _created = message_create(
        channel=draft.channel,
        audience=Audience(emails=[_own_address(user)]),
        content=_content(draft),
        options=Options(owner=user.get_username(), priority=draft.priority, test=True),
        source=Message.Source.CONSOLE,
        created_by=user,
    )
    return message


@transaction.atomic
def draft_send(*, draft_id: int, user: Any, version: str) -> Message:
    """Send the draft as reviewed, and consume it: a second confirmation finds no draft.

    Raises DraftGone, DraftRefused (not ready, or changed since `version` was reviewed) or
    SendRefused (from message_create); nothing is sent then and the draft stays.
    """
    draft = Draft.objects.select_for_update().filter(pk=draft_id).first()
    if draft is None or not (user.is_superuser or draft.created_by_id == user.pk):
        raise DraftGone
    if draft_version(draft) != version:
        raise DraftRefused(_("The draft was changed after you reviewed it: review it again."))
    _refuse_problems(draft_problems(draft=draft, user=user, mode=Mode.SEND))
    materials = list(draft.materials.all())
    message, _created = message_create(
        channel=draft.channel,
        audience=draft_audience(draft),
        content=_content(draft),
        options=Options(owner=user.get_username(), priority=draft.priority, send_at=draft.send_at),
        source=Message.Source.CONSOLE,
        created_by=user,
    )
    draft.delete()
    materials_release(materials)
    return message


def _refuse_problems(problems: dict[str, str]) -> None:
    if problems:
        raise DraftRefused(" ".join(problems.values()))


def draft_audience_from_message(message: Message) -> dict[str, Any]:
    """The composer's audience ({"kind", "values"}) for a stored message's audience."""
    audience = message.audience or {}
    if audience.get("broadcast"):
        return {"kind": "all", "values": []}
    for kind in ("userid", "tag", "email"):
        if audience.get(kind):
            return {"kind": kind, "values": list(audience[kind])}
    return {"kind": "userid", "values": []}


@transaction.atomic
def draft_from_message(*, message: Message, user: Any) -> Draft:
    """A new draft with the content and audience of a message ("duplicate as a new draft")."""
    draft = Draft.objects.create(
        created_by=user,
        channel=message.channel,
        audience=draft_audience_from_message(message),
        subject=message.subject,
        html=message.html,
        from_name=message.from_name,
        reply_to=message.reply_to,
        priority=message.priority,
        source_message=message,
    )
    draft.materials.set(message.materials.all())
    draft_hold_materials(draft)
    return draft
