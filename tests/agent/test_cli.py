"""CLI behaviour: exit codes, one-line errors, the credential file, the daemon's clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.agent.fakes import FakeExchange

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, state: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SUANLI_AGENT_NO_NVML": "1"}
    if state is not None:
        env["SUANLI_AGENT_STATE_DIR"] = str(state)
    return subprocess.run(
        [sys.executable, "-m", "providers.agent.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_join_against_closed_port_exits_3_with_one_line(tmp_path: Path) -> None:
    proc = cli(
        "join",
        "--server",
        f"http://127.0.0.1:{closed_port()}",
        "--token",
        "jt_x",
        "--simulate",
        "cpu",
        "--state-dir",
        str(tmp_path),
    )

    assert proc.returncode == 3
    assert proc.stderr.startswith("error: cannot reach")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "credential.json").exists()


def test_bad_simulate_profile_exits_2_with_one_line() -> None:
    proc = cli("detect", "--simulate", "tpu-v9")

    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown simulation profile 'tpu-v9' (choose from ascend910bx4, cpu, gaudi2x8, "
        "h100x8, k100x8, mi300x8, mlu370x2)"
    ]


def test_bad_arguments_exit_2_with_one_line() -> None:
    proc = cli("join", "--server", "http://x")

    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("error: ")


def test_join_stores_credential_0600(tmp_path: Path, exchange: FakeExchange) -> None:
    state = tmp_path / "state"
    proc = cli(
        "join",
        "--server",
        exchange.url,
        "--token",
        "jt_good",
        "--name",
        "rack1-n3",
        "--simulate",
        "ascend910bx4",
        "--state-dir",
        str(state),
    )

    assert proc.returncode == 0, proc.stderr
    assert "joined as node 12" in proc.stdout
    cred_path = state / "credential.json"
    assert oct(cred_path.stat().st_mode & 0o777) == "0o600"
    cred = json.loads(cred_path.read_text())
    assert cred["credential"] == "nc_test" and cred["node_id"] == 12
    assert cred["server"] == exchange.url and cred["simulate"] == "ascend910bx4"
    body = exchange.paths("/register")[0].body
    assert body["token"] == "jt_good" and body["name"] == "rack1-n3"
    assert body["agent_version"] == "0.1.0"
    assert [d["model"] for d in body["inventory"]["devices"]] == ["910B1"] * 4
    # Simulated nodes may run plain processes; real ones only containers unless they opt in.
    assert body["inventory"]["software"]["runtimes"] == "docker,process"
    assert "Authorization" not in exchange.paths("/register")[0].headers

    again = cli("join", "--server", exchange.url, "--token", "jt_2", "--state-dir", str(state))
    assert again.returncode == 2 and "already joined" in again.stderr


def test_real_node_runs_containers_only_unless_it_opts_in(tmp_path: Path, exchange: FakeExchange) -> None:
    plain = cli("join", "--server", exchange.url, "--token", "jt_a", "--state-dir", str(tmp_path / "a"))
    opted = cli(
        "join", "--server", exchange.url, "--token", "jt_b", "--state-dir", str(tmp_path / "b"),
        "--allow-process-runtime",
    )  # fmt: skip

    assert plain.returncode == 0, plain.stderr
    assert opted.returncode == 0, opted.stderr
    first, second = (r.body["inventory"]["software"]["runtimes"] for r in exchange.paths("/register"))
    assert first == "docker"
    assert second == "docker,process"
    assert json.loads((tmp_path / "b" / "credential.json").read_text())["allow_process_runtime"] is True


def test_join_rejected_token_exits_2_with_server_message(tmp_path: Path, exchange: FakeExchange) -> None:
    exchange.register_reply = (
        400,
        {
            "error": {
                "code": "invalid_token",
                "fields": {"token": ["bad"]},
                "message": "join token expired or already used",
            }
        },
    )

    proc = cli(
        "join",
        "--server",
        exchange.url,
        "--token",
        "jt_old",
        "--simulate",
        "cpu",
        "--state-dir",
        str(tmp_path),
    )

    assert proc.returncode == 2
    assert proc.stderr == "error: join token expired or already used\n"


def test_run_without_credential_exits_2(tmp_path: Path) -> None:
    proc = cli("run", state=tmp_path / "empty")

    assert proc.returncode == 2
    assert proc.stderr.startswith("error: not joined")


def test_run_daemon_heartbeats_and_stops_cleanly_on_sigterm(tmp_path: Path, exchange: FakeExchange) -> None:
    state = tmp_path / "state"
    assert (
        cli(
            "join",
            "--server",
            exchange.url,
            "--token",
            "jt",
            "--simulate",
            "mlu370x2",
            "--name",
            "sim-1",
            state=state,
        ).returncode
        == 0
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SUANLI_AGENT_STATE_DIR": str(state)}
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
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while len(exchange.paths("/heartbeat")) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()

    assert proc.returncode == 0, err
    assert "agent.stopped" in err
    assert "Traceback" not in err
    beat = exchange.paths("/heartbeat")[0].body
    assert [d["index"] for d in beat["devices"]] == [0, 1]
    assert beat["devices"][0]["power_w"] is not None  # simulated telemetry
