"""Run real Celery worker and beat processes against the test database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings

from config.env import database_url_for

ROOT = Path(__file__).resolve().parents[2]


def test_database_url() -> str:
    """A libpq URL for the database pytest-django created (``test_suanli``)."""
    # pytest-django has already switched NAME to the test database.
    return database_url_for(settings.DATABASES["default"])


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=test_database_url(),
        REDIS_URL=settings.REDIS_URL,
        SUANLI_ENV="test",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class CeleryWorker:
    """One `celery worker` process (prefork, 2 children) consuming every queue."""

    def __init__(
        self, *, concurrency: int = 2, log_path: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.concurrency = concurrency
        self.log_path = log_path or ROOT / "var" / "test" / "celery-worker.log"
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        from config.celery_app import app

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        app.control.purge()
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "config.celery_app", "worker",
                "-Q", "matching,provisioning,billing,default",
                "-c", str(self.concurrency), "-n", f"test-{os.getpid()}-{time.time_ns()}@%h",
                "--without-mingle", "--without-gossip", "-l", "info",
            ],
            cwd=ROOT, env=child_env(**self.env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"celery worker exited early; see {self.log_path}")
            if app.control.ping(timeout=0.5):
                return
        raise RuntimeError(f"celery worker did not answer within {timeout}s; see {self.log_path}")

    def kill9(self) -> None:
        """Kill the worker and its pool children at once, as a machine failure would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.kill9()


class CeleryBeat:
    """One `celery beat` process: the real periodic schedule (``config.celery_app``), its intervals
    taken from ``env`` (``SUANLI_MATCHING_INTERVAL_S`` and friends), its state file in ``directory``."""

    def __init__(self, directory: Path, *, env: dict[str, str] | None = None) -> None:
        self.directory = directory
        self.log_path = directory / "celery-beat.log"
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "config.celery_app", "beat",
                "-s", str(self.directory / "celerybeat-schedule"), "--max-interval", "1", "-l", "info",
            ],
            cwd=ROOT, env=child_env(**self.env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"celery beat exited early; see {self.log_path}")
            if "Sending due task" in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"celery beat sent nothing within {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
