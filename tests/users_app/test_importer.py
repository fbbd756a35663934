"""The spreadsheet import service: validation, duplicates, scopes, atomicity, hostile files."""

import io
import zipfile
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


def test_new_and_known_users_in_one_file_both_get_their_bindings_and_tags(tmp_path, channel):
    key = channel.channel_key
    first = csv_bytes([["u1", "a@example.com", "", "old"], ["u1", "a-shop@example.com", key, ""]])
    importer.job_apply(upload(tmp_path, "v1.csv", first))

    job = upload(
        tmp_path,
        "v2.csv",
        csv_bytes(
            [
                ["u2", "b@example.com", "", "new"],
                ["u1", "a-shop2@example.com", key, "vip"],
                ["u1", "a@example.com", "", "old"],
                ["u3", "c@example.com", key, "new, vip"],
            ]
        ),
    )
    importer.job_apply(job)

    assert (job.new_count, job.updated_count, job.unchanged_count) == (2, 1, 1)
    assert bindings() == {
        ("u1", "all", "a@example.com"),
        ("u1", key, "a-shop2@example.com"),
        ("u2", "all", "b@example.com"),
        ("u3", key, "c@example.com"),
    }
    assert set(UserTag.objects.values_list("user__userid", "bind_id", "tag")) == {
        ("u1", "all", "old"),
        ("u1", key, "vip"),
        ("u2", "all", "new"),
        ("u3", key, "new"),
        ("u3", key, "vip"),
    }
    assert UmsUser.objects.count() == 3


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


# --- the .xlsx reader -------------------------------------------------------------------------


def openpyxl_rows(path: Path) -> list[list]:
    """What openpyxl's read-only mode gives for the same file, trailing empty cells left off."""
    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        return [trimmed(row) for row in workbook.worksheets[0].iter_rows(values_only=True)]
    finally:
        workbook.close()


def trimmed(row) -> list:
    row = list(row)
    while row and row[-1] is None:
        row.pop()
    return row


def our_rows(path: Path) -> list[list]:
    return [trimmed(row) for row in importer.read_rows(path)]


def test_the_reader_gives_what_openpyxl_gives_for_every_kind_of_cell(tmp_path):
    from datetime import date, datetime, time

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "users"
    sheet.append(["userid", "email", "bind_id", "tag", "n", "when"])
    sheet.append(
        ["  spaced  ", "A@Example.COM", None, "客户, 重要", 10001, datetime(2024, 5, 6, 7, 8)]
    )
    sheet.append([10002.0, "b@example.com", "all", True, 1.5, date(2024, 1, 31)])
    sheet.append([None, None, None, None, None, None])
    sheet.append(["=1+1", "c@example.com", "", "x" * 40, -3, time(9, 30)])
    sheet["B9"] = "far below, one cell only"
    sheet["D9"] = "and a gap before it"
    sheet["H2"] = 1e20
    sheet["A10"] = "'=quoted"
    workbook.create_sheet("second").append(["not", "read"])
    path = tmp_path / "kinds.xlsx"
    workbook.save(path)

    rows = our_rows(path)

    assert rows == openpyxl_rows(path)
    assert rows[1][:2] == ["  spaced  ", "A@Example.COM"]
    assert rows[2][0] == 10002 and type(rows[2][0]) is int
    assert rows[3] == [] and rows[8][3] == "and a gap before it"


def test_the_reader_reads_inline_strings_as_openpyxl_writes_them(tmp_path):
    workbook = openpyxl.Workbook(write_only=True)
    sheet = workbook.create_sheet()
    sheet.append(["userid", "email"])
    for i in range(300):
        sheet.append([f"u{i}", f"u{i}@example.com", None, "vip" if i % 2 else None])
    path = tmp_path / "inline.xlsx"
    workbook.save(path)

    assert our_rows(path) == openpyxl_rows(path)
    assert len(our_rows(path)) == 301


