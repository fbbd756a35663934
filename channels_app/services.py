"""Writes for channels, senders and access keys. The admin, commands and tasks all call these."""

import hashlib
import logging
import secrets
import time
from dataclasses import asdict, dataclass, field
from email.utils import formataddr
from typing import Any

from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.mail import EmailMessage
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from channels_app import crypto, netguard
from channels_app.models import AccessKey, Channel, ChannelSender, EmailSender, new_master_secret
from channels_app.smtp import (
    Failure,
    FailureKind,
    SenderEmailBackend,
    SessionInfo,
    classify_failure,
)

logger = logging.getLogger(__name__)

# Changing any of these means the last connection check no longer describes the sender.
CONNECTION_FIELDS = ("host", "port", "encryption", "account", "trust_self_signed")


# --- channels ------------------------------------------------------------------------------


def channel_create(
    *, name: str, description: str = "", status: str = Channel.Status.ENABLED
) -> tuple[Channel, str]:
    """Create a channel; returns it with its MasterSecret, the only time it is handed out."""
    channel = Channel(name=name, description=description, status=status)
    return channel, channel_save_new(channel=channel)


def channel_save_new(*, channel: Channel) -> str:
    """Give an unsaved channel its MasterSecret, save it, and return the secret."""
    secret = new_master_secret()
    channel.set_master_secret(secret)
    channel.full_clean()
    channel.save()
    return secret


@transaction.atomic
def channel_delete(*, channel: Channel) -> None:
    """Delete a channel with the bindings and tags scoped to its ChannelKey."""
    from users_app.services import channel_delete_bindings

    channel_delete_bindings(channel=channel)
    channel.delete()


def channel_reset_secret(*, channel: Channel, user: AbstractBaseUser | None) -> str:
    _require(user, "channels_app.view_master_secret")
    secret = new_master_secret()
    channel.set_master_secret(secret)
    channel.save(update_fields=["master_secret_encrypted", "updated_at"])
    _audit(user, channel, _("Reset the MasterSecret."))
    return secret


def channel_reveal_secret(*, channel: Channel, user: AbstractBaseUser | None) -> str:
    _require(user, "channels_app.view_master_secret")
    _audit(user, channel, _("Revealed the MasterSecret."))
    return channel.get_master_secret()


@transaction.atomic
def channel_authorize_sender(
    *, channel: Channel, sender: EmailSender, is_default: bool = False
) -> ChannelSender:
    has_default = channel.authorizations.filter(is_default=True).exists()
    if is_default:
        channel.authorizations.filter(is_default=True).update(is_default=False)
    authorization, _created = ChannelSender.objects.update_or_create(
        channel=channel, sender=sender, defaults={"is_default": is_default or not has_default}
    )
    return authorization


# --- senders -------------------------------------------------------------------------------


def sender_validate_host(*, host: str, port: int) -> None:
    """Refuse a host that resolves to a forbidden address. An unresolvable name is allowed
    (it may resolve only where the workers run) and is checked again at connect time."""
    try:
        netguard.resolve(host, port)
    except netguard.HostUnresolvable:
        pass
    except netguard.DestinationRefused as exc:
        raise ValidationError({"host": str(exc)}) from exc


def sender_create(*, password: str = "", **fields: Any) -> EmailSender:
    return sender_save(sender=EmailSender(**fields), password=password)


