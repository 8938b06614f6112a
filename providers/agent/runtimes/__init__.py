"""Job runtimes: `process` (local process group) and `docker` (one container per job)."""

from providers.agent.runtimes.base import Runtime, StartError, Status, device_env

__all__ = ["Runtime", "StartError", "Status", "device_env"]
