"""Benchmark of sending: N recipients end to end, against a raw SMTP floor and django-post-office.

Three ways of handing the same N emails to the same SMTP sink (Postfix's `smtp-sink`, a C server
that accepts everything), all measured in one run:

- ours:         the whole pipeline. ceil(N/1000) calls of `POST /v1/sent` with 1000 userids each
                (the spec's maximum) to a WSGI server (`manage.py runserver --noreload`), Redis,
                one Celery worker with 2 prefork processes, one SMTP connection per batch. Wall
                time runs from the first API call until every delivery is `sent` in the database
                (Message.sent counters, polled every 20 ms).
- floor:        a raw `smtplib` loop over one reused connection: N `sendmail` calls of prebuilt
                bytes (the pipeline's own message, same size), one RCPT each, with the client and
                the sink pinned to one CPU (see run(): unpinned, the loop's speed depends on where
                the scheduler puts the two processes; those runs are shown as floor-unpinned).
- post-office:  django-post-office as its README recommends: `EMAIL_BACKEND =
                "post_office.EmailBackend"` over Django's SMTP backend, N mails queued with
                `mail.send_many` (chunks of 1000), then `manage.py send_queued_mail --processes 2`
                with its default settings. Wall time is queue + send. It runs in a child process
                with a settings module written to a temporary folder and its own database.

Each method runs --repeat times (3 by default; a CHECKPOINT before each run) and the table shows
the median, with the range of the rates. The pipeline is warmed up first with one 200-recipient
send. The API's latency for a 1000-userid send is measured apart: 25 calls (after 3 warm-up calls)
to the warm server while the workers are stopped, so that they do not compete for the CPU.
During each pipeline run the script also reads from /proc how many CPU seconds each part used
(workers, PostgreSQL, the sink, the API server, Redis, itself) and how busy the whole machine was:
on a 2-CPU machine, that shows where the time goes and whether something else was running.

Usage (from the project root; PostgreSQL on 127.0.0.1:5432 with trust auth for `postgres`, Redis
on 127.0.0.1:6379, `smtp-sink` from the Debian package `postfix`):

    .venv/bin/pip install -r requirements-bench.txt
    .venv/bin/python bench/send_bench.py -n 10000

The benchmark recreates its own databases (`ums_send_bench`, `ums_postoffice_bench`; they are left
in place for inspection), flushes Redis database 14 (its broker) before and after the run, never
reads the developer `.env`, and stops everything it started (sink, server, worker, child) even on
error. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import math
import os
import platform
import re
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
PG_SERVER = "postgres://postgres@127.0.0.1:5432"
DB_NAME = "ums_send_bench"
PO_DB_NAME = "ums_postoffice_bench"
REDIS_HOST, REDIS_PORT, REDIS_DB = "127.0.0.1", 6379, 14
SINK = "/usr/sbin/smtp-sink"
API_CHUNK = 1000  # userids per API call: the spec's maximum
WORKER_PROCESSES = 2
LATENCY_CALLS = 25
LATENCY_WARMUP = 3
POLL_INTERVAL = 0.02
TARGET_FLOOR_RATIO = 0.5
TARGET_PEER_RATIO = 3.0
TARGET_API_MS = 100.0

FROM_ADDRESS = "news@shop.example.com"
FROM_NAME = "Example Shop"
SUBJECT = "Your order has shipped"
TEXT = textwrap.dedent(
    """\
    Hello,

    Good news: your order has left our warehouse and is on its way to you. You can follow the
    parcel at any time from the Orders page of your account, where the tracking number and the
    carrier's estimated delivery date are shown as soon as the carrier scans the parcel.

    What's in the parcel:
      - 1 x Linen shirt, blue, size M
      - 2 x Cotton socks, grey, size 40-43
      - 1 x Canvas tote bag

    If something is missing or arrives damaged, reply to this email within 30 days and we will
    send a replacement or refund you, whichever you prefer. Returns are free of charge: print the
    label from the Orders page and drop the parcel at any post office.

    Thank you for shopping with us,
    The Example Shop team

    You receive this email because you placed an order at shop.example.com. Manage your email
    preferences at https://shop.example.com/account/email.
    """
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def userid(index: int) -> str:
    return f"u{index:07d}"


def address(index: int) -> str:
    return f"rcpt{index:07d}@example.net"


# --- children: started in process groups of their own, always stopped ----------------------------


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    log_path: Path


@dataclass
class Children:
    workdir: Path
    running: list[Child] = field(default_factory=list)

    def start(self, name: str, args: list[str], env: dict[str, str]) -> Child:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as out:
            process = subprocess.Popen(
                args,
                cwd=BASE_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so its children stop with it
            )
        child = Child(name, process, log_path)
        self.running.append(child)
        return child

    def stop(self, child: Child, grace: float = 20.0) -> None:
        """SIGTERM to the leader (a Celery worker's warm shutdown), then SIGKILL to its group."""
        if child.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, signal.SIGKILL)
        child.process.wait()
        if child in self.running:
            self.running.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.running)):
            self.stop(child)


