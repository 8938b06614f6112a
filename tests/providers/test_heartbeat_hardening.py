"""Heartbeats under bad input and outages (issue #11, items 5 and 12).

One node's bad heartbeat must never freeze liveness for every node, and Redis being briefly
unreachable is a 503 with Retry-After that agents retry, never a 500.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import kombu.exceptions
import pytest
import time_machine
from django.test import override_settings
from django.utils import timezone

from config.celery_app import WORKER_SEEN_KEY
from core.api import exception_handler
from core.redis import HEARTBEAT_PENDING_SINCE_KEY, redis_client
from providers.models import Node, NodeStatus
from providers.services import (
    HEARTBEAT_DIRTY_KEY,
    HEARTBEAT_KEY,
    _flush_write,
    _FlushRow,
    heartbeat_latest,
    heartbeats_flush,
)
from providers.tasks import sweep
from tests.providers.factories import ProviderFactory, agent_client, registered_node
from tests.providers.test_heartbeats import HEARTBEAT, beat

pytestmark = pytest.mark.django_db

# Redis on a port where nothing listens (connection refused at once).
REDIS_DOWN = "redis://127.0.0.1:1/0"


def post_raw(credential: str, body: str):
    # Raw JSON text: a lone surrogate cannot be encoded by the test client's JSON renderer, but
    # "\ud800" is valid JSON that any client can send.
    return agent_client(credential).post(HEARTBEAT, body, content_type="application/json")


# --- Item 5: bad strings are refused, and a bad stored entry never stops the flush --------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"agent_version": "0.2.0\\u0000"}', "agent_version"),
        ('{"agent_version": "\\ud800"}', "agent_version"),
        ('{"agent_version": "0.2\\udfff.0"}', "agent_version"),
        ('{"devices": [{"index": 0, "uuid": "GPU-\\u0000", "health": "ok"}]}', "devices.0.uuid"),
        ('{"devices": [{"index": 0, "uuid": "GPU-\\ud83d", "health": "ok"}]}', "devices.0.uuid"),
    ],
)
def test_nul_or_lone_surrogate_in_a_heartbeat_is_a_field_error_and_nothing_is_stored(body, field):
    node, credential = registered_node()

    response = post_raw(credential, body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid" and field in error["fields"]
    assert heartbeat_latest(node_id=node.pk) is None
    assert not redis_client().sismember(HEARTBEAT_DIRTY_KEY, node.pk)


def _plant(node_id: int, **fields: bytes | str) -> None:
    """Write a heartbeat entry straight into Redis, as an older server (or a bug) could have."""
    mapping: dict[str, bytes | str] = {
        "last_seen": f"{time.time():.3f}",
        "agent_version": "0.2.0",
        "devices": "[]",
        "running_jobs": "[]",
    }
    mapping.update(fields)
    redis_client().hset(HEARTBEAT_KEY.format(node_id=node_id), mapping=mapping)
    redis_client().sadd(HEARTBEAT_DIRTY_KEY, node_id)


@pytest.mark.parametrize(
    "bad",
    [
        {"agent_version": "0.2.0\x00"},  # what the issue reproduced: stored, then PostgreSQL refuses it
        {"agent_version": b"\xed\xa0\x80"},  # a surrogate's UTF-8 bytes: not decodable
        {"last_seen": "nan"},
        {"last_seen": "1e300"},
        {"devices": "{not json"},
        {"devices": '[{"index": 0, "health": "ok"}, "gpu"]'},
    ],
)
def test_a_bad_entry_in_redis_is_discarded_and_every_other_node_still_flushes(bad):
    good, good_credential = registered_node(ProviderFactory(), name="good")
    other, other_credential = registered_node(ProviderFactory(), name="other")
    poisoned, _ = registered_node(ProviderFactory(), name="poisoned")
    assert beat(good_credential).status_code == 200
    _plant(poisoned.pk, **bad)
    assert beat(other_credential).status_code == 200

    assert heartbeats_flush() == 2

    assert Node.objects.get(pk=good.pk).status == NodeStatus.ONLINE
    assert Node.objects.get(pk=other.pk).status == NodeStatus.ONLINE
    poisoned.refresh_from_db()
    assert poisoned.status == NodeStatus.PENDING and poisoned.last_heartbeat_at is None
    # The bad entry is gone, so it cannot fail the next run either; nothing is left waiting.
    assert heartbeat_latest(node_id=poisoned.pk) is None
    assert redis_client().scard(HEARTBEAT_DIRTY_KEY) == 0
    assert heartbeats_flush() == 0


def test_the_liveness_sweep_keeps_working_with_a_bad_entry_in_redis():
    silent, silent_credential = registered_node(ProviderFactory(), name="silent")
    poisoned, _ = registered_node(ProviderFactory(), name="poisoned")
    start = timezone.now()
    with time_machine.travel(start - timedelta(seconds=60), tick=False):
        beat(silent_credential)
        heartbeats_flush()
    assert Node.objects.get(pk=silent.pk).status == NodeStatus.ONLINE
    _plant(poisoned.pk, agent_version="0.2.0\x00")

    # The sweep flushes first; before the fix that flush raised on every run and nothing moved.
    assert sweep() == {"suspect": [silent.pk], "offline": []}
    assert Node.objects.get(pk=silent.pk).status == NodeStatus.SUSPECT


def test_a_row_postgresql_refuses_is_discarded_and_the_rest_are_written():
    # Defence in depth: should a value pass the parsing checks but still be refused by
    # PostgreSQL, the batch is retried row by row and only the refused row is dropped.
    good, _ = registered_node(ProviderFactory(), name="good")
    bad, _ = registered_node(ProviderFactory(), name="bad")
    now = timezone.now()
    rows = [
        _FlushRow(node_id=bad.pk, seen=now, agent_version="0.2\x00", health=[]),
        _FlushRow(node_id=good.pk, seen=now, agent_version="0.3.0", health=[(0, "degraded")]),
    ]

    assert _flush_write(rows, now=now) == [bad.pk]

    good.refresh_from_db()
    assert good.status == NodeStatus.ONLINE and good.agent_version == "0.3.0"
    assert good.devices.get(index=0).health == "degraded"
    assert Node.objects.get(pk=bad.pk).last_heartbeat_at is None


def _worker_seen() -> None:
    # /healthz also wants a Celery worker; its liveness stamp stands in for one here.
    redis_client().set(WORKER_SEEN_KEY, f"{time.time():.3f}", ex=120)


def test_healthz_reports_a_stalled_heartbeat_flush(client):
    _, credential = registered_node()
    _worker_seen()
    beat(credential)
    assert client.get("/healthz").status_code == 200  # waiting a moment is normal

    # The oldest unflushed heartbeat is two minutes old: every flush since has failed.
    redis_client().set(HEARTBEAT_PENDING_SINCE_KEY, f"{time.time() - 120:.3f}")
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded" and body["heartbeats"].startswith("not flushed for 12")

    heartbeats_flush()
    response = client.get("/healthz")
    assert response.status_code == 200
    assert "heartbeats" not in response.json()


# --- Item 12: Redis unreachable is a 503 with Retry-After, never a 500 ------------------------


def _assert_service_unavailable(response) -> None:
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    error = response.json()["error"]
    assert error["code"] == "service_unavailable" and error["message"] and error["fields"] == {}


def test_heartbeat_answers_503_with_retry_after_while_redis_is_unreachable():
    node, credential = registered_node()
    with override_settings(REDIS_URL=REDIS_DOWN):
        response = beat(credential)
    _assert_service_unavailable(response)
    # Redis is back: the agent's retry lands.
    assert beat(credential).status_code == 200
    assert heartbeat_latest(node_id=node.pk) is not None


def test_work_poll_answers_503_with_retry_after_while_redis_is_unreachable():
    _, credential = registered_node()
    with override_settings(REDIS_URL=REDIS_DOWN):
        response = agent_client(credential).post("/api/agent/v1/work?wait=0", {"running": []}, format="json")
    _assert_service_unavailable(response)
    response = agent_client(credential).post("/api/agent/v1/work?wait=0", {"running": []}, format="json")
    assert response.status_code == 200


def test_a_broker_outage_is_a_503_too():
    response = exception_handler(kombu.exceptions.OperationalError("connection refused"), {})
    assert response is not None and response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.data["error"]["code"] == "service_unavailable"


def test_pending_since_is_the_oldest_unflushed_heartbeat():
    _, credential = registered_node()
    start = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    with time_machine.travel(start, tick=False):
        beat(credential)
    with time_machine.travel(start + timedelta(seconds=10), tick=False):
        beat(credential)
    assert float(redis_client().get(HEARTBEAT_PENDING_SINCE_KEY)) == start.timestamp()
    heartbeats_flush()
    assert redis_client().get(HEARTBEAT_PENDING_SINCE_KEY) is None
