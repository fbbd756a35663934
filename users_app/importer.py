"""Streaming import of users, email bindings and tags from .xlsx and .csv files.

Two phases, so a preview can be shown before anything changes:

1. validate: stream the file row by row (constant memory), clean each row with the shared
   validators, and write the good rows to staging tables in batches (PostgreSQL `COPY`, a bulk
   insert elsewhere) and the bad ones to ImportRowError. Conflicting duplicates are found in SQL.
   .xlsx sheets are parsed with expat directly (no openpyxl objects); a large file is read by a
   child process while this one checks and writes, so the two run on two cores.
2. apply: one transaction of set-based `INSERT … ON CONFLICT` statements from staging.

A file with any rejected row is not applied: a half-broken upload changes nothing.
"""

import contextlib
import csv
import os
import posixpath
import re
import signal
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from xml.parsers import expat

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.translation import gettext as _

from channels_app.models import Channel
from ums.formats import size_label
from users_app.models import ALL_SCOPE, ImportJob, ImportRow, ImportRowError
from users_app.validation import FieldError, clean_bind_id, clean_email, clean_tags, clean_userid

COLUMNS = ("userid", "email", "bind_id", "tag")
REQUIRED_COLUMNS = ("userid", "email")
COLUMN_ALIASES = {"tags": "tag", "bindid": "bind_id", "bind id": "bind_id", "user_id": "userid"}
BATCH_ROWS = 10_000  # rows per staging batch: one COPY, one commit, one progress update
MAX_STORED_ERRORS = 50_000
MAX_COMPRESSION_RATIO = 1000

Progress = Callable[[int], None]


class FileRefused(ValueError):
    """The file is not something we will read (wrong type, too large, hostile)."""


class NoWorksheet(LookupError):
    """A workbook whose sheets are all chart sheets, or missing."""


class ReaderStopped(OSError):
    """The child process reading a file ended without finishing (killed, out of memory)."""


# --- reading -----------------------------------------------------------------------------------


def read_rows(path: Path) -> Iterator[list[Any]]:
    """The rows of the first sheet of an .xlsx file, or of a .csv file, as lists of cells."""
    if path.stat().st_size > settings.UMS_IMPORT_MAX_BYTES:
        raise FileRefused(
            _("The file is larger than the limit of %(size)s.")
            % {"size": size_label(settings.UMS_IMPORT_MAX_BYTES)}
        )
    with path.open("rb") as handle:
        magic = handle.read(8)
    if magic.startswith(b"PK\x03\x04"):
        return _xlsx_rows(path)
    if magic.startswith(b"\xd0\xcf\x11\xe0"):
        raise FileRefused(_("Old .xls files are not supported: save the file as .xlsx."))
    return _csv_rows(path)


def _check_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except zipfile.BadZipFile:
        raise FileRefused(_("The file is not a valid .xlsx workbook.")) from None
    if "xl/workbook.xml" not in {m.filename for m in members}:
        raise FileRefused(_("The file is a zip archive but not an .xlsx workbook."))
    unzipped = sum(m.file_size for m in members)
    if unzipped > settings.UMS_IMPORT_MAX_UNZIPPED_BYTES:
        raise FileRefused(_("The workbook unpacks to more data than allowed; it was not read."))
    for member in members:
        if member.compress_size and member.file_size / member.compress_size > MAX_COMPRESSION_RATIO:
            raise FileRefused(_("The workbook looks like a zip bomb; it was not read."))


def _unreadable(exc: Exception) -> FileRefused:
    # The exception's text can hold server paths: only its kind is shown.
    return FileRefused(
        _("The workbook cannot be read (%(kind)s): it is damaged or uses refused XML features.")
        % {"kind": exc.__class__.__name__}
    )


def _xlsx_rows(path: Path) -> Iterator[list[Any]]:
    """The first worksheet's rows, parsed straight from its XML with the standard library's expat.

    openpyxl (what this replaced) builds an element tree and a cell object per cell, which made
    reading most of an import's time; this gives the same values from the same XML, with the same
    refusals: the zip checks first, and no DTD, entity declaration or external entity in any XML
    part (the rules that defusedxml applies for openpyxl).
    """
    _check_zip(path)
    try:
        with zipfile.ZipFile(path) as archive:
            book = _workbook(archive)
            strings = _shared_strings(archive, book.strings) if book.strings else []
            yield from _sheet_rows(archive, book, strings)
    except (FileRefused, OSError):
        raise
    except Exception as exc:
        raise _unreadable(exc) from exc


SHEET_NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
DOC_REL_NS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
PKG_REL_NS = "http://schemas.openxmlformats.org/package/2006/relationships"
XML_CHUNK = 1 << 18


@dataclass
class _Workbook:
    sheet: str
    strings: str | None
    epoch: Any
    date_styles: frozenset[int]
    timedelta_styles: frozenset[int]


