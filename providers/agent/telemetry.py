"""Per-device readings for heartbeats and usage samples: NVML when present, else unknown."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("suanli_agent.telemetry")


@dataclass
class Reading:
    index: int
    utilization_pct: float | None = None
    memory_used_mib: int | None = None
    power_w: float | None = None
    temperature_c: float | None = None
    health: str = "ok"


class Telemetry(Protocol):
    def read(self, indexes: list[int], busy: set[int]) -> list[Reading]: ...


class NullTelemetry:
    """Vendors we cannot read without spawning their CLI every few seconds: values unknown."""

    def read(self, indexes: list[int], busy: set[int]) -> list[Reading]:
        return [Reading(index=i) for i in indexes]


class NvmlTelemetry:
    """Real NVIDIA readings. NVML is initialised once and kept: init costs tens of ms."""

    def __init__(self) -> None:
        import pynvml

        self._nvml: Any = pynvml
        pynvml.nvmlInit()
        self._lock = threading.Lock()

    def read(self, indexes: list[int], busy: set[int]) -> list[Reading]:
        nv = self._nvml
        out = []
        with self._lock:
            for i in indexes:
                r = Reading(index=i)
                try:
                    h = nv.nvmlDeviceGetHandleByIndex(i)
                    r.utilization_pct = float(nv.nvmlDeviceGetUtilizationRates(h).gpu)
                    r.memory_used_mib = int(nv.nvmlDeviceGetMemoryInfo(h).used // (1024 * 1024))
                    r.power_w = nv.nvmlDeviceGetPowerUsage(h) / 1000.0
                    r.temperature_c = float(nv.nvmlDeviceGetTemperature(h, 0))
                except Exception as exc:  # a lost GPU reads as failed, not a crash  # noqa: BLE001
                    log.warning("telemetry.nvml_error index=%s error=%s", i, exc)
                    r.health = "failed"
                out.append(r)
        return out


def real_telemetry(vendors: set[str]) -> Telemetry:
    if "nvidia" in vendors:
        from providers.agent.discovery.nvidia import nvml_enabled

        if nvml_enabled():
            try:
                return NvmlTelemetry()
            except Exception as exc:  # noqa: BLE001
                log.info("telemetry.nvml_unavailable error=%s", exc)
    return NullTelemetry()
