"""`manage.py import_bindings`: the same import from the command line, with exit codes."""

import openpyxl
import pytest
from django.core.management import call_command

from tests.users_app.files import csv_bytes, write, xlsx_bytes
from users_app.models import ImportJob, UserEmailBinding

pytestmark = pytest.mark.django_db


def run(*args) -> tuple[int, str]:
    from io import StringIO

    out = StringIO()
    try:
        call_command("import_bindings", *args, "--no-progress", stdout=out, stderr=out)
    except SystemExit as exit_:
        return exit_.code, out.getvalue()
    return 0, out.getvalue()


def test_a_clean_file_is_imported_with_exit_status_0(tmp_path):
    path = write(
        tmp_path,
        "users.xlsx",
        xlsx_bytes([["u1", "a@example.com", "", ""], ["u2", "b@example.com", "", ""]]),
    )

    status, output = run(str(path))

    assert status == 0
    assert "2 rows: 2 new" in output
    assert UserEmailBinding.objects.count() == 2


def test_rejected_rows_give_exit_status_1_and_write_nothing(tmp_path):
    path = write(
        tmp_path,
        "bad.csv",
        csv_bytes([["u1", "a@example.com", "", ""], ["u 2", "b@example.com", "", ""]]),
    )
    report = tmp_path / "rejected.xlsx"

    status, output = run(str(path), "--report", str(report))

    assert status == 1
    assert "row 3, column userid" in output
    assert not UserEmailBinding.objects.exists()
    assert openpyxl.load_workbook(report).active["A2"].value == 3


def test_dry_run_checks_without_writing(tmp_path):
    path = write(tmp_path, "users.csv", csv_bytes([["u1", "a@example.com", "", ""]]))

    status, output = run(str(path), "--dry-run")

    assert status == 0
    assert "nothing was written" in output
    assert not UserEmailBinding.objects.exists()
    assert ImportJob.objects.get().status == ImportJob.Status.DISCARDED


def test_an_unknown_bind_id_is_refused(tmp_path):
    from django.core.management import CommandError

    path = write(tmp_path, "users.csv", csv_bytes([["u1", "a@example.com", "", ""]]))
    with pytest.raises(CommandError, match="bind_id"):
        run(str(path), "--bind-id", "000000000000000000000000")


def test_a_refused_file_gives_exit_status_1(tmp_path):
    path = write(tmp_path, "users.csv", b"not,the,right,header\n1,2,3,4\n")

    status, output = run(str(path))

    assert status == 1
    assert "userid and email" in output
