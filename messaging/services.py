"""Writes for messages: create (API and console alike), retract, retry, materials, mail catcher."""

import html as html_lib
import logging
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from email import policy
from email.parser import BytesParser
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone
from django.utils.translation import gettext as _
from kombu.exceptions import OperationalError

from channels_app.callbacks import CallbackUrlRefused, callback_url_for_message
from channels_app.models import Channel, EmailSender, SendingRule
from channels_app.ratelimit import broadcast_quota_take
from channels_app.rules import SendingRuleInvalid, rule_senders, sending_rule_for_message
from channels_app.selectors import channel_default_sender
from messaging.callbacks import callbacks_mark_retracted
from messaging.lists import ListRefused, recipient_list_for_message
from messaging.models import (
    CapturedEmail,
    Delivery,
    Material,
    Message,
    MessageTemplate,
    RecipientList,
    SendnoKey,
)
from messaging.selectors import sendno_message
from messaging.templating import TemplateError, template_for_message, template_render

logger = logging.getLogger(__name__)

RETRACT_WINDOW = timedelta(hours=24)
# Failed deliveries can be retried for this long after the message finished; its attachments
# are kept that long, so that a retry sends what the first attempt did.
RETRY_WINDOW = timedelta(days=7)


class SendRefused(Exception):
    """A send request the contract refuses, with the vendor's code."""

    def __init__(self, code: int, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Audience:
    """Exactly one kind of target (user-type and raw addresses are never mixed)."""

    userids: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)
    everyone: bool = False

    def as_json(self) -> dict[str, Any]:
        if self.everyone:
            return {"broadcast": True}
        data = {"userid": self.userids, "tag": self.tags, "email": self.emails}
        return {key: value for key, value in data.items() if value}


@dataclass(frozen=True)
class Content:
    subject: str
    html: str = ""
    text: str = ""
    from_name: str = ""
    reply_to: str = ""
    materials: list[Material] = field(default_factory=list)
    # The subject or body holds {{userid}} / {{email}}, filled per recipient by the pipeline.
    personalized: bool = False


@dataclass(frozen=True)
class TemplateUse:
    """A template send: the template's id and the values of its variables (`template_para`)."""

    template_id: int
    para: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Options:
    sendno: str = ""
    owner: str = ""
    priority: int = Message.Priority.MEDIUM
    send_at: datetime | None = None
    # As requested: {"url": ..., "params": {...}}, both optional. The stored callback holds
    # the verified URL chosen (the channel's default when none is given) and the params.
    callback: dict[str, Any] = field(default_factory=dict)
    test: bool = False
    rule_id: int | None = None  # a sending strategy; None or 0: the channel's default sender
    black_id: int | None = None
    white_id: int | None = None


@dataclass(frozen=True)
class _Resolved:
    """What a send request names, checked: stored on the message."""

    content: Content
    sender: EmailSender
    rule: SendingRule | None = None
    template: MessageTemplate | None = None
    template_para: dict[str, Any] = field(default_factory=dict)
    black_list: RecipientList | None = None
    white_list: RecipientList | None = None
    callback: dict[str, Any] = field(default_factory=dict)


