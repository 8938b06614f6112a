"""What a runtime does for the daemon: start, poll, signal, and surface logs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from providers.agent.jobs import JobRecord

# Per vendor, the variable that restricts a job to its devices (runtime-level isolation).
VISIBLE_DEVICES_ENV = {
    "nvidia": ("CUDA_VISIBLE_DEVICES",),
    "huawei": ("ASCEND_RT_VISIBLE_DEVICES",),
    "cambricon": ("MLU_VISIBLE_DEVICES",),
    "amd": ("HIP_VISIBLE_DEVICES",),
    "hygon": ("HIP_VISIBLE_DEVICES",),
    "intel": ("HABANA_VISIBLE_MODULES",),
}


def device_env(vendor: str | None, indexes: list[int]) -> dict[str, str]:
    value = ",".join(str(i) for i in indexes)
    return {name: value for name in VISIBLE_DEVICES_ENV.get(vendor or "", ())}


class StartError(Exception):
    """The job could not be started (bad image, bad command, runtime unavailable)."""


@dataclass
class Status:
    running: bool
    exit_code: int | None = None
    # False when the job is gone and nothing says how it ended (e.g. died while we were down).
    known: bool = True


class Runtime(Protocol):
    name: str

    def start(self, rec: JobRecord) -> None:
        """Start the job; fills rec.pid/create_time or rec.container_id and rec.ports."""

    def poll(self, rec: JobRecord) -> Status: ...

    def terminate(self, rec: JobRecord) -> None:
        """SIGTERM at the stop notice."""

    def kill(self, rec: JobRecord) -> None:
        """SIGKILL at the stop deadline."""

    def sync_logs(self, rec: JobRecord) -> None:
        """Make the job's output visible in its local log file (a no-op for `process`)."""
