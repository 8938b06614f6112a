"""A live exchange for end-to-end tests and benchmarks: gunicorn on the test database and real
`suanli-agent` processes on simulated hardware (process runtime)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from providers.agent.state import CREDENTIAL_FILE
from tests.support.live_server import LiveServer

AGENT = str(Path(sys.executable).parent / "suanli-agent")


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@contextmanager
def live_exchange(log_dir: Path, *, env: dict[str, str] | None = None, workers: int = 2) -> Iterator[str]:
    """gunicorn serving the exchange on a free local port; yields its base URL."""
    # Long-polls hold a thread each: eight per worker leave room for every agent's poll and calls.
    server = LiveServer(log_path=log_dir / "gunicorn.log", workers=workers, threads=8, **(env or {}))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


class Agent:
    """One real `suanli-agent` process with its own state directory."""

    def __init__(self, server: str, state_dir: Path, name: str, *, profile: str = "h100x8") -> None:
        self.server = server
        self.state_dir = state_dir
        self.name = name
        self.profile = profile
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = state_dir.parent / f"{name}.log"

    def join(self, token: str) -> int:
        result = subprocess.run(
            [AGENT, "join", "--server", self.server, "--token", token, "--name", self.name,
             "--state-dir", str(self.state_dir), "--simulate", self.profile],
            env=self._env(), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        credential = json.loads((self.state_dir / CREDENTIAL_FILE).read_text())
        return int(credential["node_id"])

    def start(self, *, heartbeat: float = 1, sample: float = 2, work_wait: int = 5) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [AGENT, "run", "--state-dir", str(self.state_dir), "--heartbeat-interval", str(heartbeat),
             "--sample-interval", str(sample), "--work-wait", str(work_wait)],
            env=self._env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def kill9(self) -> None:
        # Only the agent: its jobs run in their own sessions and must survive it.
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def kill_jobs(self) -> None:
        for record in (self.state_dir / "jobs").glob("*.json"):
            pid = json.loads(record.read_text()).get("pid")
            if pid:
                try:
                    os.killpg(int(pid), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))}
        env["PYTHONUNBUFFERED"] = "1"
        return env
