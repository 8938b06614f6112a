"""Outgoing webhooks: signed job events delivered by a real Celery worker to a local HTTP server,
retried with backoff when it fails, bounded, logged for the buyer; the SSRF guard on URLs."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction
from rest_framework.test import APIClient

from marketplace.models import (
    Job,
    JobStatus,
    StopReason,
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookEventType,
)
from marketplace.services.jobs import JobSpec, job_assign, job_stop_request
from marketplace.services.webhooks import webhook_event_emit
from tests.billing.conftest import make_user
from tests.marketplace.market_helpers import agent_reports
from tests.providers.factories import registered_node
from tests.support.live import wait_for
from tests.support.worker import CeleryWorker

SIGNATURE_TOLERANCE_S = 300


class Receiver:
    """A local HTTP server that records each POST and answers the next status in ``answers``
    (then 200)."""

    def __init__(self, answers: list[int] | None = None) -> None:
        self.answers = list(answers or [])
        self.requests: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
                receiver.requests.append(
                    {"headers": dict(self.headers), "body": body, "at": time.monotonic()}
                )
                code = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/suanli"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def verify(secret: str, header: str, body: str) -> bool:
    """What a receiver does (the docs/api.md recipe)."""
    parts = dict(item.split("=", 1) for item in header.split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.{body}".encode(), hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(parts["t"])) <= SIGNATURE_TOLERANCE_S
    return fresh and hmac.compare_digest(expected, parts["v1"])


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def register(client: APIClient, url: str, **extra: Any) -> dict[str, Any]:
    reply = client.post("/api/v1/webhooks", {"url": url, **extra}, format="json", HTTP_IDEMPOTENCY_KEY=url)
    assert reply.status_code == 201, reply.content
    return reply.json()


@pytest.fixture(scope="module")
def webhook_worker(
    django_db_setup: None, django_db_blocker: object, tmp_path_factory
) -> Iterator[CeleryWorker]:
    """A real worker with short webhook backoff (1 s, 2 s) and at most 3 attempts."""
    env = {"SUANLI_WEBHOOK_RETRY_BASE_S": "1", "SUANLI_WEBHOOK_MAX_ATTEMPTS": "3"}
    log_path: Path = tmp_path_factory.mktemp("webhooks") / "celery-worker.log"
    worker = CeleryWorker(env=env, log_path=log_path)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


# --- Delivery through the real worker ----------------------------------------------------------


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_job_events_are_delivered_signed_and_logged(webhook_worker: CeleryWorker) -> None:
    buyer = make_user("hooked")
    node, _credential = registered_node(name="hook-node", devices=2)
    with Receiver() as receiver:
        # Given a buyer with a registered endpoint (its secret shown once)
        created = register(client_for(buyer), receiver.url)
        secret = created["secret"]
        assert secret.startswith("whsec_")
        listed = client_for(buyer).get("/api/v1/webhooks").json()["results"]
        assert [e["id"] for e in listed] == [created["id"]] and "secret" not in listed[0]

        # When the buyer's job starts, is preempted (notice) and ends
        job = job_assign(
            node=node, device_indexes=[0], spec=JobSpec(runtime="docker", image="img"), buyer=buyer
        )
        agent_reports(job, "accepted")
        agent_reports(job, "running")
        job_stop_request(job=Job.objects.get(pk=job.pk), reason=StopReason.PREEMPTION)
        agent_reports(Job.objects.get(pk=job.pk), "stopped", exit_code=143)
        assert Job.objects.get(pk=job.pk).status == JobStatus.PREEMPTED

        # Then the worker delivers three signed events, each once
        wait_for("three deliveries", lambda: len(receiver.requests) >= 3, timeout=30)
        time.sleep(1)
        assert len(receiver.requests) == 3
    events = [json.loads(r["body"]) for r in receiver.requests]
    assert sorted(e["type"] for e in events) == ["job.ended", "job.preempted", "job.started"]
    for request, event in zip(receiver.requests, events, strict=True):
        assert verify(secret, request["headers"]["Suanli-Signature"], request["body"])
        assert not verify("whsec_wrong", request["headers"]["Suanli-Signature"], request["body"])
        assert request["headers"]["Content-Type"] == "application/json"
        assert event["id"].startswith("evt_") and isinstance(event["created"], int)
        assert event["data"]["job"]["id"] == job.pk
    ended = next(e for e in events if e["type"] == "job.ended")
    assert ended["data"]["job"]["status"] == "preempted" and ended["data"]["job"]["exit_code"] == 143
    preempted = next(e for e in events if e["type"] == "job.preempted")
    assert preempted["data"]["job"]["stop_deadline"]

    # and the buyer sees the delivery log
    log = client_for(buyer).get(f"/api/v1/webhooks/{created['id']}/deliveries").json()["results"]
    assert {d["status"] for d in log} == {"delivered"} and {d["attempts"] for d in log} == {1}
    assert {d["last_status_code"] for d in log} == {200}


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_failing_receiver_is_retried_with_backoff_until_it_answers(webhook_worker: CeleryWorker) -> None:
    buyer = make_user("retry")
    with Receiver(answers=[500, 503]) as receiver:
        created = register(client_for(buyer), receiver.url)
        with transaction.atomic():
            webhook_event_emit(
                buyer_id=buyer.pk,
                event_type=WebhookEventType.JOB_STARTED,
                data={"job": {"id": 1}},
                dedupe_key="retry-test",
            )
        wait_for("the third attempt", lambda: len(receiver.requests) >= 3, timeout=30)
    delivery = wait_for(
        "the delivery to be recorded",
        lambda: WebhookDelivery.objects.filter(status=WebhookDeliveryStatus.DELIVERED).first(),
        timeout=10,
    )
    assert delivery.attempts == 3 and delivery.last_status_code == 200
    # Exponential backoff: about 1 s, then about 2 s (base 1 s), never immediate
    first, second, third = (r["at"] for r in receiver.requests)
    assert second - first >= 0.9 and third - second >= 1.9
    # Every attempt carries the same event (receivers dedupe by its id)
    assert len({json.loads(r["body"])["id"] for r in receiver.requests}) == 1
    body = client_for(buyer).get(f"/api/v1/webhooks/{created['id']}/deliveries").json()["results"][0]
    assert body["status"] == "delivered" and body["attempts"] == 3


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_retries_are_bounded_then_the_delivery_fails(webhook_worker: CeleryWorker) -> None:
    buyer = make_user("bounded")
    with Receiver(answers=[500] * 10) as receiver:
        register(client_for(buyer), receiver.url)
        with transaction.atomic():
            webhook_event_emit(
                buyer_id=buyer.pk,
                event_type=WebhookEventType.JOB_ENDED,
                data={"job": {"id": 2}},
                dedupe_key="bounded-test",
            )
        delivery = wait_for(
            "the delivery to fail",
            lambda: WebhookDelivery.objects.filter(status=WebhookDeliveryStatus.FAILED).first(),
            timeout=30,
        )
        time.sleep(3)  # no fourth attempt comes
        assert len(receiver.requests) == 3
    assert delivery.attempts == 3 and delivery.last_status_code == 500 and delivery.last_error == "HTTP 500"
    assert delivery.next_attempt_at is None


# --- Rows, rules and the API (no worker) ------------------------------------------------------


@pytest.mark.django_db
def test_an_event_is_queued_once_per_endpoint_and_only_for_subscribed_types() -> None:
    buyer = make_user("subs")
    client = client_for(buyer)
    everything = register(client, "http://127.0.0.1:9/all")
    ended_only = register(client, "http://127.0.0.1:9/ended", events=["job.ended"])
    for _ in range(2):
        webhook_event_emit(buyer_id=buyer.pk, event_type="job.started", data={}, dedupe_key="job.started:7")
    webhook_event_emit(buyer_id=buyer.pk, event_type="job.ended", data={}, dedupe_key="job.ended:7")
    rows = sorted(WebhookDelivery.objects.values_list("endpoint_id", "event_type"))
    assert rows == sorted(
        [(everything["id"], "job.started"), (everything["id"], "job.ended"), (ended_only["id"], "job.ended")]
    )


@pytest.mark.django_db
def test_jobs_of_other_buyers_and_jobs_without_a_buyer_emit_nothing() -> None:
    buyer, other = make_user("mine"), make_user("other")
    register(client_for(buyer), "http://127.0.0.1:9/mine")
    node, _credential = registered_node(name="n-other", devices=2)
    job = job_assign(node=node, device_indexes=[0], spec=JobSpec(runtime="docker", image="i"), buyer=other)
    agent_reports(job, "running")
    anonymous = job_assign(node=node, device_indexes=[1], spec=JobSpec(runtime="docker", image="i"))
    agent_reports(anonymous, "running")
    assert anonymous.buyer_id is None
    assert not WebhookDelivery.objects.exists()


@pytest.mark.django_db
def test_a_funds_stop_notice_emits_job_stopped_for_funds() -> None:
    buyer = make_user("funds")
    register(client_for(buyer), "http://127.0.0.1:9/funds")
    node, _credential = registered_node(name="n-funds", devices=1)
    job = job_assign(node=node, device_indexes=[0], spec=JobSpec(runtime="docker", image="i"), buyer=buyer)
    agent_reports(job, "accepted")
    agent_reports(job, "running")
    job_stop_request(job=Job.objects.get(pk=job.pk), reason=StopReason.FUNDS)
    job_stop_request(job=Job.objects.get(pk=job.pk), reason=StopReason.FUNDS)  # asked again: no second event
    types = list(WebhookDelivery.objects.order_by("pk").values_list("event_type", flat=True))
    assert types == ["job.started", "job.stopped_for_funds"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("url", "field_error"),
    [
        ("ftp://example.com/hook", "http"),
        ("file:///etc/passwd", "http"),
        ("javascript:alert(1)", "http"),
        ("http://127.0.0.1:8000/admin", "public"),
        ("http://localhost/hook", "public"),
        ("http://10.1.2.3/hook", "public"),
        ("http://169.254.169.254/latest/meta-data", "public"),
        ("http://[::1]/hook", "public"),
        ("http://192.168.0.10:8080/hook", "public"),
        ("http://0.0.0.0/hook", "public"),
        ("http://example.com:99999/hook", "port"),
        ("not a url", "valid"),
        ("http://exa\x00mple.com/", "nul"),
        ("", ""),
    ],
)
def test_the_ssrf_guard_refuses_non_http_and_private_urls(settings, url: str, field_error: str) -> None:
    settings.SUANLI_WEBHOOK_ALLOW_PRIVATE = False
    reply = client_for(make_user("ssrf")).post(
        "/api/v1/webhooks", {"url": url}, format="json", HTTP_IDEMPOTENCY_KEY="k"
    )
    assert reply.status_code == 400, reply.content
    error = reply.json()["error"]
    assert "url" in error["fields"] and field_error.lower() in " ".join(error["fields"]["url"]).lower()


@pytest.mark.django_db
def test_a_public_address_is_accepted_with_the_guard_on(settings) -> None:
    settings.SUANLI_WEBHOOK_ALLOW_PRIVATE = False
    reply = client_for(make_user("public")).post(
        "/api/v1/webhooks", {"url": "https://93.184.215.14/hook"}, format="json", HTTP_IDEMPOTENCY_KEY="k"
    )
    assert reply.status_code == 201, reply.content


@pytest.mark.django_db
def test_a_url_that_turned_private_is_not_posted(settings) -> None:
    from marketplace.services.webhooks import webhook_delivery_attempt

    buyer = make_user("rebind")
    register(client_for(buyer), "http://127.0.0.1:9/hook")  # accepted while private addresses are allowed
    webhook_event_emit(buyer_id=buyer.pk, event_type="job.started", data={}, dedupe_key="x")
    settings.SUANLI_WEBHOOK_ALLOW_PRIVATE = False
    delivery = WebhookDelivery.objects.get()
    assert webhook_delivery_attempt(delivery_id=delivery.pk) is not None  # to be retried
    delivery.refresh_from_db()
    assert delivery.attempts == 1 and delivery.last_status_code is None
    assert "public address" in delivery.last_error


@pytest.mark.django_db
def test_buyers_see_only_their_own_endpoints_and_deleting_stops_deliveries() -> None:
    owner, stranger = make_user("owner"), make_user("stranger")
    created = register(client_for(owner), "http://127.0.0.1:9/own")
    webhook_event_emit(buyer_id=owner.pk, event_type="job.started", data={}, dedupe_key="a")
    for path in (f"/api/v1/webhooks/{created['id']}", f"/api/v1/webhooks/{created['id']}/deliveries"):
        assert client_for(stranger).get(path).status_code == 404
    assert client_for(stranger).delete(f"/api/v1/webhooks/{created['id']}").status_code == 404
    assert (
        client_for(owner).get(f"/api/v1/webhooks/{created['id']}").json()["url"] == "http://127.0.0.1:9/own"
    )

    assert client_for(owner).delete(f"/api/v1/webhooks/{created['id']}").status_code == 204
    assert WebhookDelivery.objects.get().status == WebhookDeliveryStatus.FAILED
    webhook_event_emit(buyer_id=owner.pk, event_type="job.started", data={}, dedupe_key="b")
    assert WebhookDelivery.objects.count() == 1
    assert client_for(owner).get("/api/v1/webhooks").json()["results"] == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body",
    [{"url": "http://127.0.0.1:9/x", "events": ["job.exploded"]}, {"url": 5}, {"events": []}, {"url": ["x"]}],
)
def test_bad_webhook_bodies_are_field_errors(body: dict[str, Any]) -> None:
    reply = client_for(make_user("bad")).post(
        "/api/v1/webhooks", body, format="json", HTTP_IDEMPOTENCY_KEY="k"
    )
    assert reply.status_code == 400, reply.content
    assert reply.json()["error"]["fields"]