def _workbook(archive: zipfile.ZipFile) -> _Workbook:
    """Where the first worksheet and the shared strings are, and which cell styles are dates."""
    from defusedxml.ElementTree import fromstring
    from openpyxl.utils.datetime import CALENDAR_MAC_1904, CALENDAR_WINDOWS_1900

    workbook = fromstring(archive.read("xl/workbook.xml"), forbid_dtd=True)
    rels = fromstring(archive.read("xl/_rels/workbook.xml.rels"), forbid_dtd=True)
    targets: dict[str, tuple[str, str]] = {}
    for rel in rels.iter(f"{{{PKG_REL_NS}}}Relationship"):
        target = rel.get("Target", "")
        name = target.lstrip("/") if target.startswith("/") else posixpath.join("xl", target)
        targets[rel.get("Id", "")] = (rel.get("Type", ""), posixpath.normpath(name))
    names = set(archive.namelist())
    sheet = next(
        (
            targets[ref][1]
            for entry in workbook.iter(f"{{{SHEET_NS}}}sheet")
            if (ref := entry.get(f"{{{DOC_REL_NS}}}id")) in targets
            and targets[ref][0].endswith("/worksheet")
            and targets[ref][1] in names
        ),
        None,
    )
    if sheet is None:
        raise NoWorksheet
    strings = next(
        (name for kind, name in targets.values() if kind.endswith("/sharedStrings")), None
    )
    properties = workbook.find(f"{{{SHEET_NS}}}workbookPr")
    date1904 = properties is not None and properties.get("date1904", "") not in (
        "",
        "false",
        "f",
        "0",
    )
    dates, timedeltas = _date_styles(archive)
    return _Workbook(
        sheet=sheet,
        strings=strings if strings in names else None,
        epoch=CALENDAR_MAC_1904 if date1904 else CALENDAR_WINDOWS_1900,
        date_styles=dates,
        timedelta_styles=timedeltas,
    )


def _date_styles(archive: zipfile.ZipFile) -> tuple[frozenset[int], frozenset[int]]:
    """The cell styles whose number format is a date or a duration, as openpyxl reads them."""
    from openpyxl.styles.stylesheet import Stylesheet
    from openpyxl.xml.functions import fromstring

    try:
        source = archive.read("xl/styles.xml")
    except KeyError:
        return frozenset(), frozenset()
    stylesheet = Stylesheet.from_tree(fromstring(source))
    if not stylesheet.cell_styles:
        return frozenset(), frozenset()
    return frozenset(stylesheet.date_formats), frozenset(stylesheet.timedelta_formats)


def _expat() -> Any:
    """An expat parser that refuses what defusedxml refuses: DTDs, entities, external entities."""
    from defusedxml import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden

    def doctype(name: str, sysid: str | None, pubid: str | None, _internal: bool) -> None:
        raise DTDForbidden(name, sysid, pubid)

    def entity(name: str, *_args: Any) -> None:
        raise EntitiesForbidden(name, None, None, None, None, None)

    def external(context: str, base: str | None, sysid: str | None, pubid: str | None) -> None:
        raise ExternalReferenceForbidden(context, base, sysid, pubid)

    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = entity
    parser.UnparsedEntityDeclHandler = entity
    parser.ExternalEntityRefHandler = external
    parser.buffer_text = True
    parser.buffer_size = XML_CHUNK
    return parser


Handlers = tuple[
    Callable[[str, dict[str, str]], None], Callable[[str], None], Callable[[str], None]
]


def _parse_part(
    archive: zipfile.ZipFile, name: str, handlers: Callable[[str | None], Handlers]
) -> Iterator[None]:
    """Feed a part of the workbook to expat in chunks, pausing after each one.

    Element names are matched as written (expat's namespace processing costs a quarter of the
    time): `handlers` gets the prefix that the root element declares for the spreadsheet
    namespace ("" when it is the default namespace, None when it is not declared there, so
    nothing matches) and returns the start, end and text handlers.
    """
    parser = _expat()

    def root(tag: str, attrs: dict[str, str]) -> None:
        prefix = next(
            (
                "" if key == "xmlns" else f"{key[6:]}:"
                for key, value in attrs.items()
                if value == SHEET_NS and (key == "xmlns" or key.startswith("xmlns:"))
            ),
            None,
        )
        start, end, data = handlers(prefix)
        parser.StartElementHandler = start
        parser.EndElementHandler = end
        parser.CharacterDataHandler = data
        start(tag, attrs)

    parser.StartElementHandler = root
    with archive.open(name) as source:
        while True:
            chunk = source.read(XML_CHUNK)
            parser.Parse(chunk, not chunk)
            yield
            if not chunk:
                return


def _shared_strings(archive: zipfile.ZipFile, name: str) -> list[str]:
    """The shared-strings table: the text of each <si>, its runs joined, phonetic runs left out."""
    strings: list[str] = []
    parts: list[str] = []
    capture = False
    phonetic = 0
    item_tag = text_tag = phonetic_tag = None

    def handlers(prefix: str | None) -> Handlers:
        nonlocal item_tag, text_tag, phonetic_tag
        if prefix is not None:
            item_tag, text_tag, phonetic_tag = f"{prefix}si", f"{prefix}t", f"{prefix}rPh"
        return start, end, data

    def start(tag: str, _attrs: dict[str, str]) -> None:
        nonlocal capture, phonetic
        if tag == text_tag:
            capture = not phonetic
        elif tag == item_tag:
            parts.clear()
        elif tag == phonetic_tag:
            phonetic += 1

    def end(tag: str) -> None:
        nonlocal capture, phonetic
        if tag == text_tag:
            capture = False
        elif tag == item_tag:
            text = "".join(parts)
            # openpyxl drops this escape's prefix from shared strings; so do we, to read alike.
            strings.append(text.replace("x005F_", "") if "x005F_" in text else text)
        elif tag == phonetic_tag:
            phonetic -= 1

    def data(text: str) -> None:
        if capture:
            parts.append(text)

    for _chunk in _parse_part(archive, name, handlers):
        pass
    return strings


