"""Simulated hardware profiles: deterministic, distinct per node name."""

from __future__ import annotations

import pytest

from providers.agent.discovery import detect
from providers.agent.simulate import PROFILES, SimulatedTelemetry, get_profile


@pytest.mark.parametrize(
    ("profile", "vendor", "model", "count", "software"),
    [
        ("h100x8", "nvidia", "NVIDIA H100 80GB HBM3", 8, {"cuda": "12.4"}),
        ("ascend910bx4", "huawei", "910B1", 4, {"cann": "8.0"}),
        ("mlu370x2", "cambricon", "MLU370-X8", 2, {"neuware": "3.10.2"}),
        ("mi300x8", "amd", "AMD Instinct MI300X", 8, {"rocm": "6.2.0"}),
        ("cpu", "cpu", "x86-64 CPU", 1, {}),
    ],
)
def test_profiles(profile: str, vendor: str, model: str, count: int, software: dict[str, str]) -> None:
    inv = detect(simulate=profile, name="node-a").to_json()

    assert len(inv["devices"]) == count
    assert {(d["vendor"], d["model"]) for d in inv["devices"]} == {(vendor, model)}
    assert [d["index"] for d in inv["devices"]] == list(range(count))
    assert software.items() <= inv["software"].items()
    assert set(inv["host"]) == {"cpu_model", "cpu_cores", "memory_mib", "disk_gib", "nics"}


def test_uuids_deterministic_per_profile_and_name() -> None:
    a1 = [d.uuid for d in detect(simulate="h100x8", name="a").devices]
    a2 = [d.uuid for d in detect(simulate="h100x8", name="a").devices]
    b = [d.uuid for d in detect(simulate="h100x8", name="b").devices]

    assert a1 == a2
    assert not set(a1) & set(b)
    assert len(set(a1)) == 8
    assert all(u.startswith("GPU-") for u in a1)


def test_unknown_profile() -> None:
    with pytest.raises(ValueError, match="unknown simulation profile 'nope'"):
        get_profile("nope")


def test_telemetry_random_walk_is_deterministic_and_bounded() -> None:
    t1 = SimulatedTelemetry("h100x8", "a")
    t2 = SimulatedTelemetry("h100x8", "a")
    other = SimulatedTelemetry("h100x8", "b")
    runs = [[t.read([0, 1], busy={0}) for _ in range(50)] for t in (t1, t2, other)]

    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    last = runs[0][-1]
    assert last[0].utilization_pct > last[1].utilization_pct  # busy device works harder
    p = PROFILES["h100x8"]
    for reading in (r for batch in runs[0] for r in batch):
        assert 0 <= reading.utilization_pct <= 100
        assert p.idle_w <= reading.power_w <= p.max_w
        assert 0 < reading.memory_used_mib <= p.memory_mib
