"""Demo data for `make run`: a funded buyer, two providers, and simulated agents that join them.

Idempotent: running it again changes nothing that exists. The nodes themselves are not seeded:
`make run` starts real `suanli-agent` processes with simulated hardware, which join through
one-time join tokens like any provider's node (see ``start_demo_agents``), and ``demo_market``
then prices and lists them and places a demo order once they are online.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from providers.models import Node, NodeStatus, Provider, ProviderMembership

log = logging.getLogger(__name__)

DEMO_PASSWORDS = {
    "buyer@demo.suanli": "demo-buyer-pass",
    "provider@demo.suanli": "demo-provider-pass",
    "dc@demo.suanli": "demo-provider-pass",
}
DEMO_PROVIDERS = {
    "huaxia": ("Huaxia Compute", "provider@demo.suanli"),
    "pearl": ("Pearl River Data Centre", "dc@demo.suanli"),
}
DEMO_BUYER_CREDIT_MICROS = 500 * 1_000_000


@dataclass(frozen=True)
class DemoNode:
    provider: str
    name: str
    profile: str  # suanli-agent --simulate profile
    region: str
    cluster: str
    prices: tuple[str, str, str]  # on-demand, reserved, spot floor per device-hour


DEMO_NODES = (
    DemoNode("huaxia", "hx-sh-h100-01", "h100x8", "cn-east", "sh-a", ("2.49", "1.99", "1.20")),
    DemoNode("huaxia", "hx-sh-910b-01", "ascend910bx4", "cn-east", "sh-a", ("1.60", "1.30", "0.80")),
    DemoNode("pearl", "pr-gz-mlu370-01", "mlu370x2", "cn-south", "gz-1", ("0.90", "0.70", "0.40")),
    DemoNode("pearl", "pr-gz-cpu-01", "cpu", "cn-south", "gz-1", ("0.05", "0.04", "0.02")),
)

# A long "training" job for the demo buyer: prints progress like a real job would.
DEMO_JOB = (
    "import math, time\n"
    "step = 0\n"
    "while True:\n"
    "    step += 1\n"
    "    print(f'step {step:6d}  loss {2.5 * math.exp(-step / 400) + 0.1:.4f}  tokens/s 48213', flush=True)\n"
    "    time.sleep(3)\n"
)


class Command(BaseCommand):
    help = "Create the demo buyer (with credit) and the demo providers (idempotent)."

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        users = get_user_model()
        for email, password in DEMO_PASSWORDS.items():
            if not users.objects.filter(username=email).exists():
                users.objects.create_user(username=email, email=email, password=password)
        if not users.objects.filter(username="admin").exists():
            users.objects.create_superuser("admin", "admin@demo.suanli", "demo-admin-pass")
        for slug, (name, owner_email) in DEMO_PROVIDERS.items():
            provider, _ = Provider.objects.get_or_create(slug=slug, defaults={"name": name})
            ProviderMembership.objects.get_or_create(
                provider=provider,
                user=users.objects.get(username=owner_email),
                defaults={"role": ProviderMembership.Role.OWNER},
            )
        _credit_demo_buyer(users.objects.get(username="buyer@demo.suanli"))
        _demo_billing_history(
            users.objects.get(username="buyer@demo.suanli"), Provider.objects.get(slug="huaxia")
        )
        self.stdout.write("demo data ready")


def _credit_demo_buyer(buyer: Any) -> None:
    """The demo buyer's wallet gets one development credit (the posting a paid Checkout makes);
    ``manage.py fundwallet`` adds more, to this or any account (README, Quick start)."""
    from billing.services.wallets import wallet_fund_development

    # Idempotent on its key: a second run posts nothing.
    wallet_fund_development(
        user_id=buyer.pk,
        amount_micros=DEMO_BUYER_CREDIT_MICROS,
        idempotency_key="demo:top-up:buyer",
        memo="demo credit",
    )


DEMO_HISTORY_KEY = "demo:lease:history"


def _demo_billing_history(buyer: Any, provider: Provider) -> None:
    """Billing history for the portal's money pages, through the billing services: a finished
    8-hour job of 2 devices at 2.50 (40.00; 36.00 to the provider after the 10% fee), settled;
    this month's buyer invoice and provider statement; and a payout of the provider's earnings to
    a demo Stripe Connect account (pending until Stripe is reachable). Runs once: the lease's
    idempotency key marks it done."""
    from datetime import timedelta

    from django.utils import timezone

    from billing.models import Lease, PayoutAccount, StatementKind
    from billing.services import lease_close, lease_open, payouts_create, settle, statement_build
    from billing.services.ledger import default_currency

    if Lease.objects.filter(idempotency_key=DEMO_HISTORY_KEY).exists():
        return
    ended = timezone.now() - timedelta(hours=2)
    started = ended - timedelta(hours=8)
    lease = lease_open(
        buyer=buyer, provider_id=provider.pk, job_id=None, device_count=2, rate_micros=2_500_000,
        started_at=started, idempotency_key=DEMO_HISTORY_KEY,
    )  # fmt: skip
    lease_close(lease=lease, at=ended)
    settle(until=timezone.now(), lease_ids=[lease.pk])
    PayoutAccount.objects.get_or_create(
        provider_id=provider.pk, defaults={"stripe_account_id": f"acct_demo_{provider.slug}"}
    )
    payouts_create(threshold_micros=1)
    currency = default_currency()
    today = timezone.now().date()
    statement_build(kind=StatementKind.BUYER_INVOICE, period_start=today, currency=currency, user_id=buyer.pk)
    statement_build(
        kind=StatementKind.PROVIDER_EARNINGS, period_start=today, currency=currency, provider_id=provider.pk
    )


def start_demo_agents(
    *, server_url: str, env: dict[str, str], var_dir: Path
) -> list[tuple[str, subprocess.Popen[bytes]]]:
    """Join (first run only) and start one simulated agent per demo node; returns the processes."""
    from providers.services import join_token_create

    processes: list[tuple[str, subprocess.Popen[bytes]]] = []
    log_dir = var_dir / "log"
    for demo in DEMO_NODES:
        state = var_dir / "agents" / demo.name
        agent = [sys.executable, "-m", "providers.agent.cli"]
        if not (state / "credential.json").exists():
            # A demo node whose agent state was removed keeps its history, offline (its jobs become
            # lost at its last heartbeat, so nothing bills on).
            for stale in Node.objects.filter(provider__slug=demo.provider, name=demo.name):
                Node.objects.filter(pk=stale.pk).update(
                    name=f"{demo.name}-old-{stale.pk}", status=NodeStatus.OFFLINE
                )
            issued = join_token_create(
                provider=Provider.objects.get(slug=demo.provider), created_by=None,
                region=demo.region, cluster=demo.cluster,
            )  # fmt: skip
            joined = subprocess.run(
                [*agent, "join", "--server", server_url, "--token", issued.token, "--name", demo.name,
                 "--simulate", demo.profile, "--state-dir", str(state)],
                env=env, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            if joined.returncode != 0:
                log.error("demo.agent_join_failed name=%s error=%s", demo.name, joined.stderr.strip())
                continue
        log_file = (log_dir / f"agent-{demo.name}.log").open("ab")
        processes.append(
            (
                f"agent-{demo.name}",
                subprocess.Popen(
                    [*agent, "run", "--state-dir", str(state), "--heartbeat-interval", "5"],
                    env=env,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                ),
            )
        )
    return processes


def stop_demo_jobs(*, var_dir: Path) -> int:
    """End the jobs the demo agents started (jobs outlive their agent by design, so that a real
    node's agent can restart without killing its buyers' work; a stopped demo should not)."""
    import os
    import signal

    import psutil

    marker = str(var_dir / "agents")
    stopped = 0
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(process.info.get("cmdline") or [])
        if "suanli-job" in cmdline and marker in cmdline:
            try:
                os.killpg(os.getpgid(process.info["pid"]), signal.SIGTERM)
                stopped += 1
            except (ProcessLookupError, PermissionError):
                continue
    return stopped


def demo_market(*, wait_s: float = 90.0) -> str:
    """Once the demo nodes are online: price and list them, and give the buyer a running order."""
    from core.money import parse_amount
    from marketplace.services.offers import OfferChange, offer_update

    names = [demo.name for demo in DEMO_NODES]
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if Node.objects.filter(name__in=names, status=NodeStatus.ONLINE).count() == len(names):
            break
        time.sleep(1)
    online = {node.name: node for node in Node.objects.filter(name__in=names, status=NodeStatus.ONLINE)}
    for demo in DEMO_NODES:
        node = online.get(demo.name)
        if node is None or (getattr(node, "offer", None) is not None and node.offer.listed):
            continue
        on_demand, reserved, spot_floor = (parse_amount(p) for p in demo.prices)
        offer_update(
            node=node,
            change=OfferChange(
                on_demand_price_micros=on_demand, reserved_price_micros=reserved,
                spot_floor_micros=spot_floor, listed=True,
            ),
        )  # fmt: skip
    demo_order()
    return f"{len(online)}/{len(names)} demo nodes online"


def demo_order() -> None:
    """Keep one live order for the demo buyer: a 2x H100 on-demand job printing its progress."""
    from core.money import parse_amount
    from marketplace.models import Order, Runtime
    from marketplace.services.jobs import JobSpec
    from marketplace.services.orders import OrderRequest, order_place
    from providers.models import AcceleratorModel

    buyer = get_user_model().objects.get(username="buyer@demo.suanli")
    live = Order.objects.filter(buyer=buyer, status__in=["open", "allocated", "running"])
    if live.exists() or not Node.objects.filter(name="hx-sh-h100-01", status=NodeStatus.ONLINE).exists():
        return
    order_place(
        buyer=buyer,
        request=OrderRequest(
            term="on_demand",
            devices_per_node=2,
            price_limit_micros=parse_amount("3.00"),
            region="cn-east",
            accelerator_ids=tuple(
                AcceleratorModel.objects.filter(match_names__contains=["NVIDIA H100 80GB HBM3"]).values_list(
                    "pk", flat=True
                )
            ),
            job=JobSpec(runtime=Runtime.PROCESS, command=[sys.executable, "-u", "-c", DEMO_JOB]),
        ),
        idempotency_key=f"demo:order:{Order.objects.filter(buyer=buyer).count() + 1}",
    )