def handmade_xlsx(
    sheet: str, strings: str = "", *, prefix: str = "", workbook_pr: str = "", styles: str = ""
) -> bytes:
    """A workbook from XML written by hand, for what Excel, LibreOffice and others may write."""
    ns = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    pkg = "http://schemas.openxmlformats.org/package/2006/relationships"
    ct = "application/vnd.openxmlformats-officedocument.spreadsheetml"
    decl = f'xmlns{":" + prefix[:-1] if prefix else ""}="{ns}"'
    parts = {
        "[Content_Types].xml": (
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
            'relationships+xml"/><Default Extension="xml" ContentType="application/xml"/>'
            f'<Override PartName="/xl/workbook.xml" ContentType="{ct}.sheet.main+xml"/>'
            f'<Override PartName="/xl/worksheets/sheet1.xml" ContentType="{ct}.worksheet+xml"/>'
            f'<Override PartName="/xl/sharedStrings.xml" ContentType="{ct}.sharedStrings+xml"/>'
            f'<Override PartName="/xl/styles.xml" ContentType="{ct}.styles+xml"/></Types>'
        ),
        "_rels/.rels": (
            f'<Relationships xmlns="{pkg}"><Relationship Id="rId1" Type="{rel}/officeDocument"'
            ' Target="xl/workbook.xml"/></Relationships>'
        ),
        "xl/workbook.xml": (
            f'<{prefix}workbook {decl} xmlns:r="{rel}">{workbook_pr}<{prefix}sheets>'
            f'<{prefix}sheet name="S" sheetId="1" r:id="rId1"/></{prefix}sheets>'
            f"</{prefix}workbook>"
        ),
        "xl/_rels/workbook.xml.rels": (
            f'<Relationships xmlns="{pkg}">'
            f'<Relationship Id="rId1" Type="{rel}/worksheet" Target="worksheets/sheet1.xml"/>'
            f'<Relationship Id="rId2" Type="{rel}/sharedStrings" Target="sharedStrings.xml"/>'
            f'<Relationship Id="rId3" Type="{rel}/styles" Target="styles.xml"/></Relationships>'
        ),
        "xl/worksheets/sheet1.xml": (
            f"<{prefix}worksheet {decl}><{prefix}sheetData>{sheet}</{prefix}sheetData>"
            f"</{prefix}worksheet>"
        ),
        "xl/sharedStrings.xml": f"<{prefix}sst {decl}>{strings}</{prefix}sst>",
        "xl/styles.xml": styles
        or f'<styleSheet xmlns="{ns}"><cellXfs count="1"><xf numFmtId="0"/></cellXfs></styleSheet>',
    }
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in parts.items():
            archive.writestr(name, '<?xml version="1.0" encoding="UTF-8"?>\n' + text)
    return out.getvalue()


@pytest.mark.parametrize("prefix", ["", "x:"])
@pytest.mark.filterwarnings("ignore::UserWarning:openpyxl")
def test_the_reader_handles_rich_text_gaps_and_cells_without_references(tmp_path, prefix):
    p = prefix
    strings = (
        f"<{p}si><{p}t>userid</{p}t></{p}si><{p}si><{p}t>email</{p}t></{p}si>"
        f'<{p}si><{p}r><{p}t>zhang</{p}t></{p}r><{p}r><{p}rPr/><{p}t xml:space="preserve">'
        f' san</{p}t></{p}r><{p}rPh sb="0" eb="1"><{p}t>ちょう</{p}t></{p}rPh></{p}si>'
        f"<{p}si><{p}t>a&amp;b_x005F_x000D_@example.com</{p}t></{p}si>"
    )
    sheet = (
        f'<{p}row r="1"><{p}c r="A1" t="s"><{p}v>0</{p}v></{p}c>'
        f'<{p}c r="B1" t="s"><{p}v>1</{p}v></{p}c></{p}row>'
        f'<{p}row r="2"><{p}c t="s"><{p}v>2</{p}v></{p}c><{p}c t="s"><{p}v>3</{p}v></{p}c>'
        f'<{p}c r="E2" t="inlineStr"><{p}is><{p}r><{p}t>in</{p}t></{p}r><{p}r><{p}t>line</{p}t>'
        f"</{p}r></{p}is></{p}c></{p}row>"
        f'<{p}row r="5"><{p}c r="A5" t="str"><{p}f>A1</{p}f><{p}v>cached</{p}v></{p}c>'
        f'<{p}c r="B5" t="e"><{p}v>#N/A</{p}v></{p}c><{p}c r="C5" t="b"><{p}v>0</{p}v></{p}c>'
        f'<{p}c r="D5"><{p}v>1.25E2</{p}v></{p}c><{p}c r="F5"><{p}f>1/0</{p}f></{p}c>'
        f'<{p}c r="G5" t="s"><{p}v></{p}v></{p}c><{p}c r="AB5"><{p}v>7</{p}v></{p}c></{p}row>'
        f"<{p}row><{p}c><{p}v>42</{p}v></{p}c></{p}row>"
        f'<{p}row r="3"><{p}c t="str"><{p}v>going back</{p}v></{p}c></{p}row>'
    )
    path = write(tmp_path, "hand.xlsx", handmade_xlsx(sheet, strings, prefix=prefix))

    rows = our_rows(path)

    assert rows == openpyxl_rows(path)
    assert rows[1][:2] == ["zhang san", "a&b_x000D_@example.com"]
    assert rows[1][4] == "inline"
    assert rows[2:4] == [[], []]
    assert rows[4][:4] == ["cached", "#N/A", False, 125.0] and rows[4][27] == 7
    assert rows[5] == [42]