# Column numbers of the references that start with one letter and a digit ("B7", "D1000"),
# looked up without parsing the reference; longer column names take the general way.
SHORT_COLUMNS = {f"{chr(65 + i)}{d}": i + 1 for i in range(26) for d in range(10)}


def _sheet_rows(
    archive: zipfile.ZipFile, book: _Workbook, strings: list[str]
) -> Iterator[list[Any]]:
    """The rows of a worksheet as lists of values, read as openpyxl's read-only mode does:
    missing cells are None, missing rows are empty lists (so a row's position stays its number),
    numbers are int or float, styled dates are datetimes, formulas give their cached value."""
    from openpyxl.utils.cell import column_index_from_string
    from openpyxl.utils.datetime import from_excel, from_ISO8601

    row_tag = cell_tag = value_tag = inline_tag = text_tag = phonetic_tag = None
    finished: list[tuple[int, list[Any]]] = []
    cells: list[Any] = []
    raw: str | None = None  # the text of the cell being read; None: it has no value
    row_number = column = phonetic = 0
    kind, style, inline, capture = "n", None, False, False

    def handlers(prefix: str | None) -> Handlers:
        nonlocal row_tag, cell_tag, value_tag, inline_tag, text_tag, phonetic_tag
        if prefix is not None:
            row_tag, cell_tag, value_tag = f"{prefix}row", f"{prefix}c", f"{prefix}v"
            inline_tag, text_tag, phonetic_tag = f"{prefix}is", f"{prefix}t", f"{prefix}rPh"
        return start, end, data

    def start(tag: str, attrs: dict[str, str]) -> None:
        nonlocal row_number, column, phonetic, kind, style, raw, inline, capture, cells
        if tag == cell_tag:
            ref = attrs.get("r")
            if ref:
                column = SHORT_COLUMNS.get(ref[:2]) or column_index_from_string(
                    ref.rstrip("0123456789")
                )
            else:
                column += 1
            kind = attrs.get("t", "n")
            style = attrs.get("s")
            raw = None
            inline = False
        elif tag == value_tag:
            if kind != "inlineStr":
                raw = ""
                capture = True
        elif tag == row_tag:
            number = attrs.get("r")
            if number is None:
                row_number += 1
            else:
                try:
                    row_number = int(number)
                except ValueError:
                    value = float(number)
                    if not value.is_integer():
                        raise
                    row_number = int(value)
            column = 0
            cells = []
        elif tag == inline_tag:
            if kind == "inlineStr":
                raw = ""
                inline = True
        elif tag == text_tag:
            capture = inline and not phonetic
        elif tag == phonetic_tag:
            phonetic += 1

    def end(tag: str) -> None:
        nonlocal capture, phonetic, inline
        if tag == value_tag:
            capture = False
        elif tag == cell_tag:
            if inline:
                value = raw
            elif raw:
                value = strings[int(raw)] if kind == "s" else typed(raw)
            else:
                value = None
            width = len(cells)
            if column > width:
                if column > width + 1:
                    cells.extend([None] * (column - width - 1))
                cells.append(value)
            else:
                cells[column - 1] = value
        elif tag == row_tag:
            finished.append((row_number, cells))
        elif tag == text_tag:
            capture = False
        elif tag == inline_tag:
            inline = False
        elif tag == phonetic_tag:
            phonetic -= 1

    def data(chunk: str) -> None:
        nonlocal raw
        if capture:
            raw += chunk

    def typed(raw: str) -> Any:
        if kind == "n":
            number = float(raw) if "." in raw or "E" in raw or "e" in raw else int(raw)
            if style and int(style) in book.date_styles:
                try:
                    return from_excel(
                        number, book.epoch, timedelta=int(style) in book.timedelta_styles
                    )
                except (OverflowError, ValueError):
                    return "#VALUE!"  # as openpyxl gives a date cell out of range
            return number
        if kind == "b":
            return bool(int(raw))
        if kind == "d":
            return from_ISO8601(raw)
        return raw  # "str" (a formula's text), "e" (an error such as #N/A)

    last = 0
    for _chunk in _parse_part(archive, book.sheet, handlers):
        for number, row in finished:
            if number <= last:
                continue  # a row number going back: skipped, as openpyxl does
            while last < number - 1:
                last += 1
                yield []
            last = number
            yield row
        finished.clear()


def _csv_rows(path: Path) -> Iterator[list[Any]]:
    with path.open("rb") as raw:
        sample = raw.read(64 * 1024)
    if b"\x00" in sample:
        raise FileRefused(_("The file is neither an .xlsx workbook nor a .csv text file."))
    encoding = "utf-8-sig"
    try:
        sample.decode(encoding)
    except UnicodeDecodeError as exc:
        if exc.start < len(sample) - 4:  # not just a character cut by the sample's end
            encoding = "gb18030"  # Excel on Chinese Windows saves CSV in GBK
    with path.open(encoding=encoding, newline="") as handle:
        try:
            yield from csv.reader(handle)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise FileRefused(
                _("The CSV file is malformed: %(error)s") % {"error": _short(exc)}
            ) from exc


def _short(exc: BaseException) -> str:
    return str(exc)[:200] or exc.__class__.__name__


# --- reading in a second process ----------------------------------------------------------------

READ_AHEAD_ROWS = 20_000  # files estimated above this (or not at all) are read by a child process
PIPE_BATCH_ROWS = 1000
PIPE_BYTES = 1 << 20  # Linux pipe buffer asked for, so the reader runs ahead while we write


