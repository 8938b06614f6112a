"""Simulated hardware: a named profile replaces discovery and device telemetry, nothing else.

Everything past discovery (registration, jobs, spool, logs, usage) runs the real code path, so
`make run` can start several simulated agents against one server. Uuids derive from
(profile, node name, index), so two simulated agents with different names never collide, and the
telemetry random walk is seeded the same way, so a run is reproducible.
"""

from __future__ import annotations

import hashlib
import random
import threading
import uuid as uuidlib
from dataclasses import dataclass, field

from providers.agent.discovery.types import Device, Host, Inventory
from providers.agent.telemetry import Reading

_NAMESPACE = uuidlib.UUID("6f1c2a43-7d0b-4b6e-9a51-3c3f0e6d2a10")


@dataclass(frozen=True)
class Profile:
    vendor: str
    model: str
    count: int
    memory_mib: int
    idle_w: float
    max_w: float
    software: dict[str, str]
    host: Host
    bus_base: int = 0x18
    uuid_prefix: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def _host(cpu: str, cores: int, mem_gib: int, disk_gib: int, nic_gbps: int) -> Host:
    nics = [{"name": "eth0", "speed_mbps": 25000, "mac": None}]
    if nic_gbps:
        nics.append({"name": "ib0", "speed_mbps": nic_gbps * 1000, "mac": None})
    return Host(cpu_model=cpu, cpu_cores=cores, memory_mib=mem_gib * 1024, disk_gib=disk_gib, nics=nics)


PROFILES: dict[str, Profile] = {
    "h100x8": Profile(
        vendor="nvidia",
        model="NVIDIA H100 80GB HBM3",
        count=8,
        memory_mib=81559,
        idle_w=70.0,
        max_w=700.0,
        uuid_prefix="GPU-",
        software={"cuda": "12.4", "driver": "550.54.15"},
        host=_host("Intel(R) Xeon(R) Platinum 8480+", 224, 2048, 30720, 400),
    ),
    "mi300x8": Profile(
        vendor="amd",
        model="AMD Instinct MI300X",
        count=8,
        memory_mib=196592,
        idle_w=130.0,
        max_w=750.0,
        software={"rocm": "6.2.0", "driver": "6.7.0"},
        host=_host("AMD EPYC 9654 96-Core Processor", 384, 2304, 30720, 400),
    ),
    "ascend910bx4": Profile(
        vendor="huawei",
        model="910B1",
        count=4,
        memory_mib=65536,
        idle_w=90.0,
        max_w=400.0,
        software={"cann": "8.0", "driver": "24.1.rc2"},
        host=_host("Kunpeng-920", 192, 1024, 7680, 200),
    ),
    "mlu370x2": Profile(
        vendor="cambricon",
        model="MLU370-X8",
        count=2,
        memory_mib=49152,
        idle_w=40.0,
        max_w=250.0,
        software={"neuware": "3.10.2", "driver": "5.10.22"},
        host=_host("Intel(R) Xeon(R) Gold 6348 CPU @ 2.60GHz", 112, 512, 3840, 0),
    ),
    "k100x8": Profile(
        vendor="hygon",
        model="K100_AI",
        count=8,
        memory_mib=65520,
        idle_w=60.0,
        max_w=350.0,
        software={"dtk": "24.04", "driver": "6.3.8"},
        host=_host("Hygon C86 7390 32-core Processor", 128, 1024, 7680, 200),
    ),
    "gaudi2x8": Profile(
        vendor="intel",
        model="HL-225",
        count=8,
        memory_mib=98304,
        idle_w=100.0,
        max_w=600.0,
        software={"synapseai": "1.18.0", "driver": "1.18.0-ee698fb"},
        host=_host("Intel(R) Xeon(R) Platinum 8380 CPU @ 2.30GHz", 160, 1024, 7680, 100),
    ),
    # A CPU-only node rents the host as one device of the catalog's generic x86 CPU model.
    "cpu": Profile(
        vendor="cpu",
        model="x86-64 CPU",
        count=1,
        memory_mib=131072,
        idle_w=60.0,
        max_w=280.0,
        software={},
        host=_host("AMD EPYC 7763 64-Core Processor", 128, 128, 1920, 0),
    ),
}


def profile_names() -> list[str]:
    return sorted(PROFILES)


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown simulation profile {name!r} (choose from {', '.join(profile_names())})"
        ) from None


def device_uuid(profile: str, node: str, index: int) -> str:
    p = get_profile(profile)
    return f"{p.uuid_prefix}{uuidlib.uuid5(_NAMESPACE, f'{profile}/{node}/{index}')}"


def simulated_inventory(profile: str, node: str) -> Inventory:
    p = get_profile(profile)
    devices = [
        Device(
            vendor=p.vendor,
            model=p.model,
            index=i,
            uuid=device_uuid(profile, node, i),
            bus_id=None if p.vendor == "cpu" else f"0000:{p.bus_base + i * 0x10:02x}:00.0",
            memory_mib=p.memory_mib,
        )
        for i in range(p.count)
    ]
    return Inventory(host=p.host, devices=devices, software=dict(p.software))


def seed_for(profile: str, node: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{profile}/{node}".encode()).digest()[:8], "big")


class SimulatedTelemetry:
    """A bounded random walk per device; busy devices drift towards high utilisation."""

    def __init__(self, profile: str, node: str, seed: int | None = None) -> None:
        self._p = get_profile(profile)
        seed = seed if seed is not None else seed_for(profile, node)
        self._rng = random.Random(seed)  # noqa: S311 - simulation, not security
        self._util = [0.0] * self._p.count
        self._lock = threading.Lock()

    def read(self, indexes: list[int], busy: set[int]) -> list[Reading]:
        p = self._p
        out = []
        with self._lock:
            for i in indexes:
                if not 0 <= i < p.count:
                    out.append(Reading(index=i, health="failed"))
                    continue
                target = 85.0 if i in busy else 2.0
                step = self._rng.uniform(-8.0, 8.0) + (target - self._util[i]) * 0.3
                self._util[i] = min(100.0, max(0.0, self._util[i] + step))
                u = self._util[i] / 100.0
                out.append(
                    Reading(
                        index=i,
                        utilization_pct=round(self._util[i], 1),
                        memory_used_mib=int(p.memory_mib * (0.01 + 0.8 * u)),
                        power_w=round(p.idle_w + (p.max_w - p.idle_w) * u, 1),
                        temperature_c=round(32.0 + 45.0 * u + self._rng.uniform(-1, 1), 1),
                    )
                )
        return out
