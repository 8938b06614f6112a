"""GET /metrics: figures from PostgreSQL and Redis, the same whichever process records or answers."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client, override_settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from billing.services import lease_open, settle
from config.celery_app import app
from core.redis import HEARTBEAT_PENDING_SINCE_KEY, redis_client
from marketplace.services.jobs import JobSpec
from marketplace.services.matching import matching_run
from marketplace.services.orders import OrderRequest, order_place
from tests.billing.conftest import make_user
from tests.marketplace.market_helpers import MICROS, funded_buyer, online_node
from tests.providers.factories import registered_node

pytestmark = pytest.mark.django_db

SPEC = JobSpec(runtime="docker", image="nvcr.io/nvidia/pytorch:24.05-py3", command=["python", "train.py"])


def scrape(
    client: Client | None = None, **headers: str
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of one scrape, parsed by prometheus_client."""
    response = (client or Client()).get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def on_demand(devices: int, limit: str) -> OrderRequest:
    return OrderRequest(
        term="on_demand",
        devices_per_node=devices,
        price_limit_micros=int(Decimal(limit) * MICROS),
        job=SPEC,
    )


def test_orders_jobs_and_nodes_are_counted_by_status() -> None:
    # Given two online nodes, one that has not heartbeated yet (pending), one placed order with
    # its job, and one order no node can take (16 devices per node)
    online_node(name="a")
    online_node(name="b")
    registered_node(name="fresh")
    buyer = funded_buyer(1000)
    placed, _ = order_place(buyer=buyer, request=on_demand(2, "3.00"), idempotency_key="m1")
    order_place(buyer=buyer, request=on_demand(16, "3.00"), idempotency_key="m2")
    assert matching_run().placed == [placed.pk]

    samples = scrape()

    assert value(samples, "suanli_nodes", status="online") == 2
    assert value(samples, "suanli_nodes", status="pending") == 1
    assert value(samples, "suanli_nodes", status="offline") == 0  # every status, zero included
    assert value(samples, "suanli_orders", status="allocated") == 1
    assert value(samples, "suanli_orders", status="open") == 1
    assert value(samples, "suanli_orders", status="cancelled") == 0
    assert value(samples, "suanli_jobs", status="assigned") == 1
    assert value(samples, "suanli_jobs", status="running") == 0
    assert value(samples, "suanli_metrics_source_up", source="database") == 1
    assert value(samples, "suanli_metrics_source_up", source="redis") == 1


def test_request_latency_is_labelled_by_view_method_and_status_class() -> None:
    buyer = make_user()
    api = APIClient()
    api.force_authenticate(buyer)
    api.get("/api/v1/wallet")
    api.get("/api/v1/wallet")
    assert api.get("/api/v1/orders/987654").status_code == 404
    assert api.get("/api/v1/orders/987653").status_code == 404

    samples = scrape()

    assert (
        value(
            samples, "suanli_http_request_duration_seconds_count", view="wallet", method="GET", status="2xx"
        )
        == 2
    )
    # The URL pattern's name, never the path: two ids are one series.
    count = value(
        samples, "suanli_http_request_duration_seconds_count", view="order-detail", method="GET", status="4xx"
    )
    assert count == 2
    buckets = [
        v
        for (name, labels), v in samples.items()
        if name == "suanli_http_request_duration_seconds_bucket" and ("view", "wallet") in labels
    ]
    assert max(buckets) == 2  # cumulative: +Inf holds every observation
    assert (
        value(samples, "suanli_http_request_duration_seconds_sum", view="wallet", method="GET", status="2xx")
        > 0
    )


def test_matching_rounds_and_settlement_runs_are_recorded_by_the_tasks() -> None:
    from billing.tasks import settle_task
    from marketplace.tasks import matching_run as matching_task
    from marketplace.tasks import spot_round as spot_task

    before = time.time()
    matching_task()
    matching_task()
    spot_task()
    settle_task()

    samples = scrape()

    assert value(samples, "suanli_matching_round_seconds_count", round="firm") == 2
    assert value(samples, "suanli_matching_round_seconds_count", round="spot") == 1
    assert value(samples, "suanli_matching_round_last_timestamp_seconds", round="firm") >= before
    assert value(samples, "suanli_matching_round_last_seconds", round="spot") >= 0
    assert value(samples, "suanli_settlement_run_seconds_count") == 1
    assert value(samples, "suanli_settlement_last_run_timestamp_seconds") >= before


