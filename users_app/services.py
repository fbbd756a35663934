"""Writes for users and bindings that the console, the command line and tasks share."""

import logging
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files import File
from django.db import transaction
from django.utils.translation import gettext as _
from kombu.exceptions import OperationalError

from channels_app.models import Channel
from users_app import importer
from users_app.models import ALL_SCOPE, ImportJob, UserEmailBinding, UserTag
from users_app.validation import FieldError, clean_bind_id

logger = logging.getLogger(__name__)


def import_job_create(
    *,
    file: File,
    original_name: str,
    default_bind_id: str = ALL_SCOPE,
    created_by: AbstractBaseUser | None = None,
) -> ImportJob:
    keys = set(Channel.objects.values_list("channel_key", flat=True))
    bind_id = clean_bind_id(default_bind_id, channel_keys=keys)
    job = ImportJob(
        original_name=original_name[:255], default_bind_id=bind_id, created_by=created_by
    )
    job.file.save(Path(original_name).name or "upload", file, save=False)
    job.total_rows = importer.estimate_rows(Path(job.file.path))
    job.save()
    return job


def import_job_runs_inline(job: ImportJob) -> bool:
    """Small files are handled in the request; large or unknown ones in a background job."""
    return job.total_rows is not None and job.total_rows <= settings.UMS_IMPORT_SYNC_ROWS


def import_job_start(job: ImportJob) -> ImportJob:
    """Validate now (small file) or queue the validation (large file)."""
    if import_job_runs_inline(job):
        return importer.job_validate(job)
    from users_app import tasks

    _enqueue(job, tasks.import_job_validate)
    return job


def import_job_confirm(job: ImportJob) -> ImportJob:
    if job.status != ImportJob.Status.VALIDATED:
        raise FieldError(
            "status", _("Only a validated upload without rejected rows can be imported.")
        )
    if import_job_runs_inline(job):
        return importer.job_apply(job)
    from users_app import tasks

    _enqueue(job, tasks.import_job_apply)
    return job


def import_job_discard(job: ImportJob) -> None:
    importer.job_discard_staging(job)
    ImportJob.objects.filter(pk=job.pk).update(status=ImportJob.Status.DISCARDED)
    job.status = ImportJob.Status.DISCARDED


def import_job_delete(*, job: ImportJob) -> None:
    """Delete an upload with its file and staging rows."""
    importer.job_discard_staging(job)
    if job.file:
        job.file.delete(save=False)
    job.delete()


def _enqueue(job: ImportJob, task: object) -> None:
    def publish() -> None:
        try:
            task.delay(job.pk)
        except OperationalError:
            logger.exception("could not queue upload %s", job.pk)
            ImportJob.objects.filter(pk=job.pk).update(
                status=ImportJob.Status.FAILED,
                message=_("The task queue is not reachable; upload the file again later."),
            )

    transaction.on_commit(publish)


def channel_delete_bindings(*, channel: Channel) -> int:
    """A deleted channel takes its bindings and tags with it (bind_id is its key)."""
    deleted, _by_model = UserEmailBinding.objects.filter(bind_id=channel.channel_key).delete()
    tags, _by_model = UserTag.objects.filter(bind_id=channel.channel_key).delete()
    return deleted + tags
