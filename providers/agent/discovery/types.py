"""The inventory shapes that `detect --json` prints and `register` sends."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

VENDORS = ("nvidia", "amd", "huawei", "cambricon", "hygon", "intel", "xilinx", "cpu")


@dataclass
class Device:
    vendor: str
    model: str
    index: int
    uuid: str
    bus_id: str | None
    memory_mib: int | None
    health: str = "ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "vendor": self.vendor,
            "model": self.model,
            "index": self.index,
            "uuid": self.uuid,
            "bus_id": self.bus_id,
            "memory_mib": self.memory_mib,
        }


@dataclass
class VendorResult:
    devices: list[Device] = field(default_factory=list)
    software: dict[str, str] = field(default_factory=dict)


@dataclass
class Host:
    cpu_model: str
    cpu_cores: int
    memory_mib: int
    disk_gib: int
    nics: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Inventory:
    host: Host
    devices: list[Device]
    software: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host.to_json(),
            "devices": [d.to_json() for d in self.devices],
            "software": dict(self.software),
        }


def fallback_uuid(vendor: str, bus_id: str | None, index: int) -> str:
    """A per-node stable id for devices whose tool prints no UUID (npu-smi info, some hl-smi)."""
    return f"{vendor}-{bus_id or index}"
