"""The spreadsheet import service: validation, duplicates, scopes, atomicity, hostile files."""

import io
from pathlib import Path

import openpyxl
import pytest
from django.core.files import File

from channels_app import services as channel_services
from tests.users_app.files import csv_bytes, entity_bomb, write, xlsx_bytes, zip_bomb
from users_app import importer, services, tasks
from users_app.models import ImportJob, ImportRowError, UmsUser, UserEmailBinding, UserTag
from users_app.reports import error_report_workbook

pytestmark = pytest.mark.django_db


def upload(tmp_path: Path, name: str, content: bytes, bind_id: str = "all") -> ImportJob:
    path = write(tmp_path, name, content)
    with path.open("rb") as handle:
        job = services.import_job_create(
            file=File(handle), original_name=name, default_bind_id=bind_id
        )
    return importer.job_validate(job)


def bindings() -> set[tuple[str, str, str]]:
    return set(UserEmailBinding.objects.values_list("user__userid", "bind_id", "email"))


def errors(job: ImportJob) -> list[tuple[int, str, str]]:
    return list(ImportRowError.objects.filter(job=job).values_list("row", "column", "reason"))


@pytest.fixture
def channel(db):
    return channel_services.channel_create(name="Shop")[0]


def test_clean_file_previews_then_applies(tmp_path, channel):
    job = upload(
        tmp_path,
        "users.xlsx",
        xlsx_bytes(
            [
                ["zhangsan", "ZS@Example.COM", "", "vip, beijing"],
                ["zhangsan", "zs-shop@example.com", channel.channel_key, ""],
                ["lisi", "lisi@例子.公司", "all", "new"],
            ]
        ),
    )

    assert job.status == ImportJob.Status.VALIDATED
    assert (job.total_rows, job.new_count, job.updated_count, job.error_count) == (3, 3, 0, 0)
    assert not UserEmailBinding.objects.exists()  # the preview writes nothing

    importer.job_apply(job)

    assert bindings() == {
        ("zhangsan", "all", "ZS@example.com"),
        ("zhangsan", channel.channel_key, "zs-shop@example.com"),
        ("lisi", "all", "lisi@xn--fsqu00a.xn--55qx5d"),
    }
    assert set(UserTag.objects.values_list("user__userid", "tag")) == {
        ("zhangsan", "vip"),
        ("zhangsan", "beijing"),
        ("lisi", "new"),
    }
    assert job.status == ImportJob.Status.DONE


@pytest.mark.parametrize(
    ("row", "column", "reason"),
    [
        (["zhang san", "a@example.com", "", ""], "userid", "only letters"),
        (["u" * 65, "a@example.com", "", ""], "userid", "64"),
        (["", "a@example.com", "", ""], "userid", "required"),
        (["u1", "not-an-address", "", ""], "email", "not a valid address"),
        (["u1", "a@example.com\r\nBcc: x@evil.example", "", ""], "email", "line breaks"),
        (["u1", "", "", ""], "email", "required"),
        (["u1", "a@example.com", "nosuchchannelkey", ""], "bind_id", "ChannelKey"),
        (["u1", "a@example.com", "", "标签" * 7], "tag", "40 bytes"),
    ],
)
def test_each_kind_of_bad_row_is_named_and_nothing_is_written(tmp_path, row, column, reason):
    job = upload(tmp_path, "bad.xlsx", xlsx_bytes([["ok1", "ok@example.com", "", ""], row]))

    assert job.status == ImportJob.Status.REJECTED
    [(number, error_column, error_reason)] = errors(job)
    assert (number, error_column) == (3, column)
    assert reason in error_reason

    assert services.import_job_runs_inline(job)
    with pytest.raises(ValueError, match="validated"):
        services.import_job_confirm(job)
    assert not UmsUser.objects.exists()


def test_conflicting_duplicate_is_an_error_naming_the_first_row(tmp_path):
    job = upload(
        tmp_path,
        "dupes.csv",
        csv_bytes(
            [
                ["u1", "a@example.com", "all", ""],
                ["u2", "b@example.com", "all", ""],
                ["u1", "other@example.com", "all", ""],
            ]
        ),
    )

    assert job.status == ImportJob.Status.REJECTED
    [(row, column, reason)] = errors(job)
    assert (row, column) == (4, "email")
    assert "row 2" in reason


def test_identical_repeats_are_merged(tmp_path):
    job = upload(
        tmp_path,
        "repeats.csv",
        csv_bytes([["u1", "a@example.com", "", "x"], ["u1", "a@example.com", "", "y"]]),
    )

    importer.job_apply(job)

    assert bindings() == {("u1", "all", "a@example.com")}
    assert set(UserTag.objects.values_list("tag", flat=True)) == {"x", "y"}