def reads_ahead(job: ImportJob) -> bool:
    """Whether a job's file is read in a child process while this one checks and stages rows.

    Reading is most of the work on a large file and runs on one core; the checking and the
    database writes then use another. Only where fork() is safe and cheap (Linux), and not for
    small files, for which starting a process costs more than it saves.
    """
    if sys.platform != "linux":
        return False
    return job.total_rows is None or job.total_rows > READ_AHEAD_ROWS


def read_rows_ahead(path: Path) -> Iterator[list[Any]]:
    """The rows of read_rows(path), read by a forked child process and handed over in batches.

    The file checks run here first (size, type), so a refused file never starts a process. The
    child only parses; it never touches the database (its inherited connection stays unused),
    and is killed when the rows are not wanted any more (an error, a time limit). A plain fork,
    not multiprocessing.Process, which refuses to start in Celery's pool workers (daemonic).
    """
    import fcntl
    from multiprocessing.connection import Connection

    read_rows(path).close()  # the checks that need no parsing raise here, before any fork
    read_end, write_end = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_end, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    pid = os.fork()
    if pid == 0:  # the child: read, send, and leave without running any of the parent's code
        code = 1
        try:
            os.close(read_end)
            for number in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
                signal.signal(number, signal.SIG_DFL)  # not the worker's handlers
            _read_into_pipe(path, Connection(write_end, readable=False))
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    receiver = Connection(read_end, writable=False)
    status: int | None = None
    try:
        while True:
            try:
                kind, payload = receiver.recv()
            except EOFError:
                _pid, status = os.waitpid(pid, 0)
                code = os.waitstatus_to_exitcode(status)
                raise ReaderStopped(f"the reading process stopped, exit {code}") from None
            if kind == "rows":
                yield from payload
            elif kind == "end":
                return
            elif kind == "refused":
                raise FileRefused(payload)
            else:
                raise OSError(*payload)
    finally:
        receiver.close()
        if status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _read_into_pipe(path: Path, sender: Any) -> None:
    """The child process: read the file and send its rows in batches, or why it cannot be read."""
    try:
        batch: list[list[Any]] = []
        for row in read_rows(path):
            batch.append(row)
            if len(batch) == PIPE_BATCH_ROWS:
                sender.send(("rows", batch))
                batch = []
        sender.send(("rows", batch))
        sender.send(("end", None))
    except FileRefused as exc:
        sender.send(("refused", str(exc)))
    except OSError as exc:
        sender.send(("oserror", (exc.errno, exc.strerror)))
    finally:
        sender.close()


def map_header(cells: list[Any]) -> dict[str, int]:
    """Column positions by name, from the header row."""
    positions: dict[str, int] = {}
    for index, cell in enumerate(cells):
        name = str(cell or "").strip().lower()
        name = COLUMN_ALIASES.get(name, name)
        if name in COLUMNS and name not in positions:
            positions[name] = index
    missing = [name for name in REQUIRED_COLUMNS if name not in positions]
    if missing:
        raise FileRefused(
            _("The first row must name the columns userid and email (missing: %(missing)s).")
            % {"missing": ", ".join(missing)}
        )
    return positions


# --- phase 1: validate into staging ----------------------------------------------------------


STAGED_COLUMNS = ("job_id", "row", "userid", "bind_id", "email", "tags")


@dataclass
class Staging:
    """The good rows of a file on their way to the staging table, its errors, and the counts.

    On PostgreSQL each batch of rows is one COPY, open while its rows are cleaned: the server
    inserts them as they come in, while this process cleans the next ones, instead of after the
    batch while this one waits. Elsewhere a batch is inserted at its end. A batch ends with its
    errors and one commit. Used as a context manager, it rolls back a batch left open by an error.
    """

    job: ImportJob
    rows: list[tuple] = field(default_factory=list)
    errors: list[ImportRowError] = field(default_factory=list)
    read: int = 0
    error_count: int = 0
    _batch: contextlib.ExitStack | None = None
    _stream: contextlib.ExitStack | None = None
    _copy: Any = None

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._stream is not None:
            self._stream.__exit__(*exc_info)
        if self._batch is not None:
            self._batch.__exit__(*exc_info)
        self._batch = self._stream = self._copy = None

    def add(self, row: tuple) -> None:
        """A cleaned row: (job_id, row, userid, bind_id, email, tags joined by commas)."""
        if self._batch is None:
            self._begin()
        if self._copy is not None:
            self._copy.write_row(row)
        else:
            self.rows.append(row)

    def add_error(self, row: int, column: str, value: Any, reason: str) -> None:
        self.error_count += 1
        if self.error_count <= MAX_STORED_ERRORS:
            text = "" if value is None else str(value)
            self.errors.append(
                ImportRowError(
                    job=self.job, row=row, column=column, value=text[:200], reason=reason[:300]
                )
            )

    def _begin(self) -> None:
        self._batch = contextlib.ExitStack()
        self._batch.enter_context(transaction.atomic())  # one commit per batch, not per row
        if connection.vendor == "postgresql":
            self._stream = contextlib.ExitStack()
            cursor = self._stream.enter_context(connection.cursor())
            table = ImportRow._meta.db_table
            sql = f"COPY {table} ({', '.join(STAGED_COLUMNS)}) FROM STDIN"
            self._copy = self._stream.enter_context(cursor.cursor.copy(sql))

    def flush(self) -> None:
        """End the batch: the rest of its rows, its errors, its commit."""
        if self._batch is None:
            if not self.errors:
                return
            self._batch = contextlib.ExitStack()
            self._batch.enter_context(transaction.atomic())
        if self._stream is not None:
            self._stream.close()  # the end of the COPY: waits for the server's last inserts
        if self.rows:
            table = ImportRow._meta.db_table
            placeholders = ", ".join(["%s"] * len(STAGED_COLUMNS))
            sql = f"INSERT INTO {table} ({', '.join(STAGED_COLUMNS)}) VALUES ({placeholders})"  # noqa: S608
            with connection.cursor() as cursor:
                cursor.executemany(sql, self.rows)
        ImportRowError.objects.bulk_create(self.errors, batch_size=BATCH_ROWS)
        self._batch.close()  # the commit
        self.rows, self.errors = [], []
        self._batch = self._stream = self._copy = None


