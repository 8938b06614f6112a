"""Concurrency: real processes against PostgreSQL, scarce capacity, then an audit.

Eight buyer processes place and cancel on-demand, spot, reserved and gang orders for
``SUANLI_CONCURRENCY_SECONDS`` (default 60) against three 4-device nodes, and act as the agents
of their own jobs (accepted, running, exited); two more processes run the matcher (with the
deferred-start and end-of-allocation housekeeping) and the spot round (with settlement) in loops.
Each process has its own database connection. Afterwards an audit query proves that no two live
slots of one device overlap (beside the exclusion constraint that forbids it), every order is in
a state consistent with its allocations, jobs and money, and the ledger balances.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from billing.models import Account, Entry, Hold, HoldStatus, Transaction
from marketplace.models import (
    JOB_ENDED,
    JOB_LIVE,
    Allocation,
    AllocationStatus,
    Job,
    JobStatus,
    Order,
    OrderStatus,
    Term,
)
from marketplace.services.jobs import JobSpec
from marketplace.services.orders import OrderRequest, order_place
from tests.marketplace.market_helpers import MICROS, funded_buyer, online_node
from tests.support.worker import ROOT, child_env

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SECONDS = float(os.environ.get("SUANLI_CONCURRENCY_SECONDS", "60"))
PLACERS = 8
SPEC = JobSpec(runtime="docker", image="nvcr.io/nvidia/pytorch:24.05-py3", command=["python", "train.py"])


OVERLAPS = """
    SELECT a.id, b.id, a.device_id
    FROM marketplace_allocationslot a
    JOIN marketplace_allocationslot b
      ON a.device_id = b.device_id AND a.id < b.id AND a.span && b.span
    WHERE a.live AND b.live
"""


def audit_overlaps() -> list[tuple[int, int, int]]:
    with connection.cursor() as cursor:
        cursor.execute(OVERLAPS)
        return list(cursor.fetchall())


def audit_orders() -> list[str]:
    """Every order's status agrees with its allocations, jobs and money."""
    problems = []
    for order in Order.objects.prefetch_related("allocations", "jobs"):
        live = [a for a in order.allocations.all() if a.status == AllocationStatus.LIVE]
        jobs = list(order.jobs.all())
        running = [j for j in jobs if j.status in JOB_LIVE or j.status == JobStatus.QUEUED]
        hold = Hold.objects.filter(pk=order.hold_id).first()
        where = f"order {order.pk} ({order.term}, {order.status})"
        if order.status == OrderStatus.OPEN:
            if live or running:
                problems.append(f"{where}: open with live allocations or jobs")
            if hold is None or hold.status != HoldStatus.OPEN:
                problems.append(f"{where}: open without its money set aside")
        elif order.status in (OrderStatus.ALLOCATED, OrderStatus.RUNNING):
            if order.term != Term.RESERVED:
                if len(live) != len(running):
                    problems.append(f"{where}: {len(live)} live allocations for {len(running)} live jobs")
                if not any(j.status in JOB_ENDED for j in jobs) and len(live) != order.node_count:
                    problems.append(f"{where}: {len(live)} live allocations, node_count {order.node_count}")
            elif len(live) != order.node_count:
                problems.append(f"{where}: a booking of {len(live)} allocations for {order.node_count} nodes")
            for allocation in live:
                if len([j for j in jobs if j.allocation_id == allocation.pk]) != 1:
                    problems.append(f"{where}: allocation {allocation.pk} without exactly one job")
        else:
            if running:
                problems.append(f"{where}: ended with live jobs")
            if order.term != Term.RESERVED and live:
                problems.append(f"{where}: ended with live allocations")
            if hold is not None and hold.status == HoldStatus.OPEN:
                problems.append(f"{where}: ended with its hold still open")
            if order.status == OrderStatus.CANCELLED and order.term == Term.RESERVED and live:
                problems.append(f"{where}: cancelled booking still blocks its devices")
        for allocation in live:
            offer = allocation.node.offer
            floor = {
                Term.ON_DEMAND: offer.on_demand_price_micros,
                Term.RESERVED: offer.reserved_price_micros,
                Term.SPOT: offer.spot_floor_micros,
            }[Term(order.term)]
            if not floor <= allocation.unit_price_micros <= order.price_limit_micros:
                problems.append(f"{where}: price {allocation.unit_price_micros} outside [{floor}, limit]")
    return problems


