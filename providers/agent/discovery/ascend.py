"""Huawei Ascend NPUs: the `npu-smi info` table.

Two layouts exist. 910B (one chip per NPU) prints `Chip [Phy-ID] | Bus-Id | AICore(%)
Memory-Usage(MB) HBM-Usage(MB)`; 310P prints `Chip Device | Bus-Id | AICore(%) Memory-Usage(MB)`
and can list several chips under one NPU (Atlas 300I Duo). The usable memory is the last
"used / total" pair of the chip row either way.
"""

from __future__ import annotations

import os
import re

from providers.agent.discovery.probe import normalize_bus_id, read_text, run_tool, warn
from providers.agent.discovery.types import Device, VendorResult, fallback_uuid

_HEADER_RE = re.compile(r"npu-smi\s+(\S+)\s+Version:\s*(\S+)")
_NPU_ROW = re.compile(r"^\s*(\d+)\s+(\S+)\s*$")
_CHIP_ROW = re.compile(r"^\s*(\d+)(?:\s+(\d+))?\s*$")
_BUS_RE = re.compile(r"^\s*([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f])\s*$")
_PAIR_RE = re.compile(r"(\d+)\s*/\s*(\d+)")
_HEALTH = {"ok": "ok", "warning": "degraded", "alarm": "failed", "critical": "failed"}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse_npu_smi_info(text: str) -> VendorResult:
    result = VendorResult()
    header = _HEADER_RE.search(text)
    if header:
        result.software["driver"] = header.group(2)
    lines = [ln for ln in text.splitlines() if ln.strip().startswith("|")]
    pending: tuple[int, str, str] | None = None
    for line in lines:
        cells = _cells(line)
        if any("Process id" in c for c in cells):
            break  # the per-process table follows the device table
        if len(cells) < 3:
            continue
        npu = _NPU_ROW.match(cells[0])
        health = cells[1].strip().lower()
        if npu and health in _HEALTH:
            pending = (int(npu.group(1)), npu.group(2), _HEALTH[health])
            continue
        chip = _CHIP_ROW.match(cells[0])
        bus = _BUS_RE.match(cells[1])
        if pending and chip and bus:
            npu_id, name, health_state = pending
            # 310P: "Chip Device" -> the logical device id that ASCEND_RT_VISIBLE_DEVICES takes.
            # 910B: no device column (or a Phy-ID); one chip per NPU, so the NPU id is it.
            index = int(chip.group(2)) if chip.group(2) is not None else npu_id
            pairs = _PAIR_RE.findall(cells[2])
            bus_id = normalize_bus_id(bus.group(1))
            result.devices.append(
                Device(
                    vendor="huawei",
                    model=name,
                    index=index,
                    # npu-smi prints no UUID; the chip number keeps 310P Duo chips apart.
                    uuid=fallback_uuid("ascend", f"{bus_id}-chip{chip.group(1)}", index),
                    bus_id=bus_id,
                    memory_mib=int(pairs[-1][1]) if pairs else None,
                    health=health_state,
                )
            )
            pending = None
    if not result.devices:
        raise ValueError("no NPU rows found")
    result.devices.sort(key=lambda d: d.index)
    return result


def cann_version() -> str | None:
    """Best effort: the toolkit's install info, e.g. `version=8.0.RC2`."""
    home = os.environ.get("ASCEND_TOOLKIT_HOME", "/usr/local/Ascend/ascend-toolkit/latest")
    candidates = [os.path.join(home, "version.cfg")]
    for arch in ("aarch64-linux", "x86_64-linux"):
        candidates.append(os.path.join(home, arch, "ascend_toolkit_install.info"))
    for path in candidates:
        text = read_text(path)
        if not text:
            continue
        m = re.search(r"^\s*(?:version|Version)\s*=\s*([0-9][\w.]*)", text, re.MULTILINE)
        if m:
            return m.group(1)
        m = re.search(r"running_version=\[([0-9][\w.]*)", text)
        if m:
            return m.group(1)
    return None


def discover() -> VendorResult | None:
    out = run_tool(["npu-smi", "info"])
    if out is None:
        return None
    try:
        result = parse_npu_smi_info(out)
    except ValueError as exc:
        warn(f"npu-smi info output not understood ({exc}); skipped")
        return None
    cann = cann_version()
    if cann:
        result.software["cann"] = cann
    return result