def job_validate(job: ImportJob, *, progress: Progress | None = None) -> ImportJob:
    """Read and check the whole file into staging; the job ends VALIDATED, REJECTED or FAILED.

    The uploaded file is deleted afterwards (it holds people's addresses; staging has the rows).
    """
    job_discard_staging(job, errors=True)
    _set(
        job,
        status=ImportJob.Status.VALIDATING,
        started_at=timezone.now(),
        processed_rows=0,
        error_count=0,
        message="",
        attempts=F("attempts") + 1,
    )
    try:
        staging = _stage_file(job, progress)
    except FileRefused as exc:
        job_finish(job, status=ImportJob.Status.FAILED, message=str(exc))
        return job
    except OSError as exc:  # e.g. a worker that does not share the uploads folder
        message = _("The uploaded file cannot be read here (%(error)s).")
        job_finish(
            job, status=ImportJob.Status.FAILED, message=message % {"error": exc.strerror or exc}
        )
        return job
    _analyze_staging()
    conflicts, counts = _check_staged(job)
    error_count = staging.error_count + conflicts
    rows = {"total_rows": staging.read, "processed_rows": staging.read, "error_count": error_count}
    if error_count:
        job_finish(job, status=ImportJob.Status.REJECTED, **rows, **counts)
    else:
        job.file.delete(save=False)
        _set(
            job,
            status=ImportJob.Status.VALIDATED,
            file="",
            finished_at=timezone.now(),
            **rows,
            **counts,
        )
    return job


def _stage_file(job: ImportJob, progress: Progress | None) -> Staging:
    path = Path(job.file.path)
    reader = read_rows_ahead(path) if reads_ahead(job) else read_rows(path)
    staging = Staging(job=job)
    with contextlib.closing(reader) as rows, staging:  # closing stops a reading child at once
        header = next(rows, None)
        if header is None:
            raise FileRefused(_("The file is empty."))
        positions = map_header(header)
        channel_keys = set(Channel.objects.values_list("channel_key", flat=True))
        stage_row = RowCleaner(staging, positions, channel_keys)
        for number, cells in enumerate(rows, start=2):
            if not stage_row(number, cells):
                continue  # blank lines are not rows
            staging.read += 1
            if staging.read % BATCH_ROWS == 0:
                staging.flush()
                _set(job, processed_rows=staging.read, error_count=staging.error_count)
                if progress:
                    progress(staging.read)
        staging.flush()
    if progress:
        progress(staging.read)
    if staging.read == 0:
        raise FileRefused(_("The file has a header row but no data rows."))
    return staging


CACHED_CELLS = 10_000  # distinct bind_id and tag cells of a file whose cleaning is remembered


def _unquoted(value: Any) -> Any:
    # Our exports quote cells that would run as formulas ('=…); take them back as they were.
    if type(value) is str and len(value) > 1 and value[0] == "'" and value[1] in "=+-@":
        return value[1:]
    return value


class RowCleaner:
    """Cleans the rows of one file into staging, with the shared validators.

    The column positions are looked up once, and the bind_id and tag cells, which repeat from
    row to row, are cleaned once per distinct text (the validators depend on nothing else).
    """

    def __init__(self, staging: Staging, positions: dict[str, int], channel_keys: set[str]) -> None:
        self.staging = staging
        self.positions = positions
        self.userid_at = positions["userid"]
        self.email_at = positions["email"]
        self.bind_id_at = positions.get("bind_id", -1)
        self.tag_at = positions.get("tag", -1)
        self.channel_keys = channel_keys
        self.default_bind_id = staging.job.default_bind_id
        self.job_id = staging.job.pk
        self.scopes: dict[str, str | FieldError] = {}
        self.tags: dict[str, tuple[str, ...] | FieldError] = {}

    def __call__(self, number: int, cells: list[Any]) -> bool:
        """Stage a row, or its error; False for a blank row, which is not a row at all."""
        width = len(cells)
        userid = cells[self.userid_at] if self.userid_at < width else None
        if (userid is None or userid == "") and all(cell in (None, "") for cell in cells):
            return False
        staging = self.staging
        try:
            userid = clean_userid(_unquoted(userid))
            email = clean_email(_unquoted(cells[self.email_at]) if self.email_at < width else None)
            bind_id = self._scope(cells[self.bind_id_at] if 0 <= self.bind_id_at < width else None)
            tag_cell = cells[self.tag_at] if 0 <= self.tag_at < width else None
            tags = self._tags(tag_cell) if tag_cell is not None and tag_cell != "" else ()
        except FieldError as exc:
            at = self.positions.get(exc.field, -1)
            value = _unquoted(cells[at]) if 0 <= at < width else None
            staging.add_error(number, exc.field, value, exc.message)
            return True
        staging.add((self.job_id, number, userid, bind_id, email, ",".join(tags)))
        return True

    def _scope(self, value: Any) -> str:
        return self._cached(self.scopes, value, self._clean_scope)

    def _clean_scope(self, value: Any) -> str:
        return clean_bind_id(
            _unquoted(value), channel_keys=self.channel_keys, default=self.default_bind_id
        )

    def _tags(self, value: Any) -> tuple[str, ...]:
        return self._cached(self.tags, value, lambda cell: tuple(clean_tags(_unquoted(cell))))

    @staticmethod
    def _cached(cache: dict[str, Any], value: Any, clean: Callable[[Any], Any]) -> Any:
        if type(value) is not str:  # numbers, None: not worth it (and 1 == True as a key)
            return clean(value)
        result = cache.get(value)
        if result is None:
            try:
                result = clean(value)
            except FieldError as exc:
                result = exc
            if len(cache) < CACHED_CELLS:
                cache[value] = result
        if isinstance(result, FieldError):
            raise FieldError(result.field, result.message)  # a new one: no traceback piling up
        return result