def html_to_text(markup: str) -> str:
    """A readable plain-text part for an HTML body."""
    text = re.sub(r"(?is)<(script|style).*?</\1>", "", markup)
    text = re.sub(r"(?i)<br\s*/?>", "\n", text)
    text = re.sub(r"(?i)</(p|div|h[1-6]|li|tr)>", "\n", text)
    text = re.sub(r"(?s)<[^>]+>", "", text)
    text = html_lib.unescape(text)
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def message_create(
    *,
    channel: Channel,
    audience: Audience,
    options: Options,
    source: str,
    content: Content | None = None,
    template: TemplateUse | None = None,
    created_by: AbstractBaseUser | None = None,
) -> tuple[Message, bool]:
    """Store a message and queue it; returns (message, created).

    Give `content`, or `template` for a template send (its subject and HTML are rendered with
    the values, and stored with the template and the values). Raises SendRefused with the API
    code: closed channel, unusable template (1015031/1015032, 4004 for a missing value),
    sending strategy (1015026), no sender (1015010), lists (1015097/1015046/4004), callback
    URL (4004), daily broadcast quota (1015029, checked last so that a refusal for another
    reason uses none of it). A repeated sendno of the channel within 24 hours returns the first
    message and sends nothing.
    """
    if (content is None) == (template is None):
        raise TypeError("message_create needs content or template, not both")
    if not channel.is_enabled:
        raise SendRefused(1015005, _("The channel is closed."), status=403)
    template_row = None
    if template is not None:
        content, template_row = _template_content(channel, template)
    resolved = _resolve(channel, content, options)
    if template_row is not None:
        resolved = replace(resolved, template=template_row, template_para=template.para)
    if options.sendno:
        existing = sendno_message(channel=channel, sendno=options.sendno)
        if existing is not None:
            return existing, False
    if audience.everyone and not options.test and not broadcast_quota_take(channel=channel):
        raise SendRefused(
            1015029, _("The channel's broadcasts for today are used up: try again tomorrow.")
        )
    try:
        with transaction.atomic():
            message = _store(channel, resolved, audience, options, source, created_by)
    except IntegrityError:  # a concurrent request with the same sendno won the race
        existing = sendno_message(channel=channel, sendno=options.sendno)
        if existing is None:
            raise
        return existing, False
    return message, True


def _template_content(channel: Channel, use: TemplateUse) -> tuple[Content, MessageTemplate]:
    try:
        template = template_for_message(channel=channel, template_id=use.template_id)
        rendered = template_render(template=template, para=use.para)
    except TemplateError as exc:
        raise SendRefused(exc.code, exc.message, status=exc.status) from None
    content = Content(
        subject=rendered.subject, html=rendered.html, personalized=rendered.personalized
    )
    return content, template


def _resolve(channel: Channel, content: Content, options: Options) -> _Resolved:
    """The strategy, sender, lists and callback URL the request names, checked in this order."""
    try:
        rule = sending_rule_for_message(channel=channel, rule_id=options.rule_id)
        sender = rule_senders(rule=rule)[0] if rule else channel_default_sender(channel=channel)
        if sender is None or not sender.port_usable:
            raise SendRefused(1015010, _("The channel has no enabled, authorized email sender."))
        black, white = recipient_list_for_message(
            channel=channel, black_id=options.black_id, white_id=options.white_id
        )
        callback = {} if options.test else _callback(channel, options.callback)
    except ListRefused as exc:
        raise SendRefused(exc.code, exc.message, status=exc.status) from None
    except SendingRuleInvalid as exc:
        raise SendRefused(exc.code, f"rule_id: {exc}") from None
    except CallbackUrlRefused as exc:
        raise SendRefused(4004, str(exc)) from None
    return _Resolved(
        content=content,
        sender=sender,
        rule=rule,
        black_list=black,
        white_list=white,
        callback=callback,
    )


def _callback(channel: Channel, requested: dict[str, Any]) -> dict[str, Any]:
    """The stored callback: the verified URL chosen (or the channel's default) and the params."""
    chosen = callback_url_for_message(channel=channel, url=requested.get("url") or None)
    stored: dict[str, Any] = {}
    if chosen is not None:
        stored["url"] = chosen.url
    if requested.get("params") is not None:
        stored["params"] = requested["params"]
    return stored


