"""How a round's decisions reach PostgreSQL: on-demand orders decided together, committed in
chunks, each order still all or nothing, and a conflict costing only its own order."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import psycopg2.errors
import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from psycopg2.extras import NumericRange

from marketplace.matching import Market, match_round
from marketplace.models import (
    SPAN_DEVICE_STRIDE,
    Allocation,
    AllocationSlot,
    Job,
    JobStatus,
    Order,
    OrderReason,
    OrderStatus,
)
from marketplace.services import matching
from marketplace.services.jobs import JobSpec
from marketplace.services.matching import matching_run, placements_commit
from marketplace.services.orders import OrderRequest, order_cancel, order_place
from providers.models import Device
from tests.marketplace.market_helpers import MICROS, funded_buyer, online_node

pytestmark = pytest.mark.django_db

JOB = JobSpec(runtime="process", command=["python", "-c", "print(1)"])


def place(buyer: Any, key: str, devices: int = 2, limit: str = "3.00", **extra: Any) -> Order:
    order, _ = order_place(
        buyer=buyer,
        request=OrderRequest(
            term="on_demand",
            devices_per_node=devices,
            price_limit_micros=int(Decimal(limit) * MICROS),
            job=JOB,
            **extra,
        ),
        idempotency_key=key,
    )
    return order


def decided(orders: list[Order]) -> tuple[list[tuple[Order, Any]], matching.LoadedMarket, Any]:
    """The round's in-memory decision for ``orders`` (what matching_run commits)."""
    now = timezone.now()
    loaded = matching.market_load()
    free = loaded.free_during(now, now + matching.RESERVATION_GUARD, None)
    market = Market(nodes=tuple(loaded.nodes[n] for n in sorted(free)), free=free, now=now)
    fresh = {o.pk: o for o in Order.objects.select_related("offer").filter(pk__in=[o.pk for o in orders])}
    result = match_round(market=market, orders=[matching.domain_order(o) for o in fresh.values()])
    return [(fresh[p.order_id], p) for p in result.placements], loaded, now


def overlapping_slot_pairs() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM marketplace_allocationslot a JOIN marketplace_allocationslot b"
            " ON a.id < b.id AND a.live AND b.live AND a.span && b.span"
        )
        return int(cursor.fetchone()[0])


