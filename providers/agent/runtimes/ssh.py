"""SSH launch mode: a job whose env carries the buyer's public key gets an sshd port.

The exchange puts the buyer's OpenSSH public key in the job variable ``SUANLI_SSH_PUBLIC_KEY``
(validated server-side: one ssh-ed25519/ecdsa/rsa line). The agent writes it to an
``authorized_keys`` file inside its own state directory (``<state>/ssh/job-<id>/``, 0700/0600),
never a path from the job spec, and:

- docker: publishes the container's port 22 on an ephemeral host port and mounts that directory
  read-only at ``/etc/suanli/ssh``. The image must run sshd on port 22 and install the key for
  root (from ``$SUANLI_SSH_PUBLIC_KEY``, ``$PUBLIC_KEY`` or ``/etc/suanli/ssh/authorized_keys``);
  the agent grants the few capabilities sshd needs to switch users, nothing more.
- process: picks a free host port, tells the job through ``SUANLI_SSH_PORT`` /
  ``SUANLI_SSH_AUTHORIZED_KEYS`` / ``SUANLI_SSH_USER`` (a job can run
  ``sshd -D -p $SUANLI_SSH_PORT -o AuthorizedKeysFile=$SUANLI_SSH_AUTHORIZED_KEYS``), reports it
  as the published port ``22/tcp`` and prints the connection line into the job log.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from providers.agent.jobs import JobRecord
from providers.agent.state import StateDir

SSH_KEY_ENV = "SUANLI_SSH_PUBLIC_KEY"
SSH_PORT_KEY = "22/tcp"
CONTAINER_KEYS_DIR = "/etc/suanli/ssh"
# What sshd needs under `cap_drop: ALL` to chroot its privilege-separated child, switch to the
# logged-in user and own its pty; all are in Docker's default set, none reaches the host.
SSHD_CAPABILITIES = ["CHOWN", "SETUID", "SETGID", "SYS_CHROOT", "AUDIT_WRITE", "NET_BIND_SERVICE"]


def ssh_key(rec: JobRecord) -> str:
    """The job's SSH public key ("" when the job is not in SSH mode)."""
    value = (rec.spec.get("env") or {}).get(SSH_KEY_ENV)
    # The server validated it; a second line or a NUL would still be refused here.
    if not isinstance(value, str) or "\n" in value or "\r" in value or "\x00" in value:
        return ""
    return value.strip()


def keys_dir(state: StateDir, job_id: int) -> Path:
    return state.root / "ssh" / f"job-{int(job_id)}"


def authorized_keys_write(state: StateDir, rec: JobRecord, key: str) -> Path:
    """Write the job's authorized_keys file (0600 in a 0700 directory); returns the directory."""
    directory = keys_dir(state, rec.id)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / "authorized_keys"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (key + "\n").encode())
    finally:
        os.close(fd)
    return directory


def keys_forget(state: StateDir, job_id: int) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(keys_dir(state, job_id))


def free_port() -> int:
    """A TCP port free right now on every interface, for the job's sshd to bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def connection_line(*, port: int, user: str, host: str) -> str:
    target = f"{user}@{host}" if user else host
    return f"ssh -p {port} {target}"


def process_ssh_prepare(state: StateDir, rec: JobRecord, *, public_address: str) -> dict[str, str]:
    """Set up SSH mode for a process job: returns the job's extra variables ({} when not in SSH
    mode; ``SUANLI_SSH_PORT`` is the port to publish as ``22/tcp``) and writes the connection
    line into the job's log."""
    key = ssh_key(rec)
    if not key:
        return {}
    directory = authorized_keys_write(state, rec, key)
    port = free_port()
    user = getpass.getuser()
    host = public_address or socket.gethostname()
    line = f"suanli: ssh mode: connect with `{connection_line(port=port, user=user, host=host)}`\n"
    fd = os.open(state.job_log_path(rec.id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return {
        "SUANLI_SSH_PORT": str(port),
        "SUANLI_SSH_AUTHORIZED_KEYS": str(directory / "authorized_keys"),
        "SUANLI_SSH_USER": user,
    }


def docker_ssh_apply(kwargs: dict[str, Any], *, state: StateDir, rec: JobRecord) -> None:
    """Add SSH mode to a container's `containers.run` arguments (nothing when not in SSH mode)."""
    key = ssh_key(rec)
    if not key:
        return
    directory = authorized_keys_write(state, rec, key)
    kwargs["ports"] = {**(kwargs.get("ports") or {}), SSH_PORT_KEY: None}
    volumes = dict(kwargs.get("volumes") or {})
    volumes[str(directory)] = {"bind": CONTAINER_KEYS_DIR, "mode": "ro"}
    kwargs["volumes"] = volumes
    env = dict(kwargs.get("environment") or {})
    env.setdefault("PUBLIC_KEY", key)  # the variable common sshd-ready images already read
    env["SUANLI_SSH_AUTHORIZED_KEYS"] = f"{CONTAINER_KEYS_DIR}/authorized_keys"
    kwargs["environment"] = env
    kwargs["cap_add"] = sorted(set(kwargs.get("cap_add") or []) | set(SSHD_CAPABILITIES))