def _analyze_staging() -> None:
    """Fresh statistics after the COPY: without them PostgreSQL takes a million staged rows for a
    few hundred and joins them to the users one index lookup at a time."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE users_app_importrow")


def _check_staged(job: ImportJob) -> tuple[int, dict[str, int]]:
    """Conflicting duplicates, and how the staged bindings compare with the stored ones (new,
    updated, unchanged), in one pass over the staged rows; the conflicts are listed only if any.

    A conflict is a row that gives a (userid, bind_id) another email than its first row did.
    """
    # A window over the staged rows: one sort, on PostgreSQL and SQLite alike (a grouped
    # subquery joined back to the rows was re-evaluated per row by SQLite's planner).
    sql = """
        SELECT
            COALESCE(SUM(CASE WHEN s.email <> s.first_email THEN 1 ELSE 0 END), 0),
            COALESCE(SUM(CASE WHEN s.n = 1 AND b.id IS NULL THEN 1 ELSE 0 END), 0),
            COALESCE(SUM(CASE WHEN s.n = 1 AND b.email <> s.email THEN 1 ELSE 0 END), 0),
            COALESCE(SUM(CASE WHEN s.n = 1 AND b.email = s.email THEN 1 ELSE 0 END), 0)
        FROM (
            SELECT userid, bind_id, email,
                FIRST_VALUE(email) OVER key_rows AS first_email,
                ROW_NUMBER() OVER key_rows AS n
            FROM users_app_importrow WHERE job_id = %s
            WINDOW key_rows AS (PARTITION BY userid, bind_id ORDER BY row)
        ) s
        LEFT JOIN users_app_umsuser u ON s.n = 1 AND u.userid = s.userid
        LEFT JOIN users_app_useremailbinding b ON b.user_id = u.id AND b.bind_id = s.bind_id
    """
    with transaction.atomic(), connection.cursor() as cursor:
        _set_local_work_mem(cursor)
        cursor.execute(sql, [job.pk])
        conflicts, new, updated, unchanged = cursor.fetchone()
    if conflicts:
        _store_conflicts(job)
    return conflicts, {"new_count": new, "updated_count": updated, "unchanged_count": unchanged}


def _store_conflicts(job: ImportJob) -> None:
    sql = """
        SELECT row, email, first_row FROM (
            SELECT row, email,
                FIRST_VALUE(email) OVER key_rows AS first_email,
                FIRST_VALUE(row) OVER key_rows AS first_row
            FROM users_app_importrow WHERE job_id = %s
            WINDOW key_rows AS (PARTITION BY userid, bind_id ORDER BY row)
        ) ranked
        WHERE email <> first_email
        ORDER BY row
        LIMIT %s
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [job.pk, MAX_STORED_ERRORS])
        conflicts = cursor.fetchall()
    reason = _("a different email for the same userid and bind_id as row %(row)s")
    ImportRowError.objects.bulk_create(
        [
            ImportRowError(
                job=job, row=row, column="email", value=email[:200], reason=reason % {"row": first}
            )
            for row, email, first in conflicts
        ],
        batch_size=BATCH_ROWS,
    )


# Memory for the sorts and hashes over the staged rows (PostgreSQL's default of 4 MB spills a
# million of them to disk several times over); SET LOCAL, so for one transaction only.
WORK_MEM = "128MB"


def _set_local_work_mem(cursor: Any) -> None:
    if connection.vendor == "postgresql":
        cursor.execute(f"SET LOCAL work_mem = '{WORK_MEM}'")
        cursor.execute("SET LOCAL jit = off")  # compiling costs more than it saves on these plans


# --- phase 2: apply --------------------------------------------------------------------------


def job_apply(job: ImportJob) -> ImportJob:
    """Write a validated job's rows in one transaction, then drop its staging rows."""
    # An APPLYING job older than a task's time limit was left by a dead worker (its transaction
    # rolled back), so it may be claimed again.
    abandoned = timezone.now() - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT)
    claimable = Q(status=ImportJob.Status.VALIDATED) | Q(
        status=ImportJob.Status.APPLYING, started_at__lt=abandoned
    )
    claimed = ImportJob.objects.filter(claimable, pk=job.pk).update(
        status=ImportJob.Status.APPLYING, started_at=timezone.now(), attempts=F("attempts") + 1
    )
    if not claimed:  # applied already, or not valid: a second confirm does nothing
        job.refresh_from_db()
        return job
    try:
        with transaction.atomic():
            _check_scopes_still_exist(job)
            applied = _apply_staging(job)
    except FileRefused as exc:
        job_finish(job, status=ImportJob.Status.FAILED, message=str(exc))
        return job
    except Exception as exc:
        job_finish(job, status=ImportJob.Status.FAILED, message=_short(exc))
        raise
    job_finish(job, status=ImportJob.Status.DONE, applied_rows=applied)
    return job