@pytest.mark.filterwarnings("ignore::UserWarning:openpyxl")
def test_the_reader_turns_date_styles_into_dates_in_both_calendars(tmp_path):
    from datetime import datetime

    ns = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    styles = (
        f'<styleSheet xmlns="{ns}"><numFmts count="1"><numFmt numFmtId="164" '
        'formatCode="yyyy-mm-dd"/></numFmts><cellXfs count="3"><xf numFmtId="0"/>'
        '<xf numFmtId="164"/><xf numFmtId="14"/></cellXfs></styleSheet>'
    )
    sheet = (
        '<row r="1"><c r="A1" s="1"><v>45292</v></c><c r="B1" s="2"><v>45292.5</v></c>'
        '<c r="C1" s="0"><v>45292</v></c><c r="D1" s="1"><v>-1E300</v></c></row>'
    )
    for workbook_pr, day in (("", 1), ('<workbookPr date1904="1"/>', 2)):
        path = write(
            tmp_path, "dates.xlsx", handmade_xlsx(sheet, workbook_pr=workbook_pr, styles=styles)
        )
        rows = our_rows(path)
        assert rows == openpyxl_rows(path)
        assert rows[0][2] == 45292
        assert rows[0][0].date() == datetime(2024 + 4 * (day - 1), 1, day).date()


@pytest.mark.parametrize(
    "part", ["xl/worksheets/sheet1.xml", "xl/sharedStrings.xml", "xl/workbook.xml"]
)
def test_a_doctype_in_any_part_is_refused_before_anything_is_written(tmp_path, part):
    content = handmade_xlsx(
        '<row r="1"><c t="s"><v>0</v></c><c t="s"><v>1</v></c></row>'
        '<row r="2"><c><v>1</v></c><c t="inlineStr"><is><t>a@example.com</t></is></c></row>',
        "<si><t>userid</t></si><si><t>email</t></si>",
    )
    source = zipfile.ZipFile(io.BytesIO(content))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == part:
                body = data.split(b"?>", 1)[1]
                data = b'<?xml version="1.0"?><!DOCTYPE x SYSTEM "file:///etc/passwd">' + body
            archive.writestr(item, data)
    assert upload(tmp_path, "clean.xlsx", content).status == ImportJob.Status.VALIDATED

    job = upload(tmp_path, "doctype.xlsx", out.getvalue())

    assert job.status == ImportJob.Status.FAILED
    assert "cannot be read" in job.message
    assert not UmsUser.objects.exists()


@pytest.fixture
def read_ahead(monkeypatch):
    """Every file read by a child process, as large files are."""
    monkeypatch.setattr(importer, "READ_AHEAD_ROWS", 0)
    assert importer.reads_ahead(ImportJob(total_rows=1))


