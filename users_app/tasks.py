"""Background work on uploads. Tasks take ids and call the importer."""

from celery import shared_task

from users_app import importer
from users_app.models import ImportJob


@shared_task(ignore_result=True)
def import_job_validate(job_id: int) -> str | None:
    # VALIDATING too: a task redelivered after its worker died starts the validation again.
    statuses = [ImportJob.Status.QUEUED, ImportJob.Status.VALIDATING]
    job = ImportJob.objects.filter(pk=job_id, status__in=statuses).first()
    if job is None:  # already handled: a duplicate delivery finds nothing to do
        return None
    return importer.job_validate(job).status


@shared_task(ignore_result=True)
def import_job_apply(job_id: int) -> str | None:
    job = ImportJob.objects.filter(pk=job_id).first()
    if job is None:
        return None
    return importer.job_apply(job).status
