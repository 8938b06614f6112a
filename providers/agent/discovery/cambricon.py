"""Cambricon MLUs: `cnmon info` prints one `Card N` block of `Key : Value` lines per card."""

from __future__ import annotations

import os
import re

from providers.agent.discovery.probe import normalize_bus_id, read_text, run_tool, to_int, warn
from providers.agent.discovery.types import Device, VendorResult, fallback_uuid

_CARD_RE = re.compile(r"^\s*Card\s*:?\s*(\d+)\s*$")
_KV_RE = re.compile(r"^(\s*)([^:]+?)\s*:\s*(.*?)\s*$")


def _blocks(text: str) -> list[tuple[int, list[str]]]:
    blocks: list[tuple[int, list[str]]] = []
    for line in text.splitlines():
        m = _CARD_RE.match(line)
        if m:
            blocks.append((int(m.group(1)), []))
        elif blocks:
            blocks[-1][1].append(line)
    return blocks


def _parse_block(lines: list[str]) -> dict[str, str]:
    """Flatten a block into `Section/Key` and bare `Key` entries (first wins for bare keys)."""
    fields: dict[str, str] = {}
    section = ""
    for line in lines:
        if not line.strip():
            continue
        m = _KV_RE.match(line)
        if not m:
            section = line.strip()
            continue
        indent, key, value = m.groups()
        if not indent:
            section = ""
        fields[f"{section}/{key}" if section else key] = value
        fields.setdefault(key, value)
    return fields


def _bus_id(fields: dict[str, str]) -> str | None:
    direct = fields.get("Bus ID") or fields.get("PCIe Bus ID")
    if direct:
        return normalize_bus_id(direct)
    domain, bus = to_int(fields.get("Domain ID")), to_int(fields.get("Bus num"))
    dev, func = to_int(fields.get("Device")), to_int(fields.get("Function"))
    if None in (domain, bus, dev, func):
        return None
    return f"{domain:04x}:{bus:02x}:{dev:02x}.{func:x}"


def parse_cnmon_info(text: str) -> VendorResult:
    result = VendorResult()
    for index, lines in _blocks(text):
        fields = _parse_block(lines)
        model = fields.get("Product Name") or fields.get("Model")
        if not model:
            raise ValueError(f"Card {index} has no Product Name")
        total = fields.get("Physical Memory Usage/Total") or fields.get("Total")
        memory = to_int(total.split()[0]) if total else None
        bus = _bus_id(fields)
        uuid = fields.get("UUID") or fallback_uuid("cambricon", bus, index)
        result.devices.append(
            Device(
                vendor="cambricon",
                model=model,
                index=index,
                uuid=uuid,
                bus_id=bus,
                memory_mib=memory,
            )
        )
        driver = fields.get("Driver")
        if driver:
            result.software.setdefault("driver", driver.lstrip("vV"))
    if not result.devices:
        raise ValueError("no Card blocks found")
    return result


def neuware_version() -> str | None:
    home = os.environ.get("NEUWARE_HOME", "/usr/local/neuware")
    for name in ("version.txt", "version"):
        text = read_text(os.path.join(home, name))
        if text:
            m = re.search(r"([0-9]+\.[0-9]+(?:\.[0-9]+)?)", text)
            if m:
                return m.group(1)
    return None


def discover() -> VendorResult | None:
    out = run_tool(["cnmon", "info"])
    if out is None:
        return None
    try:
        result = parse_cnmon_info(out)
    except ValueError as exc:
        warn(f"cnmon info output not understood ({exc}); skipped")
        return None
    neuware = neuware_version()
    if neuware:
        result.software["neuware"] = neuware
    return result