def test_a_file_read_by_a_child_process_gives_the_same_result(tmp_path, read_ahead, monkeypatch):
    monkeypatch.setattr(importer, "BATCH_ROWS", 5_000)
    rows = [[f"u{i}", f"u{i}@example.com", "", "vip" if i % 3 else ""] for i in range(7_000)]
    rows[6_500] = ["bad user", "x@example.com", "", ""]
    seen: list[int] = []
    path = write(tmp_path, "large.xlsx", xlsx_bytes(rows))
    with path.open("rb") as handle:
        job = services.import_job_create(file=File(handle), original_name="large.xlsx")

    importer.job_validate(job, progress=seen.append)

    assert job.status == ImportJob.Status.REJECTED
    assert (job.total_rows, job.error_count, seen) == (7_000, 1, [5_000, 7_000])
    assert errors(job) == [(6_502, "userid", errors(job)[0][2])]

    clean = upload(tmp_path, "clean.xlsx", xlsx_bytes(rows[:6_500]))
    importer.job_apply(clean)
    assert UserEmailBinding.objects.count() == 6_500
    assert UserTag.objects.count() == sum(1 for i in range(6_500) if i % 3)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("entities.xlsx", entity_bomb(), "cannot be read"),
        ("bomb.xlsx", zip_bomb(), "zip bomb"),
        ("random.xlsx", bytes(range(256)) * 10, "neither"),
        ("header-only.csv", b"userid,email\r\n", "no data rows"),
    ],
)
def test_a_child_process_refuses_hostile_files_too(tmp_path, read_ahead, name, content, message):
    job = upload(tmp_path, name, content)

    assert job.status == ImportJob.Status.FAILED
    assert message in job.message
    assert not UmsUser.objects.exists()


def test_a_reader_that_dies_fails_the_upload_with_a_message(tmp_path, read_ahead, monkeypatch):
    import os

    def die(path):  # a generator, as the reader is: it runs when the child reads
        os._exit(3)
        yield

    monkeypatch.setattr(importer, "_xlsx_rows", die)
    job = upload(tmp_path, "users.xlsx", xlsx_bytes([["u1", "a@example.com", "", ""]]))

    assert job.status == ImportJob.Status.FAILED
    assert "cannot be read here (the reading process stopped, exit 3)" in job.message


def test_a_workbook_without_a_worksheet_is_refused(tmp_path):
    content = handmade_xlsx('<row r="1"><c t="inlineStr"><is><t>userid</t></is></c></row>')
    source = zipfile.ZipFile(io.BytesIO(content))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "xl/_rels/workbook.xml.rels":
                data = data.replace(b'/worksheet"', b'/chartsheet"')
            archive.writestr(item, data)

    job = upload(tmp_path, "charts.xlsx", out.getvalue())

    assert job.status == ImportJob.Status.FAILED
    assert "cannot be read (NoWorksheet)" in job.message


def _rows_read_ahead(path: str) -> int:
    return sum(1 for _row in importer.read_rows_ahead(Path(path)))


def test_a_celery_pool_worker_can_read_ahead(tmp_path):
    """Celery's prefork workers are daemonic processes, where multiprocessing refuses children."""
    import billiard

    path = write(
        tmp_path, "users.csv", csv_bytes([[f"u{i}", f"u{i}@example.com"] for i in range(50)])
    )
    with billiard.Pool(1) as pool:
        assert pool.apply(_rows_read_ahead, (str(path),)) == 51


def test_rows_no_longer_wanted_stop_the_reading_process(tmp_path, monkeypatch):
    import os

    forked: list[int] = []
    fork = os.fork
    monkeypatch.setattr(os, "fork", lambda: forked.append(fork()) or forked[-1])
    path = write(
        tmp_path, "big.csv", csv_bytes([[f"u{i}", f"u{i}@example.com"] for i in range(200_000)])
    )

    rows = importer.read_rows_ahead(path)
    assert next(rows) == ["userid", "email", "bind_id", "tag"]
    rows.close()

    with pytest.raises(ChildProcessError):  # killed and reaped: no process left behind
        os.waitpid(forked[0], os.WNOHANG)