def test_reuploading_the_same_file_changes_nothing(tmp_path, channel):
    content = xlsx_bytes(
        [["u1", "a@example.com", channel.channel_key, "vip"], ["u2", "b@example.com", "", ""]]
    )
    importer.job_apply(upload(tmp_path, "first.xlsx", content))
    before = list(UserEmailBinding.objects.order_by("pk").values("pk", "email", "updated_at"))

    second = upload(tmp_path, "second.xlsx", content)
    importer.job_apply(second)

    assert (second.new_count, second.updated_count, second.unchanged_count) == (0, 0, 2)
    assert (
        list(UserEmailBinding.objects.order_by("pk").values("pk", "email", "updated_at")) == before
    )
    assert UserTag.objects.count() == 1


def test_a_changed_address_counts_as_updated(tmp_path):
    importer.job_apply(upload(tmp_path, "v1.csv", csv_bytes([["u1", "old@example.com", "", ""]])))

    job = upload(tmp_path, "v2.csv", csv_bytes([["u1", "new@example.com", "", ""]]))
    importer.job_apply(job)

    assert job.updated_count == 1
    assert bindings() == {("u1", "all", "new@example.com")}


def test_the_form_default_bind_id_applies_to_empty_cells(tmp_path, channel):
    job = upload(
        tmp_path,
        "scoped.csv",
        csv_bytes([["u1", "a@example.com", "", ""], ["u2", "b@example.com", "all", ""]]),
        bind_id=channel.channel_key,
    )
    importer.job_apply(job)

    assert bindings() == {
        ("u1", channel.channel_key, "a@example.com"),
        ("u2", "all", "b@example.com"),
    }


def test_columns_may_come_in_any_order_and_without_optional_ones(tmp_path):
    job = upload(
        tmp_path, "two.xlsx", xlsx_bytes([["a@example.com", 10001]], header=["Email", "UserID"])
    )
    importer.job_apply(job)

    assert bindings() == {("10001", "all", "a@example.com")}


def test_missing_required_column_is_refused(tmp_path):
    job = upload(tmp_path, "nouser.csv", csv_bytes([["a@example.com"]], header=["email"]))

    assert job.status == ImportJob.Status.FAILED
    assert "userid" in job.message


def test_csv_saved_by_chinese_excel_is_read(tmp_path):
    job = upload(
        tmp_path, "gbk.csv", csv_bytes([["u1", "a@example.com", "", "会员"]], encoding="gb18030")
    )
    importer.job_apply(job)

    assert list(UserTag.objects.values_list("tag", flat=True)) == ["会员"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("random.xlsx", bytes(range(256)) * 10, "neither"),
        ("old.xls", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 512, ".xls"),
        ("bomb.xlsx", zip_bomb(), "zip bomb"),
        ("entities.xlsx", entity_bomb(), "cannot be read"),
        ("empty.csv", b"", "empty"),
        ("header-only.csv", b"userid,email\r\n", "no data rows"),
    ],
)
def test_hostile_or_unreadable_files_are_refused_with_a_message(tmp_path, name, content, message):
    job = upload(tmp_path, name, content)

    assert job.status == ImportJob.Status.FAILED
    assert message in job.message
    assert not UmsUser.objects.exists()


def test_xml_entities_are_refused_by_defusedxml():
    from openpyxl.xml import DEFUSEDXML

    assert DEFUSEDXML is True


def test_files_over_the_size_limit_are_refused(tmp_path, settings):
    settings.UMS_IMPORT_MAX_BYTES = 100
    job = upload(
        tmp_path, "big.csv", csv_bytes([["u1", f"user{i}@example.com", "", ""] for i in range(20)])
    )

    assert job.status == ImportJob.Status.FAILED
    assert "larger than" in job.message


def test_large_files_are_validated_by_a_background_task_with_progress(
    tmp_path, settings, django_capture_on_commit_callbacks
):
    settings.UMS_IMPORT_SYNC_ROWS = 10
    rows = [[f"u{i}", f"u{i}@example.com", "", ""] for i in range(12_000)] + [
        ["bad user", "x@example.com", "", ""]
    ]
    path = write(tmp_path, "large.csv", csv_bytes(rows))
    with path.open("rb") as handle:
        job = services.import_job_create(file=File(handle), original_name="large.csv")
    assert job.total_rows == 12_001

    with django_capture_on_commit_callbacks() as callbacks:
        services.import_job_start(job)
    job.refresh_from_db()
    assert len(callbacks) == 1 and job.status == ImportJob.Status.QUEUED

    seen: list[int] = []
    importer.job_validate(job, progress=seen.append)

    assert seen[0] == importer.BATCH_ROWS and seen[-1] == 12_001
    assert job.status == ImportJob.Status.REJECTED
    report = io.BytesIO()
    error_report_workbook(job, report)
    sheet = openpyxl.load_workbook(io.BytesIO(report.getvalue())).active
    assert [c.value for c in sheet[2]] == [12_002, "userid", "bad user", sheet[2][3].value]
    assert "only letters" in sheet[2][3].value