def _store(
    channel: Channel,
    resolved: _Resolved,
    audience: Audience,
    options: Options,
    source: str,
    created_by: Any,
) -> Message:
    content = resolved.content
    scheduled = options.send_at is not None and options.send_at > timezone.now()
    message = Message.objects.create(
        channel=channel,
        sender=resolved.sender,
        source=source,
        owner=options.owner,
        created_by=created_by,
        audience=audience.as_json(),
        subject=content.subject,
        html=content.html,
        text=content.text or html_to_text(content.html),
        from_name=content.from_name,
        reply_to=content.reply_to,
        sendno=options.sendno,
        priority=options.priority,
        send_at=options.send_at,
        callback=resolved.callback,
        template=resolved.template,
        template_para=resolved.template_para,
        personalized=content.personalized,
        rule=resolved.rule,
        black_list=resolved.black_list,
        white_list=resolved.white_list,
        is_test=options.test,
        status=Message.Status.SCHEDULED if scheduled else Message.Status.QUEUED,
    )
    if content.materials:
        message.materials.set(content.materials)
    if options.sendno:
        SendnoKey.objects.filter(channel=channel, sendno=options.sendno).delete()  # older than 24 h
        SendnoKey.objects.create(
            channel=channel, sendno=options.sendno, message=message, created_at=message.created_at
        )
    if not scheduled:
        transaction.on_commit(lambda: message_enqueue(message))
    return message


def message_enqueue(message: Message) -> bool:
    """Hand the message to the workers. If the broker is down, the sweeper hands it later."""
    from messaging import tasks

    try:
        tasks.message_dispatch.apply_async(
            args=[message.pk], priority=celery_priority(message.priority)
        )
    except OperationalError:
        logger.warning("broker unreachable; message %s waits for the sweeper", message.msgid)
        return False
    return True


def celery_priority(priority: int) -> int:
    """UMS priority 1 (high) … 3 (low) as Redis transport priorities (0 is served first)."""
    return {1: 0, 2: 3, 3: 6}.get(priority, 3)


def message_retract(*, message: Message) -> dict[str, int]:
    """Cancel every delivery not yet handed to SMTP; report what was cancelled and what had gone."""
    if message.created_at < timezone.now() - RETRACT_WINDOW:
        raise SendRefused(1016020, _("Only messages from the last 24 hours can be retracted."))
    with transaction.atomic():
        # Claim first: of two concurrent retracts, only one gets past this line. A message
        # that has already finished keeps its status (nothing was left to cancel).
        claimed = (
            Message.objects.filter(pk=message.pk)
            .exclude(status__in=[Message.Status.RETRACTED, Message.Status.DONE])
            .update(status=Message.Status.RETRACTED, finished_at=timezone.now())
        )
        if (
            not claimed
            and Message.objects.filter(pk=message.pk, status=Message.Status.DONE).exists()
        ):
            # Its sent rows report "retract failed" (8) to the callback URL, once.
            callbacks_mark_retracted(message_id=message.pk)
            message.refresh_from_db()
            return {"cancelled": 0, "sent": message.sent, "in_flight": 0}
        if not claimed:
            raise SendRefused(1015055, _("The message has already been retracted."))
        cancelled = Delivery.objects.filter(
            message=message, status__in=[Delivery.Status.PENDING, Delivery.Status.RETRYING]
        ).update(status=Delivery.Status.CANCELLED, claimed_at=None)
        Message.objects.filter(pk=message.pk).update(cancelled=F("cancelled") + cancelled)
        # Cancelled rows report 7, rows already sent 8; rows in flight report 8 once recorded.
        callbacks_mark_retracted(message_id=message.pk)
    message.refresh_from_db()
    return {
        "cancelled": cancelled,
        "sent": message.sent,
        "in_flight": _count(message, Delivery.Status.SENDING),
    }


