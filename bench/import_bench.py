"""Benchmark of the bindings import on PostgreSQL, against its parse floor and a stock import.

For each file size it measures, each in a child process of its own (whole-process wall time,
peak RSS of that process from os.wait4; for our import, which reads large files in a second
process, the peaks of both, added):

- floor:          iterate the rows of the file with the importer's own reader (read_rows: the
                  sheet XML parsed with expat), in one process
- floor-openpyxl: iterate the same rows with openpyxl's read-only mode (the importer's reader
                  until it was replaced; the floor the targets were first measured against)
- floor-calamine: iterate the same rows with python-calamine, a candidate alternative reader
- ours:           the `import_bindings FILE --no-progress` command (call_command) into empty
                  tables
- ours-reimport:  the same command again over an import of the same file (all rows unchanged)
- ours-calamine:  ours with the reader swapped for python-calamine (an experiment, in-process
                  monkeypatch of the importer's .xlsx reader; the importer is not changed)
- stock:          django-import-export: a plain ModelResource of UserEmailBinding reading the same
                  .xlsx through its XLSX format, `import_data(dataset, dry_run=False)`

Usage (from the project root, PostgreSQL on 127.0.0.1:5432 with trust auth for `postgres`):

    .venv/bin/pip install -r requirements-bench.txt
    .venv/bin/python bench/import_bench.py --profile --repeat-large 3  # 10k-1M rows: ~9 min here

The benchmark uses its own database (`ums_bench`, created when missing), its own Fernet key and
media folder under var/bench/, and never reads the developer `.env`. Generated files are cached in
var/bench/ and reused. See docs/benchmarks.md for results and how to read them.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
BENCH_DIR = BASE_DIR / "var" / "bench"
CHANNEL_NAME = "bench-channel"
CHANNEL_KEY = "b3c4a1d2e5f60718293a4b5c"  # fixed, so cached files stay valid for any database
SEED = 20240601
LARGE = 1_000_000  # sizes from here on are run --repeat-large times
TARGET_FLOOR_RATIO = 2.0
TARGET_SPEEDUP = 20.0
TARGET_RSS_MB = 400.0
METHODS = (
    "floor",
    "floor-openpyxl",
    "floor-calamine",
    "ours",
    "ours-reimport",
    "ours-calamine",
    "stock",
)
APP_TABLES = (
    "users_app_importrowerror",
    "users_app_importrow",
    "users_app_importjob",
    "users_app_usertag",
    "users_app_useremailbinding",
    "users_app_umsuser",
)

FIRST_NAMES = (
    "anna ben carla david emma felix grace henry iris jack kate leo mia noah olga paul "
    "quinn rosa sam tina wei fang jun lei min na ping qiang xin yan"
).split()
LAST_NAMES = (
    "smith jones garcia muller rossi dubois novak kowalski li wang zhang liu chen yang "
    "zhao huang zhou wu xu sun"
).split()
DOMAINS = ("example.com", "mail.example.org", "corp.example.net", "example.cn", "post.example.de")
UPPER_DOMAINS = ("Example.COM", "MAIL.Example.org", "Corp.EXAMPLE.net")
TAGS = (
    "vip",
    "beta",
    "newsletter",
    "trial",
    "region-north",
    "region-south",
    "churn-risk",
    "enterprise",
    "客户",
    "重要",
    "partner",
    "internal",
)


# --- generated data ------------------------------------------------------------------------


LAYOUTS = ("excel", "inline")
LAYOUT = "excel"  # set from --layout


def data_file(rows: int) -> Path:
    suffix = "" if LAYOUT == "excel" else f"-{LAYOUT}"
    return BENCH_DIR / f"bindings-{rows}{suffix}.xlsx"


def expected_counts(rows: int) -> dict[str, int]:
    meta = data_file(rows).with_suffix(".json")
    return json.loads(meta.read_text())


def generate(rows: int) -> Path:
    """A cached .xlsx of `rows` data rows (plus a header), written with openpyxl write_only.

    Rows come in threes: a new user with the bind_id left blank (the default, `all`), a new
    user with bind_id `all`, and that second user again with the bench channel's ChannelKey and
    another address: a third of the rows name a real ChannelKey, and (userid, bind_id) is
    unique. About one email in ten has an upper-case domain, about half the rows have 1-3 tags.
    """
    import openpyxl  # heavy; only the parent generating files needs it here

    path = data_file(rows)
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return path
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rnd = random.Random(SEED)
    book = openpyxl.Workbook(write_only=True)
    sheet = book.create_sheet("bindings")
    sheet.append(["userid", "email", "bind_id", "tag"])
    users = tags = 0
    user = 0
    name = ""
    for index in range(rows):
        kind = index % 3
        if kind < 2:
            user += 1
            users += 1
            name = f"{rnd.choice(FIRST_NAMES)}.{rnd.choice(LAST_NAMES)}"
            domain = rnd.choice(UPPER_DOMAINS) if rnd.random() < 0.1 else rnd.choice(DOMAINS)
            email = f"{name}{user}@{domain}"
            bind_id = "" if kind == 0 else "all"
        else:
            email = f"{name}.work{user}@{rnd.choice(DOMAINS)}"
            bind_id = CHANNEL_KEY
        row_tags: list[str] = []
        if rnd.random() < 0.5:
            row_tags = rnd.sample(TAGS, rnd.randint(1, 3))
            tags += len(row_tags)
        sheet.append([f"user{user:07d}", email, bind_id or None, ", ".join(row_tags) or None])
    handle, tmp = tempfile.mkstemp(dir=BENCH_DIR, suffix=".xlsx.tmp")
    os.close(handle)
    book.save(tmp)
    handle, excel = tempfile.mkstemp(dir=BENCH_DIR, suffix=".xlsx.tmp")
    os.close(handle)
    save_as_excel(Path(tmp), Path(excel), last_row=rows + 1, last_col="D", shared=LAYOUT == "excel")
    Path(tmp).unlink()
    Path(excel).replace(path)
    counts = {"rows": rows, "users": users, "bindings": rows, "tags": tags}
    meta.write_text(json.dumps(counts))
    print(
        f"generated {path.relative_to(BASE_DIR)}: {rows} rows, "
        f"{path.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return path


INLINE_CELL = re.compile(r'<c r="([A-Z]+[0-9]+)" t="inlineStr"><is><t>([^<]*)</t></is></c>')
SST_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"
SST_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/sharedStrings"
SML = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"


def save_as_excel(
    source: Path, target: Path, *, last_row: int, last_col: str, shared: bool
) -> None:
    """Rewrite openpyxl's output the way Excel saves a sheet: a <dimension> tag and (`shared`)
    a shared strings table. openpyxl writes every string inline and, in write_only mode, no
    dimension; Excel and LibreOffice write both. Readers behave differently on the layouts (the
    shared strings are held in memory; without a dimension, import-export's XLSX format fails
    on rows whose trailing cells are empty), so by default the benchmark reads what users upload.
    """
    strings: dict[str, int] = {}

    def to_shared(match: re.Match) -> str:
        index = strings.setdefault(match.group(2), len(strings))
        return f'<c r="{match.group(1)}" t="s"><v>{index}</v></c>'

    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":
                text = data.decode()
                cells = text.count("<c ")
                if shared:
                    text = INLINE_CELL.sub(to_shared, text)
                text = text.replace(
                    "<sheetViews>", f'<dimension ref="A1:{last_col}{last_row}" /><sheetViews>', 1
                )
                data = text.encode()
                table = "".join(f"<si><t>{value}</t></si>" for value in strings)
                sst = (
                    f'<sst xmlns="{SML}" count="{cells}" uniqueCount="{len(strings)}">{table}</sst>'
                )
                if shared:
                    dst.writestr("xl/sharedStrings.xml", sst.encode())
            elif item.filename == "[Content_Types].xml" and shared:
                override = f'<Override PartName="/xl/sharedStrings.xml" ContentType="{SST_TYPE}" />'
                data = data.decode().replace("</Types>", f"{override}</Types>").encode()
            elif item.filename == "xl/_rels/workbook.xml.rels" and shared:
                rel = (
                    f'<Relationship Id="rIdSharedStrings" Type="{SST_REL}" '
                    'Target="sharedStrings.xml" />'
                )
                data = data.decode().replace("</Relationships>", f"{rel}</Relationships>").encode()
            dst.writestr(item.filename, data)


# --- the database ----------------------------------------------------------------------------


@dataclass
class Db:
    server: str  # postgres://user@host:port, no database
    name: str

    @property
    def url(self) -> str:
        return f"{self.server}/{self.name}"

    def connect(self, dbname: str | None = None) -> Any:
        import psycopg

        return psycopg.connect(f"{self.server}/{dbname or self.name}", autocommit=True)

    def ensure(self, *, fresh: bool) -> None:
        with self.connect("postgres") as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [self.name]
            ).fetchone()
            if exists and fresh:
                conn.execute(f'DROP DATABASE "{self.name}" WITH (FORCE)')
                exists = None
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.name}"')

    def reset(self) -> None:
        """Empty the tables the import writes (the bench channel stays), then checkpoint."""
        with self.connect() as conn:
            conn.execute(f"TRUNCATE {', '.join(APP_TABLES)} RESTART IDENTITY CASCADE")
            conn.execute("VACUUM ANALYZE")
            conn.execute("CHECKPOINT")

    def create_users(self, path: Path) -> None:
        """The users of a file, for the stock import (its ForeignKeyWidget needs them)."""
        rows = expected_counts(int(path.stem.split("-")[1]))["rows"]
        with self.connect() as conn, conn.cursor() as cur:
            copy_sql = "COPY users_app_umsuser (userid, created_at, updated_at) FROM STDIN"
            with cur.copy(copy_sql) as copy:
                user = 0
                for index in range(rows):
                    if index % 3 < 2:
                        user += 1
                        copy.write_row((f"user{user:07d}", "now", "now"))
            conn.execute("VACUUM ANALYZE users_app_umsuser")
            conn.execute("CHECKPOINT")

    def counts(self) -> dict[str, int]:
        with self.connect() as conn:
            return {
                name: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for name, table in (
                    ("users", "users_app_umsuser"),
                    ("bindings", "users_app_useremailbinding"),
                    ("tags", "users_app_usertag"),
                )
            }

    def version(self) -> str:
        with self.connect() as conn:
            return conn.execute("SHOW server_version").fetchone()[0]


def child_env(db: Db) -> dict[str, str]:
    key_file = BENCH_DIR / "fernet.key"
    if not key_file.exists():
        from cryptography.fernet import Fernet

        BENCH_DIR.mkdir(parents=True, exist_ok=True)
        key_file.write_text(Fernet.generate_key().decode())
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "ums.settings",
            "DATABASE_URL": db.url,
            "DJANGO_DEBUG": "true",
            "UMS_ENV_FILE": "",
            "UMS_FIELD_KEYS": key_file.read_text().strip(),
            "DJANGO_MEDIA_ROOT": str(BENCH_DIR / "media"),
            "DJANGO_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


# --- running children ------------------------------------------------------------------------


@dataclass
class Run:
    wall: float
    rss_mb: float
    report: dict[str, Any]

    @property
    def total_rss_mb(self) -> float:
        """The peak RSS of the measured process plus that of its reader process, if it had one.

        The launcher's figure is the larger of the two (the kernel's ru_maxrss of a process and
        its children), so a child reading the file in a second process reports both itself; their
        sum overstates what was resident at once (the reader is forked, and shares pages with its
        parent), which is the safe side for a memory target.
        """
        main, reader = self.report.get("rss_main_mb"), self.report.get("rss_reader_mb")
        if main is None or not reader:
            return self.rss_mb
        return main + reader


# A small launcher between the parent and each measured child. On Linux a child's peak RSS
# (ru_maxrss) starts from the memory of the process that forked it, so a child forked from this
# (large) parent would report at least the parent's size. The launcher is a fresh interpreter of
# a few MB: it starts the child, waits for it, and writes its wall time and own peak RSS.
LAUNCHER = """
import json, os, sys, time
report, cmd = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.posix_spawn(cmd[0], cmd, os.environ)
_pid, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - started
with open(report, "w") as out:
    json.dump({"wall": wall, "maxrss_kb": usage.ru_maxrss}, out)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_child(env: dict[str, str], *args: str) -> Run:
    """Run this script as a child: its wall time and its own peak RSS (not the parent's)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    with (
        tempfile.TemporaryFile("w+") as out,
        tempfile.TemporaryFile("w+") as err,
        tempfile.NamedTemporaryFile("r", suffix=".json") as usage,
    ):
        proc = subprocess.run(
            [sys.executable, "-c", LAUNCHER, usage.name, *cmd],
            env=env,
            cwd=BASE_DIR,
            stdout=out,
            stderr=err,
            check=False,
        )
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        measured = json.loads(Path(usage.name).read_text() or "{}")
    if proc.returncode != 0:
        raise SystemExit(f"child {' '.join(args)} failed ({proc.returncode}):\n{stdout}{stderr}")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    report = json.loads(lines[-1]) if lines else {}
    return Run(wall=measured["wall"], rss_mb=measured["maxrss_kb"] / 1024, report=report)


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run(
        [sys.executable, "manage.py", *args], env=env, cwd=BASE_DIR, check=True, stdout=sys.stderr
    )


# --- the children ----------------------------------------------------------------------------


def _django() -> None:
    sys.path.insert(0, str(BASE_DIR))
    import django

    django.setup()


def child_startup(_path: Path) -> dict[str, Any]:
    return {}


def child_floor(path: Path) -> dict[str, Any]:
    from users_app.importer import read_rows

    count = 0
    for _row in read_rows(path):
        count += 1
    return {"rows": count - 1}


def _calamine_rows(path: Path) -> Iterator[list[Any]]:
    from python_calamine import CalamineWorkbook

    workbook = CalamineWorkbook.from_path(str(path))
    try:
        yield from workbook.get_sheet_by_index(0).iter_rows()
    finally:
        workbook.close()


def child_floor_openpyxl(path: Path) -> dict[str, Any]:
    """openpyxl's read-only mode, as the importer read .xlsx files before (zip checks first)."""
    import openpyxl

    from users_app.importer import _check_zip

    _check_zip(path)
    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    count = 0
    try:
        for _row in workbook.worksheets[0].iter_rows(values_only=True):
            count += 1
    finally:
        workbook.close()
    return {"rows": count - 1}


