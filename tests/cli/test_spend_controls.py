"""`suanli spend-cap`, `suanli low-balance` and `suanli webhook` with the real console script
against a live gunicorn on the test database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.services import apikey_create
from marketplace.models import Order
from tests.billing.conftest import fund, make_user
from tests.support.live_server import LiveServer
from tests.support.worker import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SUANLI = str(Path(sys.executable).parent / "suanli")


@pytest.fixture(scope="module")
def server(django_db_setup: None) -> Iterator[LiveServer]:
    live = LiveServer(
        log_path=ROOT / "var" / "test" / "cli-spend-gunicorn.log",
        workers=1,
        threads=4,
        SUANLI_API_RATE="100000/min",
    ).start()
    try:
        yield live
    finally:
        live.stop()


def suanli(server: LiveServer, key: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SUANLI_SERVER", "SUANLI_API_KEY")}
    env["SUANLI_CONFIG"] = str(tmp_path / "config.json")
    return subprocess.run(
        [SUANLI, "--server", server.url, "--key", key, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def test_spend_cap_set_show_refuse_and_clear(server: LiveServer, tmp_path: Path) -> None:
    buyer = make_user("cli-cap")
    fund(buyer, 1_000_000_000)
    key = apikey_create(user=buyer, name="cli", scopes=["read", "trade"]).secret

    # suanli spend-cap set 10.00
    assert (
        as_json(suanli(server, key, tmp_path, "spend-cap", "set", "10.00", "--json"))["monthly_cap"]
        == "10.00"
    )
    shown = suanli(server, key, tmp_path, "spend-cap")
    assert shown.returncode == 0 and "10.00" in shown.stdout and "spent this month" in shown.stdout

    # An order needing 16.00 (2 devices x 8.00 x 1 h) is refused: exit 5 with the figures
    refused = suanli(
        server, key, tmp_path,
        "order", "create", "--term", "on-demand", "--devices", "2", "--max-price", "8.00",
        "--runtime", "process", "--", "true",
    )  # fmt: skip
    assert refused.returncode == 5, (refused.stdout, refused.stderr)
    assert "spend cap" in refused.stderr and "10.00" in refused.stderr and "16.00" in refused.stderr
    assert not Order.objects.filter(buyer=buyer).exists()

    # a bad amount is a usage-level refusal (exit 1), not a crash
    bad = suanli(server, key, tmp_path, "spend-cap", "set", "-3")
    assert bad.returncode == 1 and "monthly_cap" in bad.stderr

    # low-balance threshold, then clearing both
    low = as_json(suanli(server, key, tmp_path, "low-balance", "set", "100.00", "--json"))
    assert low["low_balance_threshold"] == "100.00"
    cleared = as_json(suanli(server, key, tmp_path, "spend-cap", "clear", "--json"))
    assert cleared["monthly_cap"] is None and cleared["low_balance_threshold"] == "100.00"
    assert (
        as_json(suanli(server, key, tmp_path, "low-balance", "clear", "--json"))["low_balance_threshold"]
        is None
    )


def test_webhook_add_list_deliveries_remove(server: LiveServer, tmp_path: Path) -> None:
    buyer = make_user("cli-hook")
    key = apikey_create(user=buyer, name="cli", scopes=["read", "trade"]).secret

    added = suanli(server, key, tmp_path, "webhook", "add", "http://127.0.0.1:9/hook", "--event", "job.ended")
    assert added.returncode == 0, added.stderr
    assert "Signing secret (shown only now; store it): whsec_" in added.stdout
    endpoints = as_json(suanli(server, key, tmp_path, "webhook", "list", "--json"))["results"]
    assert [(e["url"], e["events"]) for e in endpoints] == [("http://127.0.0.1:9/hook", ["job.ended"])]
    hook_id = str(endpoints[0]["id"])
    assert as_json(suanli(server, key, tmp_path, "webhook", "deliveries", hook_id, "--json"))["results"] == []
    assert suanli(server, key, tmp_path, "webhook", "remove", hook_id).returncode == 0
    assert as_json(suanli(server, key, tmp_path, "webhook", "list", "--json"))["results"] == []
    assert suanli(server, key, tmp_path, "webhook", "remove", hook_id).returncode == 4  # gone: 404
    bad = suanli(server, key, tmp_path, "webhook", "add", "ftp://example.com/x")
    assert bad.returncode == 1 and "http" in bad.stderr
