"""The worked example of docs/api.md, end to end, with the real `suanli` command.

A live gunicorn, a real Celery worker (the matcher runs when an order is placed) and a real
`suanli-agent` on a simulated 8x H100 node (process runtime). The provider creates a join token
and prices the node with the CLI; the buyer finds the cheapest 8x H100 on-demand offer in cn-east,
orders it with a job (waiting with progress until it runs), follows its log, stops it and reads
the charge. The exchange's periodic work that the worked example waits for (heartbeat flush,
settlement) is run by the test at the points where beat would run it.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from billing.services import settle
from core.services import apikey_create
from marketplace.models import Job, JobStatus
from providers.models import Node, NodeStatus
from providers.services import heartbeats_flush
from tests.billing.conftest import (
    fake_stripe_server,  # noqa: F401 - fixture
    fund,
    make_user,
)
from tests.providers.factories import ProviderFactory, ensure_catalog, member_of
from tests.support.live_server import LiveServer
from tests.support.worker import ROOT, child_env

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

BIN = Path(sys.executable).parent
SUANLI = str(BIN / "suanli")
AGENT = str(BIN / "suanli-agent")
TICKER = "import time\nfor i in range(600):\n    print(f'tick {i}', flush=True)\n    time.sleep(0.5)\n"


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture(scope="module")
def server(django_db_setup: None, fake_stripe_server: Any) -> Iterator[LiveServer]:  # noqa: F811
    live = LiveServer(
        log_path=ROOT / "var" / "test" / "cli-gunicorn.log",
        workers=1,
        threads=8,
        SUANLI_API_RATE="100000/min",
        SUANLI_API_ANON_RATE="100000/min",
        STRIPE_API_BASE=fake_stripe_server.url,
    ).start()
    try:
        yield live
    finally:
        live.stop()


class Suanli:
    """Runs the installed `suanli` console script with its own config file."""

    def __init__(self, config: Path) -> None:
        self.config = config

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("SUANLI_SERVER", None)
        env.pop("SUANLI_API_KEY", None)
        env["SUANLI_CONFIG"] = str(self.config)
        return env

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SUANLI, *args], env=self.env(), capture_output=True, text=True, timeout=timeout, check=False
        )

    def json(self, *args: str, timeout: float = 120) -> Any:
        result = self(*args, "--json", timeout=timeout)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return json.loads(result.stdout)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [SUANLI, *args], env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )


def start_agent(server: str, token: str, state_dir: Path) -> subprocess.Popen[bytes]:
    joined = subprocess.run(
        [AGENT, "join", "--server", server, "--token", token, "--name", "sh-h100-01",
         "--state-dir", str(state_dir), "--simulate", "h100x8"],
        env=child_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert joined.returncode == 0, joined.stdout + joined.stderr
    log = (state_dir.parent / "agent.log").open("ab")
    return subprocess.Popen(
        [AGENT, "run", "--state-dir", str(state_dir), "--heartbeat-interval", "1", "--sample-interval", "2",
         "--work-wait", "2"],
        env=child_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def stop_process_group(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def test_worked_example_end_to_end(server: LiveServer, celery_worker: Any, tmp_path: Path):
    ensure_catalog()
    provider_user = member_of(ProviderFactory(name="Shanghai Compute"))
    provider_key = apikey_create(user=provider_user, name="cli", scopes=["read", "provider"]).secret
    buyer = make_user("buyer")
    fund(buyer, 500_000_000)
    buyer_key = apikey_create(user=buyer, name="cli", scopes=["read", "trade"]).secret

    # The provider logs in, creates a join token and joins a node with it.
    provider = Suanli(tmp_path / "provider" / "config.json")
    login = provider("login", "--server", server.url, "--key", provider_key)
    assert login.returncode == 0, login.stderr
    assert stat.S_IMODE(os.stat(provider.config).st_mode) == 0o600
    token = provider.json("join-token", "--region", "cn-east", "--cluster", "sh-a")
    agent = start_agent(server.url, token["token"], tmp_path / "agent" / "state")
    try:
        node_id = wait_for(
            "the node online",
            lambda: (
                heartbeats_flush() is not None
                and Node.objects.filter(status=NodeStatus.ONLINE, name="sh-h100-01")
                .values_list("pk", flat=True)
                .first()
            ),
        )
        nodes = provider.json("node", "list")
        assert [n["id"] for n in nodes["results"]] == [node_id]
        priced = provider.json(
            "node", "price", str(node_id), "--on-demand", "2.40", "--spot-floor", "1.10", "--list"
        )
        assert priced["offer"]["on_demand_price"] == "2.40" and priced["offer"]["listed"] is True

        # The buyer: the cheapest 8x H100 on-demand offer in cn-east.
        buyer_cli = Suanli(tmp_path / "buyer" / "config.json")
        assert buyer_cli("login", "--server", server.url, "--key", buyer_key).returncode == 0
        offers = buyer_cli.json(
            "offers", "--model", "H100", "--region", "cn-east", "--devices", "8", "--limit", "1"
        )
        assert offers["results"], (buyer_cli.json("offers"), Node.objects.filter(pk=node_id).values()[0])
        offer = offers["results"][0]
        assert offer["node"]["id"] == node_id and offer["on_demand_price"] == "2.40"
        table = buyer_cli("offers", "--model", "H100", "--region", "cn-east", "--devices", "8")
        assert table.returncode == 0 and "2.40 USD" in table.stdout

        # Order it with a job, waiting (with progress on stderr) until the job runs.
        created = buyer_cli(
            "order", "create", "--term", "on-demand", "--offer", str(offer["id"]), "--devices", "8",
            "--max-price", "3.00", "--runtime", "process", "--wait", "--timeout", "90", "--json",
            "--", sys.executable, "-c", TICKER,
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        order = json.loads(created.stdout)
        job_id = order["jobs"][0]["id"]
        assert order["jobs"][0]["status"] == "running"
        assert f"Job {job_id} is running" in created.stderr  # the progress display's last line

        # Follow its log, stop it: the follower ends by itself once the job has ended.
        follower = buyer_cli.popen("job", "logs", str(job_id), "--follow")
        wait_for("a few log lines", lambda: Job.objects.get(pk=job_id).log_size > 30, timeout=30)
        stopped = buyer_cli.json("job", "stop", str(job_id))
        assert stopped["id"] == job_id
        out, err = follower.communicate(timeout=60)
        assert follower.returncode == 0, err
        assert out.startswith("tick 0\ntick 1\n")
        job = Job.objects.get(pk=job_id)
        assert job.status == JobStatus.STOPPED

        # Read the charge (after the settlement run that beat makes every minute).
        settle(until=timezone.now())
        usage = buyer_cli.json("usage", "--job", str(job_id))
        lease = usage["results"][0]
        assert lease["status"] == "closed" and lease["rate"] == "2.40" and lease["currency"] == "USD"
        seconds = (job.ended_at - job.started_at).total_seconds()
        expected = (Decimal("2.40") * 8 * Decimal(max(seconds, 60)) / 3600).quantize(Decimal("0.000001"))
        assert abs(Decimal(lease["charged"]) - expected) <= Decimal("0.000010")
        assert buyer_cli("usage", "--job", str(job_id)).stdout.count("USD") >= 2

        # The order, its wallet and the error paths, through the same command.
        status = buyer_cli.json("order", "status", str(order["id"]))
        assert status["jobs"][0]["status"] == "stopped"
        wallet = buyer_cli.json("wallet")
        assert Decimal(wallet["balance"]) == Decimal("500") - Decimal(lease["charged"])
        top_up = buyer_cli("wallet", "top-up", "25.00")
        assert top_up.returncode == 0 and "http" in top_up.stdout
        missing = buyer_cli("order", "status", "999999")
        assert missing.returncode == 4 and missing.stderr.strip() == "suanli: No such order."
        refused = buyer_cli("node", "list")
        assert refused.returncode == 3 and "scope" in refused.stderr and "Traceback" not in refused.stderr
    finally:
        stop_process_group(agent)


def test_errors_are_one_line_with_documented_exit_codes(server: LiveServer, tmp_path: Path):
    cli = Suanli(tmp_path / "config.json")
    not_logged_in = cli("wallet")
    assert not_logged_in.returncode == 2 and "suanli login" in not_logged_in.stderr
    bad_key = cli("login", "--server", server.url, "--key", "sk_000000000000_nope")
    assert bad_key.returncode == 3 and bad_key.stderr.count("\n") == 1
    assert not cli.config.exists()
    unreachable = cli("offers", "--server", "http://127.0.0.1:9")
    assert unreachable.returncode == 7 and unreachable.stderr.startswith("suanli: cannot reach")
    usage = cli("order", "create", "--term", "sometimes")
    assert usage.returncode == 2
    buyer = make_user("b")
    key = apikey_create(user=buyer, name="cli", scopes=["read", "trade"]).secret
    assert cli("login", "--server", server.url, "--key", key).returncode == 0
    invalid = cli(
        "order", "create", "--term", "on-demand", "--devices", "1", "--max-price", "abc", "--", "true"
    )
    assert invalid.returncode == 1 and invalid.stderr.startswith("suanli: price_limit")
    poor = cli(
        "order",
        "create",
        "--term",
        "on-demand",
        "--devices",
        "1",
        "--max-price",
        "3.00",
        "--runtime",
        "process",
        "--",
        "true",
    )
    assert poor.returncode == 5 and "top up" in poor.stderr
    assert all("Traceback" not in r.stderr for r in (not_logged_in, bad_key, unreachable, invalid, poor))