def child_floor_calamine(path: Path) -> dict[str, Any]:
    count = 0
    for _row in _calamine_rows(path):
        count += 1
    return {"rows": count - 1}


def _command(path: Path) -> dict[str, Any]:
    from django.core.management import call_command

    out = io.StringIO()
    call_command("import_bindings", str(path), no_progress=True, stdout=out, stderr=out)
    return {"output": out.getvalue().strip(), **_own_usage()}


def _own_usage() -> dict[str, float]:
    """Peak RSS and CPU seconds of this process and of its reader process (its only child)."""
    import resource

    me, reader = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return {
        "rss_main_mb": me.ru_maxrss / 1024,
        "rss_reader_mb": reader.ru_maxrss / 1024,
        "cpu_main_s": me.ru_utime + me.ru_stime,
        "cpu_reader_s": reader.ru_utime + reader.ru_stime,
    }


def child_ours(path: Path) -> dict[str, Any]:
    return _command(path)


def child_ours_calamine(path: Path) -> dict[str, Any]:
    from users_app import importer

    def calamine_xlsx_rows(path: Path) -> Iterator[list[Any]]:
        importer._check_zip(path)  # the same zip checks as the importer's own reader
        yield from _calamine_rows(path)

    importer._xlsx_rows = calamine_xlsx_rows
    return _command(path)


