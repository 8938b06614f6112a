"""The agent's state directory: credential, job records, logs and the spool.

Every file is written atomically (temp file, fsync, rename, fsync of the directory) so that a
kill -9 at any instant leaves either the old or the new version, never a torn one.
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CREDENTIAL_FILE = "credential.json"


def default_state_dir() -> Path:
    env = os.environ.get("SUANLI_AGENT_STATE_DIR")
    if env:
        return Path(env)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/suanli-agent")
    return Path.home() / ".local" / "state" / "suanli-agent"


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: Path, obj: Any, *, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # Created with its final mode: a credential must never exist, even briefly, as 0644.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, json.dumps(obj, sort_keys=True).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def unlink_durably(paths: list[Path]) -> None:
    parents = set()
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
        parents.add(p.parent)
    for parent in parents:
        fsync_dir(parent)


class StateDir:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @property
    def credential_path(self) -> Path:
        return self.root / CREDENTIAL_FILE

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def spool_dir(self) -> Path:
        return self.root / "spool"

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for d in (self.jobs_dir, self.logs_dir, self.run_dir, self.spool_dir):
            d.mkdir(exist_ok=True, mode=0o700)

    def save_credential(self, data: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write_json(self.credential_path, data, mode=0o600)

    def load_credential(self) -> dict[str, Any] | None:
        try:
            data = read_json(self.credential_path)
        except FileNotFoundError:
            return None
        return data if isinstance(data, dict) else None

    def job_log_path(self, job_id: int) -> Path:
        return self.logs_dir / f"job-{job_id}.log"