def test_placing_and_cancelling_against_scarce_capacity_keeps_every_invariant(tmp_path: Path):
    # Given three 4-device nodes of one cluster (scarce: 12 devices for eight buyers)
    provider = online_node(name="n1", devices=4, on_demand="2.50", spot_floor="1.00", cluster="c").provider
    online_node(provider, name="n2", devices=4, on_demand="2.40", spot_floor="1.10", cluster="c")
    online_node(provider, name="n3", devices=4, on_demand="2.60", spot_floor="0.90", cluster="c")
    buyers = [funded_buyer(200) for _ in range(PLACERS)]

    # When 8 buyers and the two rounds run at once, each a process with its own connection
    seed = int(os.environ.get("SUANLI_CONCURRENCY_SEED", time.time_ns() % 100_000))
    until = time.time() + SECONDS + 5  # the interpreters take a few seconds to start
    commands = [
        ["placer", str(i), str(buyer.pk), str(seed + i), str(until)] for i, buyer in enumerate(buyers)
    ]
    commands += [["matching", str(until)], ["spot", str(until)]]
    processes = []
    for n, args in enumerate(commands):
        log = (tmp_path / f"proc-{n}.log").open("wb")
        command = [sys.executable, "-m", "tests.support.market_procs", *args]
        processes.append(
            subprocess.Popen(command, cwd=ROOT, env=child_env(), stdout=log, stderr=subprocess.STDOUT)
        )
    failures = []
    for n, process in enumerate(processes):
        try:
            process.wait(max(1.0, until + 60 - time.time()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if process.returncode != 0:
            output = (tmp_path / f"proc-{n}.log").read_text(errors="replace")
            failures.append(f"{' '.join(commands[n][:2])} (exit {process.returncode}): {output[-3000:]}")
    assert failures == [], f"seed {seed}:\n" + "\n".join(failures)

    # Then: work happened, and the audit finds nothing wrong
    assert Order.objects.count() > 50, f"seed {seed}"
    assert Job.objects.filter(started_at__isnull=False).count() > 10, f"seed {seed}"
    assert audit_overlaps() == [], f"seed {seed}"
    assert audit_orders() == [], f"seed {seed}"
    # The ledger: every transaction sums to zero, cached balances equal their entries
    unbalanced = Transaction.objects.annotate(total=Sum("entries__amount_micros")).exclude(total=0).count()
    assert unbalanced == 0
    for account in Account.objects.all():
        total = Entry.objects.filter(account=account).aggregate(s=Sum("amount_micros"))["s"] or 0
        assert account.balance_micros == total, account
        assert account.kind != "buyer_wallet" or account.balance_micros >= 0, account


@pytest.mark.django_db  # one transaction, rolled back: the dropped constraint comes back with it
def test_the_overlap_audit_sees_an_overlap() -> None:
    """The audit query is not vacuous: with the constraint out of the way it finds a double booking."""
    node = online_node(name="n", devices=1)
    buyer = funded_buyer(100)
    device = node.devices.get()
    from marketplace.services.matching import span_for

    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE marketplace_allocationslot DROP CONSTRAINT slot_no_overlap_per_device")
    now = timezone.now()
    for key in ("a", "b"):
        order, _ = order_place(
            buyer=buyer,
            request=OrderRequest(
                term="on_demand", devices_per_node=1, price_limit_micros=3 * MICROS, job=SPEC
            ),
            idempotency_key=key,
        )
        allocation = Allocation.objects.create(
            order=order, node=node, term="on_demand", unit_price_micros=2_500_000, starts_at=now
        )
        allocation.slots.create(device=device, span=span_for(device.pk, now, now + timedelta(hours=1)))
    assert len(audit_overlaps()) == 1