@transaction.atomic
def sender_save(*, sender: EmailSender, password: str = "") -> EmailSender:
    """Create or update a sender; a blank password keeps the stored one.

    A change to how the sender connects clears its health; a new host (or turning the
    self-signed switch) also clears the pinned certificate.
    """
    before = EmailSender.objects.filter(pk=sender.pk).first() if sender.pk else None
    if password:
        sender.set_password(password)
    if sender.account and not sender.has_password:
        raise ValidationError({"password": _("Enter the password for this account.")})
    if not sender.port_allowed and not sender.port_exception_reason.strip():
        raise ValidationError(
            {
                "port_exception_reason": _(
                    "Port %(port)s is not in the allowed list: explain why this sender needs it."
                )
                % {"port": sender.port}
            }
        )
    if before is None or password or _differs(before, sender, CONNECTION_FIELDS):
        _reset_health(sender)
    if before is not None and _differs(before, sender, ("host", "trust_self_signed")):
        sender.pinned_fingerprint = ""
    sender.full_clean()
    sender_validate_host(host=sender.host, port=sender.port)
    sender.save()
    return sender


def _differs(before: EmailSender, after: EmailSender, fields: tuple[str, ...]) -> bool:
    return any(getattr(before, name) != getattr(after, name) for name in fields)


def _reset_health(sender: EmailSender) -> None:
    sender.health = EmailSender.Health.UNKNOWN
    sender.health_error = ""
    sender.health_error_kind = ""


def sender_approve_port_exception(*, sender: EmailSender, user: AbstractBaseUser | None) -> None:
    _require(user, "channels_app.approve_port_exception")
    if sender.port_allowed:
        raise ValidationError(
            _("Port %(port)s is allowed; no exception is needed.") % {"port": sender.port}
        )
    if not sender.port_exception_reason.strip():
        raise ValidationError(_("Write the justification for the port exception first."))
    sender.port_exception_port = sender.port
    sender.port_exception_approved_by = user
    sender.port_exception_approved_at = timezone.now()
    sender.save(
        update_fields=[
            "port_exception_port",
            "port_exception_approved_by",
            "port_exception_approved_at",
            "updated_at",
        ]
    )
    _audit(
        user, sender, _("Approved the port exception for port %(port)s.") % {"port": sender.port}
    )


@dataclass
class ConnectionCheck:
    """The outcome of a connection test or test email, as shown in the console and the CLI."""

    ok: bool
    sender_code: str
    transcript: list[str] = field(default_factory=list)
    failure: Failure | None = None
    session: SessionInfo = field(default_factory=SessionInfo)
    elapsed_ms: int = 0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["failure"] = asdict(self.failure) if self.failure else None
        return data


def sender_check_connection(*, sender: EmailSender, send_to: str = "") -> ConnectionCheck:
    """Connect, negotiate TLS, authenticate, optionally send a test email, and QUIT.

    The outcome is stored as the sender's health. A new self-signed certificate is pinned.
    """
    check = ConnectionCheck(ok=False, sender_code=sender.code)
    started = time.monotonic()
    if not sender.port_usable:
        check.failure = Failure(
            FailureKind.NETWORK_GUARD,
            None,
            _("Port %(port)s needs an approved port exception.") % {"port": sender.port},
        )
        return check
    backend = SenderEmailBackend(sender.smtp_config())
    try:
        backend.open()
        _describe_session(check, backend.session)
        if send_to:
            reply = backend.send_raw(**_test_message(sender, send_to))
            check.transcript.append(
                _("Test email to %(to)s: %(code)s %(text)s")
                % {"to": send_to, "code": reply.code, "text": reply.text}
            )
        code, text = backend.connection.quit()
        backend.connection = None
        check.transcript.append(f"{code} {text.decode(errors='replace')}")
        check.ok = True
    except Exception as exc:  # noqa: BLE001 - every failure is reported, none escapes
        check.failure = classify_failure(exc)
        _describe_session(check, backend.session)
    finally:
        backend.close()
        check.session = backend.session
        check.elapsed_ms = int((time.monotonic() - started) * 1000)
    sender_record_check(sender=sender, check=check)
    return check


def _describe_session(check: ConnectionCheck, session: SessionInfo) -> None:
    lines = [session.banner]
    if session.tls_version:
        lines.append(
            _("TLS: %(version)s, %(cipher)s")
            % {"version": session.tls_version, "cipher": session.cipher}
        )
        lines.append(_("Certificate SHA-256: %(fp)s") % {"fp": session.fingerprint})
    lines.append(session.auth_reply)
    check.transcript = [line for line in lines if line]


