"""SSH launch mode on the agent side (no Django, no server): the process runtime publishes a free
port, hands the job its authorized_keys file and writes the connection line; the docker runtime
maps port 22 and mounts only the agent-owned keys directory; the agent CLI checks
``--public-address``. The end-to-end run with a live exchange is in
tests/marketplace/test_job_endpoints.py."""

from __future__ import annotations

import base64
import getpass
import os
import socket
import struct
import sys
import time
from pathlib import Path

from providers.agent.cli import main as agent_main
from providers.agent.discovery.host import primary_address
from providers.agent.jobs import JobRecord
from providers.agent.runtimes.docker import run_kwargs
from providers.agent.runtimes.process import ProcessRuntime
from providers.agent.runtimes.ssh import SSH_KEY_ENV, docker_ssh_apply
from providers.agent.state import StateDir

# Stands in for `sshd -D -p $SUANLI_SSH_PORT -o AuthorizedKeysFile=$SUANLI_SSH_AUTHORIZED_KEYS`.
FAKE_SSHD = """
import os, socket
print("keys:", open(os.environ["SUANLI_SSH_AUTHORIZED_KEYS"]).read().strip(), flush=True)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("", int(os.environ["SUANLI_SSH_PORT"])))
server.listen()
while True:
    conn, _ = server.accept()
    conn.sendall(b"SSH-2.0-suanli-test\\r\\n")
    conn.close()
"""


def ed25519_key() -> str:
    blob = b"".join(struct.pack(">I", len(p)) + p for p in (b"ssh-ed25519", os.urandom(32)))
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} buyer@laptop"


def test_process_runtime_ssh_mode_publishes_a_port_the_job_listens_on(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.ensure()
    runtime = ProcessRuntime(state, public_address="203.0.113.7")
    key = ed25519_key()
    rec = JobRecord(
        id=5, spec={"runtime": "process", "command": [sys.executable, "-u", "-c", FAKE_SSHD], "ports": [8000],
                    "env": {SSH_KEY_ENV: key}},
    )  # fmt: skip
    runtime.start(rec)
    try:
        port = rec.ports["22/tcp"]
        assert rec.ports["8000/tcp"] == 8000 and port not in (22, 8000)
        user = getpass.getuser()
        log_path = state.job_log_path(5)
        first = log_path.read_text().splitlines()[0]
        assert first == f"suanli: ssh mode: connect with `ssh -p {port} {user}@203.0.113.7`"
        keys_file = tmp_path / "state" / "ssh" / "job-5" / "authorized_keys"
        assert keys_file.read_text() == key + "\n" and keys_file.stat().st_mode & 0o777 == 0o600
        deadline = time.monotonic() + 15
        banner = b""
        while time.monotonic() < deadline and not banner:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
                    banner = conn.recv(64)
            except OSError:
                time.sleep(0.2)
        assert banner.startswith(b"SSH-2.0-")
        assert f"keys: {key}" in log_path.read_text()
    finally:
        runtime.kill(rec)


def test_process_runtime_without_ssh_mode_writes_no_keys_and_no_line(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.ensure()
    runtime = ProcessRuntime(state, public_address="203.0.113.7")
    rec = JobRecord(id=6, spec={"runtime": "process", "command": [sys.executable, "-c", "print('hi')"]})
    runtime.start(rec)
    deadline = time.monotonic() + 15
    while runtime.poll(rec).running and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rec.ports == {}
    assert state.job_log_path(6).read_text() == "hi\n"
    assert not (tmp_path / "state" / "ssh").exists()


def test_a_key_with_a_newline_is_not_acted_on(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.ensure()
    rec = JobRecord(
        id=9, spec={"runtime": "docker", "image": "x", "env": {SSH_KEY_ENV: ed25519_key() + "\nx"}}
    )
    kwargs = run_kwargs(rec)
    docker_ssh_apply(kwargs, state=state, rec=rec)
    assert "22/tcp" not in kwargs["ports"] and not (tmp_path / "ssh").exists()


def test_agent_cli_refuses_a_bad_address_in_the_environment(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SUANLI_AGENT_PUBLIC_ADDRESS", "two words")
    code = agent_main(
        ["join", "--server", "http://127.0.0.1:9", "--token", "jt_x_y", "--state-dir", str(tmp_path)]
    )
    assert code == 2
    assert "SUANLI_AGENT_PUBLIC_ADDRESS" in capsys.readouterr().err


def test_primary_address_is_the_route_to_the_exchange() -> None:
    assert primary_address("http://127.0.0.1:8000") == "127.0.0.1"
    assert primary_address("https://[::1]:8443") in ("::1", "")  # no IPv6 loopback: nothing
    assert isinstance(primary_address(""), str)


def test_docker_ssh_mode_maps_port_22_and_mounts_only_the_agent_owned_keys_dir(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.ensure()
    key = ed25519_key()
    rec = JobRecord(
        id=7, spec={"runtime": "docker", "image": "ubuntu:24.04", "ports": [8000], "env": {SSH_KEY_ENV: key}}
    )
    kwargs = run_kwargs(rec)
    docker_ssh_apply(kwargs, state=state, rec=rec)
    assert kwargs["ports"] == {"8000/tcp": None, "22/tcp": None}
    keys_dir = tmp_path / "ssh" / "job-7"
    assert kwargs["volumes"] == {str(keys_dir): {"bind": "/etc/suanli/ssh", "mode": "ro"}}
    assert (keys_dir / "authorized_keys").read_text() == key + "\n"
    assert kwargs["environment"]["PUBLIC_KEY"] == key
    # Still locked down: no privileged mode, every capability dropped but the few sshd needs.
    assert kwargs["privileged"] is False and kwargs["cap_drop"] == ["ALL"]
    assert set(kwargs["cap_add"]) <= {
        "CHOWN",
        "SETUID",
        "SETGID",
        "SYS_CHROOT",
        "AUDIT_WRITE",
        "NET_BIND_SERVICE",
    }
    assert "no-new-privileges" in kwargs["security_opt"]

    # Not in SSH mode: nothing changes.
    plain = JobRecord(id=8, spec={"runtime": "docker", "image": "ubuntu:24.04", "ports": [8000]})
    kwargs = run_kwargs(plain)
    before = dict(kwargs)
    docker_ssh_apply(kwargs, state=state, rec=plain)
    assert kwargs == before and not (tmp_path / "ssh" / "job-8").exists()
