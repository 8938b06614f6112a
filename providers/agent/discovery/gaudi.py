"""Intel Gaudi: `hl-smi -Q ... --format csv,noheader` (nvidia-smi style, memory with units)."""

from __future__ import annotations

import re

from providers.agent.discovery.probe import normalize_bus_id, run_tool, to_int, warn
from providers.agent.discovery.types import Device, VendorResult, fallback_uuid

QUERY = [
    "hl-smi",
    "-Q",
    "index,uuid,name,bus_id,memory.total,driver_version",
    "--format",
    "csv,noheader",
]


def parse_hl_smi_csv(text: str) -> VendorResult:
    result = VendorResult()
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        index = to_int(cells[0]) if cells else None
        if len(cells) < 6 or index is None:
            raise ValueError(f"unexpected hl-smi line: {line!r}")
        bus = normalize_bus_id(cells[3])
        mem = cells[4].split()
        memory = to_int(mem[0]) if mem else None
        if memory is not None and len(mem) > 1 and mem[1].lower() in ("gib", "gb"):
            memory *= 1024
        result.devices.append(
            Device(
                vendor="intel",
                model=cells[2],
                index=index,
                uuid=cells[1] if cells[1] not in ("", "N/A") else fallback_uuid("gaudi", bus, index),
                bus_id=bus,
                memory_mib=memory,
            )
        )
        result.software.setdefault("driver", cells[5])
        m = re.match(r"(\d+\.\d+\.\d+)", cells[5])
        if m:
            # The SynapseAI release and the habanalabs driver share their version number.
            result.software.setdefault("synapseai", m.group(1))
    if not result.devices:
        raise ValueError("no devices listed")
    return result


def discover() -> VendorResult | None:
    out = run_tool(QUERY)
    if out is None:
        return None
    try:
        return parse_hl_smi_csv(out)
    except ValueError as exc:
        warn(f"hl-smi output not understood ({exc}); skipped")
        return None
