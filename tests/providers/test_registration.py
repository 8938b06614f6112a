"""Joining a node: join tokens, POST /api/agent/v1/register, node credentials."""

from __future__ import annotations

import copy
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone
from rest_framework.test import APIClient

from providers.models import Device, JoinToken, Node, NodeStatus
from providers.services import join_token_create, node_auth_cache_clear
from tests.providers.factories import (
    ProviderFactory,
    agent_client,
    ensure_catalog,
    h100_inventory,
    registered_node,
)

pytestmark = pytest.mark.django_db

REGISTER = "/api/agent/v1/register"


@pytest.fixture
def provider():
    return ProviderFactory()


@pytest.fixture
def issued(provider):
    ensure_catalog()
    return join_token_create(provider=provider, created_by=None, region="cn-east", cluster="sh-a")


def register(token: str, *, name: str = "gpu-01", inventory=None, agent_version: str = "0.1.0"):
    body = {
        "token": token,
        "name": name,
        "agent_version": agent_version,
        "inventory": h100_inventory(2) if inventory is None else inventory,
    }
    return APIClient().post(REGISTER, body, format="json")


def assert_nothing_created():
    assert Node.objects.count() == 0
    assert Device.objects.count() == 0


def test_join_token_is_hashed_and_expires_in_a_day(issued, settings):
    join_token = issued.join_token
    assert issued.token.startswith(f"jt_{join_token.prefix}_")
    assert issued.token not in join_token.token_hash and len(join_token.token_hash) == 64
    assert timedelta(hours=23, minutes=59) < join_token.expires_at - timezone.now() <= timedelta(hours=24)
    assert issued.install_command == (
        f"pip install suanli-exchange && suanli-agent join --server {settings.SITE_URL} "
        f"--token {issued.token} && suanli-agent run"
    )


def test_register_happy_path(issued, provider):
    response = register(issued.token)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert set(body) == {"node_id", "credential", "heartbeat_interval"}
    assert body["heartbeat_interval"] == 10
    node = Node.objects.get(pk=body["node_id"])
    assert node.provider == provider and node.name == "gpu-01"
    assert node.status == NodeStatus.PENDING
    assert (node.region, node.cluster) == ("cn-east", "sh-a")
    assert node.cpu_cores == 224 and node.memory_mib == 2_097_152 and node.disk_gib == 30720
    assert node.software == {"cuda": "12.4", "driver": "550.54.15"}
    assert node.agent_version == "0.1.0"
    # The credential is returned once; only its SHA-256 is kept.
    credential = body["credential"]
    assert credential.startswith(f"nc_{node.credential_prefix}_")
    assert credential not in node.credential_hash and len(node.credential_hash) == 64
    devices = list(node.devices.select_related("accelerator"))
    assert [d.index for d in devices] == [0, 1]
    assert {d.accelerator.model for d in devices} == {"H100 SXM 80GB"}
    assert devices[0].bus_id == "0000:18:00.0" and devices[0].memory_mib == 81559
    join_token = JoinToken.objects.get(pk=issued.join_token.pk)
    assert join_token.used_at is not None and join_token.node == node
    # The credential works.
    reply = agent_client(credential).post("/api/agent/v1/heartbeat", {"devices": []}, format="json")
    assert reply.status_code == 200


def test_device_models_match_case_insensitively_and_cpu_maps_to_the_generic_row(issued):
    inventory = h100_inventory(1)
    inventory["devices"][0]["model"] = "nvidia h100 80gb hbm3"
    inventory["devices"].append(
        {
            "vendor": "cpu",
            "model": "aarch64 CPU",
            "index": 1,
            "uuid": "cpu-1",
            "bus_id": None,
            "memory_mib": None,
        }
    )
    response = register(issued.token, inventory=inventory)
    assert response.status_code == 201, response.json()
    models = dict(Device.objects.values_list("index", "accelerator__model"))
    assert models == {0: "H100 SXM 80GB", 1: "x86-64 CPU"}
    assert Device.objects.get(index=1).bus_id == ""


def test_bad_token_is_refused(issued):
    for token in ["", "garbage", "jt_nothere_secret", issued.token[:-1] + "x", "nc_" + issued.token[3:]]:
        response = register(token)
        assert response.status_code == 400, token
        assert response.json()["error"]["code"] in {"invalid_token", "invalid"}
    assert_nothing_created()
    assert JoinToken.objects.get().used_at is None


def test_reused_token_is_refused_and_creates_nothing(issued):
    assert register(issued.token).status_code == 201
    response = register(issued.token, name="gpu-02", inventory=h100_inventory(2, name="other"))
    assert response.status_code == 410
    assert response.json()["error"]["code"] == "token_used"
    assert Node.objects.count() == 1 and Device.objects.count() == 2


def test_expired_token_is_refused(issued):
    with time_machine.travel(timezone.now() + timedelta(hours=24, seconds=1)):
        response = register(issued.token)
    assert response.status_code == 410
    assert response.json()["error"]["code"] == "token_expired"
    assert_nothing_created()


