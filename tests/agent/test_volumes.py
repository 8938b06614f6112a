"""Persistent volumes on the agent: directories it owns, fixed mount paths, quota and removal.

(The real agent process keeping a file between two jobs is in tests/marketplace/test_volumes.py:
it needs the exchange's database, which the agent tests do without.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from providers.agent.jobs import JobRecord
from providers.agent.runtimes.docker import run_kwargs
from providers.agent.volumes import (
    VolumeError,
    job_mounts,
    process_links,
    volume_path,
    volumes_held,
    volumes_prepare,
    volumes_remove,
)

# --- The module -----------------------------------------------------------------------------------


def test_mounts_are_agent_owned_directories_at_fixed_paths(tmp_path: Path) -> None:
    spec = {"volumes": [{"id": 7, "name": "data-set", "size_gib": 1}]}
    (mount,) = job_mounts(tmp_path, spec)
    assert mount.path == tmp_path / "volumes" / "7" == volume_path(tmp_path, 7)
    assert mount.target == "/volumes/data-set" and mount.env_name == "SUANLI_VOLUME_DATA_SET"

    volumes_prepare([mount])
    assert mount.path.is_dir() and volumes_held(tmp_path) == [7]
    (tmp_path / "work").mkdir()
    env = process_links(tmp_path / "work", [mount])
    assert env == {"SUANLI_VOLUME_DATA_SET": str(mount.path)}
    assert (tmp_path / "work" / "volumes" / "data-set").resolve() == mount.path

    rec = JobRecord(id=1, spec={"image": "alpine", **spec})
    assert run_kwargs(rec, [mount])["volumes"] == {
        str(mount.path): {"bind": "/volumes/data-set", "mode": "rw"}
    }


@pytest.mark.parametrize(
    "volumes",
    [
        [{"id": 1, "name": "../etc", "size_gib": 1}],
        [{"id": 1, "name": "/etc", "size_gib": 1}],
        [{"id": "1", "name": "a", "size_gib": 1}],
        [{"id": 1, "name": "a", "size_gib": 0}],
        [{"id": 1, "name": "a", "size_gib": 1}, {"id": 1, "name": "b", "size_gib": 1}],
        "data",
    ],
)
def test_a_volume_list_from_the_server_that_could_escape_is_refused(tmp_path: Path, volumes: object) -> None:
    with pytest.raises(VolumeError):
        job_mounts(tmp_path, {"volumes": volumes})


def test_an_over_quota_volume_is_refused_and_removal_spares_volumes_in_use(tmp_path: Path) -> None:
    (mount,) = job_mounts(tmp_path, {"volumes": [{"id": 3, "name": "a", "size_gib": 1}]})
    mount.path.mkdir(parents=True)
    with open(mount.path / "big", "wb") as fh:
        fh.truncate((1 << 30) + 1)  # sparse, but its size counts
    with pytest.raises(VolumeError, match="more than its 1 GiB"):
        volumes_prepare([mount])
    volume_path(tmp_path, 4).mkdir()
    assert volumes_remove(tmp_path, [3, 4, 5], in_use={3}) == [4]
    assert volumes_held(tmp_path) == [3]
