"""Real processes for integration tests: a Celery worker, the mail catcher."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def database_url() -> str:
    """The URL of the database this test runs against, for a child process to share it."""
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(s['NAME']).resolve()}"
    user = s.get("USER") or ""
    if user and s.get("PASSWORD"):
        user += f":{s['PASSWORD']}"
    auth = f"{user}@" if user else ""
    return f"postgres://{auth}{s.get('HOST') or '127.0.0.1'}:{s.get('PORT') or 5432}/{s['NAME']}"


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "DATABASE_URL": database_url()}
    env.update(extra)
    return env


@contextmanager
def running(args: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    with open(log_path, "wb") as log:
        # Its own process group, so that the whole of it (a worker's pool too) can be stopped.
        process = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield process
        finally:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


def celery_worker(env: dict[str, str], log_path: Path) -> "contextmanager":
    args = [sys.executable, "-m", "celery", "-A", "ums", "worker", "--pool", "solo", "-l", "info"]
    return running(args, env, log_path)


def wait_for(
    predicate: Callable[[], object], *, timeout: float, what: str, log_path: Path | None = None
) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    log = log_path.read_text(errors="replace")[-3000:] if log_path and log_path.exists() else ""
    raise AssertionError(f"Timed out after {timeout}s waiting for {what}.\n{log}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def redis_server(port: int, log_path: Path) -> Iterator[subprocess.Popen]:
    """A Redis of the test's own, without persistence, so that the test may restart it."""
    args = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    with running(args, dict(os.environ), log_path) as process:
        wait_for(lambda: port_open(port), timeout=10, what=f"redis on {port}", log_path=log_path)
        yield process


def publish(
    task: Any,
    *args: Any,
    url: str,
    transport_options: dict | None = None,
    priority: int | None = None,
) -> None:
    """Queue a task on a given broker, whatever the test process's own Celery settings say."""
    from ums.celery import app as celery_app

    with celery_app.connection_for_write(url, transport_options=transport_options or {}) as conn:
        task.apply_async(args=list(args), connection=conn, priority=priority)
