"""Channels (the API tenants), email senders (SMTP accounts) and the keys of the user API."""

import secrets

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from channels_app import crypto
from channels_app.smtp import Encryption, SmtpConfig
from channels_app.validators import validate_header_text, validate_host


def new_channel_key() -> str:
    return secrets.token_hex(12)


def new_master_secret() -> str:
    return secrets.token_hex(16)


class Channel(models.Model):
    class Status(models.TextChoices):
        ENABLED = "enabled", _("Enabled")
        CLOSED = "closed", _("Closed")

    name = models.CharField(_("name"), max_length=64, unique=True)
    channel_key = models.CharField(
        _("ChannelKey"), max_length=24, unique=True, default=new_channel_key, editable=False
    )
    # Encrypted: signed status callbacks need the plaintext later, so it cannot be a hash.
    master_secret_encrypted = models.TextField(editable=False)
    status = models.CharField(
        _("status"), max_length=10, choices=Status.choices, default=Status.ENABLED
    )
    description = models.TextField(_("description"), blank=True)
    senders = models.ManyToManyField(
        "EmailSender", through="ChannelSender", related_name="channels", blank=True
    )
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        blank=True,
        related_name="ums_channels",
        verbose_name=_("console senders"),
        help_text=_(
            "Staff who may send on this channel from the console. "
            "Leave empty to let every staff member with the send permission use it."
        ),
    )
    is_marketing = models.BooleanField(
        _("marketing mail"),
        default=False,
        help_text=_(
            "Marketing mail carries a one-click unsubscribe link (List-Unsubscribe); "
            "an unsubscribed address receives nothing more from this channel."
        ),
    )
    suppress_on_permanent_failure = models.BooleanField(
        _("suppress addresses that fail permanently"),
        default=False,
        help_text=_(
            "Add an address to the channel's suppression list when its server refuses it "
            "with a permanent (5xx) error."
        ),
    )
    api_rate_per_minute = models.PositiveIntegerField(
        _("API requests per minute"),
        null=True,
        blank=True,
        help_text=_("Send requests this channel may make per minute; empty: no limit."),
    )
    daily_broadcast_quota = models.PositiveIntegerField(
        _("broadcasts per day"),
        null=True,
        blank=True,
        help_text=_("Broadcasts this channel may send per day; empty: no limit."),
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("channel")
        verbose_name_plural = _("channels")
        ordering = ["name"]
        permissions = [("view_master_secret", _("Can reveal and reset a channel's MasterSecret"))]

    def __str__(self) -> str:
        return self.name

    @property
    def is_enabled(self) -> bool:
        return self.status == self.Status.ENABLED

    def get_master_secret(self) -> str:
        return crypto.decrypt(self.master_secret_encrypted)

    def set_master_secret(self, secret: str) -> None:
        self.master_secret_encrypted = crypto.encrypt(secret)


class EmailSender(models.Model):
    """One SMTP account (the vendor's email 通道), given by the six items."""

    class Health(models.TextChoices):
        UNKNOWN = "unknown", _("Not checked")
        OK = "ok", _("Working")
        FAILED = "failed", _("Failing")

    name = models.CharField(_("name"), max_length=30, unique=True)
    code = models.CharField(
        _("code"),
        max_length=32,
        unique=True,
        validators=[RegexValidator(r"^[A-Za-z0-9]+$", _("Use only letters and digits."))],
        help_text=_("Letters and digits; identifies the sender in uploads and callbacks."),
    )
    # The six items.
    account = models.CharField(
        _("account"),
        max_length=254,
        blank=True,
        help_text=_("The SMTP user name, usually the full mailbox address."),
    )
    password_encrypted = models.TextField(blank=True, editable=False)
    from_address = models.EmailField(_("sender address"))
    from_name = models.CharField(
        _("display name"), max_length=100, blank=True, validators=[validate_header_text]
    )
    host = models.CharField(_("sending server"), max_length=253, validators=[validate_host])
    port = models.PositiveIntegerField(
        _("port"), validators=[MinValueValidator(1), MaxValueValidator(65535)], default=465
    )
    encryption = models.CharField(
        _("encryption"),
        max_length=10,
        choices=[
            (Encryption.SSL.value, "SSL/TLS"),
            (Encryption.STARTTLS.value, "STARTTLS"),
            (Encryption.NONE.value, _("None")),
        ],
        default=Encryption.SSL.value,
        help_text=_(
            "SSL/TLS: encrypted from the first byte, usually port 465. STARTTLS: upgraded "
            "after connecting, usually port 587 or 25. None: plain text, for local relays only."
        ),
    )
    trust_self_signed = models.BooleanField(
        _("trust a self-signed certificate"),
        default=False,
        help_text=_(
            "Skip the certificate authority check and pin the certificate's fingerprint "
            "instead, as seen at the next connection test."
        ),
    )
    pinned_fingerprint = models.CharField(
        _("pinned certificate fingerprint (SHA-256)"),
        max_length=95,
        blank=True,
        help_text=_("Set by the connection test; clear it to pin the server's new certificate."),
    )
    port_exception_reason = models.TextField(
        _("port exception justification"),
        blank=True,
        help_text=_("Why this sender needs a port outside the allowed list."),
    )
    port_exception_port = models.PositiveIntegerField(null=True, blank=True, editable=False)
    port_exception_approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
        verbose_name=_("port exception approved by"),
    )
    port_exception_approved_at = models.DateTimeField(
        _("port exception approved at"), null=True, blank=True, editable=False
    )
    is_enabled = models.BooleanField(_("enabled"), default=True)
    # Sending limits, kept across all workers and machines (the provider's quota).
    rate_per_second = models.PositiveIntegerField(
        _("emails per second"), null=True, blank=True, validators=[MinValueValidator(1)]
    )
    rate_per_minute = models.PositiveIntegerField(
        _("emails per minute"), null=True, blank=True, validators=[MinValueValidator(1)]
    )
    rate_per_day = models.PositiveIntegerField(
        _("emails per day"), null=True, blank=True, validators=[MinValueValidator(1)]
    )
    health = models.CharField(
        _("health"), max_length=10, choices=Health.choices, default=Health.UNKNOWN, editable=False
    )
    health_checked_at = models.DateTimeField(_("last checked"), null=True, editable=False)
    health_error = models.TextField(_("last error"), blank=True, editable=False)
    health_error_kind = models.CharField(max_length=20, blank=True, editable=False)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("email sender")
        verbose_name_plural = _("email senders")
        ordering = ["name"]
        permissions = [
            ("approve_port_exception", _("Can approve port exception")),
            ("test_emailsender", _("Can test connection and send test emails")),
        ]
        constraints = [
            models.CheckConstraint(
                condition=~Q(account="") | Q(encryption=Encryption.NONE.value),
                name="sender_account_required_with_tls",
                violation_error_message=_("An account is required unless encryption is none."),
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.code})"

    @property
    def port_allowed(self) -> bool:
        return self.port in settings.UMS_SMTP_ALLOWED_PORTS

    @property
    def port_exception_approved(self) -> bool:
        return self.port_exception_port == self.port and self.port_exception_approved_at is not None

    @property
    def port_usable(self) -> bool:
        return self.port_allowed or self.port_exception_approved

    @property
    def has_password(self) -> bool:
        return bool(self.password_encrypted)

    def set_password(self, password: str) -> None:
        self.password_encrypted = crypto.encrypt(password)

    def smtp_config(self) -> SmtpConfig:
        """The connection settings, password decrypted: for the SMTP factory only."""
        return SmtpConfig(
            host=self.host,
            port=self.port,
            username=self.account,
            password=crypto.decrypt(self.password_encrypted),
            encryption=Encryption(self.encryption),
            timeout=settings.UMS_SMTP_TIMEOUT,
            ca_bundle=settings.UMS_SMTP_CA_BUNDLE,
            trust_self_signed=self.trust_self_signed,
            pinned_fingerprint=self.pinned_fingerprint,
        )