def test_a_failed_settlement_run_is_timed_but_does_not_move_the_last_run_mark() -> None:
    from core.metrics import timed_settlement_run

    @timed_settlement_run
    def failing_run() -> None:
        raise RuntimeError("database went away")

    with pytest.raises(RuntimeError):
        failing_run()

    samples = scrape()
    assert value(samples, "suanli_settlement_run_seconds_count") == 1
    assert ("suanli_settlement_last_run_timestamp_seconds", ()) not in samples


def test_settlement_lag_is_the_oldest_open_lease_billed_through_mark() -> None:
    assert value(scrape(), "suanli_settlement_lag_seconds") == 0  # no open lease, no lag
    buyer = funded_buyer(1000)
    now = timezone.now()
    lease = lease_open(
        buyer=buyer, provider_id=7, job_id=77, device_count=1, rate_micros=2 * MICROS,
        started_at=now - timedelta(minutes=20), idempotency_key="lag-1",
    )  # fmt: skip
    # Never settled: the lag runs from the lease's start.
    assert 1200 <= value(scrape(), "suanli_settlement_lag_seconds") < 1260

    settle(until=now - timedelta(minutes=5), lease_ids=[lease.pk])

    assert 300 <= value(scrape(), "suanli_settlement_lag_seconds") < 360


def test_heartbeat_flush_lag_and_celery_queue_depth_come_from_redis() -> None:
    samples = scrape()
    assert value(samples, "suanli_heartbeat_flush_lag_seconds") == 0
    assert value(samples, "suanli_celery_queue_length", queue="billing") == 0

    # A heartbeat has waited 42 s for a flush; two billing tasks and a high-priority matching
    # task wait in the broker (no worker runs in this test).
    redis_client().set(HEARTBEAT_PENDING_SINCE_KEY, f"{time.time() - 42:.3f}")
    app.send_task("billing.reconcile")
    app.send_task("billing.reconcile")
    app.send_task("marketplace.matching.run", priority=9)

    samples = scrape()
    assert 42 <= value(samples, "suanli_heartbeat_flush_lag_seconds") < 100
    assert value(samples, "suanli_celery_queue_length", queue="billing") == 2
    assert value(samples, "suanli_celery_queue_length", queue="matching") == 1
    assert value(samples, "suanli_celery_queue_length", queue="provisioning") == 0


@override_settings(SUANLI_METRICS_TOKEN="metrics-token-for-tests")
def test_a_token_is_required_once_set() -> None:
    client = Client()
    refused = client.get("/metrics")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "not_authenticated"
    assert refused["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Basic metrics-token-for-tests").status_code == 401
    scrape(client, HTTP_AUTHORIZATION="Bearer metrics-token-for-tests")


@override_settings(SUANLI_METRICS_TOKEN=None, PRODUCTION=True)
def test_without_a_token_production_answers_404() -> None:
    assert Client().get("/metrics").status_code == 404


@override_settings(SUANLI_METRICS_TOKEN=None)
def test_without_a_token_development_is_open_to_loopback_only() -> None:
    assert Client(REMOTE_ADDR="203.0.113.9").get("/metrics").status_code == 404
    assert Client(REMOTE_ADDR="::1").get("/metrics").status_code == 200
    scrape(Client(REMOTE_ADDR="127.0.0.1"))
    assert Client().post("/metrics").status_code == 405


def test_redis_down_degrades_the_scrape_and_never_fails_a_request() -> None:
    # Port 1 on loopback refuses connections: Redis is down from the app's point of view.
    # The scrape is itself a request whose latency cannot be recorded.
    with override_settings(REDIS_URL="redis://127.0.0.1:1/0"):
        samples = scrape()
    assert value(samples, "suanli_metrics_source_up", source="redis") == 0
    assert value(samples, "suanli_metrics_source_up", source="database") == 1
    assert value(samples, "suanli_nodes", status="online") == 0


def test_compose_monitoring_profile_scrapes_web_metrics_with_the_token() -> None:
    import yaml

    from tests.conftest import ROOT

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    prometheus = compose["services"]["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]  # optional: `docker compose up` leaves it out
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert "promdata" in compose["volumes"]
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["web:8000"]}]
    assert job["authorization"]["type"] == "Bearer"
    assert job["authorization"]["credentials_file"] in prometheus["entrypoint"][-1]