def message_retry_failed(*, message: Message) -> int:
    """Send a message's failed deliveries again; returns how many were put back.

    In one transaction the failed rows become pending with their tries reset, the failed
    counter drops by as many, and the message is `sending` again. Each row keeps its last SMTP
    code and reply until the new attempt overwrites them, so the console still shows why it
    failed while it waits. After the commit each batch with such rows is queued; if the broker
    is down, the sweeper hands those batches out once UMS_DISPATCH_GRACE has passed.
    """
    with transaction.atomic():
        # Locks the message against a concurrent retract or retry (not its channel's row).
        locked = (
            Message.objects.select_for_update(of=("self",))
            .select_related("channel")
            .get(pk=message.pk)
        )
        _check_retryable(locked)
        failed = Delivery.objects.filter(message=locked, status=Delivery.Status.FAILED)
        batches = sorted(set(failed.values_list("batch", flat=True).order_by()))
        count = failed.update(
            status=Delivery.Status.PENDING,
            attempts=0,
            next_attempt_at=None,
            claimed_at=None,
            updated_at=timezone.now(),  # so the sweeper gives the queued tasks time to run
        )
        if not count:
            raise ValidationError(_("The message has no failed deliveries to retry."))
        # The counter may lag the rows (it is recounted when the message finishes).
        Message.objects.filter(pk=locked.pk).update(
            failed=Greatest(F("failed") - count, 0),
            status=Message.Status.SENDING,
            finished_at=None,
        )
        transaction.on_commit(lambda: _enqueue_batches(locked, batches))
    message.refresh_from_db()
    return count


def _check_retryable(message: Message) -> None:
    if message.status == Message.Status.RETRACTED:
        raise ValidationError(_("The message was retracted: its failed deliveries stay failed."))
    if message.status not in (Message.Status.SENDING, Message.Status.DONE):
        raise ValidationError(_("The message has not been sent yet."))
    if not message.channel.is_enabled:
        raise ValidationError(_("The channel is closed."))
    if message.finished_at and message.finished_at < timezone.now() - RETRY_WINDOW:
        raise ValidationError(
            _("Only messages finished in the last %(days)d days can be retried.")
            % {"days": RETRY_WINDOW.days}
        )


def _enqueue_batches(message: Message, batches: list[int]) -> None:
    from messaging import tasks

    priority = celery_priority(message.priority)
    try:
        for batch in batches:
            tasks.deliver_batch.apply_async(args=[message.pk, batch], priority=priority)
    except OperationalError:
        logger.warning("broker unreachable; retry of %s waits for the sweeper", message.msgid)


def _count(message: Message, status: str) -> int:
    return Delivery.objects.filter(message=message, status=status).count()


def material_create(*, channel: Channel, upload: UploadedFile, hours: int) -> Material:
    if not 1 <= hours <= 168:
        raise SendRefused(4004, _("time_to_live: must be 1 to 168 hours"))
    if upload.size > settings.UMS_MATERIAL_MAX_BYTES:
        raise SendRefused(
            4004,
            _("file: larger than %(mb)d MB") % {"mb": settings.UMS_MATERIAL_MAX_BYTES // 2**20},
            status=413,
        )
    return Material.objects.create(
        channel=channel,
        file=upload,
        name=(upload.name or "attachment")[:255],
        content_type=upload.content_type or "application/octet-stream",
        size=upload.size,
        expires_at=timezone.now() + timedelta(hours=hours),
    )


def captured_email_store(
    *, peer: str, envelope_from: str, envelope_to: list[str], raw: bytes
) -> CapturedEmail:
    headers = BytesParser(policy=policy.default).parsebytes(raw, headersonly=True)
    subject = str(headers.get("Subject", ""))[:998]
    return CapturedEmail.objects.create(
        peer=peer[:100],
        envelope_from=envelope_from[:254],
        envelope_to=envelope_to,
        subject=subject,
        raw=raw,
    )


def materials_purge(*, now: datetime | None = None) -> int:
    """Delete expired materials (files and rows) that no message or draft may still send."""
    now = now or timezone.now()
    open_statuses = [
        Message.Status.QUEUED,
        Message.Status.SCHEDULED,
        Message.Status.RESOLVING,
        Message.Status.SENDING,
    ]
    expired = (
        Material.objects.filter(expires_at__lt=now)
        .exclude(messages__status__in=open_statuses)
        # A draft may still send it, and a message with failures may still be retried.
        .exclude(drafts__isnull=False)
        .exclude(messages__failed__gt=0, messages__finished_at__gte=now - RETRY_WINDOW)
    )
    count = 0
    for material in expired.distinct().iterator():
        material.file.delete(save=False)
        material.delete()
        count += 1
    return count