def _check_scopes_still_exist(job: ImportJob) -> None:
    """A channel deleted between the check and the confirmation must not get bindings."""
    staged = set(ImportRow.objects.filter(job=job).values_list("bind_id", flat=True).distinct())
    known = set(
        Channel.objects.filter(channel_key__in=staged).values_list("channel_key", flat=True)
    )
    gone = staged - known - {ALL_SCOPE}
    if gone:
        raise FileRefused(
            _("The channel %(key)s was deleted after the check; upload the file again.")
            % {"key": sorted(gone)[0]}
        )


def job_finish(job: ImportJob, *, status: str, **fields: Any) -> None:
    """End a job: drop its staging rows and the uploaded file (it holds people's addresses)."""
    job_discard_staging(job)
    if job.file:
        job.file.delete(save=False)
    _set(job, status=status, finished_at=timezone.now(), file="", **fields)


def _apply_staging(job: ImportJob) -> int:
    now = timezone.now()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            _apply_postgresql(cursor, job.pk, now, repeats=_has_repeats(job))
        else:
            _apply_portable(cursor, job.pk, now)
        cursor.execute("SELECT COUNT(*) FROM users_app_importrow WHERE job_id = %s", [job.pk])
        return cursor.fetchone()[0]


def _has_repeats(job: ImportJob) -> bool:
    """Whether some (userid, bind_id) has more than one staged row (identical repeats: others are
    refused). The check counted each pair once as new, updated or unchanged, and a validated job
    staged every row it read."""
    counts = (job.new_count, job.updated_count, job.unchanged_count, job.total_rows)
    if None in counts:
        return True
    return job.new_count + job.updated_count + job.unchanged_count != job.total_rows


def _apply_postgresql(cursor: Any, job_id: int, now: Any, *, repeats: bool) -> None:
    """The apply in set-based statements that write each table in the order of its keys.

    Users that this transaction creates get their bindings and tags by plain INSERTs: no other
    transaction can see such a user yet, so none can have written a binding or a tag for it, and
    PostgreSQL's conflict check per row is skipped. The users that existed before take
    `INSERT … ON CONFLICT`, which also covers rows written meanwhile by the API. Without repeated
    rows in the file (the usual case) the staged rows need no grouping.
    """
    staged = (
        "SELECT userid, bind_id, MIN(email) AS email FROM users_app_importrow r "
        "WHERE job_id = %s {known} GROUP BY userid, bind_id"
        if repeats
        else "SELECT userid, bind_id, email FROM users_app_importrow r WHERE job_id = %s {known}"
    )
    known_only = "AND NOT EXISTS (SELECT FROM import_new_user n WHERE n.userid = r.userid)"
    cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # checked per statement, not queued (2M)
    _set_local_work_mem(cursor)
    cursor.execute(
        "CREATE TEMP TABLE import_new_user (id bigint NOT NULL, userid varchar(64) NOT NULL) "
        "ON COMMIT DROP"
    )
    statements = [
        (
            """WITH created AS (
                   INSERT INTO users_app_umsuser (userid, created_at, updated_at)
                   SELECT userid, %s, %s FROM users_app_importrow WHERE job_id = %s
                   GROUP BY userid ORDER BY userid
                   ON CONFLICT (userid) DO NOTHING
                   RETURNING id, userid
               )
               INSERT INTO import_new_user SELECT id, userid FROM created""",
            [now, now, job_id],
        ),
        ("ANALYZE import_new_user", []),
        (
            f"""INSERT INTO users_app_useremailbinding (user_id, bind_id, email, updated_at)
               SELECT n.id, s.bind_id, s.email, %s FROM ({staged.format(known="")}) s
               JOIN import_new_user n ON n.userid = s.userid
               ORDER BY n.id, s.bind_id""",  # noqa: S608 (constant fragments)
            [now, job_id],
        ),
        (
            f"""INSERT INTO users_app_useremailbinding (user_id, bind_id, email, updated_at)
               SELECT u.id, s.bind_id, s.email, %s FROM ({staged.format(known=known_only)}) s
               JOIN users_app_umsuser u ON u.userid = s.userid
               ORDER BY u.id, s.bind_id
               ON CONFLICT (user_id, bind_id) DO UPDATE
               SET email = excluded.email, updated_at = excluded.updated_at
               WHERE users_app_useremailbinding.email <> excluded.email""",  # noqa: S608
            [now, job_id],
        ),
        (
            """INSERT INTO users_app_usertag (user_id, bind_id, tag)
               SELECT DISTINCT n.id, r.bind_id, t.tag FROM users_app_importrow r
               JOIN import_new_user n ON n.userid = r.userid
               CROSS JOIN LATERAL unnest(string_to_array(r.tags, ',')) AS t (tag)
               WHERE r.job_id = %s AND r.tags <> ''
               ORDER BY n.id, r.bind_id, t.tag""",
            [job_id],
        ),
        (
            """INSERT INTO users_app_usertag (user_id, bind_id, tag)
               SELECT DISTINCT u.id, r.bind_id, t.tag FROM users_app_importrow r
               JOIN users_app_umsuser u ON u.userid = r.userid
               CROSS JOIN LATERAL unnest(string_to_array(r.tags, ',')) AS t (tag)
               WHERE r.job_id = %s AND r.tags <> ''
               AND NOT EXISTS (SELECT FROM import_new_user n WHERE n.userid = r.userid)
               ORDER BY u.id, r.bind_id, t.tag
               ON CONFLICT (user_id, bind_id, tag) DO NOTHING""",
            [job_id],
        ),
        ("DROP TABLE import_new_user", []),  # before the commit, for an apply inside a transaction
    ]
    for sql, params in statements:
        cursor.execute(sql, params)


