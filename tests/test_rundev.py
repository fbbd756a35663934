"""`manage.py rundev` runs web, worker, beat and the mail catcher, and stops them all."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.processes import ROOT, port_open, wait_for
from tests.smtp_server import free_port


def descendants(pid: int) -> set[int]:
    """The process's children, their children and so on (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    """Those still running (a zombie waiting for its parent counts as gone)."""
    running = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] != "Z":
                    running.add(pid)
        except OSError:
            continue
    return running


@pytest.fixture
def stack(tmp_path):
    web, catcher = free_port(), free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "CELERY_BROKER_FOLDER": str(tmp_path / "broker"),
        "CELERY_BEAT_SCHEDULE_FILE": str(tmp_path / "beat-schedule"),
        "DJANGO_DEBUG": "true",  # rundev is the development stack
        "UMS_MAILCATCHER": "true",
        "UMS_MAILCATCHER_PORT": str(catcher),
    }
    env.pop("CELERY_BROKER_URL", None)
    log = tmp_path / "rundev.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "rundev", "--addr", f"127.0.0.1:{web}"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: port_open(web) and port_open(catcher), timeout=60, what="rundev", log_path=log
        )
        yield process, log
    finally:
        for pid in alive(descendants(process.pid)):
            os.kill(pid, signal.SIGKILL)
        process.kill()
        process.wait()


def test_one_sigterm_stops_every_process_of_the_stack(stack):
    process, log = stack
    children = descendants(process.pid)
    assert len(children) >= 4  # web, worker (and its pool), beat, mail catcher

    process.send_signal(signal.SIGTERM)

    assert process.wait(timeout=30) == 0
    wait_for(lambda: not alive(children), timeout=10, what="the stack's processes to end")
    assert "Traceback" not in log.read_text()


def test_a_second_signal_while_stopping_stops_at_once_without_a_traceback(stack):
    process, log = stack
    children = descendants(process.pid)

    process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)

    process.wait(timeout=15)
    wait_for(lambda: not alive(children), timeout=10, what="the stack's processes to end")
    assert "Traceback" not in log.read_text()
