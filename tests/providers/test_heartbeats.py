"""Heartbeats -> Redis -> bulk flush -> PostgreSQL, and the liveness sweep."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from core.redis import redis_client
from providers.models import Device, Node, NodeStatus
from providers.services import (
    HEARTBEAT_DIRTY_KEY,
    heartbeat_latest,
    heartbeats_flush,
    liveness_sweep,
    node_auth_cache_clear,
)
from providers.tasks import sweep
from tests.providers.factories import ProviderFactory, agent_client, registered_node

pytestmark = pytest.mark.django_db

HEARTBEAT = "/api/agent/v1/heartbeat"


def beat(credential: str, *, health: str = "ok", version: str = "0.2.0", running=()):
    body = {
        "agent_version": version,
        "running_jobs": list(running),
        "devices": [
            {"index": 0, "uuid": "GPU-0", "health": health, "utilization_pct": 87.5, "memory_used_mib": 4096,
             "power_w": 612.3, "temperature_c": 71.0},
            {"index": 1, "uuid": "GPU-1", "health": "ok", "utilization_pct": None, "memory_used_mib": None,
             "power_w": None, "temperature_c": None},
        ],
    }  # fmt: skip
    return agent_client(credential).post(HEARTBEAT, body, format="json")


def test_heartbeat_lands_in_redis_only(django_assert_max_num_queries, django_assert_num_queries):
    node, credential = registered_node()
    node_auth_cache_clear()
    # At most one query: the credential lookup. Nothing is written to PostgreSQL on the hot path.
    with django_assert_max_num_queries(1):
        response = beat(credential, running=[5])
    # And the lookup is cached for a few seconds: the next heartbeat needs no database at all.
    with django_assert_num_queries(0):
        assert beat(credential, running=[5]).status_code == 200
    assert response.status_code == 200
    body = response.json()
    assert body["node_status"] == "pending" and body["server_time"].endswith("Z")
    latest = heartbeat_latest(node_id=node.pk)
    assert latest is not None
    assert latest["agent_version"] == "0.2.0" and latest["running_jobs"] == [5]
    assert latest["devices"][0]["utilization_pct"] == 87.5
    assert abs(latest["last_seen"] - timezone.now().timestamp()) < 5
    node.refresh_from_db()
    assert node.last_heartbeat_at is None and node.status == NodeStatus.PENDING
    assert redis_client().sismember(HEARTBEAT_DIRTY_KEY, node.pk)


def test_flush_moves_heartbeats_to_postgres_and_brings_pending_nodes_online():
    node, credential = registered_node()
    other, other_credential = registered_node(name="node-2")
    silent, _ = registered_node(name="node-3")
    assert beat(credential, health="degraded").status_code == 200
    assert beat(other_credential).status_code == 200
    assert heartbeats_flush() == 2
    node.refresh_from_db()
    assert node.status == NodeStatus.ONLINE and node.agent_version == "0.2.0"
    assert node.last_heartbeat_at is not None and timezone.now() - node.last_heartbeat_at < timedelta(
        seconds=5
    )
    assert dict(node.devices.values_list("index", "health")) == {0: "degraded", 1: "ok"}
    assert Node.objects.get(pk=other.pk).status == NodeStatus.ONLINE
    assert Node.objects.get(pk=silent.pk).status == NodeStatus.PENDING
    # Nothing left to flush; a second run changes nothing.
    assert heartbeats_flush() == 0
    assert redis_client().scard(HEARTBEAT_DIRTY_KEY) == 0


def test_flush_is_bulk(django_assert_max_num_queries):
    credentials = [registered_node(ProviderFactory(), name=f"n{i}")[1] for i in range(20)]
    for credential in credentials:
        beat(credential)
    with django_assert_max_num_queries(4):  # savepoint/transaction + node update + device update
        assert heartbeats_flush() == 20
    assert Node.objects.filter(status=NodeStatus.ONLINE).count() == 20


def test_an_older_heartbeat_never_moves_last_heartbeat_back():
    node, credential = registered_node()
    beat(credential)
    heartbeats_flush()
    node.refresh_from_db()
    first = node.last_heartbeat_at
    # A stale hash value (e.g. a slow writer) flushed later must not move the mark backwards.
    key = f"suanli:hb:node:{node.pk}"
    redis_client().hset(key, "last_seen", f"{first.timestamp() - 30:.3f}")
    redis_client().sadd(HEARTBEAT_DIRTY_KEY, node.pk)
    heartbeats_flush()
    node.refresh_from_db()
    assert node.last_heartbeat_at == first


def test_liveness_suspect_then_offline_then_back_online():
    node, credential = registered_node()
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        beat(credential)
        heartbeats_flush()
    node.refresh_from_db()
    assert node.status == NodeStatus.ONLINE

    assert liveness_sweep(now=start + timedelta(seconds=44)).suspect == []
    result = liveness_sweep(now=start + timedelta(seconds=46))
    assert result.suspect == [node.pk] and result.offline == []
    assert Node.objects.get(pk=node.pk).status == NodeStatus.SUSPECT
    # A second sweep at the same moment changes nothing.
    assert liveness_sweep(now=start + timedelta(seconds=46)).suspect == []

    assert liveness_sweep(now=start + timedelta(seconds=149)).offline == []
    result = liveness_sweep(now=start + timedelta(seconds=151))
    assert result.offline == [node.pk]
    assert Node.objects.get(pk=node.pk).status == NodeStatus.OFFLINE
    assert liveness_sweep(now=start + timedelta(seconds=500)).offline == []

    # The agent comes back: its next flushed heartbeat brings the node online again.
    with time_machine.travel(start + timedelta(seconds=600), tick=False):
        beat(credential)
        heartbeats_flush()
    assert Node.objects.get(pk=node.pk).status == NodeStatus.ONLINE


def test_an_online_node_silent_past_150s_goes_straight_offline():
    node, credential = registered_node()
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        beat(credential)
        heartbeats_flush()
    result = liveness_sweep(now=start + timedelta(seconds=200))
    assert result.offline == [node.pk] and result.suspect == []


def test_pending_draining_and_retired_nodes_are_left_alone():
    pending, _ = registered_node(name="p")
    draining, _ = registered_node(name="d")
    long_ago = timezone.now() - timedelta(hours=1)
    Node.objects.filter(pk=draining.pk).update(status=NodeStatus.DRAINING, last_heartbeat_at=long_ago)
    result = liveness_sweep(now=timezone.now())
    assert result.suspect == [] and result.offline == []
    assert Node.objects.get(pk=pending.pk).status == NodeStatus.PENDING


def test_a_stale_heartbeat_does_not_bring_a_node_online():
    node, credential = registered_node()
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        beat(credential)
    # The flush runs long after the heartbeat (a stalled worker): the node stays pending.
    heartbeats_flush(now=start + timedelta(seconds=120))
    node.refresh_from_db()
    assert node.status == NodeStatus.PENDING and node.last_heartbeat_at is not None


def test_sweep_task_flushes_first():
    node, credential = registered_node()
    Node.objects.filter(pk=node.pk).update(
        status=NodeStatus.ONLINE, last_heartbeat_at=timezone.now() - timedelta(seconds=60)
    )
    beat(credential)  # in Redis, not yet flushed
    assert sweep() == {"suspect": [], "offline": []}
    assert Node.objects.get(pk=node.pk).status == NodeStatus.ONLINE


@pytest.mark.parametrize(
    "body",
    [
        {"devices": [{"index": 0, "health": "on fire"}]},
        {"devices": [{"index": -1, "health": "ok"}]},
        {"devices": [{"index": 0, "health": "ok", "utilization_pct": 101}]},
        {"devices": [{"index": 0, "health": "ok", "utilization_pct": "50"}]},
        {"running_jobs": ["7"]},
        {"devices": "all good"},
    ],
)
def test_malformed_heartbeat_is_refused_and_not_recorded(body):
    node, credential = registered_node()
    response = agent_client(credential).post(HEARTBEAT, body, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    assert heartbeat_latest(node_id=node.pk) is None


def test_device_health_of_unknown_indexes_is_ignored():
    node, credential = registered_node(devices=1)
    agent_client(credential).post(
        HEARTBEAT, {"devices": [{"index": 5, "uuid": "x", "health": "failed"}]}, format="json"
    )
    heartbeats_flush()
    assert list(Device.objects.filter(node=node).values_list("health", flat=True)) == ["ok"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"agent_version": "1.2.3", "running_jobs": [1, 2], "devices": []},
        {"devices": [{"index": 0, "health": "ok"}]},
        {"devices": [{"index": 0, "uuid": "u", "health": "failed", "utilization_pct": 0, "power_w": 0.5,
                      "memory_used_mib": 0, "temperature_c": -5}]},
        {"devices": [{"index": 0, "health": "ok", "power_w": True}]},
        {"devices": [{"index": 0, "health": "ok", "memory_used_mib": 1.5}]},
        {"devices": [{"index": 0, "health": "ok", "temperature_c": 301}]},
        {"devices": [{"index": 32768, "health": "ok"}]},
        {"devices": [{"index": 0, "uuid": None, "health": "ok"}]},
        {"devices": [{"health": "ok"}]},
        {"devices": ["gpu"]},
        {"agent_version": 1},
        {"agent_version": "x" * 33},
        {"running_jobs": [0]},
        {"running_jobs": [True]},
        {"running_jobs": "1"},
        {"devices": [{"index": 0, "health": "ok"}] * 65},
        {"agent_version": "0.2\x00"},
        {"agent_version": "\ud800"},
        {"devices": [{"index": 0, "uuid": "GPU-\x00", "health": "ok"}]},
        {"devices": [{"index": 0, "uuid": "\udc80", "health": "ok"}]},
        {"devices": [{"index": 0, "health": []}]},
        {"devices": [{"index": 0, "health": {}}]},
    ],
)  # fmt: skip
def test_the_fast_heartbeat_parser_agrees_with_the_documented_serializer(body):
    from core.errors import ValidationFailed
    from providers.api.serializers import HeartbeatInSerializer, parse_heartbeat

    serializer_ok = HeartbeatInSerializer(data=body).is_valid()
    try:
        parse_heartbeat(body)
        parser_ok = True
    except ValidationFailed:
        parser_ok = False
    assert parser_ok == serializer_ok
