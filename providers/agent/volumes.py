"""Persistent volumes on this node: directories the agent owns, mounted into the jobs that name them.

A volume lives at ``<state>/volumes/<id>`` (the exchange's id, never a path the buyer chose) and
is created when the first job that mounts it starts. Inside a container it is always
``/volumes/<name>``; a process job finds it through ``SUANLI_VOLUME_<NAME>`` and at
``volumes/<name>`` relative to its working directory. The exchange's poll reply names the
volumes that were deleted (``delete_volumes``); their directories are removed then, unless a
job still running here mounts one.

Size: the directory itself cannot hold a quota on every filesystem, so the agent enforces the
size where it can, when a job starts: a job whose volume already holds more than its size is
refused (a provider who needs a hard limit puts the state directory on a filesystem with project
quotas).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("suanli_agent.volumes")

MOUNT_ROOT = "/volumes"
# The exchange's name rule again (this package imports nothing from the server): no "/" or ".".
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?$")
GIB = 1 << 30


class VolumeError(ValueError):
    """A job's volume list the agent refuses to mount."""


@dataclass(frozen=True)
class Mount:
    id: int
    name: str
    size_gib: int
    path: Path

    @property
    def target(self) -> str:
        return f"{MOUNT_ROOT}/{self.name}"

    @property
    def env_name(self) -> str:
        return "SUANLI_VOLUME_" + self.name.upper().replace("-", "_")


def volumes_root(state_root: Path) -> Path:
    return state_root / "volumes"


def volume_path(state_root: Path, volume_id: int) -> Path:
    return volumes_root(state_root) / str(int(volume_id))


def job_mounts(state_root: Path, spec: dict[str, Any]) -> list[Mount]:
    """The volumes a job spec names, validated (``VolumeError``); paths are not created here."""
    raw = spec.get("volumes") or []
    if not isinstance(raw, list):
        raise VolumeError("volumes must be a list")
    mounts: list[Mount] = []
    for item in raw:
        if not isinstance(item, dict):
            raise VolumeError("each volume must be an object")
        volume_id, name, size = item.get("id"), item.get("name"), item.get("size_gib")
        if not isinstance(volume_id, int) or isinstance(volume_id, bool) or volume_id < 1:
            raise VolumeError(f"bad volume id {volume_id!r}")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise VolumeError(f"bad volume name {name!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise VolumeError(f"bad size for volume {name}")
        if any(m.name == name or m.id == volume_id for m in mounts):
            raise VolumeError(f"volume {name} named twice")
        mounts.append(Mount(volume_id, name, size, volume_path(state_root, volume_id)))
    return mounts


def used_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def volumes_prepare(mounts: list[Mount]) -> None:
    """Create each volume's directory (0700) if new; refuse (``VolumeError``) one over its size."""
    for mount in mounts:
        mount.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        used = used_bytes(mount.path)
        if used > mount.size_gib * GIB:
            raise VolumeError(
                f"volume {mount.name} holds {used / GIB:.1f} GiB, more than its {mount.size_gib} GiB"
            )
    if mounts:
        log.info("volumes.prepared ids=%s", [m.id for m in mounts])


def volumes_held(state_root: Path) -> list[int]:
    """The ids of the volumes with data on this node."""
    root = volumes_root(state_root)
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def volumes_remove(state_root: Path, volume_ids: list[int], *, in_use: set[int]) -> list[int]:
    """Remove deleted volumes' data; one a live job still mounts waits for a later poll."""
    removed = []
    for volume_id in volume_ids:
        if not isinstance(volume_id, int) or volume_id in in_use:
            continue
        path = volume_path(state_root, volume_id)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            log.info("volume.removed volume_id=%s", volume_id)
            removed.append(volume_id)
    return removed


def process_links(workdir: Path, mounts: list[Mount]) -> dict[str, str]:
    """For the process runtime: ``<workdir>/volumes/<name>`` links to each volume; returns the
    ``SUANLI_VOLUME_<NAME>`` variables (absolute paths)."""
    env: dict[str, str] = {}
    if not mounts:
        return env
    links = workdir / "volumes"
    links.mkdir(exist_ok=True, mode=0o700)
    for mount in mounts:
        link = links / mount.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(mount.path, target_is_directory=True)
        env[mount.env_name] = str(mount.path)
    return env


def docker_binds(mounts: list[Mount]) -> dict[str, dict[str, str]]:
    """For the docker runtime: each volume's directory bound at ``/volumes/<name>``, read-write."""
    return {str(m.path): {"bind": m.target, "mode": "rw"} for m in mounts}
