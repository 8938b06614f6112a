"""AMD Instinct GPUs: `amd-smi static --json`, falling back to `rocm-smi --json`."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from providers.agent.discovery.probe import normalize_bus_id, read_text, run_tool, to_int, warn
from providers.agent.discovery.types import Device, VendorResult, fallback_uuid

ROCM_SMI = [
    "rocm-smi",
    "--showproductname",
    "--showmeminfo",
    "vram",
    "--showbus",
    "--showuniqueid",
    "--json",
]
_CARD_KEY = re.compile(r"^(?:card|gpu|dcu|hcu)\[?(\d+)\]?$", re.IGNORECASE)
_ROCM_VERSION_RE = re.compile(r"ROCm version:\s*([0-9][0-9.]*)")


def extract_json(text: str) -> Any:
    """Parse JSON that some SMI builds surround with banner or warning lines."""
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        raise ValueError("no JSON in output")
    start = min(starts)
    end = max(text.rfind("}"), text.rfind("]"))
    return json.loads(text[start : end + 1])


def _size_mib(size: Any) -> int | None:
    # amd-smi >= 24.5 prints {"value": 196592, "unit": "MB"}; older builds "196592 MB".
    if isinstance(size, dict):
        value, unit = size.get("value"), str(size.get("unit", "MB"))
    else:
        parts = str(size).split()
        value, unit = (parts[0], parts[1] if len(parts) > 1 else "MB") if parts else (None, "MB")
    number = to_int(value)
    if number is None:
        return None
    unit = unit.upper()
    if unit in ("B", "BYTES"):
        return number // (1024 * 1024)
    if unit in ("KB", "KIB"):
        return number // 1024
    if unit in ("GB", "GIB"):
        return number * 1024
    return number


def parse_amd_smi_static(text: str, uuids: dict[int, str] | None = None) -> VendorResult:
    data = extract_json(text)
    if isinstance(data, dict):
        # ROCm 6.4+ wraps the list: {"gpu_data": [...]}.
        data = data.get("gpu_data", [])
    if not isinstance(data, list):
        raise ValueError("amd-smi static: expected a list of GPUs")
    result = VendorResult()
    for entry in data:
        index = to_int(entry.get("gpu"))
        if index is None:
            continue
        asic = entry.get("asic") or {}
        bus = normalize_bus_id((entry.get("bus") or {}).get("bdf"))
        model = asic.get("market_name") or (entry.get("board") or {}).get("product_name")
        if not model or model == "N/A":
            raise ValueError(f"amd-smi static: GPU {index} has no market_name")
        uuid = (uuids or {}).get(index) or fallback_uuid("amd", bus, index)
        result.devices.append(
            Device(
                vendor="amd",
                model=str(model),
                index=index,
                uuid=uuid,
                bus_id=bus,
                memory_mib=_size_mib((entry.get("vram") or {}).get("size")),
            )
        )
        driver = (entry.get("driver") or {}).get("version")
        if driver and driver != "N/A":
            result.software.setdefault("driver", str(driver))
    return result


def parse_amd_smi_list(text: str) -> dict[int, str]:
    data = extract_json(text)
    if isinstance(data, dict):
        data = data.get("gpu_data", [])
    out = {}
    for entry in data:
        index, uuid = to_int(entry.get("gpu")), entry.get("uuid")
        if index is not None and uuid:
            out[index] = str(uuid)
    return out


def _field(card: dict[str, Any], *names: str) -> Any:
    lowered = {k.lower(): v for k, v in card.items()}
    for name in names:
        if name.lower() in lowered:
            return lowered[name.lower()]
    return None


def _total_memory_mib(card: dict[str, Any]) -> int | None:
    for key, value in card.items():
        k = key.lower()
        if "total memory" in k and "used" not in k and k.startswith("vram"):
            number = to_int(value)
            if number is None:
                return None
            return number // (1024 * 1024) if "(b)" in k else number
    return None


def parse_smi_cards(text: str, vendor: str) -> list[Device]:
    """Parse rocm-smi / hy-smi JSON: one object per card keyed `card0`, `DCU[0]` or `HCU[0]`."""
    data = extract_json(text)
    if not isinstance(data, dict):
        raise ValueError(f"{vendor}: expected an object keyed by card")
    devices = []
    for key, card in data.items():
        m = _CARD_KEY.match(key.strip())
        if not m or not isinstance(card, dict):
            continue  # the "system" block and friends
        index = int(m.group(1))
        bus = normalize_bus_id(_field(card, "PCI Bus"))
        model = _field(card, "Card Series", "Card series", "Card SKU", "Card model", "Device Name")
        if not model:
            raise ValueError(f"{vendor}: {key} has no product name")
        unique = _field(card, "Unique ID")
        uuid = str(unique) if unique and str(unique) != "N/A" else fallback_uuid(vendor, bus, index)
        devices.append(
            Device(
                vendor=vendor,
                model=str(model).strip(),
                index=index,
                uuid=uuid,
                bus_id=bus,
                memory_mib=_total_memory_mib(card),
            )
        )
    devices.sort(key=lambda d: d.index)
    return devices


def rocm_version(default_root: str) -> str | None:
    root = os.environ.get("ROCM_PATH", default_root)
    text = read_text(os.path.join(root, ".info", "version"))
    if text and text.strip():
        return text.strip().split("-")[0]
    return None


def discover() -> VendorResult | None:
    static = run_tool(["amd-smi", "static", "--json"])
    if static is not None:
        uuids_out = run_tool(["amd-smi", "list", "--json"])
        try:
            uuids = parse_amd_smi_list(uuids_out) if uuids_out else {}
        except (ValueError, AttributeError):
            uuids = {}
        try:
            result = parse_amd_smi_static(static, uuids)
        except (ValueError, AttributeError, TypeError) as exc:
            warn(f"amd-smi static output not understood ({exc}); trying rocm-smi")
            result = None
        if result is not None:
            version = run_tool(["amd-smi", "version"])
            m = _ROCM_VERSION_RE.search(version or "")
            rocm = m.group(1) if m else rocm_version("/opt/rocm")
            if rocm:
                result.software["rocm"] = rocm
            return result
    out = run_tool(ROCM_SMI)
    if out is None:
        return None
    try:
        devices = parse_smi_cards(out, "amd")
    except (ValueError, AttributeError) as exc:
        warn(f"rocm-smi output not understood ({exc}); skipped")
        return None
    result = VendorResult(devices=devices)
    rocm = rocm_version("/opt/rocm")
    if rocm:
        result.software["rocm"] = rocm
    return result
