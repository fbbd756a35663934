"""Messages, one Delivery row per recipient, attachments (materials), and the mail catcher's inbox.

A message and all its deliveries are in the database before any SMTP traffic: the database, not
the broker, is the record of what still has to be sent.
"""

import secrets
import time
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _


def new_msgid() -> str:
    """A numeric id like the vendor's: milliseconds, then random bits (sortable by time)."""
    return str((int(time.time() * 1000) << 20) | secrets.randbits(20))


class Message(models.Model):
    class Source(models.TextChoices):
        API = "api", _("API")
        CONSOLE = "console", _("Console")

    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        SCHEDULED = "scheduled", _("Scheduled")
        RESOLVING = "resolving", _("Resolving recipients")
        SENDING = "sending", _("Sending")
        DONE = "done", _("Done")
        RETRACTED = "retracted", _("Retracted")

    class Priority(models.IntegerChoices):
        HIGH = 1, _("High")
        MEDIUM = 2, _("Medium")
        LOW = 3, _("Low")

    msgid = models.CharField(
        _("msgid"), max_length=24, unique=True, default=new_msgid, editable=False
    )
    channel = models.ForeignKey(
        "channels_app.Channel",
        on_delete=models.PROTECT,
        related_name="messages",
        verbose_name=_("channel"),
    )
    sender = models.ForeignKey(
        "channels_app.EmailSender",
        on_delete=models.PROTECT,
        related_name="messages",
        verbose_name=_("email sender"),
    )
    source = models.CharField(_("source"), max_length=10, choices=Source.choices)
    owner = models.CharField(_("owner"), max_length=64, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    audience = models.JSONField(_("audience"), default=dict)
    subject = models.CharField(_("subject"), max_length=998)
    html = models.TextField(_("HTML"), blank=True)
    text = models.TextField(_("plain text"), blank=True)
    from_name = models.CharField(_("display name"), max_length=100, blank=True)
    reply_to = models.CharField(_("reply to"), max_length=254, blank=True)
    materials = models.ManyToManyField("Material", blank=True, related_name="messages")
    sendno = models.CharField(_("sendno"), max_length=64, blank=True)
    priority = models.PositiveSmallIntegerField(
        _("priority"), choices=Priority.choices, default=Priority.MEDIUM
    )
    send_at = models.DateTimeField(_("scheduled for"), null=True, blank=True)
    callback = models.JSONField(_("callback"), default=dict, blank=True)
    status = models.CharField(
        _("status"), max_length=10, choices=Status.choices, default=Status.QUEUED
    )
    template = models.ForeignKey(
        "MessageTemplate",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="messages",
        verbose_name=_("template"),
    )
    template_para = models.JSONField(_("template variables"), default=dict, blank=True)
    # The subject or body still holds {{userid}} / {{email}}, filled in per recipient.
    personalized = models.BooleanField(default=False, editable=False)
    rule = models.ForeignKey(
        "channels_app.SendingRule",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="messages",
        verbose_name=_("sending strategy"),
    )
    black_list = models.ForeignKey(
        "RecipientList",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("blacklist"),
    )
    white_list = models.ForeignKey(
        "RecipientList",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("whitelist"),
    )
    is_test = models.BooleanField(
        _("test send"), default=False, help_text=_("Sent from the console to its author only.")
    )
    # Counters kept on the message, so lists never count deliveries.
    total = models.PositiveIntegerField(_("recipients"), default=0)
    invalid = models.PositiveIntegerField(_("invalid"), default=0)
    sent = models.PositiveIntegerField(_("sent"), default=0)
    failed = models.PositiveIntegerField(_("failed"), default=0)
    cancelled = models.PositiveIntegerField(_("cancelled"), default=0)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)

    class Meta:
        verbose_name = _("message")
        verbose_name_plural = _("messages")
        ordering = ["-created_at"]
        permissions = [
            ("retract_message", _("Can retract messages")),
            ("retry_message", _("Can retry a message's failed deliveries")),
        ]
        indexes = [
            models.Index(fields=["channel", "sendno", "created_at"], name="message_sendno_idx"),
            models.Index(fields=["status", "created_at"], name="message_status_idx"),
        ]

    def __str__(self) -> str:
        return self.msgid

    @property
    def pending(self) -> int:
        return max(0, self.total - self.invalid - self.sent - self.failed - self.cancelled)