def _test_message(sender: EmailSender, to: str) -> dict[str, Any]:
    message = EmailMessage(
        subject=_("UMS Email test from %(name)s") % {"name": sender.name},
        body=_(
            "This is a test email sent by UMS Email through the sender %(name)s "
            "(%(host)s:%(port)s, %(encryption)s). If you can read it, the sender works."
        )
        % {
            "name": sender.name,
            "host": sender.host,
            "port": sender.port,
            "encryption": sender.encryption,
        },
        from_email=formataddr((sender.from_name, sender.from_address)),
        to=[to],
    )
    return {
        "envelope_from": sender.from_address,
        "recipient": to,
        "message": message.message().as_bytes(linesep="\r\n"),
    }


def sender_record_check(*, sender: EmailSender, check: ConnectionCheck) -> None:
    updates: dict[str, Any] = {
        "health_checked_at": timezone.now(),
        "health": EmailSender.Health.OK if check.ok else EmailSender.Health.FAILED,
        "health_error": "" if check.ok else _failure_text(check.failure),
        "health_error_kind": "" if check.ok or not check.failure else check.failure.kind.value,
    }
    fingerprint = check.session.fingerprint
    if check.ok and sender.trust_self_signed and fingerprint and not sender.pinned_fingerprint:
        updates["pinned_fingerprint"] = fingerprint
    EmailSender.objects.filter(pk=sender.pk).update(**updates)
    for name, value in updates.items():
        setattr(sender, name, value)
    if not check.ok:
        logger.warning("sender %s check failed: %s", sender.code, updates["health_error_kind"])


def _failure_text(failure: Failure | None) -> str:
    if failure is None:
        return ""
    return f"{failure.code} {failure.text}" if failure.code else failure.text


# --- access keys and key rotation ----------------------------------------------------------


def access_key_create(*, label: str = "") -> tuple[AccessKey, str]:
    secret = secrets.token_hex(16)
    key = AccessKey.objects.create(
        access_key=secrets.token_hex(12), secret_hash=access_secret_hash(secret), label=label
    )
    return key, secret


def access_secret_hash(secret: str) -> str:
    # The secret is 128 random bits: a fast hash is enough and keeps API auth cheap.
    return hashlib.sha256(secret.encode()).hexdigest()


@transaction.atomic
def field_keys_rotate() -> dict[str, int]:
    """Re-encrypt every stored secret under the first key of UMS_FIELD_KEYS."""
    counts = {"channels": 0, "senders": 0}
    for channel in Channel.objects.select_for_update().only("pk", "master_secret_encrypted"):
        channel.master_secret_encrypted = crypto.rotate(channel.master_secret_encrypted)
        channel.save(update_fields=["master_secret_encrypted"])
        counts["channels"] += 1
    for sender in EmailSender.objects.select_for_update().exclude(password_encrypted=""):
        sender.password_encrypted = crypto.rotate(sender.password_encrypted)
        sender.save(update_fields=["password_encrypted"])
        counts["senders"] += 1
    return counts


# --- helpers -------------------------------------------------------------------------------


def _require(user: AbstractBaseUser | None, permission: str) -> None:
    """None means the operator of the machine (a management command)."""
    if user is not None and not user.has_perm(permission):
        raise PermissionDenied


def _audit(user: AbstractBaseUser | None, obj: Any, message: str) -> None:
    logger.info("%s: %s %s by %s", message, obj._meta.model_name, obj.pk, user or "command line")
    if user is None:
        return
    LogEntry.objects.log_actions(
        user_id=user.pk,
        queryset=type(obj).objects.filter(pk=obj.pk),
        action_flag=CHANGE,
        change_message=message,
        single_object=True,
    )