def stock_resource() -> Any:
    """A plain ModelResource of bindings, with the import-export docs' performance tuning."""
    from import_export import fields, resources, widgets

    from users_app.models import UmsUser, UserEmailBinding

    class BindingResource(resources.ModelResource):
        user = fields.Field(
            attribute="user",
            column_name="userid",
            widget=widgets.ForeignKeyWidget(UmsUser, field="userid"),
        )

        class Meta:
            model = UserEmailBinding
            fields = ("user", "bind_id", "email")
            import_id_fields = ("user", "bind_id")
            use_bulk = True  # bulk_create/bulk_update in batches of batch_size (1000)
            skip_diff = True  # no per-row copy and diff of the instance

    return BindingResource()


def child_stock(path: Path) -> dict[str, Any]:
    from import_export.formats.base_formats import XLSX

    dataset = XLSX().create_dataset(path.read_bytes())
    result = stock_resource().import_data(dataset, dry_run=False, raise_errors=True)
    return {"rows": len(dataset), "totals": dict(result.totals)}


def child_setup(_path: Path) -> dict[str, Any]:
    """The bench channel, with the fixed ChannelKey that the generated files use."""
    from channels_app.models import Channel
    from channels_app.services import channel_create

    channel = Channel.objects.filter(name=CHANNEL_NAME).first()
    if channel is None:
        channel, _secret = channel_create(name=CHANNEL_NAME)
    Channel.objects.filter(pk=channel.pk).update(channel_key=CHANNEL_KEY)
    return {"channel": CHANNEL_KEY}


