"""Background checks of senders. Tasks take ids and call services."""

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from channels_app import selectors, services
from channels_app.models import EmailSender


@shared_task(ignore_result=True)
def sender_check(sender_id: int) -> bool | None:
    sender = EmailSender.objects.filter(pk=sender_id, is_enabled=True).first()
    if sender is None:
        return None
    return services.sender_check_connection(sender=sender).ok


@shared_task(ignore_result=True)
def senders_check_health() -> int:
    """Periodic: queue a connection check for each sender that has not been checked lately."""
    interval = settings.UMS_SENDER_HEALTH_INTERVAL
    if not interval:
        return 0
    due = selectors.senders_due_for_health_check(now=timezone.now(), interval_minutes=interval)
    ids = list(due.values_list("pk", flat=True)[:100])
    for sender_id in ids:
        sender_check.delay(sender_id)
    return len(ids)
