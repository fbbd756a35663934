"""The Celery application: broker choice, reliability settings and the beat schedule."""

import os
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ums.settings")

app = Celery("ums")


# Priorities 1-3 of a message become separate Redis lists, served high first; short socket
# timeouts keep a web request from hanging on a broker that is down.
REDIS_OPTIONS: dict[str, Any] = {
    "priority_steps": [0, 3, 6, 9],
    "sep": ":",
    "queue_order_strategy": "priority",
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
}


def broker_settings(settings: Any) -> dict[str, Any]:
    """Redis (or any URL) when configured; otherwise a file-system queue under var/."""
    options: dict[str, Any] = {"visibility_timeout": settings.CELERY_VISIBILITY_TIMEOUT}
    if settings.CELERY_BROKER_URL:
        if settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
            options.update(REDIS_OPTIONS)
        return {"broker_url": settings.CELERY_BROKER_URL, "broker_transport_options": options}
    folder = Path(settings.CELERY_BROKER_FOLDER)
    for sub in ("queue", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    options.update(
        {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    )
    return {"broker_url": "filesystem://", "broker_transport_options": options}


def celery_config() -> dict[str, Any]:
    """The configuration, read from Django's settings the first time Celery needs it."""
    from django.conf import settings

    return dict(
        **broker_settings(settings),
        # A task is acknowledged only after it ran, and requeued if its worker died: every
        # task is written to be safe to run twice (it claims its rows first).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.CELERY_TASK_SOFT_TIME_LIMIT,
        task_time_limit=settings.CELERY_TASK_TIME_LIMIT,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_connection_retry_on_startup=True,
        # Publishing must never hang a web request when the broker is down.
        broker_connection_timeout=3,
        broker_connection_max_retries=1,
        task_publish_retry=False,
        # Celery's Django fix-up closes the database connection around every task unless told
        # to keep it: a new connection for every batch of emails cost 3-4 ms. Kept for this many
        # tasks, then opened again; a connection that broke meanwhile is dropped before the
        # next task (see reuse_usable_connections).
        CELERY_DB_REUSE_MAX=DB_REUSE_MAX,
        timezone=settings.TIME_ZONE,
        beat_schedule_filename=settings.CELERY_BEAT_SCHEDULE_FILE,
        beat_schedule=beat_schedule(settings),
    )


def beat_schedule(settings: Any) -> dict[str, dict[str, Any]]:
    schedule: dict[str, dict[str, Any]] = {
        "messaging-sweep": {
            "task": "messaging.tasks.sweep",
            "schedule": settings.UMS_SWEEP_INTERVAL,
        },
        "import-jobs-sweep": {"task": "users_app.tasks.import_jobs_sweep", "schedule": 300.0},
        "messaging-purge": {"task": "messaging.tasks.purge", "schedule": 3600.0},
        "callbacks-collect": {
            "task": "messaging.callback_tasks.callbacks_collect_task",
            "schedule": 10.0,
        },
        "callbacks-sweep": {
            "task": "messaging.callback_tasks.callbacks_sweep_task",
            "schedule": 30.0,
        },
    }
    if settings.UMS_SENDER_HEALTH_INTERVAL:
        schedule["senders-check-health"] = {
            "task": "channels_app.tasks.senders_check_health",
            "schedule": 60.0,
        }
    return schedule


DB_REUSE_MAX = 100


@task_prerun.connect
def reuse_usable_connections(**_kwargs: Any) -> None:
    """Before a task, drop a kept database connection that no longer works (the database was
    restarted, or the previous task was stopped in the middle of a query), so that the task
    opens a new one instead of failing on its first query."""
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        if conn.connection is not None and not conn.in_atomic_block and not conn.is_usable():
            conn.close()


app.add_defaults(celery_config)
app.autodiscover_tasks()
