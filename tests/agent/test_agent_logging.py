"""The agent's logs: the exchange's JSON line format on stderr, from a real `suanli-agent run`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.agent.fakes import FakeExchange
from tests.agent.test_cli import ROOT, cli


def run_agent(state: Path, exchange: FakeExchange, **env: str) -> subprocess.CompletedProcess[str]:
    """Join, run the daemon until it has heartbeated twice, SIGTERM it; its stderr."""
    assert (
        cli(
            "join", "--server", exchange.url, "--token", "jt", "--simulate", "mlu370x2", state=state
        ).returncode
        == 0
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "providers.agent.cli",
            "run",
            "--heartbeat-interval",
            "0.2",
            "--work-wait",
            "1",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT), "SUANLI_AGENT_STATE_DIR": str(state), **env},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while len(exchange.paths("/heartbeat")) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_agent_writes_one_json_object_per_line_by_default(tmp_path: Path, exchange: FakeExchange) -> None:
    # One heartbeat answered 503: the retry is a warning line, in the same format.
    exchange.fail_next["/heartbeat"] = [503]
    result = run_agent(tmp_path / "state", exchange)

    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert lines
    assert all(list(line)[:4] == ["ts", "level", "logger", "event"] for line in lines)
    assert all(line["ts"].endswith("Z") and line["logger"].startswith("suanli_agent") for line in lines)
    events = [line["event"] for line in lines]
    assert any(event.startswith("agent.started") for event in events)
    assert any(event.startswith("agent.stopped") for event in events)
    warning = next(line for line in lines if line["event"].startswith("heartbeat.unreachable"))
    assert warning["level"] == "warning" and warning["logger"] == "suanli_agent.daemon"


def test_agent_console_format_on_request_and_a_bad_format_is_refused(
    tmp_path: Path, exchange: FakeExchange
) -> None:
    result = run_agent(tmp_path / "state", exchange, SUANLI_AGENT_LOG_FORMAT="console")
    assert result.returncode == 0, result.stderr
    assert "agent.started" in result.stderr
    assert not any(line.startswith("{") for line in result.stderr.splitlines())

    refused = cli("--log-format", "xml", "detect", "--simulate", "mlu370x2")
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: argument --log-format")