def _apply_portable(cursor: Any, job_id: int, now: Any) -> None:
    """The same writes for other databases (SQLite in development), each table in one statement."""
    statements = [
        (
            """INSERT INTO users_app_umsuser (userid, created_at, updated_at)
               SELECT DISTINCT userid, %s, %s FROM users_app_importrow WHERE job_id = %s
               ON CONFLICT (userid) DO NOTHING""",
            [now, now, job_id],
        ),
        (
            """INSERT INTO users_app_useremailbinding (user_id, bind_id, email, updated_at)
               SELECT u.id, s.bind_id, s.email, %s FROM (
                   SELECT userid, bind_id, MIN(email) AS email FROM users_app_importrow
                   WHERE job_id = %s GROUP BY userid, bind_id
               ) s JOIN users_app_umsuser u ON u.userid = s.userid
               WHERE 1 = 1
               ON CONFLICT (user_id, bind_id) DO UPDATE
               SET email = excluded.email, updated_at = excluded.updated_at
               WHERE users_app_useremailbinding.email <> excluded.email""",
            [now, job_id],
        ),
        (
            # The tags column split with a recursive query: SQLite has no unnest().
            """WITH RECURSIVE split (userid, bind_id, tag, rest) AS (
                   SELECT userid, bind_id, '', tags || ',' FROM users_app_importrow
                   WHERE job_id = %s AND tags <> ''
                   UNION ALL
                   SELECT userid, bind_id, substr(rest, 1, instr(rest, ',') - 1),
                       substr(rest, instr(rest, ',') + 1)
                   FROM split WHERE rest <> ''
               )
               INSERT INTO users_app_usertag (user_id, bind_id, tag)
               SELECT DISTINCT u.id, t.bind_id, t.tag FROM split t
               JOIN users_app_umsuser u ON u.userid = t.userid
               WHERE t.tag <> ''
               ORDER BY u.id, t.bind_id, t.tag
               ON CONFLICT (user_id, bind_id, tag) DO NOTHING""",
            [job_id],
        ),
    ]
    for sql, params in statements:
        cursor.execute(sql, params)


def job_discard_staging(job: ImportJob, *, errors: bool = False) -> None:
    ImportRow.objects.filter(job=job).delete()
    if errors:
        ImportRowError.objects.filter(job=job).delete()


def _set(job: ImportJob, **fields: Any) -> None:
    """Update the job row at once (progress is read by other processes while we work)."""
    ImportJob.objects.filter(pk=job.pk).update(**fields)
    if any(hasattr(value, "resolve_expression") for value in fields.values()):
        job.refresh_from_db()
        return
    for name, value in fields.items():
        setattr(job, name, value)


def estimate_rows(path: Path) -> int | None:
    """A cheap guess of the data rows, to choose between the web request and a background job."""
    try:
        with path.open("rb") as handle:
            if handle.read(4) != b"PK\x03\x04":
                handle.seek(0)
                lines = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
                return max(0, lines - 1)
        _check_zip(path)
        return _xlsx_dimension_rows(path)
    except (OSError, FileRefused, zipfile.BadZipFile, KeyError, ValueError):
        return None


def _xlsx_dimension_rows(path: Path) -> int | None:
    """Rows from the first sheet's <dimension ref="A1:D1000"> (Excel writes it at the start).

    Reading it takes a few hundred bytes, where opening the workbook would parse the whole
    shared-strings table first. No dimension: unknown (the upload then goes to the worker).
    """
    with zipfile.ZipFile(path) as archive:
        sheet = _first_sheet_name(archive)
        with archive.open(sheet) as xml:
            head = xml.read(4096).decode("utf-8", errors="replace")
    match = DIMENSION.search(head)
    if not match:
        return None
    return max(0, int(match.group(1)) - 1)


DIMENSION = re.compile(r'<(?:\w+:)?dimension[^>]*\bref="[A-Z]+\d+:[A-Z]+(\d+)"')
SHEET_ID = re.compile(r'<(?:\w+:)?sheet\b[^>]*\br:id="([^"]+)"')


def _first_sheet_name(archive: zipfile.ZipFile) -> str:
    """The zip member of the workbook's first sheet, as the workbook and its relations say."""
    workbook = archive.read("xl/workbook.xml").decode("utf-8", errors="replace")
    rels = archive.read("xl/_rels/workbook.xml.rels").decode("utf-8", errors="replace")
    first = SHEET_ID.search(workbook)
    if first:
        target = re.search(
            rf'Id="{re.escape(first.group(1))}"[^>]*Target="([^"]+)"', rels
        ) or re.search(rf'Target="([^"]+)"[^>]*Id="{re.escape(first.group(1))}"', rels)
        if target:
            name = target.group(1).lstrip("/")
            return name if name.startswith("xl/") else f"xl/{name}"
    return "xl/worksheets/sheet1.xml"
