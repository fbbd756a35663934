"""Spreadsheets that the console hands out: the upload template and the rejected-rows report."""

from typing import IO

from django.utils.translation import gettext as _
from openpyxl import Workbook

from users_app.importer import COLUMNS
from users_app.models import ImportJob, ImportRowError

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def escape_formula(value: object) -> object:
    """Keep a spreadsheet from running a cell as a formula (CSV/formula injection)."""
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


def template_workbook(out: IO[bytes]) -> None:
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet(_("bindings"))
    sheet.append(list(COLUMNS))
    sheet.append(["zhangsan", "zhangsan@example.com", "all", "vip,beijing"])
    sheet.append(["lisi", "lisi@example.com", "", "new"])
    notes = workbook.create_sheet(_("how to fill in"))
    for line in (
        _("Only the first sheet is read. Its first row names the columns; their order is free."),
        _("userid (required): up to 64 letters, digits or _ @ ! # $ & * + = . | ￥"),
        _("email (required): the address to bind."),
        _(
            "bind_id (optional): `all`, or a channel's ChannelKey to bind the address to that "
            "channel only. Empty: the default chosen on the upload form."
        ),
        _("tag (optional): tags separated by commas, each up to 40 bytes."),
        _(
            "The same userid and bind_id twice with different emails is an error; identical "
            "rows are merged."
        ),
    ):
        notes.append([line])
    workbook.save(out)


def error_report_workbook(job: ImportJob, out: IO[bytes]) -> None:
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet(_("rejected rows"))
    sheet.append([_("row"), _("column"), _("value"), _("reason")])
    for error in (
        ImportRowError.objects.filter(job=job).order_by("row", "pk").iterator(chunk_size=5000)
    ):
        sheet.append([error.row, error.column, escape_formula(error.value), error.reason])
    workbook.save(out)