def wait_until(predicate: Callable[[], Any], *, timeout: float, what: str, child: Child) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if child.process.poll() is not None:
            break
        time.sleep(0.05)
    tail = child.log_path.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"{child.name}: gave up waiting for {what}.\n{tail}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- databases, broker, environment ----------------------------------------------------------


def recreate_database(name: str) -> None:
    import psycopg

    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def checkpoint(name: str) -> None:
    """Write dirty pages out now, so that no checkpoint lands in the middle of a timed run."""
    import psycopg

    with psycopg.connect(f"{PG_SERVER}/{name}", autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def flush_broker() -> None:
    import redis

    redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB).flushdb()


def bench_env(sink_port: int, database: str) -> dict[str, str]:
    from cryptography.fernet import Fernet

    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "ums.settings",
            "DATABASE_URL": f"{PG_SERVER}/{database}",
            "CELERY_BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}",
            "DJANGO_DEBUG": "true",
            "UMS_ENV_FILE": "",
            "UMS_FIELD_KEYS": Fernet.generate_key().decode(),
            "UMS_SMTP_ALLOW_PRIVATE_NETWORKS": "true",
            "UMS_SMTP_ALLOWED_PORTS": f"25,80,443,465,{sink_port}",
            "UMS_SENDER_HEALTH_INTERVAL": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run(
        [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, check=True, timeout=600
    )


@dataclass
class Fixtures:
    channel_key: str
    master_secret: str
    sender_id: int

    @property
    def authorization(self) -> str:
        token = base64.b64encode(f"{self.channel_key}:{self.master_secret}".encode()).decode()
        return f"Basic {token}"


def create_fixtures(n: int, sink_port: int) -> Fixtures:
    """A channel, its default sender pointing at the sink, and N users bound under `all`."""
    from django.db import connection

    from channels_app import services

    channel, secret = services.channel_create(name="send-bench")
    sender = services.sender_create(
        name="smtp-sink",
        code="SINK",
        host="127.0.0.1",
        port=sink_port,
        encryption="none",
        account="",
        from_address=FROM_ADDRESS,
        from_name=FROM_NAME,
        port_exception_reason="the benchmark's SMTP sink",
    )
    if not sender.port_allowed:
        services.sender_approve_port_exception(sender=sender, user=None)
    services.channel_authorize_sender(channel=channel, sender=sender, is_default=True)
    with connection.cursor() as cursor:
        copy_sql = "COPY users_app_umsuser (userid, created_at, updated_at) FROM STDIN"
        with cursor.copy(copy_sql) as copy:
            for index in range(n):
                copy.write_row((userid(index), "now", "now"))
        cursor.execute(
            """
            INSERT INTO users_app_useremailbinding (user_id, bind_id, email, updated_at)
            SELECT id, 'all', 'rcpt' || substr(userid, 2) || '@example.net', now()
            FROM users_app_umsuser
            """
        )
        cursor.execute("VACUUM ANALYZE")
        cursor.execute("CHECKPOINT")
    return Fixtures(channel.channel_key, secret, sender.pk)


# --- the SMTP sink ---------------------------------------------------------------------------


def sink_count(child: Child) -> int:
    """Messages the sink has accepted so far (its -c counter, the last one it printed)."""
    found = re.findall(rb"mesg=(\d+)", child.log_path.read_bytes()[-200:])
    return int(found[-1]) if found else 0


def wait_sink_count(child: Child, expected: int) -> int:
    deadline = time.monotonic() + 10
    while (count := sink_count(child)) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


# --- ours: API, Redis, workers, SMTP -----------------------------------------------------------


@dataclass
class Api:
    port: int
    authorization: str

    def send(self, userids: list[str]) -> tuple[float, dict[str, Any]]:
        """POST /v1/sent; returns (seconds from request to the whole response read, body)."""
        body = json.dumps(
            {"aud_userid": userids, "msg_email": [{"subject": SUBJECT, "text": TEXT}]}
        ).encode()
        headers = {"Content-Type": "application/json", "Authorization": self.authorization}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            started = time.perf_counter()
            conn.request("POST", "/v1/sent", body=body, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            elapsed = time.perf_counter() - started
        finally:
            conn.close()
        try:
            answer = json.loads(raw)
        except ValueError:
            raise RuntimeError(f"POST /v1/sent: HTTP {response.status}: {raw[:300]!r}") from None
        if response.status != 200 or answer.get("code") != 0 or not answer.get("msgid"):
            raise RuntimeError(f"POST /v1/sent: HTTP {response.status}: {answer}")
        return elapsed, answer


def service_send(userids: list[str]) -> tuple[float, dict[str, Any]]:
    """The fallback without the HTTP endpoint: messaging.services.message_create in-process."""
    from channels_app.models import Channel
    from messaging.models import Message
    from messaging.services import Audience, Content, Options, message_create

    started = time.perf_counter()
    message, _created = message_create(
        channel=Channel.objects.get(name="send-bench"),
        audience=Audience(userids=userids),
        content=Content(subject=SUBJECT, text=TEXT),
        options=Options(),
        source=Message.Source.API,
    )
    return time.perf_counter() - started, {"code": 0, "msgid": message.msgid}


def progress(msgids: list[str]) -> tuple[int, int]:
    """(sent, failed) over the given messages, from their counters."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COALESCE(SUM(sent), 0), COALESCE(SUM(failed), 0)"
            " FROM messaging_message WHERE msgid = ANY(%s)",
            [msgids],
        )
        sent, failed = cursor.fetchone()
    return int(sent), int(failed)


def wait_delivered(msgids: list[str], expected: int, timeout: float) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while True:
        sent, failed = progress(msgids)
        if sent + failed >= expected:
            return sent, failed
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out: {sent} sent, {failed} failed of {expected}")
        time.sleep(POLL_INTERVAL)


@dataclass
class PipelineRun:
    wall: float
    api_wall: float
    call_seconds: list[float]
    msgids: list[str]
    sent: int
    failed: int


def run_pipeline(send: Callable[[list[str]], tuple[float, dict]], n: int) -> PipelineRun:
    userids = [userid(i) for i in range(n)]
    chunks = [userids[i : i + API_CHUNK] for i in range(0, n, API_CHUNK)]
    msgids, calls = [], []
    started = time.perf_counter()
    for chunk in chunks:
        elapsed, answer = send(chunk)
        calls.append(elapsed)
        msgids.append(answer["msgid"])
    api_wall = time.perf_counter() - started
    sent, failed = wait_delivered(msgids, n, timeout=max(300.0, n / 20))
    wall = time.perf_counter() - started
    return PipelineRun(wall, api_wall, calls, msgids, sent, failed)


def api_ready(api: Api) -> bool:
    """The /v1/sent route answers (anything but the API's 404) once the server is up."""
    if not port_open(api.port):
        return False
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    try:
        conn.request("GET", "/v1/sent")
        response = conn.getresponse()
        response.read()
        return response.status != 404
    except OSError:
        return False
    finally:
        conn.close()


# --- floor: raw smtplib over one connection ----------------------------------------------------


def floor_message(msgid: str) -> tuple[str, bytes]:
    """The bytes the pipeline sent for one recipient of the message (To and Message-ID set)."""
    from messaging.mime import message_id_for, message_template, stamp
    from messaging.models import Message

    message = Message.objects.select_related("sender").get(msgid=msgid)
    template = message_template(message)
    to = address(0)
    return message.sender.from_address, stamp(
        template, to=to, message_id=message_id_for(message, 1)
    )


def run_floor(port: int, n: int, envelope_from: str, data: bytes) -> float:
    smtp = smtplib.SMTP("127.0.0.1", port, timeout=30)
    try:
        smtp.ehlo()
        started = time.perf_counter()
        for index in range(n):
            smtp.sendmail(envelope_from, [address(index)], data)
        wall = time.perf_counter() - started
        smtp.quit()
    finally:
        smtp.close()
    return wall


# --- post-office: a child process with its own settings and database ---------------------------

PO_SETTINGS = """\
# Written by bench/send_bench.py for one run; not part of the project.
from ums.settings import *  # noqa

INSTALLED_APPS = [*INSTALLED_APPS, "post_office"]
# django-post-office's recommended setup: its backend queues, Django's SMTP backend sends.
EMAIL_BACKEND = "post_office.EmailBackend"
POST_OFFICE = {{"BACKENDS": {{"default": "django.core.mail.backends.smtp.EmailBackend"}}}}
EMAIL_HOST = "127.0.0.1"
EMAIL_PORT = {port}
EMAIL_USE_TLS = False
EMAIL_USE_SSL = False
EMAIL_TIMEOUT = 30
DEFAULT_FROM_EMAIL = "{from_}"
"""


def post_office_child(args: argparse.Namespace) -> int:
    """Runs in the child: migrate, then time queueing N mails and sending them."""
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from post_office import mail
    from post_office.models import STATUS, Email

    sender = f"{FROM_NAME} <{FROM_ADDRESS}>"
    checkpoint(PO_DB_NAME)
    started = time.perf_counter()
    for start in range(0, args.recipients, API_CHUNK):
        mail.send_many(
            [
                {"sender": sender, "recipients": [address(i)], "subject": SUBJECT, "message": TEXT}
                for i in range(start, min(start + API_CHUNK, args.recipients))
            ]
        )
    queued = time.perf_counter() - started
    call_command(
        "send_queued_mail",
        processes=WORKER_PROCESSES,
        lockfile=str(Path(args.po_child) / "post_office"),
    )
    wall = time.perf_counter() - started
    report = {
        "wall": wall,
        "queue": queued,
        "sent": Email.objects.filter(status=STATUS.sent).count(),
        "failed": Email.objects.exclude(status=STATUS.sent).count(),
    }
    print("RESULT " + json.dumps(report), flush=True)
    return 0


def run_post_office(
    children: Children, workdir: Path, env: dict[str, str], n: int, port: int
) -> dict[str, Any]:
    recreate_database(PO_DB_NAME)
    settings_dir = workdir / "po_settings"
    settings_dir.mkdir(exist_ok=True)
    (settings_dir / "send_bench_po_settings.py").write_text(
        PO_SETTINGS.format(port=port, from_=FROM_ADDRESS)
    )
    child_env = dict(env)
    child_env.update(
        {
            "DJANGO_SETTINGS_MODULE": "send_bench_po_settings",
            "DATABASE_URL": f"{PG_SERVER}/{PO_DB_NAME}",
            "PYTHONPATH": os.pathsep.join([str(settings_dir), str(BASE_DIR)]),
        }
    )
    args = [sys.executable, __file__, "-n", str(n), "--po-child", str(workdir)]
    child = children.start("post-office", args, child_env)
    try:
        code = child.process.wait(timeout=max(600.0, n / 5))
    except subprocess.TimeoutExpired:
        children.stop(child)
        raise RuntimeError("post-office: timed out") from None
    children.stop(child)
    output = child.log_path.read_text(errors="replace")
    found = re.findall(r"^RESULT (.*)$", output, re.MULTILINE)
    if code != 0 or not found:
        raise RuntimeError(f"post-office: exit {code}\n{output[-3000:]}")
    return json.loads(found[-1])


# --- machine ------------------------------------------------------------------------------------


def machine_info(load: tuple[float, float, float]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from django.db import connection

    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kb / 2**20:.0f} GiB"
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        postgres = cursor.fetchone()[0]
    import redis

    redis_version = redis.Redis(host=REDIS_HOST, port=REDIS_PORT).info("server")["redis_version"]
    postfix = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "postfix"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=BASE_DIR, capture_output=True, text=True, check=False
        ).stdout.strip()

    changed = git("status", "--porcelain", "--", "messaging", "channels_app", "users_app", "ums")
    code = git("rev-parse", "--short", "HEAD") or "-"
    if changed:
        code += f" + {len(changed.splitlines())} uncommitted files in the app"

    def pkg(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "-"

    return {
        "cpu": f"{cpu} x {os.cpu_count()}",
        "memory": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgresql": postgres,
        "redis": redis_version,
        "smtp-sink (postfix)": postfix or "-",
        "django": pkg("django"),
        "celery": pkg("celery"),
        "django-post-office": pkg("django-post-office"),
        "code": code,
        "load average at start": " ".join(f"{x:.2f}" for x in load),
    }


# --- where the CPU goes: per-process CPU time from /proc (Linux) --------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CPU_PARTS = ("workers", "PostgreSQL", "smtp-sink", "API server", "Redis", "this script")


def _proc_stats() -> dict[int, tuple[str, int, int, int, int]]:
    """pid -> (command line, process group, parent, own CPU ticks, reaped children's ticks)."""
    stats = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()
        own, reaped = int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])
        stats[int(entry)] = (command, int(fields[2]), int(fields[1]), own, reaped)
    return stats


def cpu_sample(groups: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each part, and by the whole machine ("busy", "total").

    groups maps a part to the process group of a child started by this script (the worker with
    its pool, the API server, the sink). PostgreSQL counts the sessions of the benchmark's
    database, and the sessions that ended (the postmaster's reaped children, of any database:
    the API server opens one per request).
    """
    stats = _proc_stats()
    seconds = dict.fromkeys(CPU_PARTS, 0)
    leaders = {pgid: part for part, pgid in groups.items()}
    for pid, (command, pgid, parent, own, reaped) in stats.items():
        if pgid in leaders:
            seconds[leaders[pgid]] += own + (reaped if pid == pgid else 0)
        elif f" {DB_NAME} " in command and command.startswith("postgres:"):
            seconds["PostgreSQL"] += own
            postmaster = stats.get(parent)
            if postmaster and seconds.get("_postmaster") is None:
                seconds["_postmaster"] = postmaster[4]
        elif command.startswith("redis-server"):
            seconds["Redis"] += own
    seconds["PostgreSQL"] += seconds.pop("_postmaster", 0)
    mine = os.times()
    result = {part: ticks / CLOCK_TICKS for part, ticks in seconds.items()}
    result["this script"] = mine.user + mine.system
    busy, total = _cpu_ticks()
    result["busy"], result["total"] = busy / CLOCK_TICKS, total / CLOCK_TICKS
    return result


QUIET_BUSY = 0.10  # --wait-idle: at most this share of the CPUs busy over a second


def _cpu_ticks() -> tuple[int, int]:
    cpu = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(cpu[:8]) - cpu[3] - cpu[4], sum(cpu[:8])


def wait_quiet(limit: float) -> None:
    """Waits up to `limit` seconds for a second in which the machine is nearly idle.

    On a shared machine, a run next to someone else's work measures that work as much as ours;
    each run's CPU line ("anything else") shows whether it stayed quiet during the run.
    """
    deadline = time.monotonic() + limit
    while limit > 0:
        busy0, total0 = _cpu_ticks()
        time.sleep(1.0)
        busy1, total1 = _cpu_ticks()
        busy = (busy1 - busy0) / max(total1 - total0, 1)
        if busy <= QUIET_BUSY:
            return
        if time.monotonic() > deadline:
            log(f"warning: the machine stayed busy ({busy:.0%} of its CPUs); running anyway")
            return


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {part: after[part] - before[part] for part in after}


def cpu_line(used: dict[str, float]) -> str:
    parts = ", ".join(f"{part} {used[part]:.2f}" for part in CPU_PARTS)
    rest = used["busy"] - sum(used[part] for part in CPU_PARTS)
    return (
        f"CPU s: {parts}; anything else {max(rest, 0):.2f};"
        f" machine busy {used['busy']:.2f} of {used['total']:.2f}"
    )


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Row:
    """One method: the median of its runs, and the spread of the rates in the note."""

    method: str
    n: int
    walls: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def rate(self) -> float:
        return self.n / self.wall

    @property
    def spread(self) -> str:
        if len(self.walls) < 2:
            return ""
        rates = sorted(self.n / wall for wall in self.walls)
        return f"{len(rates)} runs: {rates[0]:.0f}-{rates[-1]:.0f}/s"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def report(
    rows: list[Row],
    latency: list[float],
    under_load: list[float],
    info: dict[str, str],
    cpu: dict[str, float],
) -> dict[str, Any]:
    floor = next(r for r in rows if r.method == "floor")
    ours = next(r for r in rows if r.method.startswith("ours"))
    peer = next((r for r in rows if r.method == "post-office"), None)
    print()
    for key, value in info.items():
        print(f"{key:>22}: {value}")
    print()
    print(f"{'method':<14} {'N':>7} {'wall s':>8} {'emails/s':>9} {'vs floor':>9}  note")
    for row in rows:
        ratio = row.rate / floor.rate
        note = "; ".join(part for part in (row.spread, row.note) if part)
        print(
            f"{row.method:<14} {row.n:>7} {row.wall:>8.2f} {row.rate:>9.0f} {ratio:>8.0%}  {note}"
        )
    print()
    floor_ratio = ours.rate / floor.rate
    lines = [
        f"ours / floor       = {floor_ratio:.0%}   (target >= {TARGET_FLOOR_RATIO:.0%}): "
        + ("met" if floor_ratio >= TARGET_FLOOR_RATIO else "MISSED")
    ]
    peer_ratio = ours.rate / peer.rate if peer else None
    if peer_ratio is not None:
        lines.append(
            f"ours / post-office = {peer_ratio:.2f}x (target >= {TARGET_PEER_RATIO:.0f}x): "
            + ("met" if peer_ratio >= TARGET_PEER_RATIO else "MISSED")
        )
    median_ms = statistics.median(latency) * 1000 if latency else None
    if latency:
        p95_ms = percentile(latency, 0.95) * 1000
        lines.append(
            f"API, {API_CHUNK} userids  : median {median_ms:.1f} ms, p95 {p95_ms:.1f} ms,"
            f" max {max(latency) * 1000:.1f} ms over {len(latency)} calls, workers stopped"
            f" (target median < {TARGET_API_MS:.0f} ms): "
            + ("met" if median_ms < TARGET_API_MS else "MISSED")
        )
    if under_load:
        lines.append(
            f"API during the run : median {statistics.median(under_load) * 1000:.1f} ms,"
            f" max {max(under_load) * 1000:.1f} ms over {len(under_load)} calls"
        )
    lines.append(f"ours, median of the runs: {cpu_line(cpu)}")
    print("\n".join(lines))
    return {
        "machine": info,
        "rows": [
            {"method": r.method, "n": r.n, "wall": r.wall, "walls": r.walls, "rate": r.rate}
            for r in rows
        ],
        "floor_ratio": floor_ratio,
        "peer_ratio": peer_ratio,
        "api_ms": [x * 1000 for x in latency],
        "api_under_load_ms": [x * 1000 for x in under_load],
        "ours_cpu_seconds": cpu,
    }


def run(args: argparse.Namespace, workdir: Path, children: Children) -> dict[str, Any]:
    n = args.recipients
    load = os.getloadavg()
    if load[0] > 1.0:
        log(f"warning: the machine is busy (load {load[0]:.2f}); the results will be noisy")
    sink_port = args.sink_port or free_port()
    env = bench_env(sink_port, DB_NAME)
    os.environ.update(env)
    log(f"fresh database {DB_NAME}, broker redis db {REDIS_DB} flushed; migrating")
    recreate_database(DB_NAME)
    flush_broker()
    manage(env, "migrate", "--noinput", "-v", "0")

    import django

    django.setup()
    from django.db import connection

    fixtures = create_fixtures(n, sink_port)
    info = machine_info(load)
    connection.close()
    log(f"{n} users with bindings; channel and sender -> smtp-sink on 127.0.0.1:{sink_port}")

    sink = children.start(
        "smtp-sink", [SINK, "-u", "nobody", "-c", f"127.0.0.1:{sink_port}", "1000"], env
    )
    wait_until(lambda: port_open(sink_port), timeout=10, what="the sink's port", child=sink)

    rows: list[Row] = []
    latency: list[float] = []
    api = Api(args.api_port or free_port(), fixtures.authorization)
    server = children.start(
        "runserver",
        [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{api.port}"],
        env,
    )
    worker_args = [sys.executable, "-m", "celery", "-A", "ums", "worker", "--pool", "prefork"]
    worker_args += ["--concurrency", str(WORKER_PROCESSES), "--loglevel", "INFO"]
    worker_args += ["--hostname", "send-bench@%h"]
    worker = children.start("worker", worker_args, env)
    wait_until(
        lambda: b" ready." in worker.log_path.read_bytes(),
        timeout=60,
        what="the worker",
        child=worker,
    )
    send: Callable[[list[str]], tuple[float, dict]] = api.send
    method = "ours"
    if args.via_service:
        send, method = service_send, "ours (service)"
        log("measuring through messaging.services.message_create, not the HTTP API")
    else:
        if not wait_until(lambda: port_open(api.port), timeout=60, what="the API", child=server):
            raise RuntimeError("the API server did not start")
        if not api_ready(api):
            raise RuntimeError(
                "POST /v1/sent is not routed yet (ums/api_urls.py); "
                "run with --via-service to measure through message_create instead"
            )

    # Warm-up: one small send through everything (imports, connections, the first batch).
    warm = run_pipeline(send, min(n, 200))
    accepted = wait_sink_count(sink, warm.sent)
    log(f"warm-up: {warm.sent} sent in {warm.wall:.2f}s; the sink has {accepted}")

    calls = math.ceil(n / API_CHUNK)
    ours = Row(method, n, note=f"{calls} API calls; {WORKER_PROCESSES} worker processes")
    under_load: list[float] = []
    groups = {"workers": worker.process.pid, "API server": server.process.pid}
    groups["smtp-sink"] = sink.process.pid
    cpu_runs: list[dict[str, float]] = []
    for attempt in range(args.repeat):
        checkpoint(DB_NAME)
        wait_quiet(args.wait_idle)
        before = sink_count(sink)
        cpu_before = cpu_sample(groups)
        timed = run_pipeline(send, n)
        cpu_runs.append(cpu_used(cpu_before, cpu_sample(groups)))
        after = wait_sink_count(sink, before + n)
        if timed.failed or timed.sent != n or after - before != n:
            raise RuntimeError(
                f"ours: {timed.sent} sent, {timed.failed} failed, sink got {after - before} of {n}"
            )
        ours.walls.append(timed.wall)
        under_load += timed.call_seconds
        log(
            f"ours #{attempt + 1}: {calls} calls answered in {timed.api_wall:.2f}s,"
            f" {n} sent in {timed.wall:.2f}s ({n / timed.wall:.0f}/s)"
        )
        log(f"ours #{attempt + 1}: {cpu_line(cpu_runs[-1])}")
    rows.append(ours)
    cpu = {part: statistics.median(run[part] for run in cpu_runs) for part in cpu_runs[0]}

    children.stop(worker)
    if not args.via_service:
        log(f"API latency: {LATENCY_CALLS} calls of {API_CHUNK} userids, workers stopped")
        # Always 1000 userids (unknown ones are fine: nothing is resolved while workers stop).
        chunk = [userid(i) for i in range(API_CHUNK)]
        for _ in range(LATENCY_WARMUP):
            api.send(chunk)
        latency = [api.send(chunk)[0] for _ in range(LATENCY_CALLS)]
    children.stop(server)
    flush_broker()

    envelope_from, data = floor_message(timed.msgids[0])
    connection.close()
    # The floor runs with the client and the sink on one CPU. On a small VM a wakeup across
    # CPUs costs far more than the work of one SMTP command, so the same loop measures anything
    # from a third of this to all of it depending on where the scheduler places the two
    # processes. Pinned is the stable upper bound; the unpinned runs are shown for reference.
    cpus = os.sched_getaffinity(0)
    one_cpu = {min(cpus)}
    floor = Row("floor", n, note=f"{len(data)} bytes a message, one connection, pinned")
    unpinned = Row("floor-unpinned", n, note="the same, placed by the scheduler")
    for attempt in range(args.repeat):
        for row, pin in ((floor, True), (unpinned, False)):
            wait_quiet(args.wait_idle)
            os.sched_setaffinity(0, one_cpu if pin else cpus)
            os.sched_setaffinity(sink.process.pid, one_cpu if pin else cpus)
            try:
                before = sink_count(sink)
                wall = run_floor(sink_port, n, envelope_from, data)
            finally:
                os.sched_setaffinity(0, cpus)
                os.sched_setaffinity(sink.process.pid, cpus)
            after = wait_sink_count(sink, before + n)
            if after - before != n:
                raise RuntimeError(f"{row.method}: the sink got {after - before} of {n}")
            row.walls.append(wall)
            log(
                f"{row.method} #{attempt + 1}: {n} x {len(data)} bytes in {wall:.2f}s"
                f" ({n / wall:.0f}/s)"
            )
    rows += [floor, unpinned]

    if not args.skip_post_office:
        peer = Row("post-office", n)
        queueing = []
        for attempt in range(args.repeat):
            wait_quiet(args.wait_idle)
            before = sink_count(sink)
            result = run_post_office(children, workdir, env, n, sink_port)
            after = wait_sink_count(sink, before + n)
            if result["sent"] != n or after - before != n:
                raise RuntimeError(f"post-office: {result}, sink got {after - before} of {n}")
            peer.walls.append(result["wall"])
            queueing.append(result["queue"])
            log(
                f"post-office #{attempt + 1}: queued in {result['queue']:.2f}s,"
                f" all sent in {result['wall']:.2f}s ({n / result['wall']:.0f}/s)"
            )
        peer.note = f"queueing {statistics.median(queueing):.2f}s of it"
        rows.append(peer)
    rows.sort(key=lambda r: {"floor": 0, "floor-unpinned": 1, "post-office": 3}.get(r.method, 2))
    return report(rows, latency, under_load, info, cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--recipients", type=int, default=10_000)
    parser.add_argument("--sink-port", type=int, default=0, help="default: a free port")
    parser.add_argument("--api-port", type=int, default=0, help="default: a free port")
    parser.add_argument("--skip-post-office", action="store_true")
    parser.add_argument(
        "--repeat", type=int, default=3, help="timed runs of each method; the median is shown"
    )
    parser.add_argument(
        "--via-service",
        action="store_true",
        help="create the messages with messaging.services.message_create, not POST /v1/sent",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before each timed run, wait up to this long for a second with the machine's CPUs"
        f" at most {QUIET_BUSY * 100:.0f}%% busy (for a machine shared with other work)",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the logs of the children")
    parser.add_argument("--po-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(BASE_DIR))
    if args.po_child:
        return post_office_child(args)
    if args.recipients < 1 or args.repeat < 1:
        parser.error("--recipients and --repeat must be at least 1")
    if not Path(SINK).exists():
        parser.error(f"{SINK} is missing: apt-get install postfix (then stop its daemon)")

    def stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    workdir = Path(tempfile.mkdtemp(prefix="send-bench-"))
    children = Children(workdir)
    ok = False
    try:
        results = run(args, workdir, children)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        ok = True
    finally:
        children.stop_all()
        with contextlib.suppress(Exception):
            flush_broker()
        if args.keep or not ok:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
