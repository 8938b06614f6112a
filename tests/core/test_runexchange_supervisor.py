"""`make run`'s supervisor with real child processes (issue #11, item 13).

A child that dies is restarted (with a growing delay, logged); one that keeps dying right after it
starts is given up on while the others keep running; only ``stop()`` (Ctrl-C) ends them all.
The whole exchange under `make run` is tests/e2e/test_make_run.py.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from core.management.commands.runexchange import Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]
CRASHER = [sys.executable, "-c", "raise SystemExit(3)"]


def wait_for(cond: Callable[[], Any], supervisor: Supervisor, timeout: float = 20.0) -> Any:
    """Run the supervisor's loop (as the command does) until ``cond`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        supervisor.poll()
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.fixture
def lines() -> list[str]:
    return []


@pytest.fixture
def supervisor(lines: list[str]) -> Iterator[Supervisor]:
    sup = Supervisor(
        log=lines.append, fast_death_s=2.0, max_fast_deaths=3, restart_base_s=0.1, restart_cap_s=1.0
    )
    yield sup
    sup.stop(timeout=5)


def test_a_killed_child_is_restarted_and_the_others_are_left_alone(
    supervisor: Supervisor, lines: list[str], tmp_path: Path
) -> None:
    worker = supervisor.spawn("worker", SLEEPER, dict(os.environ), tmp_path / "worker.log")
    web = supervisor.spawn("web", SLEEPER, dict(os.environ), tmp_path / "web.log")
    first_pid, web_pid = worker.process.pid, web.process.pid

    os.kill(first_pid, signal.SIGKILL)  # what the issue did to the Celery worker

    wait_for(lambda: worker.starts == 2 and worker.process.poll() is None, supervisor)
    assert worker.process.pid != first_pid
    assert web.process.pid == web_pid and web.process.poll() is None and web.starts == 1
    assert not supervisor.stopping
    assert lines[0].startswith("worker exited with -9 (killed by SIGKILL)")
    assert "restarting in 0.1 s" in lines[0] and str(tmp_path / "worker.log") in lines[0]
    assert lines[1] == f"worker restarted (pid {worker.process.pid})"

    # It dies again, later: restarted again.
    os.kill(worker.process.pid, signal.SIGKILL)
    wait_for(lambda: worker.starts == 3 and worker.process.poll() is None, supervisor)


def test_a_child_that_keeps_dying_fast_is_given_up_and_the_others_keep_running(
    supervisor: Supervisor, lines: list[str], tmp_path: Path
) -> None:
    beat = supervisor.spawn("beat", CRASHER, dict(os.environ), tmp_path / "beat.log")
    web = supervisor.spawn("web", SLEEPER, dict(os.environ), tmp_path / "web.log")

    wait_for(lambda: beat.gave_up, supervisor)
    # A few more rounds of the loop: nothing restarts it, nothing else is touched.
    for _ in range(20):
        supervisor.poll()
        time.sleep(0.02)

    assert beat.starts == 3 and beat.exit_codes == [3, 3, 3]
    assert web.process.poll() is None and web.starts == 1 and not supervisor.stopping
    # Growing delays between restarts (0.1 s, then 0.2 s), each logged, then one line giving up.
    restarting = [line for line in lines if "restarting in" in line]
    assert ["restarting in 0.1 s" in restarting[0], "restarting in 0.2 s" in restarting[1]] == [True, True]
    assert "died 3 times in a row within 2 s of starting, so it is not restarted again" in lines[-1]
    assert lines[-1].startswith("beat exited with 3;")


def test_a_child_that_ran_a_while_before_dying_starts_its_count_again(
    lines: list[str], tmp_path: Path
) -> None:
    now = [1000.0]
    supervisor = Supervisor(
        log=lines.append,
        fast_death_s=2.0,
        max_fast_deaths=2,
        restart_base_s=0.0,
        restart_cap_s=1.0,
        clock=lambda: now[0],
    )
    try:
        child = supervisor.spawn("worker", SLEEPER, dict(os.environ), tmp_path / "worker.log")
        for _ in range(4):
            now[0] += 60.0  # ran for a minute: not a fast death
            child.process.kill()
            child.process.wait()
            wait_for(lambda starts=child.starts: child.starts == starts + 1, supervisor)
        assert not child.gave_up and child.fast_deaths == 0
        # Two quick deaths in a row, though, and it is given up on.
        for _ in range(2):
            child.process.kill()
            child.process.wait()
            wait_for(lambda: child.restart_at is None, supervisor)
        assert child.gave_up
    finally:
        supervisor.stop(timeout=5)


def test_the_orphans_of_a_dead_child_are_killed_before_it_restarts(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    # Like gunicorn's workers holding the port, or Celery's pool holding tasks.
    pidfile = tmp_path / "grandchild.pid"
    script = f"sleep 120 & echo $! > {pidfile}; wait"
    web = supervisor.spawn("web", ["/bin/sh", "-c", script], dict(os.environ), tmp_path / "web.log")
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), supervisor)
    grandchild = psutil.Process(int(pidfile.read_text()))

    os.kill(web.process.pid, signal.SIGKILL)
    wait_for(lambda: web.starts == 2, supervisor)

    grandchild.wait(timeout=5)  # raises if it were still alive
    assert not grandchild.is_running()


def test_stop_ends_every_child_and_nothing_restarts_afterwards(
    supervisor: Supervisor, lines: list[str], tmp_path: Path
) -> None:
    children = [
        supervisor.spawn(name, SLEEPER, dict(os.environ), tmp_path / f"{name}.log")
        for name in ("web", "worker", "beat")
    ]

    supervisor.stop(timeout=5)
    supervisor.poll()

    assert [child.process.poll() for child in children] == [-signal.SIGTERM] * 3
    assert all(child.starts == 1 for child in children)
    assert lines == []
