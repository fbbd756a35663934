"""Background work on uploads. Tasks take ids and call the importer.

A million-row file takes minutes, so these tasks have their own time limits (below the broker's
visibility timeout, see ums.E005). A job whose worker died is picked up again by the sweep, and
given up after a few attempts rather than retried forever.
"""

from datetime import timedelta

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.utils import timezone
from django.utils.translation import gettext as _

from users_app import importer
from users_app.models import ImportJob

MAX_ATTEMPTS = 3
LIMITS = {
    "soft_time_limit": settings.UMS_IMPORT_TIME_LIMIT,
    "time_limit": settings.UMS_IMPORT_TIME_LIMIT + 60,
}


@shared_task(ignore_result=True, **LIMITS)
def import_job_validate(job_id: int) -> str | None:
    # VALIDATING too: a task redelivered after its worker died starts the validation again.
    statuses = [ImportJob.Status.QUEUED, ImportJob.Status.VALIDATING]
    job = ImportJob.objects.filter(pk=job_id, status__in=statuses).first()
    if job is None or _given_up(job):  # already handled: a duplicate finds nothing to do
        return None
    try:
        return importer.job_validate(job).status
    except SoftTimeLimitExceeded:
        _too_long(job)
        return ImportJob.Status.FAILED


@shared_task(ignore_result=True, **LIMITS)
def import_job_apply(job_id: int) -> str | None:
    job = ImportJob.objects.filter(pk=job_id).first()
    if job is None or _given_up(job):
        return None
    try:
        return importer.job_apply(job).status
    except SoftTimeLimitExceeded:  # the transaction rolled back: nothing was written
        _too_long(job)
        return ImportJob.Status.FAILED


def _given_up(job: ImportJob) -> bool:
    if job.attempts < MAX_ATTEMPTS:
        return False
    importer.job_finish(
        job,
        status=ImportJob.Status.FAILED,
        message=_("Gave up after %(n)d attempts; the worker kept stopping.") % {"n": job.attempts},
    )
    return True


def _too_long(job: ImportJob) -> None:
    importer.job_finish(
        job,
        status=ImportJob.Status.FAILED,
        message=_(
            "Stopped after %(minutes)d minutes (UMS_IMPORT_TIME_LIMIT); nothing was imported. "
            "Split the file, or import it with manage.py import_bindings."
        )
        % {"minutes": settings.UMS_IMPORT_TIME_LIMIT // 60},
    )


@shared_task(ignore_result=True)
def import_jobs_sweep() -> int:
    """Queue again the uploads whose worker died (left validating or importing)."""
    now = timezone.now()
    abandoned = now - timedelta(seconds=settings.UMS_IMPORT_TIME_LIMIT + 120)
    stuck = ImportJob.objects.filter(started_at__lt=abandoned)
    # Queued a while ago and never started: the task was lost (a broker restart).
    lost = ImportJob.objects.filter(
        status=ImportJob.Status.QUEUED,
        started_at__isnull=True,
        created_at__lt=now - timedelta(minutes=10),
    )
    validating = list(stuck.filter(status=ImportJob.Status.VALIDATING).values_list("pk", flat=True))
    validating += list(lost.values_list("pk", flat=True))
    applying = list(stuck.filter(status=ImportJob.Status.APPLYING).values_list("pk", flat=True))
    for job_id in validating:
        import_job_validate.delay(job_id)
    for job_id in applying:
        import_job_apply.delay(job_id)
    return len(validating) + len(applying)
