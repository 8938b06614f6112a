"""One structured log format: JSON lines with a request id, from web, worker and billing alike."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from billing.services import settle
from config.celery_app import app
from core.logging import build_formatter
from tests.billing.conftest import fake_stripe, fake_stripe_server, make_user  # noqa: F401 (fixtures)
from tests.support.worker import CeleryWorker, child_env

ROOT = Path(__file__).resolve().parents[2]
LEADING = ["ts", "level", "logger", "event", "request_id"]


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What the root logger writes through the JSON formatter ``settings.LOGGING`` installs when
    ``SUANLI_LOG_FORMAT=json`` (the test settings use the console format)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(build_formatter("json"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = [line for line in stream.getvalue().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert list(record)[:5] == LEADING, record
    return records


@pytest.mark.django_db
def test_a_well_formed_request_id_is_kept_and_echoed() -> None:
    response = Client().get("/healthz", HTTP_X_REQUEST_ID="lb-7f3a9c2e:01")
    assert response["X-Request-ID"] == "lb-7f3a9c2e:01"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "header", ["short", "has spaces in it", "x" * 129, "<script>alert(1)</script>", "line\nbreak-12345", ""]
)
def test_a_malformed_or_missing_request_id_is_replaced(header: str) -> None:
    response = Client().get("/healthz", HTTP_X_REQUEST_ID=header)
    assert response["X-Request-ID"] != header
    assert len(response["X-Request-ID"]) == 32 and int(response["X-Request-ID"], 16) >= 0


@pytest.mark.django_db
def test_a_billing_line_during_an_api_request_is_json_with_the_request_id(
    fake_stripe: Any,  # noqa: F811 - the fixture
    json_lines: io.StringIO,
) -> None:
    buyer = make_user()
    api = APIClient()
    api.force_authenticate(buyer)

    response = api.post(
        "/api/v1/wallet/top-ups",
        {"amount": "50.00"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="log-1",
        HTTP_X_REQUEST_ID="req-billing-0001",
    )

    assert response.status_code == 201, response.json()
    assert response["X-Request-ID"] == "req-billing-0001"
    created = [r for r in parsed(json_lines) if r["event"] == "billing.top_up_created"]
    assert len(created) == 1
    line = created[0]
    assert line["logger"] == "billing.services.topups"
    assert line["level"] == "info"
    assert line["request_id"] == "req-billing-0001"
    assert line["top_up_id"] == response.json()["id"]
    assert line["ts"].endswith("Z")


@pytest.mark.django_db
def test_stdlib_and_structlog_lines_share_the_format_and_a_request_id_never_leaks(
    json_lines: io.StringIO,
) -> None:
    Client().get("/healthz", HTTP_X_REQUEST_ID="req-earlier-0001")
    # After the request: a settlement run (structlog) and a stdlib line carry no request id.
    settle(until=timezone.now())
    logging.getLogger("marketplace.services.matching").warning(
        "matching.conflict order_id=%s", 5, extra={"order_id": 5}
    )
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("billing.stripe_gateway").exception("stripe.failed")

    records = {r["event"]: r for r in parsed(json_lines)}
    settled = records["billing.settled"]
    assert settled["logger"] == "billing.services.settlement"
    assert settled["request_id"] is None
    assert settled["leases"] == 0
    conflict = records["matching.conflict order_id=5"]
    assert conflict["level"] == "warning" and conflict["order_id"] == 5 and conflict["request_id"] is None
    failed = records["stripe.failed"]
    assert failed["level"] == "error" and "RuntimeError: boom" in failed["exception"]


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=child_env(DJANGO_SETTINGS_MODULE="config.settings", **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


LOG_BOTH = """
import django, logging, structlog
django.setup()
structlog.get_logger("billing.services.payouts").info("billing.payout_paid", payout_id=3)
logging.getLogger("marketplace.services.orders").info("order.placed order_id=%s", 9)
"""


@pytest.mark.django_db
def test_settings_logging_writes_one_json_object_per_line_in_a_fresh_process() -> None:
    result = run_python(LOG_BOTH, SUANLI_LOG_FORMAT="json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert [(r["logger"], r["event"]) for r in lines] == [
        ("billing.services.payouts", "billing.payout_paid"),
        ("marketplace.services.orders", "order.placed order_id=9"),
    ]
    assert all(list(r)[:5] == LEADING for r in lines)
    assert lines[0]["payout_id"] == 3


@pytest.mark.django_db
def test_console_is_the_test_default_and_a_bad_format_is_refused() -> None:
    assert settings.SUANLI_LOG_FORMAT == "console"
    console = run_python(LOG_BOTH)
    assert console.returncode == 0, console.stderr
    assert "billing.payout_paid" in console.stderr and not console.stderr.lstrip().startswith("{")
    refused = run_python(LOG_BOTH, SUANLI_LOG_FORMAT="xml")
    assert refused.returncode != 0
    assert "SUANLI_LOG_FORMAT must be json or console" in refused.stderr


@pytest.mark.django_db(transaction=True)
def test_a_worker_writes_json_lines_and_its_rounds_reach_the_web_scrape(tmp_path: Path) -> None:
    # A real worker process, as in production: its matching round lands in Redis, and this
    # (web) process's /metrics reports it; its log lines are the same JSON as the web's.
    log_path = tmp_path / "worker.log"
    worker = CeleryWorker(log_path=log_path, env={"SUANLI_LOG_FORMAT": "json"})
    worker.start()
    try:
        sent = app.send_task("marketplace.matching.run")
        deadline = time.monotonic() + 30
        body = ""
        while time.monotonic() < deadline:
            body = Client().get("/metrics").content.decode()
            if 'suanli_matching_round_seconds_count{round="firm"} 1.0' in body:
                break
            time.sleep(0.2)
        assert 'suanli_matching_round_seconds_count{round="firm"} 1.0' in body
        # The task's own success line is written before its context is unbound.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sent.id not in log_path.read_text():
            time.sleep(0.2)
    finally:
        worker.stop()

    # The start-up banner is printed, not logged; every logged line is one JSON object.
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert records and all(list(r)[:5] == LEADING for r in records)
    assert any(r["logger"].startswith("celery") for r in records)
    task_lines = [r for r in records if r.get("task_id") == sent.id]
    assert task_lines and all(r["task"] == "marketplace.matching.run" for r in task_lines)
