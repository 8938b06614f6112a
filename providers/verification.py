"""Node verification: what an agent reported, checked against the hardware catalog.

``node_register`` runs it and stores the result on the node (``Node.verification``, and
``verified_at`` when every check passed), so a provider sees at once whether the exchange agrees
with what the agent detected, and why not. The result is plain JSON with the figures compared:

``{"version": 1, "passed": bool, "checked_at": iso, "checks": [{"check": name, "passed": bool, ...}]}``

``verification_rows`` turns it into translated sentences for the portal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.utils.functional import Promise
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from providers.models import AcceleratorModel, DeviceKind, Vendor

if TYPE_CHECKING:
    from providers.services import DeviceIn

VERSION = 1
# Tools report less than the nominal memory (ECC and driver reservations: an L40S "48 GB" shows
# 46,068 MiB, an H100 "80 GB" 81,559 MiB); a different SKU is off by far more (A100 40 GB vs
# 80 GB, H100 NVL 94 GB vs PCIe 80 GB).
MEMORY_TOLERANCE_PCT = 10
# The agent's vendor name -> the catalog vendor and the kinds that vendor makes.
AGENT_VENDOR_CATALOG: dict[str, tuple[str, frozenset[str]]] = {
    "nvidia": (Vendor.NVIDIA, frozenset({DeviceKind.GPU})),
    "amd": (Vendor.AMD, frozenset({DeviceKind.GPU})),
    "huawei": (Vendor.HUAWEI, frozenset({DeviceKind.NPU})),
    "cambricon": (Vendor.CAMBRICON, frozenset({DeviceKind.MLU})),
    "hygon": (Vendor.HYGON, frozenset({DeviceKind.DCU})),
    "intel": (Vendor.INTEL, frozenset({DeviceKind.GAUDI})),
    "xilinx": (Vendor.XILINX, frozenset({DeviceKind.FPGA})),
    "cpu": (Vendor.GENERIC, frozenset({DeviceKind.CPU})),
}
# The catalog's software stack -> the keys the agent must report in ``software`` for it: the
# stack's version, and the driver where the vendor's tool prints one (hy-smi does not).
STACK_KEYS: dict[str, tuple[str, ...]] = {
    "CUDA": ("driver", "cuda"),
    "ROCm": ("driver", "rocm"),
    "CANN": ("driver", "cann"),
    "Neuware": ("driver", "neuware"),
    "DTK": ("dtk",),
    "SynapseAI": ("driver", "synapseai"),
    "XRT": ("xrt",),
    "none": (),
}


def node_verification(
    *,
    devices: Sequence[DeviceIn],
    accelerators: Mapping[int, AcceleratorModel],
    software: Mapping[str, str],
    now: datetime,
) -> dict[str, Any]:
    """Check an agent's report (``devices`` by index -> ``accelerators``, its ``software``) against
    the catalog. Pure: reads and writes nothing."""
    checks = [
        _catalog_model(devices, accelerators),
        _vendor_kind(devices, accelerators),
        _memory(devices, accelerators),
        _software(devices, accelerators, software),
        _device_count(devices, accelerators),
    ]
    return {
        "version": VERSION,
        "passed": all(check["passed"] for check in checks),
        "checked_at": now.isoformat(),
        "checks": checks,
    }


def _catalog_model(
    devices: Sequence[DeviceIn], accelerators: Mapping[int, AcceleratorModel]
) -> dict[str, Any]:
    rows = []
    for device in devices:
        row = accelerators.get(device.index)
        rows.append(
            {"index": device.index, "passed": row is not None, "reported": device.model,
             "catalog": row.model if row is not None else None}
        )  # fmt: skip
    return {
        "check": "catalog_model",
        "passed": bool(rows) and all(r["passed"] for r in rows),
        "devices": rows,
    }


def _vendor_kind(devices: Sequence[DeviceIn], accelerators: Mapping[int, AcceleratorModel]) -> dict[str, Any]:
    rows = []
    for device in devices:
        row = accelerators.get(device.index)
        if row is None:
            continue
        vendor, kinds = AGENT_VENDOR_CATALOG.get(device.vendor, ("", frozenset()))
        rows.append(
            {"index": device.index, "passed": row.vendor == vendor and row.kind in kinds,
             "reported_vendor": device.vendor, "catalog_vendor": row.vendor, "kind": row.kind, "model": row.model}
        )  # fmt: skip
    return {"check": "vendor_kind", "passed": bool(rows) and all(r["passed"] for r in rows), "devices": rows}


def _memory(devices: Sequence[DeviceIn], accelerators: Mapping[int, AcceleratorModel]) -> dict[str, Any]:
    rows = []
    for device in devices:
        row = accelerators.get(device.index)
        if row is None:
            continue
        catalog_mib = row.memory_gib * 1024
        if catalog_mib == 0:
            passed = True  # the catalog has no figure (a CPU, a card without published memory)
        elif not device.memory_mib:
            passed = False  # nothing reported: nothing to confirm
        else:
            passed = abs(device.memory_mib - catalog_mib) * 100 <= catalog_mib * MEMORY_TOLERANCE_PCT
        rows.append(
            {"index": device.index, "passed": passed, "reported_mib": device.memory_mib or 0,
             "catalog_mib": catalog_mib}
        )  # fmt: skip
    return {
        "check": "memory",
        "passed": bool(rows) and all(r["passed"] for r in rows),
        "tolerance_pct": MEMORY_TOLERANCE_PCT,
        "devices": rows,
    }


def _software(
    devices: Sequence[DeviceIn], accelerators: Mapping[int, AcceleratorModel], software: Mapping[str, str]
) -> dict[str, Any]:
    reported = {str(key).casefold(): str(value) for key, value in software.items() if str(value).strip()}
    stacks = sorted({row.software_stack for d in devices if (row := accelerators.get(d.index)) is not None})
    rows = []
    for stack in stacks:
        required = STACK_KEYS.get(stack, (stack.casefold(),))
        rows.append(
            {"stack": stack, "required": list(required),
             "found": {key: reported[key] for key in required if key in reported},
             "missing": [key for key in required if key not in reported]}
        )  # fmt: skip
    return {"check": "software", "passed": bool(rows) and not any(r["missing"] for r in rows), "stacks": rows}


def _device_count(
    devices: Sequence[DeviceIn], accelerators: Mapping[int, AcceleratorModel]
) -> dict[str, Any]:
    # An offer sells a node as N devices of its most common model (``marketplace`` offer_sync), so
    # every reported device must be of that model for the offer's count to be true.
    models = Counter(row.model for d in devices if (row := accelerators.get(d.index)) is not None)
    model, of_model = models.most_common(1)[0] if models else ("", 0)
    return {
        "check": "device_count",
        "passed": bool(devices) and of_model == len(devices),
        "reported": len(devices),
        "of_model": of_model,
        "model": model,
    }


# --- In words ------------------------------------------------------------------------------------

CHECK_LABELS: dict[str, Promise] = {
    "catalog_model": gettext_lazy("Models in the catalog"),
    "vendor_kind": gettext_lazy("Vendor and kind"),
    "memory": gettext_lazy("Device memory"),
    "software": gettext_lazy("Driver and software stack"),
    "device_count": gettext_lazy("Device count"),
}


@dataclass(frozen=True)
class VerificationRow:
    label: str
    passed: bool
    detail: str


def verification_rows(verification: Mapping[str, Any]) -> list[VerificationRow]:
    """Each stored check as a translated label, its outcome and its figures in a sentence."""
    rows = []
    for check in verification.get("checks") or []:
        name = check.get("check", "")
        describe = _DESCRIBE.get(name)
        rows.append(
            VerificationRow(
                label=str(CHECK_LABELS.get(name, name)),
                passed=bool(check.get("passed")),
                detail=describe(check) if describe else "",
            )
        )
    return rows


def _failed(check: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [d for d in check.get("devices", []) if not d.get("passed")]


def _describe_catalog_model(check: Mapping[str, Any]) -> str:
    failed = _failed(check)
    if failed:
        return "; ".join(
            _("device %(index)s: %(reported)s is not in the catalog")
            % {"index": d["index"], "reported": d["reported"]}
            for d in failed
        )
    models = ", ".join(sorted({str(d["catalog"]) for d in check.get("devices", [])}))
    return _("Every device is a catalog model: %(models)s.") % {"models": models} if models else ""


def _describe_vendor_kind(check: Mapping[str, Any]) -> str:
    failed = _failed(check)
    if failed:
        return "; ".join(
            _("device %(index)s: reported by %(reported)s, but the catalog lists %(model)s as %(vendor)s %(kind)s")
            % {"index": d["index"], "reported": d["reported_vendor"], "model": d["model"],
               "vendor": _vendor_label(d["catalog_vendor"]), "kind": _kind_label(d["kind"])}
            for d in failed
        )  # fmt: skip
    pairs = sorted({(d["catalog_vendor"], d["kind"]) for d in check.get("devices", [])})
    return _("As the catalog lists them: %(vendors)s.") % {
        "vendors": ", ".join(f"{_vendor_label(v)} {_kind_label(k)}" for v, k in pairs)
    }


def _describe_memory(check: Mapping[str, Any]) -> str:
    tolerance = check.get("tolerance_pct", MEMORY_TOLERANCE_PCT)
    failed = _failed(check)
    if failed:
        parts = []
        for d in failed:
            if not d["reported_mib"]:
                parts.append(_("device %(index)s: no memory reported") % {"index": d["index"]})
            else:
                parts.append(
                    _("device %(index)s: %(reported)s MiB, the catalog %(catalog)s MiB (±%(tolerance)s%%)")
                    % {"index": d["index"], "reported": d["reported_mib"], "catalog": d["catalog_mib"],
                       "tolerance": tolerance}
                )  # fmt: skip
        return "; ".join(parts)
    devices = [d for d in check.get("devices", []) if d["catalog_mib"]]
    if not devices:
        return _("The catalog gives no memory figure for these devices.")
    reported = sorted({d["reported_mib"] for d in devices})
    catalog = sorted({d["catalog_mib"] for d in devices})
    return _("%(reported)s MiB reported, the catalog %(catalog)s MiB (±%(tolerance)s%%).") % {
        "reported": str(reported[0]) if len(reported) == 1 else f"{reported[0]}–{reported[-1]}",
        "catalog": " / ".join(str(v) for v in catalog),
        "tolerance": tolerance,
    }


def _describe_software(check: Mapping[str, Any]) -> str:
    parts = []
    for stack in check.get("stacks", []):
        if stack["missing"]:
            parts.append(
                _("%(stack)s needs %(missing)s, not reported")
                % {"stack": stack["stack"], "missing": ", ".join(stack["missing"])}
            )
        elif stack["required"]:
            found = ", ".join(f"{key} {value}" for key, value in stack["found"].items())
            parts.append(_("%(stack)s: %(found)s") % {"stack": stack["stack"], "found": found})
        else:
            parts.append(_("no driver or software stack needed"))
    return "; ".join(parts)


def _describe_device_count(check: Mapping[str, Any]) -> str:
    if not check.get("reported"):
        return _("The agent reported no devices.")
    if check.get("passed"):
        return _("%(count)s × %(model)s, as the offer lists them.") % {
            "count": check["reported"],
            "model": check["model"],
        }
    return _(
        "The offer would list %(count)s × %(model)s, but only %(matching)s of the reported devices are %(model)s."
    ) % {"count": check["reported"], "model": check["model"], "matching": check["of_model"]}


def _vendor_label(value: str) -> str:
    return str(Vendor(value).label) if value in Vendor.values else value


def _kind_label(value: str) -> str:
    return str(DeviceKind(value).label) if value in DeviceKind.values else value


_DESCRIBE = {
    "catalog_model": _describe_catalog_model,
    "vendor_kind": _describe_vendor_kind,
    "memory": _describe_memory,
    "software": _describe_software,
    "device_count": _describe_device_count,
}
