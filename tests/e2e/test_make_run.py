"""`make run`'s supervisor: the whole exchange with simulated agents comes up healthy with a
running demo job, and stops every process it started on SIGINT."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import psycopg2
import pytest

from config.env import database_url_for, parse_database_url

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except OSError:
        return 0, None


SCRATCH_DB = "suanli_make_run_test"


def scratch_database(url: str, *, drop_only: bool = False) -> str:
    """(Re)create an empty database for the supervisor on ``url``'s server; its URL.

    ``make run`` migrates and seeds whatever database it is given: never the developer's own.
    """
    db = parse_database_url(url)
    admin = psycopg2.connect(
        dbname="postgres", user=db["USER"] or None, password=db["PASSWORD"] or None,
        host=db["HOST"] or None, port=db["PORT"] or None,
    )  # fmt: skip
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{SCRATCH_DB}" WITH (FORCE)')
            if not drop_only:
                cursor.execute(f'CREATE DATABASE "{SCRATCH_DB}"')
    finally:
        admin.close()
    return database_url_for({**db, "NAME": SCRATCH_DB})


def test_runexchange_serves_a_live_demo_and_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "SUANLI_PORT": str(port),
        "SUANLI_VAR_DIR": str(tmp_path / "var"),
        "PYTHONUNBUFFERED": "1",
    }
    server_url = os.environ.get("DATABASE_URL")
    if server_url:
        env["DATABASE_URL"] = scratch_database(server_url)
    else:
        # Embedded mode: use the test session's own embedded servers and leave them running.
        env["SUANLI_VAR_DIR"] = str(ROOT / "var" / "test")
    log = (tmp_path / "run.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "runexchange", "--keep-services"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            if "Suanli Exchange is running" in (tmp_path / "run.log").read_text(errors="replace"):
                break
            assert process.poll() is None, (tmp_path / "run.log").read_text(errors="replace")[-3000:]
            time.sleep(1)
        status, health = get_json(f"{base}/healthz")
        assert status == 200, health
        status, offers = get_json(f"{base}/api/v1/offers")
        assert status == 200
        rows = offers["results"] if isinstance(offers, dict) else offers  # paginated or not
        names = {offer["node"]["name"] for offer in rows}  # type: ignore[index]
        assert {"hx-sh-h100-01", "hx-sh-910b-01", "pr-gz-mlu370-01", "pr-gz-cpu-01"} <= names
        children = psutil.Process(process.pid).children(recursive=True)
        assert len(children) >= 7  # gunicorn, worker, beat (and their children), four agents
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(60)
        if server_url:
            scratch_database(server_url, drop_only=True)
    output = (tmp_path / "run.log").read_text(errors="replace")
    assert code == 0, output[-3000:]
    assert "stopped cleanly" in output
    survivors = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert survivors == []
    leftover_jobs = [
        p for p in psutil.process_iter(["cmdline"]) if "suanli-job" in " ".join(p.info["cmdline"] or [])
        and env["SUANLI_VAR_DIR"] in " ".join(p.info["cmdline"] or [])
    ]  # fmt: skip
    assert leftover_jobs == []


def test_runexchange_names_an_unusable_database_in_one_line(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": "postgres://postgres@127.0.0.1:9/suanli",  # port 9: nothing listens there
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15"),
        "SUANLI_VAR_DIR": str(tmp_path / "var"),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "runexchange"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("CommandError: cannot use the database:"), result.stderr
    assert "Traceback" not in result.stderr
