"""A gunicorn for the benchmarks: started on a free loopback port, returned once it answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start_gunicorn(
    *, env_overrides: dict[str, str], workers: int, threads: int
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start ``config.wsgi`` with ``env_overrides`` (DATABASE_URL, REDIS_URL, ...); wait for it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "DJANGO_DEBUG": "0", "SUANLI_LOG_LEVEL": "WARNING", **env_overrides}
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "config.wsgi", "-b", f"127.0.0.1:{port}", "-w", str(workers),
         "--threads", str(threads), "--log-level", "warning"],
        cwd=ROOT, env=env, start_new_session=True,
    )  # fmt: skip
    server = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{server}/api/agent/v1/ping", timeout=2) as reply:
                if reply.status == 200:
                    return server, process
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("gunicorn did not come up within 60 s")
