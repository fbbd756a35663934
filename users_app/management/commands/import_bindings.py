"""Import users, email bindings and tags from an .xlsx or .csv file, with a progress bar."""

import sys
from pathlib import Path
from typing import Any

from django.core.files import File
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from users_app import importer, services
from users_app.models import ImportJob, ImportRowError
from users_app.reports import error_report_workbook
from users_app.validation import FieldError

SHOWN_ERRORS = 20


class Command(BaseCommand):
    help = (
        "Import a spreadsheet of userid, email (and optional bind_id, tag) columns. Nothing is "
        "written when any row is rejected; exit status 1 then."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument(
            "--bind-id", default="all", help="Default bind_id: all or a ChannelKey."
        )
        parser.add_argument("--dry-run", action="store_true", help="Check the file; write nothing.")
        parser.add_argument(
            "--report", type=Path, help="Write the rejected rows to this .xlsx file."
        )
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args: Any, **opts: Any) -> None:
        job = self._create(opts["file"], opts["bind_id"])
        bar = tqdm(total=job.total_rows, unit="rows", disable=opts["no_progress"], file=sys.stderr)
        importer.job_validate(job, progress=lambda done: bar.update(done - bar.n))
        bar.close()
        self._summary(job)
        if opts["report"] and job.error_count:
            with opts["report"].open("wb") as out:
                error_report_workbook(job, out)
            self.stdout.write(f"Rejected rows written to {opts['report']}")
        if job.status != ImportJob.Status.VALIDATED:
            services.import_job_discard(job)
            raise SystemExit(1)
        if opts["dry_run"]:
            services.import_job_discard(job)
            self.stdout.write("Dry run: nothing was written.")
            return
        importer.job_apply(job)
        self.stdout.write(self.style.SUCCESS(f"Imported {job.applied_rows} rows."))

    def _create(self, path: Path, bind_id: str) -> ImportJob:
        if not path.is_file():
            raise CommandError(f"No file at {path}.")
        try:
            with path.open("rb") as handle:
                return services.import_job_create(
                    file=File(handle), original_name=path.name, default_bind_id=bind_id
                )
        except FieldError as exc:
            raise CommandError(str(exc)) from exc

    def _summary(self, job: ImportJob) -> None:
        if job.status == ImportJob.Status.FAILED:
            self.stderr.write(f"Refused: {job.message}")
            return
        self.stdout.write(
            f"{job.total_rows} rows: {job.new_count} new, {job.updated_count} updated, "
            f"{job.unchanged_count} unchanged, {job.error_count} rejected."
        )
        for error in ImportRowError.objects.filter(job=job)[:SHOWN_ERRORS]:
            self.stdout.write(
                f"  row {error.row}, column {error.column}: {error.reason} ({error.value!r})"
            )
        if job.error_count > SHOWN_ERRORS:
            self.stdout.write(f"  … and {job.error_count - SHOWN_ERRORS} more.")
