"""A real Celery worker process runs the project's tasks, with either broker."""

from pathlib import Path

import pytest

from channels_app import tasks
from channels_app.models import EmailSender
from tests.processes import celery_worker, child_env, publish, wait_for

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def filesystem_broker(tmp_path: Path) -> tuple[Path, dict]:
    folder = tmp_path / "broker"
    options = {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "control_folder": str(folder / "control"),
        "store_processed": False,
    }
    for sub in ("queue", "control"):
        (folder / sub).mkdir(parents=True)
    return folder, options


def health(sender: EmailSender) -> str:
    sender.refresh_from_db()
    return sender.health if sender.health_checked_at else ""


def test_worker_on_the_file_system_broker_runs_a_sender_check(
    plain_server, make_sender, tmp_path: Path
):
    """The `make run` setup: no broker server, yet a separate worker process does the work."""
    sender = make_sender(plain_server, account="", password="")
    folder, options = filesystem_broker(tmp_path)
    log = tmp_path / "worker.log"

    with celery_worker(child_env(CELERY_BROKER_FOLDER=str(folder)), log):
        publish(tasks.sender_check, sender.pk, url="filesystem://", transport_options=options)
        wait_for(lambda: health(sender), timeout=60, what="the worker's sender check", log_path=log)

    assert sender.health == EmailSender.Health.OK


@pytest.mark.redis
def test_worker_on_redis_runs_the_periodic_health_check(
    redis_url, plain_server, make_sender, tmp_path: Path
):
    due = make_sender(plain_server, account="", password="")
    disabled = make_sender(plain_server, account="", password="", is_enabled=False)
    log = tmp_path / "worker.log"

    with celery_worker(child_env(CELERY_BROKER_URL=redis_url), log):
        publish(tasks.senders_check_health, url=redis_url)
        wait_for(lambda: health(due), timeout=60, what="the periodic health check", log_path=log)

    assert due.health == EmailSender.Health.OK
    assert health(disabled) == ""
    assert plain_server.recorder.connections == 1


@pytest.mark.redis
def test_worker_keeps_its_database_connection_and_replaces_it_once_broken(
    redis_url, plain_server, make_sender, tmp_path: Path
):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("ends the worker's database session from PostgreSQL")
    first = make_sender(plain_server, account="", password="")
    second = make_sender(plain_server, account="", password="")
    log = tmp_path / "worker.log"

    with celery_worker(child_env(CELERY_BROKER_URL=redis_url), log):
        publish(tasks.sender_check, first.pk, url=redis_url)
        wait_for(lambda: health(first), timeout=60, what="the first task", log_path=log)
        # The worker kept its session after the task; end it, as a database restart would.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            workers = [pid for (pid,) in cursor.fetchall()]
            cursor.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s) AS pid", [workers])
        publish(tasks.sender_check, second.pk, url=redis_url)
        wait_for(lambda: health(second), timeout=60, what="the next task", log_path=log)

    assert len(workers) == 1
    assert (first.health, second.health) == (EmailSender.Health.OK, EmailSender.Health.OK)


def test_worker_checks_and_imports_a_large_upload(tmp_path: Path):
    from django.core.files import File

    from tests.users_app.files import csv_bytes, write
    from users_app import services as user_services
    from users_app import tasks as user_tasks
    from users_app.models import ImportJob, UserEmailBinding

    rows = [[f"u{i}", f"u{i}@example.com", "", "bulk"] for i in range(7000)]
    path = write(tmp_path, "large.csv", csv_bytes(rows))
    with path.open("rb") as handle:
        job = user_services.import_job_create(file=File(handle), original_name="large.csv")
    folder, options = filesystem_broker(tmp_path)
    log = tmp_path / "worker.log"

    def status() -> str:
        job.refresh_from_db()
        return job.status

    with celery_worker(child_env(CELERY_BROKER_FOLDER=str(folder)), log):
        publish(
            user_tasks.import_job_validate, job.pk, url="filesystem://", transport_options=options
        )
        wait_for(
            lambda: status() == ImportJob.Status.VALIDATED,
            timeout=60,
            what="validation",
            log_path=log,
        )
        publish(user_tasks.import_job_apply, job.pk, url="filesystem://", transport_options=options)
        wait_for(
            lambda: status() == ImportJob.Status.DONE, timeout=60, what="the import", log_path=log
        )

    assert job.processed_rows == 7000
    assert UserEmailBinding.objects.count() == 7000


def test_worker_collects_callbacks_and_posts_them_to_the_url(
    plain_server, make_sender, tmp_path: Path
):
    """The callbacks' tasks are registered with the project's worker (no --include needed)."""
    from django.utils import timezone

    from channels_app import services as channel_services
    from channels_app.models import CallbackUrl
    from messaging import callback_tasks
    from messaging.models import CallbackBatch, Delivery, Message
    from tests.http_server import CallbackServer

    channel, _secret = channel_services.channel_create(name="Shop")
    sender = make_sender(plain_server, account="", password="")
    channel_services.channel_authorize_sender(channel=channel, sender=sender, is_default=True)
    folder, options = filesystem_broker(tmp_path)
    log = tmp_path / "worker.log"

    with CallbackServer() as server:
        CallbackUrl.objects.create(channel=channel, url=server.url(), verified_at=timezone.now())
        message = Message.objects.create(
            channel=channel,
            sender=sender,
            source=Message.Source.API,
            subject="Hello",
            callback={"url": server.url()},
            status=Message.Status.DONE,
        )
        Delivery.objects.create(
            message=message,
            userid="ann",
            email="ann@example.com",
            status=Delivery.Status.SENT,
            sent_at=timezone.now(),
            callback_due=True,
        )
        with celery_worker(child_env(CELERY_BROKER_FOLDER=str(folder)), log):
            publish(
                callback_tasks.callbacks_collect_task,
                url="filesystem://",
                transport_options=options,
            )
            wait_for(
                lambda: CallbackBatch.objects.filter(
                    status=CallbackBatch.Status.DELIVERED
                ).exists(),
                timeout=60,
                what="the callback batch to be delivered",
                log_path=log,
            )

        [request] = server.requests
    assert [(r["userid"], r["type"]) for r in request.json()] == [("ann", 0), ("ann", 2)]
    assert request.headers["x-ums-signature"].startswith("sha256=")