def test_one_round_places_every_on_demand_order_in_chunks(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(matching, "COMMIT_CHUNK", 4)
    for name in ("a", "b", "c"):
        online_node(name=name, devices=8)
    buyer = funded_buyer()
    orders = [place(buyer, f"o{i}") for i in range(10)]
    # One of them was re-queued earlier: its reason goes once it is matched again.
    Order.objects.filter(pk=orders[3].pk).update(
        status_reason=OrderReason.REQUEUED_NODE_LOST, status_params={"node": "gone"}
    )
    with CaptureQueriesContext(connection) as queries:
        report = matching_run()
    assert report.placed == sorted(o.pk for o in orders) and report.conflicts == []
    for order in orders:
        order.refresh_from_db()
        assert order.status == OrderStatus.ALLOCATED and order.matched_at is not None
        assert order.status_reason == "" and order.status_params == {}
        (allocation,) = Allocation.objects.filter(order=order)
        assert allocation.slots.count() == 2
        (job,) = Job.objects.filter(order=order)
        assert job.allocation_id == allocation.pk and job.status == JobStatus.ASSIGNED
        assert len(job.device_indexes) == 2
    # Ten orders in chunks of four: three multi-row inserts of allocations, not ten.
    inserts = [
        q for q in queries.captured_queries if q["sql"].startswith('INSERT INTO "marketplace_allocation"')
    ]
    assert len(inserts) == 3
    assert overlapping_slot_pairs() == 0


def test_a_conflict_rolls_back_its_chunk_and_costs_only_its_own_order(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(matching, "COMMIT_CHUNK", 10)
    online_node(name="a", devices=8)
    buyer = funded_buyer()
    orders = [place(buyer, f"o{i}") for i in range(4)]
    items, loaded, now = decided(orders)
    assert len(items) == 4
    # A writer outside the round books one device of the third placement after the round loaded.
    victim_order, victim = items[2]
    device_id = victim.device_ids[0]
    intruder = Allocation.objects.create(
        order=orders[0], node_id=victim.slots[0].node_id, term="on_demand", unit_price_micros=1, starts_at=now
    )
    base = device_id * SPAN_DEVICE_STRIDE
    AllocationSlot.objects.create(
        allocation=intruder, device_id=device_id, span=NumericRange(base, base + SPAN_DEVICE_STRIDE - 1, "[)")
    )
    placed, conflicts = placements_commit(items=items, loaded=loaded, now=now)
    assert conflicts == [victim_order.pk]
    assert sorted(placed) == sorted(o.pk for o, _ in items if o.pk != victim_order.pk)
    victim_order.refresh_from_db()
    assert victim_order.status == OrderStatus.OPEN
    assert not Job.objects.filter(order=victim_order).exists()
    assert not Allocation.objects.filter(order=victim_order).exists()
    for order, _ in items:
        if order.pk != victim_order.pk:
            order.refresh_from_db()
            assert order.status == OrderStatus.ALLOCATED and Job.objects.filter(order=order).count() == 1
    assert overlapping_slot_pairs() == 0


def test_an_order_cancelled_after_the_round_decided_is_left_alone():
    online_node(name="a", devices=8)
    buyer = funded_buyer()
    orders = [place(buyer, f"o{i}") for i in range(3)]
    items, loaded, now = decided(orders)
    order_cancel(order=Order.objects.get(pk=orders[1].pk))
    placed, conflicts = placements_commit(items=items, loaded=loaded, now=now)
    assert conflicts == [orders[1].pk] and sorted(placed) == [orders[0].pk, orders[2].pk]
    cancelled = Order.objects.get(pk=orders[1].pk)
    assert cancelled.status == OrderStatus.CANCELLED
    assert not Job.objects.filter(order=cancelled).exists()


def test_an_order_for_an_offer_lands_on_that_node_in_the_shared_round():
    cheap = online_node(name="cheap", devices=8, on_demand="1.50", reserved="1.00")
    dear = online_node(name="dear", devices=8, on_demand="2.50")
    buyer = funded_buyer()
    anywhere = place(buyer, "any")
    pinned = place(buyer, "pinned", offer_id=dear.offer.pk)
    report = matching_run()
    assert report.placed == [anywhere.pk, pinned.pk]
    assert Job.objects.get(order=anywhere).node_id == cheap.pk
    assert Job.objects.get(order=pinned).node_id == dear.pk
    assert set(Device.objects.filter(node=dear).values_list("pk", flat=True)) >= {
        slot.device_id for slot in AllocationSlot.objects.filter(allocation__order=pinned)
    }


def test_a_deadlock_victim_is_a_conflict_retried_next_round(monkeypatch: pytest.MonkeyPatch):
    # PostgreSQL aborts one side of a deadlock: the matcher must treat its aborted commit like any
    # conflict (nothing written, the order still open, placed by the next round), not crash.
    online_node(name="a", devices=8)
    order = place(funded_buyer(), "o")
    real_write = matching._write

    def deadlocked(batch: Any) -> None:
        try:
            raise psycopg2.errors.DeadlockDetected("deadlock detected")
        except psycopg2.errors.DeadlockDetected as cause:
            raise OperationalError("deadlock detected") from cause

    monkeypatch.setattr(matching, "_write", deadlocked)
    report = matching_run()
    assert report.placed == [] and report.conflicts == [order.pk]
    order.refresh_from_db()
    assert order.status == OrderStatus.OPEN and not Allocation.objects.filter(order=order).exists()
    monkeypatch.setattr(matching, "_write", real_write)
    assert matching_run().placed == [order.pk]
