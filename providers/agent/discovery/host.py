"""Host facts: CPU, RAM, disk and NICs via psutil and /proc."""

from __future__ import annotations

import platform
import uuid as uuidlib

import psutil

from providers.agent.discovery.probe import read_text
from providers.agent.discovery.types import Device, Host


def cpu_model() -> str:
    text = read_text("/proc/cpuinfo") or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model name", "cpu model") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def nics() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    stats = psutil.net_if_stats()
    addrs = psutil.net_if_addrs()
    for name in sorted(stats):
        if name == "lo" or name.startswith(("docker", "veth", "br-", "virbr")):
            continue
        mac = next((a.address for a in addrs.get(name, []) if a.family == psutil.AF_LINK), None)
        out.append({"name": name, "speed_mbps": stats[name].speed or None, "mac": mac})
    return out


def discover_host(disk_path: str = "/") -> Host:
    try:
        disk_gib = int(psutil.disk_usage(disk_path).total // (1024**3))
    except OSError:
        disk_gib = 0
    return Host(
        cpu_model=cpu_model(),
        cpu_cores=psutil.cpu_count(logical=True) or 1,
        memory_mib=int(psutil.virtual_memory().total // (1024 * 1024)),
        disk_gib=disk_gib,
        nics=nics(),
    )


def generic_cpu_model(machine: str | None = None) -> str:
    """The catalog's generic CPU entry: `x86-64 CPU` or `arm64 CPU`."""
    arch = (machine or platform.machine()).lower()
    return "arm64 CPU" if arch in ("aarch64", "arm64") else "x86-64 CPU"


def cpu_device(host: Host) -> Device:
    """A CPU-only node rents its whole host as one `cpu` device."""
    machine_id = (read_text("/etc/machine-id") or "").strip() or platform.node()
    return Device(
        vendor="cpu",
        model=generic_cpu_model(),
        index=0,
        uuid=f"cpu-{uuidlib.uuid5(uuidlib.NAMESPACE_OID, machine_id)}",
        bus_id=None,
        memory_mib=host.memory_mib,
    )
