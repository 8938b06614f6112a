"""Hygon DCUs: `hy-smi ... --json`, a rocm-smi fork whose keys are `card0`, `DCU[0]` or `HCU[0]`."""

from __future__ import annotations

from providers.agent.discovery.amd import parse_smi_cards, rocm_version
from providers.agent.discovery.probe import run_tool, warn
from providers.agent.discovery.types import VendorResult

HY_SMI = ["hy-smi", "--showproductname", "--showmeminfo", "vram", "--showbus", "--json"]


def discover() -> VendorResult | None:
    out = run_tool(HY_SMI)
    if out is None:
        return None
    try:
        devices = parse_smi_cards(out, "hygon")
    except (ValueError, AttributeError) as exc:
        warn(f"hy-smi output not understood ({exc}); skipped")
        return None
    if not devices:
        warn("hy-smi listed no DCU; skipped")
        return None
    result = VendorResult(devices=devices)
    # DTK installs under /opt/dtk with the ROCm layout and exports ROCM_PATH.
    dtk = rocm_version("/opt/dtk")
    if dtk:
        result.software["dtk"] = dtk
    return result
