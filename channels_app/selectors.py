"""Reads about channels and senders."""

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import F, Q, QuerySet

from channels_app.models import Channel, EmailSender


def channel_usable_senders(*, channel: Channel) -> QuerySet[EmailSender]:
    """The channel's enabled, authorized senders, its default first."""
    return EmailSender.objects.filter(authorizations__channel=channel, is_enabled=True).order_by(
        "-authorizations__is_default", "name"
    )


def channel_default_sender(*, channel: Channel) -> EmailSender | None:
    return channel_usable_senders(channel=channel).first()


def senders_due_for_health_check(*, now: datetime, interval_minutes: int) -> QuerySet[EmailSender]:
    """Enabled senders whose last check is older than the interval.

    A sender whose password was refused is left alone until someone changes it: checking it
    again every hour would only risk locking the account.
    """
    stale = Q(health_checked_at__isnull=True) | Q(
        health_checked_at__lt=now - timedelta(minutes=interval_minutes)
    )
    usable_port = Q(port__in=settings.UMS_SMTP_ALLOWED_PORTS) | Q(
        port_exception_port=F("port"), port_exception_approved_at__isnull=False
    )
    return (
        EmailSender.objects.filter(stale, usable_port, is_enabled=True)
        .exclude(health=EmailSender.Health.FAILED, health_error_kind="auth")
        .order_by("health_checked_at")
    )


def channels_for_console_sender(*, user: Any) -> QuerySet[Channel]:
    """The enabled channels a staff member may send on from the console.

    A channel with no listed members is open to every staff member with the send permission;
    one with members only to them (superusers may use every channel).
    """
    channels = Channel.objects.filter(status=Channel.Status.ENABLED)
    if not user.has_perm("messaging.add_message"):
        return channels.none()
    if user.is_superuser:
        return channels
    return channels.filter(Q(members__isnull=True) | Q(members=user)).distinct()
