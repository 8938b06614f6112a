"""Hardware inventory: run each vendor's tool found on PATH and merge what they report."""

from __future__ import annotations

import logging
from collections.abc import Callable

from providers.agent.discovery import amd, ascend, cambricon, gaudi, hygon, nvidia
from providers.agent.discovery.host import cpu_device, discover_host
from providers.agent.discovery.probe import warn
from providers.agent.discovery.types import Device, Inventory, VendorResult

log = logging.getLogger("suanli_agent.discovery")

# Hygon before AMD: hy-smi is a rocm-smi fork and a DCU host may carry both tools; the AMD
# result then drops the devices Hygon already claimed (same PCI bus id).
VENDOR_PROBES: list[tuple[str, Callable[[], VendorResult | None]]] = [
    ("nvidia", nvidia.discover),
    ("hygon", hygon.discover),
    ("amd", amd.discover),
    ("huawei", ascend.discover),
    ("cambricon", cambricon.discover),
    ("intel", gaudi.discover),
]


def detect(*, simulate: str | None = None, name: str | None = None) -> Inventory:
    """The node's inventory; `simulate` swaps real discovery for a named profile."""
    if simulate:
        from providers.agent.simulate import simulated_inventory

        return simulated_inventory(simulate, name or "node")
    host = discover_host()
    devices: list[Device] = []
    software: dict[str, str] = {}
    seen_bus: set[str] = set()
    for vendor, probe in VENDOR_PROBES:
        try:
            result = probe()
        except Exception as exc:  # one broken vendor must not hide the others  # noqa: BLE001
            warn(f"{vendor} discovery failed ({exc.__class__.__name__}: {exc}); skipped")
            continue
        if result is None:
            continue
        fresh = [d for d in result.devices if not (d.bus_id and d.bus_id in seen_bus)]
        devices.extend(fresh)
        seen_bus.update(d.bus_id for d in fresh if d.bus_id)
        for key, value in result.software.items():
            software.setdefault(key, value)
        log.info("discovery.vendor vendor=%s devices=%d", vendor, len(fresh))
    if not devices:
        devices.append(cpu_device(host))
    return Inventory(host=host, devices=devices, software=software)


__all__ = ["Device", "Inventory", "detect"]