class PhaseClock:
    """Seconds per stage and phase of our import, by wrapping the importer's functions and SQL."""

    def __init__(self) -> None:
        self.stage = "create"
        self.seconds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[self.stage][phase] += seconds

    def wrap(self, owner: Any, name: str, phase: str) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(phase, time.perf_counter() - started)

        setattr(owner, name, timed)

    def wrap_reader(self, module: Any, name: str, phase: str) -> None:
        """Time spent getting rows: reading them, or waiting for the reader process's."""
        original = getattr(module, name)
        clock = self

        def timed_rows(path: Path) -> Iterator[list[Any]]:
            started = time.perf_counter()
            rows = original(path)
            try:
                while True:
                    try:
                        row = next(rows)
                    except StopIteration:
                        clock.add(phase, time.perf_counter() - started)
                        return
                    clock.add(phase, time.perf_counter() - started)
                    yield row
                    started = time.perf_counter()
            finally:
                rows.close()

        setattr(module, name, timed_rows)

    def sql(self, execute: Callable, sql: str, params: Any, many: bool, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.add(f"sql: {_sql_label(sql)}", time.perf_counter() - started)


def _sql_label(sql: str) -> str:
    text = " ".join(sql.split())
    for marker, label in (
        ("INSERT INTO users_app_umsuser", "insert users"),
        ("JOIN import_new_user n ON n.userid = s.userid", "insert bindings of new users"),
        ("INSERT INTO users_app_useremailbinding", "upsert bindings of known users"),
        ("JOIN import_new_user n ON n.userid = r.userid", "insert tags of new users"),
        ("INSERT INTO users_app_usertag", "upsert tags of known users"),
        ("ANALYZE import_new_user", "analyze the new users"),
        ("ANALYZE", "analyze staging"),
        ("ROW_NUMBER() OVER key_rows", "check staged rows (conflicts, preview counts)"),
        ("first_email", "list conflicts"),
        ('DELETE FROM "users_app_importrow"', "discard staging rows"),
        ('UPDATE "users_app_importjob"', "job status/progress updates"),
        ("SELECT COUNT(*) FROM users_app_importrow", "count applied"),
        ('SELECT DISTINCT "users_app_importrow"."bind_id"', "check scopes"),
    ):
        if marker in text:
            return label
    return "other"


def child_phases(path: Path, *, profile: Path | None = None) -> dict[str, Any]:
    """The programmatic path (create, validate, apply) with a clock on each phase."""
    from django.core.files import File
    from django.db import DEFAULT_DB_ALIAS, connection, connections

    from users_app import importer, services

    clock = PhaseClock()
    clock.wrap_reader(importer, "read_rows", "read the file in this process (read_rows)")
    clock.wrap_reader(importer, "read_rows_ahead", "wait for rows from the reader process")
    clock.wrap(importer.Staging, "flush", "end of staging batches (COPY end, commit)")
    clock.wrap(importer.Staging, "_begin", "start of staging batches (COPY start)")
    clock.wrap(importer, "estimate_rows", "estimate rows (the sheet's dimension)")
    clock.wrap(connections[DEFAULT_DB_ALIAS], "_commit", "sql: commit")
    totals: dict[str, float] = {}
    profiler = cProfile.Profile() if profile else None
    with connection.execute_wrapper(clock.sql):
        started = time.perf_counter()
        with path.open("rb") as handle:
            job = services.import_job_create(
                file=File(handle), original_name=path.name, default_bind_id="all"
            )
        totals["create"] = time.perf_counter() - started
        clock.stage = "validate"
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        importer.job_validate(job)
        if profiler:
            profiler.disable()
        totals["validate"] = time.perf_counter() - started
        if job.status != job.Status.VALIDATED:
            raise SystemExit(f"job {job.status}: {job.message} ({job.error_count} errors)")
        clock.stage = "apply"
        started = time.perf_counter()
        importer.job_apply(job)
        totals["apply"] = time.perf_counter() - started
    if profiler and profile:
        with profile.open("w") as out:
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("tottime").print_stats(30)
            stats.sort_stats("cumulative").print_stats(30)
    return {"totals": totals, "phases": clock.seconds, **_own_usage()}


CHILDREN: dict[str, Callable[[Path], dict[str, Any]]] = {
    "startup": child_startup,
    "setup": child_setup,
    "floor": child_floor,
    "floor-openpyxl": child_floor_openpyxl,
    "floor-calamine": child_floor_calamine,
    "ours": child_ours,
    "ours-reimport": child_ours,
    "ours-calamine": child_ours_calamine,
    "stock": child_stock,
}


def child_main(args: argparse.Namespace) -> None:
    _django()
    path = Path(args.file) if args.file else Path()
    started = time.perf_counter()
    if args.child == "phases":
        report = child_phases(path, profile=Path(args.profile_to) if args.profile_to else None)
    else:
        report = CHILDREN[args.child](path)
    report["inside_s"] = time.perf_counter() - started
    print(json.dumps(report, default=str))


# --- the parent ------------------------------------------------------------------------------


@dataclass
class Result:
    rows: int
    method: str
    walls: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    # (measured process, its reader process) of the run with the largest total, when it had one
    rss_parts: tuple[float, float] | None = None
    note: str = ""

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def peak_rss(self) -> float:
        return max(self.rss)

    @property
    def rss_label(self) -> str:
        if not self.rss_parts:
            return f"{self.peak_rss:.0f}"
        main, reader = self.rss_parts
        return f"{self.peak_rss:.0f} ({main:.0f} + reader {reader:.0f})"


def prepare(method: str, path: Path, db: Db, env: dict[str, str]) -> None:
    db.reset()
    shutil.rmtree(BENCH_DIR / "media", ignore_errors=True)
    if method == "stock":
        db.create_users(path)
    elif method == "ours-reimport":
        run_child(env, "ours", "--file", str(path))
        with db.connect() as conn:
            conn.execute("VACUUM ANALYZE")
            conn.execute("CHECKPOINT")


def check(method: str, rows: int, db: Db, run: Run) -> None:
    """The run did the whole job: fail loudly rather than time a partial import."""
    expected = expected_counts(rows)
    if method.startswith("floor"):
        got = {"rows": run.report.get("rows")}
        want = {"rows": expected["rows"]}
    else:
        got = db.counts()
        want = {k: expected[k] for k in ("users", "bindings", "tags")}
        if method == "stock":
            want["tags"] = 0  # the resource imports bindings only
    if got != want:
        raise SystemExit(f"{method} at {rows} rows: expected {want}, found {got}")


def measure(
    rows: int, method: str, repeat: int, db: Db, env: dict[str, str], *, verbose: bool
) -> Result:
    path = data_file(rows)
    result = Result(rows=rows, method=method)
    for attempt in range(repeat):
        prepare(method, path, db, env)
        run = run_child(env, method, "--file", str(path))
        check(method, rows, db, run)
        result.walls.append(run.wall)
        if run.report.get("rss_reader_mb") and run.total_rss_mb >= max(result.rss, default=0):
            result.rss_parts = (run.report["rss_main_mb"], run.report["rss_reader_mb"])
        result.rss.append(run.total_rss_mb)
        if verbose:
            output = run.report.get("output") or run.report.get("totals") or ""
            print(
                f"  {rows:>9} {method:<15} #{attempt + 1}: {run.wall:7.2f} s "
                f"{run.total_rss_mb:6.0f} MB  {output}",
                flush=True,
            )
    return result


def machine(db: Db) -> dict[str, str]:
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import openpyxl

    versions = [f"openpyxl {openpyxl.__version__}"]
    with contextlib.suppress(ImportError):
        from importlib.metadata import version

        versions += [
            f"django-import-export {version('django-import-export')}",
            f"tablib {version('tablib')}",
            f"python-calamine {version('python-calamine')}",
        ]
    return {
        "cpu": f"{os.cpu_count()} x {cpu}",
        "ram": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "python": platform.python_version(),
        "postgresql": db.version(),
        "libraries": ", ".join(versions),
    }


def table(results: list[Result], startup: Result | None) -> str:
    lines = [
        "| rows | method | runs | wall s (median) | rows/s | peak RSS MB (max; + its reader) |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    if startup:
        lines.append(
            f"| - | startup only (python + django.setup) | {len(startup.walls)} | "
            f"{startup.wall:.2f} | - | {startup.peak_rss:.0f} |"
        )
    for res in results:
        method = res.method + (f" ({res.note})" if res.note else "")
        lines.append(
            f"| {res.rows:,} | {method} | {len(res.walls)} | {res.wall:.2f} | "
            f"{res.rows / res.wall:,.0f} | {res.rss_label} |"
        )
    return "\n".join(lines)


def verdicts(results: list[Result]) -> str:
    by = {(r.rows, r.method): r for r in results}
    lines = [
        "| rows | ours / floor (target < 2) | ours / openpyxl floor "
        "| stock / ours speed-up (target >= 20x) | ours peak RSS MB (target < 400) "
        "| openpyxl floor / floor | calamine floor / floor | ours-calamine / ours |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def ok(good: bool) -> str:
        return "met" if good else "NOT met"

    for rows in sorted({r.rows for r in results}):
        ours = by.get((rows, "ours"))
        floor = by.get((rows, "floor"))
        stock = by.get((rows, "stock"))
        old_floor = by.get((rows, "floor-openpyxl"))
        cal_floor = by.get((rows, "floor-calamine"))
        cal_ours = by.get((rows, "ours-calamine"))
        cells = [f"{rows:,}"]
        if ours and floor:
            ratio = ours.wall / floor.wall
            cells.append(f"{ratio:.2f} ({ok(ratio < TARGET_FLOOR_RATIO)})")
        else:
            cells.append("-")
        cells.append(f"{ours.wall / old_floor.wall:.2f}" if ours and old_floor else "-")
        if ours and stock:
            speedup = stock.wall / ours.wall
            cells.append(f"{speedup:.1f}x ({ok(speedup >= TARGET_SPEEDUP)})")
        else:
            cells.append("not run")
        cells.append(f"{ours.peak_rss:.0f} ({ok(ours.peak_rss < TARGET_RSS_MB)})" if ours else "-")
        cells.append(f"{old_floor.wall / floor.wall:.2f}" if old_floor and floor else "-")
        cells.append(f"{cal_floor.wall / floor.wall:.2f}" if cal_floor and floor else "-")
        cells.append(f"{cal_ours.wall / ours.wall:.2f}" if cal_ours and ours else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parent_main(args: argparse.Namespace) -> None:
    global LAYOUT  # one setting for the whole run
    LAYOUT = args.layout
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods: {', '.join(sorted(unknown))}")
    db = Db(server=args.server.rstrip("/"), name=args.db)
    db.ensure(fresh=args.fresh_db)
    env = child_env(db)
    manage(env, "migrate", "--noinput", "-v", "0")
    run_child(env, "setup")
    info = machine(db)
    print("machine: " + "; ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    for rows in sizes:
        generate(rows)

    started = time.perf_counter()
    startup = Result(rows=0, method="startup")
    for _ in range(3):
        run = run_child(env, "startup")
        startup.walls.append(run.wall)
        startup.rss.append(run.rss_mb)
    results: list[Result] = []
    for rows in sizes:
        repeat = args.repeat if rows < LARGE else args.repeat_large
        for method in methods:
            if method == "stock" and rows > args.skip_stock_above:
                print(f"  {rows:>9} stock: skipped (above --skip-stock-above)", flush=True)
                continue
            if method == "ours-reimport" and rows > args.skip_reimport_above:
                print(f"  {rows:>9} ours-reimport: skipped (above --skip-reimport-above)")
                continue
            runs = min(repeat, args.repeat_stock) if method == "stock" else repeat
            results.append(measure(rows, method, runs, db, env, verbose=not args.quiet))
    if args.phases:
        path = generate(args.phases)
        prepare("ours", path, db, env)
        print_phases(args.phases, run_child(env, "phases", "--file", str(path)))
        if args.profile:  # a run of its own: the profiler slows what it watches
            profile = BENCH_DIR / f"profile-validate-{args.phases}.txt"
            prepare("ours", path, db, env)
            run_child(env, "phases", "--file", str(path), "--profile-to", str(profile))
            print(f"\ncProfile of job_validate: {profile.relative_to(BASE_DIR)}")
    db.reset()
    shutil.rmtree(BENCH_DIR / "media", ignore_errors=True)

    report = [
        "",
        "## Results",
        "",
        table(results, startup),
        "",
        "## Against the targets",
        "",
        verdicts(results),
        "",
        f"(benchmark wall time {time.perf_counter() - started:.0f} s)",
    ]
    print("\n".join(report))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": info,
                    "results": [
                        {"rows": r.rows, "method": r.method, "walls": r.walls, "rss_mb": r.rss}
                        for r in [startup, *results]
                    ],
                },
                indent=2,
            )
        )


def print_phases(rows: int, run: Run) -> None:
    totals = run.report["totals"]
    phases = run.report["phases"]
    inside = run.report["inside_s"]
    print(f"\n## Where our import's time goes ({rows:,} rows, one run)\n")
    report = run.report
    print(
        f"whole process {run.wall:.2f} s; peak RSS {report['rss_main_mb']:.0f} MB, and "
        f"{report['rss_reader_mb']:.0f} MB in the reader process; CPU "
        f"{report['cpu_main_s']:.1f} s, and {report['cpu_reader_s']:.1f} s in the reader process\n"
    )
    print("| stage / phase | s | share |\n| --- | ---: | ---: |")

    def line(name: str, seconds: float) -> None:
        print(f"| {name} | {seconds:.2f} | {seconds / run.wall:.0%} |")

    line("start-up (python, django.setup) and exit", run.wall - inside)
    for stage, total in totals.items():
        line(f"**{stage}**", total)
        parts = phases.get(stage, {})
        for name, seconds in sorted(parts.items(), key=lambda item: -item[1]):
            if seconds >= 0.005:
                line(f"- {name}", seconds)
        line(
            "- the rest (Python: cleaning rows, sending them to COPY)", total - sum(parts.values())
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated rows")
    parser.add_argument("--methods", default=",".join(METHODS), help=", ".join(METHODS))
    parser.add_argument(
        "--repeat", type=int, default=3, help=f"runs per size below {LARGE:,} (median reported)"
    )
    parser.add_argument(
        "--repeat-large", type=int, default=1, help=f"runs per size from {LARGE:,} rows on"
    )
    parser.add_argument(
        "--repeat-stock", type=int, default=1, help="at most N runs of the (slow) stock import"
    )
    parser.add_argument(
        "--skip-stock-above", type=int, default=100_000, help="no stock import above N rows"
    )
    parser.add_argument(
        "--skip-reimport-above", type=int, default=100_000, help="no re-import above N rows"
    )
    parser.add_argument(
        "--phases",
        type=int,
        default=100_000,
        help="time our import's phases on this size (0: don't)",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the --phases validate")
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="excel",
        help="excel: shared strings and a dimension, as Excel saves; inline: openpyxl's strings",
    )
    parser.add_argument("--server", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--db", default="ums_bench")
    parser.add_argument("--fresh-db", action="store_true", help="drop and recreate the database")
    parser.add_argument("--json", help="also write the raw timings to this file")
    parser.add_argument("--quiet", action="store_true", help="no line per run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
    else:
        parent_main(args)


if __name__ == "__main__":
    main()
