"""Celery tasks of the pipeline: thin, taking ids; the work is in messaging.sending.

Every task is safe to run twice: each claims its rows before it acts.
"""

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from messaging import (
    callback_tasks,  # noqa: F401 - registers the callbacks' tasks with Celery
    sending,
)
from messaging.models import CallbackBatch, Message
from messaging.services import celery_priority, materials_purge

# Delivered callback batches are kept this long for the console, then deleted by the purge.
CALLBACK_BATCH_RETENTION = timedelta(days=7)

# Resolving a broadcast to a million users takes minutes: the same limits as an upload's import.
BULK_LIMITS = {
    "soft_time_limit": settings.UMS_IMPORT_TIME_LIMIT,
    "time_limit": settings.UMS_IMPORT_TIME_LIMIT + 60,
}


@shared_task(ignore_result=True, **BULK_LIMITS)
def message_dispatch(message_id: int) -> int:
    batches = sending.message_resolve(message_id=message_id)
    priority = celery_priority(
        Message.objects.values_list("priority", flat=True).get(pk=message_id)
    )
    for batch in batches:
        deliver_batch.apply_async(args=[message_id, batch], priority=priority)
    return len(batches)


@shared_task(ignore_result=True)
def deliver_batch(message_id: int, batch: int) -> int:
    outcome = sending.batch_send(message_id=message_id, batch=batch)
    if outcome.retry_in is not None and outcome.retry_in < settings.CELERY_VISIBILITY_TIMEOUT / 2:
        # Short waits ride on a countdown (kept well inside the broker's visibility timeout,
        # past which Redis would hand the task out twice); the sweeper takes the long ones.
        priority = Message.objects.values_list("priority", flat=True).get(pk=message_id)
        deliver_batch.apply_async(
            args=[message_id, batch], countdown=outcome.retry_in, priority=celery_priority(priority)
        )
    return outcome.sent


@shared_task(ignore_result=True)
def sweep() -> int:
    outcome = sending.sweep()
    priorities = dict(Message.objects.filter(pk__in=outcome.messages).values_list("pk", "priority"))
    for message_id, priority in priorities.items():
        message_dispatch.apply_async(args=[message_id], priority=celery_priority(priority))
    for message_id, batch, priority in outcome.batches:
        deliver_batch.apply_async(args=[message_id, batch], priority=celery_priority(priority))
    return len(outcome.messages) + len(outcome.batches)


@shared_task(ignore_result=True)
def purge() -> int:
    return materials_purge() + callback_batches_purge()


def callback_batches_purge() -> int:
    """Delete the callback batches delivered more than CALLBACK_BATCH_RETENTION ago (dropped
    ones stay, for the console's Retry now)."""
    cutoff = timezone.now() - CALLBACK_BATCH_RETENTION
    deleted, _by_model = CallbackBatch.objects.filter(
        status=CallbackBatch.Status.DELIVERED, finished_at__lt=cutoff
    ).delete()
    return deleted