def test_unknown_device_model_names_it_and_keeps_the_token(issued):
    inventory = h100_inventory(2)
    inventory["devices"][1]["model"] = "Imaginary X1"
    response = register(issued.token, inventory=inventory)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "unknown_device_model"
    assert "Imaginary X1" in error["message"]
    assert "Imaginary X1" in error["fields"]["inventory.devices.1.model"][0]
    assert_nothing_created()
    # The provider can fix the inventory and use the same token.
    assert register(issued.token).status_code == 201


def _mutations():
    def drop(path):
        def f(inv):
            target = inv
            for key in path[:-1]:
                target = target[key]
            del target[path[-1]]

        return f

    def put(path, value):
        def f(inv):
            target = inv
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value

        return f

    return {
        "no host": drop(["host"]),
        "no devices": drop(["devices"]),
        "host not an object": put(["host"], "big box"),
        "cpu_cores as string": put(["host", "cpu_cores"], "224"),
        "cpu_cores negative": put(["host", "cpu_cores"], -1),
        "memory float": put(["host", "memory_mib"], 1.5),
        "disk bool": put(["host", "disk_gib"], True),
        "cpu_model number": put(["host", "cpu_model"], 8480),
        "nics not a list": put(["host", "nics"], "eth0"),
        "devices not a list": put(["devices"], {"0": {}}),
        "unknown vendor": put(["devices", 0, "vendor"], "acme"),
        "index negative": put(["devices", 0, "index"], -1),
        "index string": put(["devices", 0, "index"], "0"),
        "uuid missing": drop(["devices", 0, "uuid"]),
        "uuid number": put(["devices", 0, "uuid"], 7),
        "model missing": drop(["devices", 0, "model"]),
        "memory negative": put(["devices", 0, "memory_mib"], -5),
        "duplicate index": put(["devices", 1, "index"], 0),
        "duplicate uuid": put(["devices", 1, "uuid"], "GPU-node-0"),
        "software values not strings": put(["software"], {"cuda": 12.4}),
        "software not an object": put(["software"], ["cuda"]),
        "too many devices": put(
            ["devices"],
            [
                {
                    "vendor": "nvidia",
                    "model": "NVIDIA H100 80GB HBM3",
                    "index": i,
                    "uuid": f"u{i}",
                    "bus_id": "",
                    "memory_mib": 1,
                }
                for i in range(65)
            ],
        ),
    }


@pytest.mark.parametrize("case", sorted(_mutations()))
def test_malformed_inventory_is_refused_with_a_field_error(issued, case):
    inventory = copy.deepcopy(h100_inventory(2))
    _mutations()[case](inventory)
    response = register(issued.token, inventory=inventory)
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["code"] == "invalid" and error["fields"], error
    assert_nothing_created()
    assert JoinToken.objects.get().used_at is None


@pytest.mark.parametrize(
    "body",
    [{}, {"token": "x"}, [], "token", {"token": 5, "name": "n", "agent_version": "1", "inventory": {}}],
)
def test_malformed_body_is_refused(body):
    response = APIClient().post(REGISTER, body, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"


def test_a_node_name_is_unique_per_provider(provider):
    registered_node(provider, name="gpu-01")
    issued = join_token_create(provider=provider, created_by=None)
    response = register(issued.token, name="gpu-01", inventory=h100_inventory(1, name="second"))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "node_name_taken"
    assert Node.objects.count() == 1
    assert JoinToken.objects.get(pk=issued.join_token.pk).used_at is None


def test_register_is_throttled_per_ip(monkeypatch):
    from rest_framework.throttling import ScopedRateThrottle

    # The rate comes from settings (SUANLI_AGENT_REGISTER_RATE); the class reads it at import.
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"agent_register": "3/min"})
    codes = [register(f"jt_guess{i}_secret").status_code for i in range(5)]
    assert codes == [400, 400, 400, 429, 429]


def test_node_credential_auth(issued):
    node, credential = registered_node(ProviderFactory(), name="n")
    heartbeat = "/api/agent/v1/heartbeat"
    assert APIClient().post(heartbeat, {}, format="json").status_code == 401
    assert agent_client(credential[:-2] + "xx").post(heartbeat, {}, format="json").status_code == 401
    assert agent_client("nc_garbage").post(heartbeat, {}, format="json").status_code == 401
    # An API key is not a node credential.
    assert agent_client("sk_abc_def").post(heartbeat, {}, format="json").status_code in (401, 403)
    assert agent_client(credential).post(heartbeat, {}, format="json").status_code == 200
    Node.objects.filter(pk=node.pk).update(status=NodeStatus.RETIRED)
    node_auth_cache_clear()  # a retirement takes effect within NODE_AUTH_CACHE_S
    assert agent_client(credential).post(heartbeat, {}, format="json").status_code == 401


def test_a_node_credential_opens_no_user_endpoint():
    _node, credential = registered_node()
    client = agent_client(credential)
    assert client.get("/api/v1/provider/nodes").status_code in (401, 403)
    assert client.post("/api/v1/provider/join-tokens", {}, format="json").status_code in (401, 403)


def test_ping_is_trivial_json():
    response = APIClient().get("/api/agent/v1/ping")
    assert response.status_code == 200
    assert response.json()["ok"] is True
