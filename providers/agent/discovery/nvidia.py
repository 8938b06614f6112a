"""NVIDIA GPUs: NVML when the library loads, else `nvidia-smi`."""

from __future__ import annotations

import contextlib
import logging
import os
import re

from providers.agent.discovery.probe import normalize_bus_id, run_tool, to_int, warn
from providers.agent.discovery.types import Device, VendorResult

log = logging.getLogger("suanli_agent.discovery")

QUERY = [
    "nvidia-smi",
    "--query-gpu=index,uuid,name,pci.bus_id,memory.total,driver_version",
    "--format=csv,noheader,nounits",
]
# Driver 610 renamed "CUDA Version" to "CUDA UMD Version" and "Driver Version" to "KMD Version"
# (NVIDIA's nvidia-smi release notes); `--version` spells them "CUDA UMD version" / "KMD version"
# and keeps the old lines marked deprecated, the table header has only the new names. The new
# name wins when both are present; case varies between the two outputs.
_CUDA_UMD_RE = re.compile(r"CUDA\s+UMD\s+Version\s*:?\s*([0-9][0-9.]*)", re.IGNORECASE)
_CUDA_RE = re.compile(r"CUDA\s+Version\s*:?\s*([0-9][0-9.]*)", re.IGNORECASE)
_KMD_RE = re.compile(r"KMD\s+Version\s*:?\s*([0-9][0-9.]*)", re.IGNORECASE)
_DRIVER_RE = re.compile(r"Driver\s+Version\s*:?\s*([0-9][0-9.]*)", re.IGNORECASE)


def nvml_enabled() -> bool:
    # Tests (and operators debugging a broken driver) can force the nvidia-smi path.
    return os.environ.get("SUANLI_AGENT_NO_NVML", "") not in ("1", "true", "yes")


def _decode(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def discover_nvml() -> VendorResult | None:
    if not nvml_enabled():
        return None
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # any NVML failure means "use nvidia-smi instead"  # noqa: BLE001
        return None
    result = VendorResult()
    try:
        result.software["driver"] = _decode(pynvml.nvmlSystemGetDriverVersion())
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        result.software["cuda"] = f"{cuda // 1000}.{(cuda % 1000) // 10}"
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            result.devices.append(
                Device(
                    vendor="nvidia",
                    model=_decode(pynvml.nvmlDeviceGetName(handle)),
                    index=i,
                    uuid=_decode(pynvml.nvmlDeviceGetUUID(handle)),
                    bus_id=normalize_bus_id(_decode(pynvml.nvmlDeviceGetPciInfo(handle).busId)),
                    memory_mib=int(mem.total // (1024 * 1024)),
                )
            )
    except Exception as exc:  # noqa: BLE001
        warn(f"NVML query failed ({exc}); falling back to nvidia-smi")
        return None
    finally:
        # A failing shutdown is harmless: the process keeps no NVML state we rely on.
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    return result


def parse_query_csv(text: str) -> list[Device]:
    devices = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 5:
            raise ValueError(f"unexpected nvidia-smi line: {line!r}")
        index = to_int(cells[0])
        if index is None:
            raise ValueError(f"unexpected nvidia-smi index: {cells[0]!r}")
        devices.append(
            Device(
                vendor="nvidia",
                model=cells[2],
                index=index,
                uuid=cells[1],
                bus_id=normalize_bus_id(cells[3]),
                memory_mib=to_int(cells[4].split()[0]) if cells[4] else None,
            )
        )
    return devices


def parse_cuda_version(text: str) -> str | None:
    """The CUDA version from `nvidia-smi --version` or the `nvidia-smi` header, either spelling."""
    m = _CUDA_UMD_RE.search(text) or _CUDA_RE.search(text)
    return m.group(1).rstrip(".") if m else None


def parse_driver_version(text: str) -> str | None:
    """The driver (KMD) version from the same outputs, either spelling."""
    m = _KMD_RE.search(text) or _DRIVER_RE.search(text)
    return m.group(1).rstrip(".") if m else None


def discover_smi() -> VendorResult | None:
    out = run_tool(QUERY)
    if out is None:
        return None
    try:
        devices = parse_query_csv(out)
    except ValueError as exc:
        warn(f"nvidia-smi output not understood ({exc}); skipped")
        return None
    result = VendorResult(devices=devices)
    with_driver = [line for line in out.splitlines() if line.count(",") >= 5]
    if with_driver:
        result.software["driver"] = with_driver[0].split(",")[5].strip()
    # `nvidia-smi --version` has a "CUDA Version" line since driver 525; older drivers only show
    # it in the header of plain `nvidia-smi`.
    version = run_tool(["nvidia-smi", "--version"])
    cuda = parse_cuda_version(version) if version else None
    if version and "driver" not in result.software and (driver := parse_driver_version(version)):
        result.software["driver"] = driver
    if cuda is None:
        header = run_tool(["nvidia-smi"])
        if header:
            cuda = parse_cuda_version(header)
            driver = parse_driver_version(header)
            if driver and "driver" not in result.software:
                result.software["driver"] = driver
    if cuda:
        result.software["cuda"] = cuda
    return result


def discover() -> VendorResult | None:
    return discover_nvml() or discover_smi()
