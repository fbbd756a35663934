"""Celery tasks of the status callbacks: thin, taking ids; the work is in messaging.callbacks.

The beat runs callbacks_collect_task every 10 seconds and callbacks_sweep_task every 30. Every
task is safe to run twice: the collector locks the rows it takes, the poster claims its batch.
"""

from celery import shared_task
from django.conf import settings

from messaging import callbacks


@shared_task(ignore_result=True)
def callbacks_collect_task() -> int:
    return callbacks.callbacks_collect()


@shared_task(ignore_result=True)
def callback_batch_post_task(batch_id: int) -> str:
    outcome = callbacks.callback_batch_post(batch_id=batch_id)
    if outcome.retry_in is not None and outcome.retry_in < settings.CELERY_VISIBILITY_TIMEOUT / 2:
        # As the pipeline's batches: a short wait rides on a countdown, well inside the
        # broker's visibility timeout; the sweeper takes longer ones when they are due.
        callback_batch_post_task.apply_async(args=[batch_id], countdown=outcome.retry_in)
    return outcome.status


@shared_task(ignore_result=True)
def callbacks_sweep_task() -> int:
    batch_ids = callbacks.callback_batches_sweep()
    return callbacks.callback_batches_enqueue(batch_ids)
