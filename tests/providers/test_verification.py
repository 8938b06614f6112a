"""Node verification at registration: what the agent reported, checked against the catalog, stored
per check with its figures, and shown (translated) on the provider's node pages."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from providers.agent.simulate import PROFILES, simulated_inventory
from providers.catalog import catalog_rows
from providers.models import Node
from providers.services import inventory_from_json, join_token_create, node_register
from providers.verification import STACK_KEYS
from tests.providers.factories import ProviderFactory, ensure_catalog, h100_inventory, member_of

pytestmark = pytest.mark.django_db


def register(inventory: dict[str, Any], *, name: str = "gpu-01", provider: Any = None) -> Node:
    ensure_catalog()
    issued = join_token_create(provider=provider or ProviderFactory(), created_by=None, region="cn-east")
    return node_register(
        token=issued.token, name=name, agent_version="0.1.0", inventory=inventory_from_json(inventory)
    ).node


def checks(node: Node) -> dict[str, dict[str, Any]]:
    return {check["check"]: check for check in node.verification["checks"]}


def device(vendor: str, model: str, index: int, memory_mib: int | None) -> dict[str, Any]:
    return {"vendor": vendor, "model": model, "index": index, "uuid": f"{model}-{index}", "bus_id": None,
            "memory_mib": memory_mib}  # fmt: skip


def test_a_node_that_matches_the_catalog_is_verified_with_its_figures():
    before = timezone.now()
    node = register(h100_inventory(4))
    assert node.verification["passed"] is True and node.verified_at is not None and node.verified_at >= before
    found = checks(node)
    assert set(found) == {"catalog_model", "vendor_kind", "memory", "software", "device_count"}
    assert all(check["passed"] for check in found.values())
    assert found["catalog_model"]["devices"][0] == {
        "index": 0, "passed": True, "reported": "NVIDIA H100 80GB HBM3", "catalog": "H100 SXM 80GB"
    }  # fmt: skip
    assert found["memory"]["devices"][0] == {
        "index": 0,
        "passed": True,
        "reported_mib": 81559,
        "catalog_mib": 81920,
    }
    assert found["memory"]["tolerance_pct"] == 10
    assert found["software"]["stacks"] == [
        {"stack": "CUDA", "required": ["driver", "cuda"], "found": {"driver": "550.54.15", "cuda": "12.4"},
         "missing": []}
    ]  # fmt: skip
    assert found["device_count"] == {
        "check": "device_count", "passed": True, "reported": 4, "of_model": 4, "model": "H100 SXM 80GB"
    }  # fmt: skip
    stored = Node.objects.get(pk=node.pk)
    assert stored.verification == node.verification and stored.verified_at == node.verified_at


def test_memory_far_from_the_catalog_fails_and_within_tolerance_passes():
    # An "80 GB" H100 with 40 GiB is another card; an L40S reporting 46,068 MiB (ECC on) is fine.
    inventory = h100_inventory(2)
    inventory["devices"][1]["memory_mib"] = 40960
    node = register(inventory)
    assert node.verification["passed"] is False and node.verified_at is None
    memory = checks(node)["memory"]
    assert memory["passed"] is False
    assert memory["devices"][1] == {"index": 1, "passed": False, "reported_mib": 40960, "catalog_mib": 81920}
    assert memory["devices"][0]["passed"] is True
    l40s = h100_inventory(1)
    l40s["devices"][0].update(model="NVIDIA L40S", memory_mib=46068)
    assert register(l40s, name="l40s").verification["passed"] is True


def test_memory_that_was_not_reported_cannot_be_confirmed():
    inventory = h100_inventory(1)
    inventory["devices"][0]["memory_mib"] = None
    memory = checks(register(inventory))["memory"]
    assert memory["passed"] is False and memory["devices"][0]["reported_mib"] == 0


def test_a_missing_driver_or_stack_fails_naming_what_is_missing():
    inventory = h100_inventory(1)
    inventory["software"] = {"driver": "550.54.15"}
    node = register(inventory)
    software = checks(node)["software"]
    assert node.verification["passed"] is False and software["passed"] is False
    assert software["stacks"][0]["missing"] == ["cuda"]
    hygon = {
        **h100_inventory(0),
        "devices": [device("hygon", "K100_AI", 0, 65520)],
        "software": {"dtk": "24.04"},
    }
    assert register(hygon, name="dcu").verification["passed"] is True  # hy-smi prints no driver


def test_a_vendor_that_does_not_make_the_model_fails():
    inventory = h100_inventory(1)
    inventory["devices"][0]["vendor"] = "amd"
    vendor_kind = checks(register(inventory))["vendor_kind"]
    assert vendor_kind["passed"] is False
    assert vendor_kind["devices"][0] == {
        "index": 0, "passed": False, "reported_vendor": "amd", "catalog_vendor": "nvidia", "kind": "gpu",
        "model": "H100 SXM 80GB",
    }  # fmt: skip


def test_mixed_models_do_not_add_up_to_the_offers_device_count():
    inventory = h100_inventory(3)
    inventory["devices"][2].update(model="NVIDIA A100-SXM4-80GB", memory_mib=81920)
    node = register(inventory)
    count = checks(node)["device_count"]
    assert node.verification["passed"] is False
    assert (count["passed"], count["reported"], count["of_model"], count["model"]) == (
        False,
        3,
        2,
        "H100 SXM 80GB",
    )


def test_a_node_without_devices_is_not_verified():
    node = register({**h100_inventory(0), "software": {}})
    assert node.verification["passed"] is False and checks(node)["device_count"]["reported"] == 0


def test_a_cpu_node_needs_no_memory_figure_or_stack():
    inventory = {**h100_inventory(0), "devices": [device("cpu", "AMD EPYC 7763", 0, None)], "software": {}}
    node = register(inventory, name="cpu")
    assert node.verification["passed"] is True
    assert checks(node)["software"]["stacks"] == [
        {"stack": "none", "required": [], "found": {}, "missing": []}
    ]


def test_every_catalog_stack_has_its_required_software():
    stacks = {row["software_stack"] for row in catalog_rows()}
    assert stacks - set(STACK_KEYS) <= {"HGAI"}  # Hanguang: no agent discovers it; its own name is required


def test_the_node_pages_show_the_verdict_and_each_check_in_chinese():
    provider = ProviderFactory()
    member = member_of(provider)
    good = register(h100_inventory(2, name="good"), name="good", provider=provider)
    bad_inventory = h100_inventory(2, name="bad")
    bad_inventory["devices"][1]["memory_mib"] = 40960
    bad_inventory["software"] = {"driver": "550.54.15"}
    bad = register(bad_inventory, name="bad", provider=provider)
    Node.objects.create(provider=provider, name="old", region="cn-east")  # joined before verification existed
    client = Client()
    client.force_login(member)
    client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/"})

    listing = client.get("/provider/nodes/").content.decode()
    assert listing.count(">已验证<") == 1 and listing.count(">验证未通过<") == 1 and "尚未验证" in listing

    page = client.get(f"/provider/nodes/{bad.pk}/").content.decode()
    assert "验证未通过" in page and "节点代理报告的硬件与目录不符" in page
    for label in ("型号在目录中", "厂商与类型", "设备显存", "驱动与软件栈", "设备数量"):
        assert label in page
    assert "设备 1：40960 MiB，目录为 81920 MiB（±10%）" in page
    assert "CUDA 需要 cuda，但未报告" in page
    assert "Device memory" not in page and "not reported" not in page

    page = client.get(f"/provider/nodes/{good.pk}/").content.decode()
    assert "节点代理报告的硬件与目录一致。" in page and "报告 81559 MiB，目录为 81920 MiB（±10%）。" in page
    assert "2 × H100 SXM 80GB，与报价所列一致。" in page


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_simulated_agent_profile_passes(profile):
    # The simulated hardware of `make run` reports what real vendor tools print for these cards.
    node = register(simulated_inventory(profile, "sim").to_json(), name=f"sim-{profile}")
    assert node.verification["passed"] is True, [c for c in node.verification["checks"] if not c["passed"]]