def test_the_validate_task_ignores_a_job_already_handled(tmp_path):
    job = upload(tmp_path, "done.csv", csv_bytes([["u1", "a@example.com", "", ""]]))

    assert tasks.import_job_validate(job.pk) is None  # VALIDATED already: nothing to redo


def test_applying_twice_writes_once(tmp_path):
    job = upload(tmp_path, "once.csv", csv_bytes([["u1", "a@example.com", "", ""]]))
    importer.job_apply(job)
    importer.job_apply(job)

    assert UserEmailBinding.objects.count() == 1


def test_error_report_escapes_formulas(tmp_path):
    job = upload(
        tmp_path, "evil.csv", csv_bytes([['=HYPERLINK("http://evil")', "a@example.com", "", ""]])
    )
    report = io.BytesIO()
    error_report_workbook(job, report)

    sheet = openpyxl.load_workbook(io.BytesIO(report.getvalue())).active
    assert sheet["C2"].value.startswith("'=")
    assert sheet["C2"].data_type == "s"


def test_deleting_a_channel_deletes_its_bindings(tmp_path, channel):
    importer.job_apply(
        upload(
            tmp_path,
            "scoped.csv",
            csv_bytes(
                [
                    ["u1", "a@example.com", channel.channel_key, "t"],
                    ["u1", "b@example.com", "all", ""],
                ]
            ),
        )
    )

    channel_services.channel_delete(channel=channel)

    assert bindings() == {("u1", "all", "b@example.com")}
    assert not UserTag.objects.exists()


def test_an_export_uploads_again_unchanged(tmp_path):
    importer.job_apply(
        upload(tmp_path, "v1.csv", csv_bytes([["@vip", "=odd@example.com", "", ""]]))
    )
    from users_app.resources import BindingResource

    exported = BindingResource().export().export("csv").encode()
    job = upload(tmp_path, "again.csv", exported)

    assert (job.status, job.unchanged_count, job.new_count) == (ImportJob.Status.VALIDATED, 1, 0)


def test_the_uploaded_file_is_deleted_once_checked(tmp_path):
    job = upload(tmp_path, "users.csv", csv_bytes([["u1", "a@example.com", "", ""]]))

    assert job.status == ImportJob.Status.VALIDATED
    assert not job.file
    assert not list((tmp_path.parent).glob("**/imports/**/users*.csv"))


def test_a_channel_deleted_before_confirming_is_not_written_to(tmp_path, channel):
    job = upload(
        tmp_path, "scoped.csv", csv_bytes([["u1", "a@example.com", channel.channel_key, ""]])
    )
    channel_services.channel_delete(channel=channel)

    importer.job_apply(job)

    assert job.status == ImportJob.Status.FAILED
    assert "was deleted" in job.message
    assert not UserEmailBinding.objects.exists()


def test_a_worker_that_cannot_read_the_file_fails_the_upload(tmp_path):
    path = write(tmp_path, "users.csv", csv_bytes([["u1", "a@example.com", "", ""]]))
    with path.open("rb") as handle:
        job = services.import_job_create(file=File(handle), original_name="users.csv")
    Path(job.file.path).unlink()  # as on a worker that does not share the uploads folder

    importer.job_validate(job)

    assert job.status == ImportJob.Status.FAILED
    assert "cannot be read here" in job.message


def test_a_job_is_given_up_after_three_attempts(tmp_path):
    path = write(tmp_path, "users.csv", csv_bytes([["u1", "a@example.com", "", ""]]))
    with path.open("rb") as handle:
        job = services.import_job_create(file=File(handle), original_name="users.csv")
    ImportJob.objects.filter(pk=job.pk).update(status=ImportJob.Status.VALIDATING, attempts=3)

    assert tasks.import_job_validate(job.pk) is None

    job.refresh_from_db()
    assert job.status == ImportJob.Status.FAILED
    assert "Gave up after 3 attempts" in job.message


def test_lost_and_abandoned_uploads_are_queued_again(tmp_path, monkeypatch, settings):
    from datetime import timedelta

    from django.utils import timezone

    queued: list[int] = []
    monkeypatch.setattr(tasks.import_job_validate, "delay", queued.append)
    path = write(tmp_path, "users.csv", csv_bytes([["u1", "a@example.com", "", ""]]))
    with path.open("rb") as handle:
        lost = services.import_job_create(file=File(handle), original_name="users.csv")
    with path.open("rb") as handle:
        fresh = services.import_job_create(file=File(handle), original_name="users.csv")
    ImportJob.objects.filter(pk=lost.pk).update(created_at=timezone.now() - timedelta(hours=1))

    assert tasks.import_jobs_sweep() == 1
    assert queued == [lost.pk]
    assert fresh.pk not in queued