class Delivery(models.Model):
    """One recipient of one message: what happened to it, down to the SMTP reply."""

    class Status(models.TextChoices):
        PENDING = "pending", _("Pending")
        SENDING = "sending", _("Sending")
        SENT = "sent", _("Sent")
        RETRYING = "retrying", _("Retrying")
        FAILED = "failed", _("Failed")
        INVALID = "invalid", _("Invalid target")
        CANCELLED = "cancelled", _("Cancelled")

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="deliveries")
    batch = models.PositiveIntegerField(default=0)
    userid = models.CharField(_("userid"), max_length=64, blank=True)
    email = models.CharField(_("email"), max_length=254, blank=True)
    status = models.CharField(
        _("status"), max_length=10, choices=Status.choices, default=Status.PENDING
    )
    attempts = models.PositiveSmallIntegerField(_("attempts"), default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    smtp_code = models.PositiveSmallIntegerField(_("SMTP code"), null=True, blank=True)
    smtp_reply = models.CharField(_("SMTP reply"), max_length=500, blank=True)
    smtp_message_id = models.CharField(_("Message-ID"), max_length=255, blank=True)
    # Which sender of the message's strategy this row is on (0: the first, or the default).
    # Database defaults too: the pipeline writes rows with plain SQL that names only its columns.
    step = models.PositiveSmallIntegerField(_("strategy step"), default=0, db_default=0)
    # Status records still to report to the message's callback URL, and those already queued
    # (a bit per callback type), so that no record is reported twice.
    callback_due = models.BooleanField(default=False, db_default=False)
    callback_reported = models.PositiveIntegerField(default=0, db_default=0)
    sent_at = models.DateTimeField(_("sent at"), null=True, blank=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("delivery")
        verbose_name_plural = _("deliveries")
        indexes = [
            models.Index(fields=["message", "batch", "status"], name="delivery_batch_idx"),
            models.Index(fields=["message", "status"], name="delivery_status_idx"),
            models.Index(fields=["message", "id"], name="delivery_message_id_idx"),
            # The sweeper's scans: stuck claims and due retries, over a small part of the table.
            models.Index(
                fields=["status", "next_attempt_at"],
                name="delivery_due_idx",
                condition=Q(status__in=["sending", "retrying", "pending"]),
            ),
            # The dashboard's failures of the last hour: a failed row's last write or its last
            # retry time, over the failed rows only (see ums.dashboard.sender_failures_since).
            models.Index(
                fields=["updated_at"],
                name="delivery_failed_updated_idx",
                condition=Q(status="failed"),
            ),
            models.Index(
                fields=["next_attempt_at"],
                name="delivery_failed_retry_idx",
                condition=Q(status="failed"),
            ),
            models.Index(
                fields=["id"], name="delivery_callback_due_idx", condition=Q(callback_due=True)
            ),
            models.Index(fields=["email"], name="delivery_email_idx"),
            models.Index(fields=["userid"], name="delivery_userid_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.message_id}:{self.email or self.userid}"


class MessageTemplate(models.Model):
    """Subject and HTML with {{variable}} placeholders, escaped when filled in."""

    channel = models.ForeignKey(
        "channels_app.Channel",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="templates",
        verbose_name=_("channel"),
        help_text=_("Leave empty to let every channel use the template."),
    )
    name = models.CharField(_("name"), max_length=100)
    subject = models.CharField(_("subject"), max_length=998)
    html = models.TextField(_("HTML"))
    is_enabled = models.BooleanField(_("enabled"), default=True)
    # The placeholders' names, kept in step with subject and HTML by the service that saves it.
    variables = models.JSONField(_("variables"), default=list, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("template")
        verbose_name_plural = _("templates")
        ordering = ["name", "pk"]

    def __str__(self) -> str:
        return f"{self.pk}: {self.name}"


class CallbackBatch(models.Model):
    """Up to 100 status records POSTed together to one callback URL; retried, then dropped."""

    class Status(models.TextChoices):
        PENDING = "pending", _("Waiting")
        DELIVERED = "delivered", _("Delivered")
        DROPPED = "dropped", _("Dropped")

    channel = models.ForeignKey(
        "channels_app.Channel",
        on_delete=models.CASCADE,
        related_name="callback_batches",
        verbose_name=_("channel"),
    )
    url = models.CharField(_("URL"), max_length=500)
    records = models.JSONField(_("records"), default=list)
    size = models.PositiveSmallIntegerField(_("records"), default=0)
    status = models.CharField(
        _("status"), max_length=10, choices=Status.choices, default=Status.PENDING
    )
    attempts = models.PositiveSmallIntegerField(_("attempts"), default=0)
    next_attempt_at = models.DateTimeField(_("next attempt"), null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(_("last HTTP status"), null=True)
    last_error = models.CharField(_("last error"), max_length=500, blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)

    class Meta:
        verbose_name = _("callback batch")
        verbose_name_plural = _("callback batches")
        ordering = ["-created_at", "-pk"]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                name="callback_batch_due_idx",
                condition=Q(status="pending"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.url} ({self.size})"


class RecipientList(models.Model):
    """A numbered black or white list of userids (`option.black_id` / `white_id`)."""

    class Kind(models.TextChoices):
        BLACK = "black", _("Blacklist")
        WHITE = "white", _("Whitelist")

    kind = models.CharField(_("kind"), max_length=5, choices=Kind.choices)
    number = models.PositiveIntegerField(
        _("number"), help_text=_("The id API calls give as black_id or white_id.")
    )
    name = models.CharField(_("name"), max_length=100)
    channel = models.ForeignKey(
        "channels_app.Channel",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="recipient_lists",
        verbose_name=_("channel"),
        help_text=_("Leave empty to let every channel use the list."),
    )
    size = models.PositiveIntegerField(_("userids"), default=0, editable=False)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("black or white list")
        verbose_name_plural = _("black and white lists")
        ordering = ["kind", "number"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "number"], name="recipient_list_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.number}: {self.name}"


class RecipientListEntry(models.Model):
    recipient_list = models.ForeignKey(
        RecipientList, on_delete=models.CASCADE, related_name="entries"
    )
    userid = models.CharField(_("userid"), max_length=64)
    created_at = models.DateTimeField(_("added"), auto_now_add=True)

    class Meta:
        verbose_name = _("list entry")
        verbose_name_plural = _("list entries")
        constraints = [
            models.UniqueConstraint(
                fields=["recipient_list", "userid"], name="recipient_list_entry_unique"
            ),
        ]

    def __str__(self) -> str:
        return self.userid


class SuppressedAddress(models.Model):
    """An address that receives no mail: from every channel, or from one."""

    class Reason(models.TextChoices):
        MANUAL = "manual", _("Added by staff")
        UNSUBSCRIBE = "unsubscribe", _("Unsubscribed")
        FAILURE = "failure", _("Permanent failure")

    email = models.CharField(_("email"), max_length=254)
    channel = models.ForeignKey(
        "channels_app.Channel",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="suppressed_addresses",
        verbose_name=_("channel"),
        help_text=_("Leave empty to suppress the address for every channel."),
    )
    reason = models.CharField(_("reason"), max_length=12, choices=Reason.choices)
    note = models.CharField(_("note"), max_length=500, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(_("added"), auto_now_add=True)

    class Meta:
        verbose_name = _("suppressed address")
        verbose_name_plural = _("suppressed addresses")
        ordering = ["-created_at", "-pk"]
        constraints = [
            # One row per address and scope; NULLS NOT DISTINCT is not on SQLite, so the
            # all-channels scope gets its own constraint.
            models.UniqueConstraint(
                fields=["email", "channel"],
                name="suppressed_per_channel_unique",
                condition=Q(channel__isnull=False),
            ),
            models.UniqueConstraint(
                fields=["email"],
                name="suppressed_everywhere_unique",
                condition=Q(channel__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return self.email


class Draft(models.Model):
    """A message being composed in the console, saved to be reopened; sending stores a Message."""

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="ums_drafts",
        verbose_name=_("author"),
    )
    channel = models.ForeignKey(
        "channels_app.Channel",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("channel"),
    )
    # The audience as composed: {"kind": "userid"|"tag"|"all"|"email", "values": [...]}.
    audience = models.JSONField(_("audience"), default=dict, blank=True)
    subject = models.CharField(_("subject"), max_length=998, blank=True)
    html = models.TextField(_("HTML"), blank=True)
    from_name = models.CharField(_("display name"), max_length=100, blank=True)
    reply_to = models.CharField(_("reply to"), max_length=254, blank=True)
    materials = models.ManyToManyField("Material", blank=True, related_name="drafts")
    priority = models.PositiveSmallIntegerField(
        _("priority"), choices=Message.Priority.choices, default=Message.Priority.MEDIUM
    )
    send_at = models.DateTimeField(_("scheduled for"), null=True, blank=True)
    source_message = models.ForeignKey(
        Message,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("duplicated from"),
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("draft")
        verbose_name_plural = _("compose / drafts")
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return self.subject or str(_("(no subject)"))


class Material(models.Model):
    """An attachment uploaded through /v1/material, usable in msg_email[].files until it expires."""

    token = models.CharField(
        max_length=43, unique=True, default=secrets.token_urlsafe, editable=False
    )
    channel = models.ForeignKey(
        "channels_app.Channel", on_delete=models.CASCADE, related_name="materials"
    )
    file = models.FileField(upload_to="materials/%Y/%m/")
    name = models.CharField(_("file name"), max_length=255)
    content_type = models.CharField(max_length=100)
    size = models.PositiveIntegerField()
    expires_at = models.DateTimeField(_("expires"))
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("material")
        verbose_name_plural = _("materials")

    def __str__(self) -> str:
        return self.name


class SendnoKey(models.Model):
    """Idempotency: the first message of a (channel, sendno) within 24 hours."""

    channel = models.ForeignKey("channels_app.Channel", on_delete=models.CASCADE, related_name="+")
    sendno = models.CharField(max_length=64)
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["channel", "sendno"], name="sendno_unique")]

    def __str__(self) -> str:
        return self.sendno


class CapturedEmail(models.Model):
    """An email received by the local mail catcher (`manage.py mailcatcher`)."""

    received_at = models.DateTimeField(_("received"), auto_now_add=True, db_index=True)
    peer = models.CharField(_("client"), max_length=100, blank=True)
    envelope_from = models.CharField(_("envelope from"), max_length=254, blank=True)
    envelope_to = models.JSONField(_("envelope recipients"), default=list)
    subject = models.CharField(_("subject"), max_length=998, blank=True)
    raw = models.BinaryField(_("raw message"))

    class Meta:
        verbose_name = _("captured email")
        verbose_name_plural = _("captured emails (mail catcher)")
        ordering = ["-received_at", "-pk"]

    def __str__(self) -> str:
        return self.subject or str(_("(no subject)"))

    def parsed(self) -> EmailMessage:
        return BytesParser(policy=policy.default).parsebytes(bytes(self.raw))

    def body(self, subtype: str) -> str:
        part = self.parsed().get_body(preferencelist=(subtype,))
        return part.get_content() if part is not None else ""
