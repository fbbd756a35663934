"""Build upload files for the tests: real .xlsx workbooks and .csv files, and hostile ones."""

import csv
import io
import zipfile
from pathlib import Path

from openpyxl import Workbook

HEADER = ["userid", "email", "bind_id", "tag"]


def xlsx_bytes(rows: list[list], header: list[str] | None = None) -> bytes:
    workbook = Workbook()
    sheet = workbook.active
    sheet.append(header or HEADER)
    for row in rows:
        sheet.append(row)
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def csv_bytes(rows: list[list], header: list[str] | None = None, encoding: str = "utf-8") -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header or HEADER)
    writer.writerows(rows)
    return out.getvalue().encode(encoding)


def write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def zip_bomb() -> bytes:
    """A small .xlsx whose sheet unpacks to a huge size."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")
        archive.writestr(
            "xl/worksheets/sheet1.xml", b"<row>" + b"A" * (50 * 1024 * 1024) + b"</row>"
        )
    return out.getvalue()


def entity_bomb() -> bytes:
    """A real workbook whose sheet XML declares entities (billion laughs)."""
    source = zipfile.ZipFile(io.BytesIO(xlsx_bytes([["u1", "a@example.com", "", ""]])))
    out = io.BytesIO()
    doctype = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
        b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
    )
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":
                body = data.split(b"?>", 1)[1] if data.startswith(b"<?xml") else data
                data = doctype + body.replace(b"a@example.com", b"&lol3;")
            archive.writestr(item, data)
    return out.getvalue()
