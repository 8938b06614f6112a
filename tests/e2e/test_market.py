"""End to end: the market with every process real.

A live gunicorn, a real Celery worker and a real `celery beat` (the production schedule, with the
matcher every 1 s, spot rounds every 2 s, settlement every 5 s and a 5 s preemption notice), and
three real `suanli-agent` processes joined with tokens (simulated H100 x 8, process runtime):
A and B in cluster ``x``, C in cluster ``y``. Nothing calls the matcher, the spot round or
settlement by hand: beat does. In one timeline (about 100 s):

* on-demand on A runs ~65 s and is stopped by its buyer: its lease is charged exactly
  ``round_half_even(devices x rate x seconds / 3600)`` from the job's running event to its stopped
  event, posted within one settlement interval, and buyer charge = provider payable + fee;
* a reserved order on C for a 60 s window starting 20 s out: its job is assigned at the window's
  start and stopped at its end (it ignores SIGTERM, so the SIGKILL at the end stops it);
* a 2-node gang lands on A + B (cluster x), never on C; a 3-node gang lands nowhere;
* two spot bids (1.80 and 1.40, 4 devices each) win B (floor 1.00) at one clearing price, which
  both pay; an on-demand order for 4 devices of B preempts the 1.40 job with the notice, and runs.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from billing.models import Account, AccountKind, Entry, Hold, HoldStatus, Lease, LeaseStatus
from core.money import round_micros
from marketplace.models import Allocation, Job, JobStatus, Order, OrderStatus, SpotPrice, StopReason
from marketplace.services.jobs import JobSpec
from marketplace.services.offers import OfferChange, offer_update
from marketplace.services.orders import OrderRequest, order_cancel, order_place
from providers.models import Node, NodeStatus
from providers.services import heartbeats_flush, join_token_create
from tests.marketplace.market_helpers import MICROS, funded_buyer
from tests.providers.factories import ProviderFactory, ensure_catalog
from tests.support.live import Agent, live_exchange, wait_for
from tests.support.worker import CeleryBeat, CeleryWorker

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SETTLEMENT_INTERVAL_S = 5
NOTICE_S = 5
FAST = {
    "SUANLI_MATCHING_INTERVAL_S": "1",
    "SUANLI_SPOT_INTERVAL_S": "2",
    "BILLING_SETTLEMENT_INTERVAL_S": str(SETTLEMENT_INTERVAL_S),
    "SUANLI_PREEMPTION_NOTICE_S": str(NOTICE_S),
    "SUANLI_MIN_RESERVATION_S": "60",
}
TICKER = "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(1)\n"
# A reserved job that keeps working through its end-of-window SIGTERM: only the SIGKILL at the
# end of the window stops it.
STUBBORN = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: print('term: finishing up', flush=True))\n"
    "while True:\n    print('tick', flush=True)\n    time.sleep(1)\n"
)
SHORT = "for i in range(3):\n    print(f'rank line {i}', flush=True)\n"


def spec(code: str) -> JobSpec:
    return JobSpec(runtime="process", command=[sys.executable, "-c", code])


def units(amount: str) -> int:
    return int(Decimal(amount) * MICROS)


@pytest.fixture
def agents(tmp_path: Path, transactional_db: None) -> Iterator[list[Agent]]:
    worker = CeleryWorker(env=FAST, log_path=tmp_path / "celery-worker.log")
    beat = CeleryBeat(tmp_path / "beat", env=FAST)
    agents: list[Agent] = []
    with live_exchange(tmp_path, env=FAST) as server:
        try:
            worker.start()
            beat.start()
            agents += [Agent(server, tmp_path / f"agent-{n}", f"mkt-{n}") for n in ("a", "b", "c")]
            yield agents
        finally:
            for agent in agents:
                agent.stop()
                agent.kill_jobs()
            beat.stop()
            worker.stop()


def job_of(order: Order) -> Job:
    return Job.objects.get(order=order)


def status_is(job: Job, *statuses: str) -> Job | None:
    job.refresh_from_db()
    return job if job.status in statuses else None


def lease_entries(lease: Lease) -> dict[str, int]:
    rows = (
        Entry.objects.filter(lease_id=lease.pk)
        .values_list("account__kind")
        .annotate(total=Sum("amount_micros"))
    )
    return dict(rows)


def test_market_end_to_end(agents: list[Agent], settings: Any) -> None:
    settings.SUANLI_MIN_RESERVATION_S = 60
    a, b, c = agents
    ensure_catalog()
    provider = ProviderFactory()

    # Given three agents joined with tokens: A and B in cluster x, C in cluster y
    node_ids = [
        agent.join(join_token_create(provider=provider, created_by=None, region="e2e", cluster=cluster).token)
        for agent, cluster in ((a, "x"), (b, "x"), (c, "y"))
    ]
    for agent in (a, b, c):
        agent.start()

    def all_online() -> bool:
        heartbeats_flush()
        return Node.objects.filter(pk__in=node_ids, status=NodeStatus.ONLINE).count() == 3

    wait_for("three nodes online", all_online, timeout=60)
    node_a, node_b, node_c = (Node.objects.get(pk=pk) for pk in node_ids)
    offers = {}
    for node, floor in ((node_a, "1.50"), (node_b, "1.00"), (node_c, "1.50")):
        offers[node.pk] = offer_update(
            node=node,
            change=OfferChange(
                on_demand_price_micros=units("2.50"),
                reserved_price_micros=units("2.00"),
                spot_floor_micros=units(floor),
                listed=True,
            ),
        )

    # When: on-demand on A, a reserved window on C, and the gangs, all at once
    t0 = timezone.now()
    window_start = (t0 + timedelta(seconds=20)).replace(microsecond=0)
    window_end = window_start + timedelta(seconds=60)
    od_buyer, res_buyer, gang_buyer = funded_buyer(), funded_buyer(), funded_buyer()
    on_demand, _ = order_place(
        buyer=od_buyer,
        request=OrderRequest(
            term="on_demand", devices_per_node=2, price_limit_micros=units("3.00"), job=spec(TICKER),
            offer_id=offers[node_a.pk].pk,
        ),
        idempotency_key="od",
    )  # fmt: skip
    reserved, _ = order_place(
        buyer=res_buyer,
        request=OrderRequest(
            term="reserved", devices_per_node=2, price_limit_micros=units("3.00"), job=spec(STUBBORN),
            offer_id=offers[node_c.pk].pk, window_start=window_start, window_end=window_end,
        ),
        idempotency_key="res",
    )  # fmt: skip
    gang, _ = order_place(
        buyer=gang_buyer,
        request=OrderRequest(
            term="on_demand", devices_per_node=2, node_count=2, price_limit_micros=units("3.00"),
            job=spec(SHORT),
        ),
        idempotency_key="gang",
    )  # fmt: skip
    gang3, _ = order_place(
        buyer=gang_buyer,
        request=OrderRequest(
            term="on_demand", devices_per_node=2, node_count=3, price_limit_micros=units("3.00"),
            job=spec(SHORT),
        ),
        idempotency_key="gang3",
    )  # fmt: skip

    # Then the 2-node gang lands in cluster x (A + B), all or nothing, and runs to its end
    wait_for("the gang to end", lambda: Order.objects.filter(pk=gang.pk, status=OrderStatus.ENDED).exists())
    allocations = Allocation.objects.filter(order=gang).select_related("node")
    assert sorted(x.node_id for x in allocations) == sorted([node_a.pk, node_b.pk])
    assert {x.node.cluster for x in allocations} == {"x"}
    assert set(Job.objects.filter(order=gang).values_list("status", flat=True)) == {JobStatus.EXITED}
    # and the 3-node gang, which no cluster can take whole, lands nowhere
    gang3.refresh_from_db()
    assert gang3.status == OrderStatus.OPEN and not Allocation.objects.filter(order=gang3).exists()
    # The reservation is booked on C and its job waits for the window
    res_job = job_of(reserved)
    assert res_job.node_id == node_c.pk and res_job.status == JobStatus.QUEUED

    od_job = wait_for("the on-demand job running", lambda: status_is(job_of(on_demand), JobStatus.RUNNING))
    assert od_job.node_id == node_a.pk

    # Spot: two bids for 4 devices each, placed together; B (floor 1.00) is the only node where
    # both fit under their bids. Both win at one clearing price and pay it, not their bids.
    high_buyer, low_buyer = funded_buyer(), funded_buyer()
    with transaction.atomic():
        high, _ = order_place(
            buyer=high_buyer,
            request=OrderRequest(term="spot", devices_per_node=4, price_limit_micros=units("1.80"), job=spec(TICKER)),
            idempotency_key="high",
        )  # fmt: skip
        low, _ = order_place(
            buyer=low_buyer,
            request=OrderRequest(term="spot", devices_per_node=4, price_limit_micros=units("1.40"), job=spec(TICKER)),
            idempotency_key="low",
        )  # fmt: skip
    wait_for(
        "both spot jobs running",
        lambda: Job.objects.filter(order__in=[high, low], status=JobStatus.RUNNING).count() == 2,
    )
    high_job, low_job = job_of(high), job_of(low)
    assert high_job.node_id == low_job.node_id == node_b.pk
    first_price = SpotPrice.objects.filter(round_at__lte=high_job.assigned_at).order_by("-round_at").first()
    assert first_price is not None and first_price.winners == 2
    clearing = first_price.price_micros
    assert clearing == units("1.00")  # the marginal floor: nobody lost
    for job in (high_job, low_job):
        assert Allocation.objects.get(pk=job.allocation_id).unit_price_micros == clearing
        assert Lease.objects.get(pk=job.lease_id).rate_micros == clearing

    # An on-demand order for 4 devices of B: the lower bid gets the notice and is preempted
    taker_buyer = funded_buyer()
    taker, _ = order_place(
        buyer=taker_buyer,
        request=OrderRequest(
            term="on_demand", devices_per_node=4, price_limit_micros=units("3.00"), job=spec(TICKER),
            offer_id=offers[node_b.pk].pk,
        ),
        idempotency_key="taker",
    )  # fmt: skip
    low_job = wait_for("the low bid preempted", lambda: status_is(low_job, JobStatus.PREEMPTED), timeout=30)
    assert low_job.stop_reason == StopReason.PREEMPTION and low_job.preemption_reason == "higher_tier"
    assert low_job.stop_deadline - low_job.stop_requested_at == timedelta(seconds=NOTICE_S)
    assert status_is(high_job, JobStatus.RUNNING) and high_job.stop_requested_at is None
    taker_job = wait_for(
        "the on-demand job running on B", lambda: status_is(job_of(taker), JobStatus.RUNNING)
    )
    assert taker_job.node_id == node_b.pk
    assert taker_job.assigned_at >= Allocation.objects.get(pk=taker_job.allocation_id).starts_at
    assert Lease.objects.get(pk=job_of(low).lease_id).rate_micros == clearing

    # Reserved: queued until its window, assigned at its start, stopped (SIGKILL) at its end
    res_job = wait_for(
        "the reserved job running", lambda: status_is(res_job, JobStatus.RUNNING), timeout=45, every=0.2
    )
    assert window_start <= res_job.assigned_at <= window_start + timedelta(seconds=3)
    res_job = wait_for("the reserved job stopped", lambda: status_is(res_job, JobStatus.STOPPED), timeout=80)
    assert window_end - timedelta(seconds=1) <= res_job.ended_at <= window_end + timedelta(seconds=4)
    assert res_job.stop_deadline == window_end

    # On-demand billing: the buyer stops the job after ~65 s of running (past the 60 s minimum)
    wait_for(
        "65 s of running",
        lambda: timezone.now() - od_job.started_at >= timedelta(seconds=65),
        timeout=90,
        every=1,
    )
    order_cancel(order=on_demand)
    od_job = wait_for("the on-demand job stopped", lambda: status_is(od_job, JobStatus.STOPPED), timeout=20)
    stopped_seen = time.monotonic()
    lease = Lease.objects.get(pk=od_job.lease_id)
    seconds = (od_job.ended_at - od_job.started_at).total_seconds()
    assert seconds >= 65
    exact = (
        Decimal(2 * units("2.50"))
        * Decimal((od_job.ended_at - od_job.started_at) / timedelta(microseconds=1))
        / Decimal(3_600_000_000)
    )
    expected = round_micros(exact)

    def settled() -> Lease | None:
        lease.refresh_from_db()
        return lease if lease.settled_final and lease.charged_micros == expected else None

    lease = wait_for("the final settlement", settled, timeout=SETTLEMENT_INTERVAL_S * 3, every=0.2)
    assert time.monotonic() - stopped_seen <= SETTLEMENT_INTERVAL_S + 3  # one interval (+ a task's latency)
    assert lease.status == LeaseStatus.CLOSED
    assert lease.started_at == od_job.started_at and lease.ends_at == od_job.ended_at
    legs = lease_entries(lease)
    earned = legs[AccountKind.PROVIDER_PAYABLE] + legs[AccountKind.PLATFORM_FEE]
    assert earned == lease.charged_micros == expected
    assert legs[AccountKind.PLATFORM_FEE] == lease.fee_micros
    assert sum(legs.values()) == 0  # buyer charge = provider payable + platform fee

    # Clean-up orders: everything ends in a consistent state, the open gang's hold comes back
    for order in (high, taker):
        order_cancel(order=order)
    order_cancel(order=gang3)
    assert Hold.objects.get(pk=Order.objects.get(pk=gang3.pk).hold_id).status == HoldStatus.RELEASED
    wait_for(
        "every job ended",
        lambda: (
            not Job.objects.filter(status__in=[JobStatus.ASSIGNED, JobStatus.STARTING, JobStatus.RUNNING])
        ),
        timeout=30,
    )
    for account in Account.objects.all():
        assert account.balance_micros == (
            Entry.objects.filter(account=account).aggregate(s=Sum("amount_micros"))["s"] or 0
        )