class ChannelSender(models.Model):
    """A sender authorized to a channel; one authorization per channel is its default."""

    channel = models.ForeignKey(
        Channel, on_delete=models.CASCADE, related_name="authorizations", verbose_name=_("channel")
    )
    sender = models.ForeignKey(
        EmailSender,
        on_delete=models.CASCADE,
        related_name="authorizations",
        verbose_name=_("email sender"),
    )
    is_default = models.BooleanField(_("default"), default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("authorized sender")
        verbose_name_plural = _("authorized senders")
        constraints = [
            models.UniqueConstraint(fields=["channel", "sender"], name="channel_sender_unique"),
            models.UniqueConstraint(
                fields=["channel"],
                condition=Q(is_default=True),
                name="channel_one_default_sender",
                violation_error_message=_("A channel has only one default sender."),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.channel} → {self.sender}"


class AccessKey(models.Model):
    """The global key of the user-management API. The secret is shown once, stored as a hash."""

    access_key = models.CharField(_("AccessKey"), max_length=24, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    label = models.CharField(_("label"), max_length=100, blank=True)
    is_active = models.BooleanField(_("active"), default=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("access key")
        verbose_name_plural = _("access keys")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.access_key


class CallbackUrl(models.Model):
    """Where a channel's status records are POSTed; verified with an echostr before use."""

    MAX_PER_CHANNEL = 5

    channel = models.ForeignKey(
        Channel, on_delete=models.CASCADE, related_name="callback_urls", verbose_name=_("channel")
    )
    url = models.URLField(_("URL"), max_length=500)
    position = models.PositiveSmallIntegerField(
        _("position"), default=0, help_text=_("The first URL is the channel's default.")
    )
    verified_at = models.DateTimeField(_("verified"), null=True, blank=True, editable=False)
    verification_error = models.TextField(_("last verification error"), blank=True, editable=False)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("callback URL")
        verbose_name_plural = _("callback URLs")
        ordering = ["channel", "position", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["channel", "url"], name="callback_url_unique"),
        ]

    def __str__(self) -> str:
        return self.url

    @property
    def is_verified(self) -> bool:
        return self.verified_at is not None


class SendingRule(models.Model):
    """A sending strategy (`rule_id`): the channel's senders in the order they are tried."""

    channel = models.ForeignKey(
        Channel, on_delete=models.CASCADE, related_name="sending_rules", verbose_name=_("channel")
    )
    rule_id = models.PositiveIntegerField(
        _("rule_id"), validators=[MinValueValidator(1)], help_text=_("The number API calls use.")
    )
    name = models.CharField(_("name"), max_length=64)
    is_enabled = models.BooleanField(_("enabled"), default=True)
    senders = models.ManyToManyField(
        EmailSender, through="SendingRuleStep", related_name="sending_rules", blank=True
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("sending strategy")
        verbose_name_plural = _("sending strategies")
        ordering = ["channel", "rule_id"]
        constraints = [
            models.UniqueConstraint(fields=["channel", "rule_id"], name="sending_rule_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.rule_id}: {self.name}"


class SendingRuleStep(models.Model):
    """One sender of a strategy; a recipient that fails for good on it moves to the next."""

    rule = models.ForeignKey(SendingRule, on_delete=models.CASCADE, related_name="steps")
    sender = models.ForeignKey(
        EmailSender, on_delete=models.PROTECT, related_name="+", verbose_name=_("email sender")
    )
    position = models.PositiveSmallIntegerField(_("order"), default=0)

    class Meta:
        verbose_name = _("sender of the strategy")
        verbose_name_plural = _("senders of the strategy, in order")
        ordering = ["rule", "position", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["rule", "sender"], name="sending_rule_step_unique"),
        ]

    def __str__(self) -> str:
        return str(self.sender)
