"""Invariants 1-4 of DESIGN.md section 7 through the real commit path on PostgreSQL.

Random sequences of orders (on-demand, spot, gangs), cancellations, agent reports and rounds
(``matching_run`` / ``spot_round``) on a small market; after every step no two live slots of one
device overlap, every live allocation has one slot per device of the order, gangs sit in one
cluster, and every live allocation's price lies between the provider floor and the buyer's limit.
The pure engine's properties are in ``tests/marketplace/matching/test_properties.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import SuanliError
from marketplace.models import AllocationStatus, Job, JobStatus, Order, Term
from marketplace.services.jobs import JobSpec
from marketplace.services.matching import matching_run, spot_round
from marketplace.services.orders import OrderRequest, order_cancel, order_place
from tests.marketplace.market_helpers import agent_reports, funded_buyer, online_node
from tests.marketplace.test_concurrency import OVERLAPS

pytestmark = pytest.mark.django_db

SPEC = JobSpec(runtime="docker", image="nvcr.io/nvidia/pytorch:24.05-py3", command=["python", "train.py"])
FLOOR = {Term.ON_DEMAND: "on_demand_price_micros", Term.SPOT: "spot_floor_micros"}

place = st.tuples(
    st.just("place"),
    st.sampled_from(["on_demand", "spot"]),
    st.sampled_from([1, 2, 4]),
    st.sampled_from([1, 1, 1, 2]),
    st.integers(min_value=8, max_value=30).map(lambda tenths: tenths * 100_000),
)
step = st.one_of(
    place,
    st.tuples(st.just("match")),
    st.tuples(st.just("spot")),
    st.tuples(st.just("run"), st.integers(min_value=0, max_value=20)),
    st.tuples(st.just("cancel"), st.integers(min_value=0, max_value=20)),
)


def check_invariants() -> None:
    with connection.cursor() as cursor:
        cursor.execute(OVERLAPS)
        assert cursor.fetchall() == []
    for order in Order.objects.prefetch_related("allocations__slots", "allocations__node__offer"):
        live = [a for a in order.allocations.all() if a.status == AllocationStatus.LIVE]
        for allocation in live:
            assert len([s for s in allocation.slots.all() if s.live]) == order.devices_per_node
            floor = getattr(allocation.node.offer, FLOOR[Term(order.term)])
            assert floor <= allocation.unit_price_micros <= order.price_limit_micros
        if live and order.node_count > 1:
            assert len({a.node.cluster for a in live}) == 1
            assert len({a.unit_price_micros for a in live}) == 1


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(step, min_size=3, max_size=14))
def test_random_order_sequences_keep_slots_disjoint_and_prices_within_bounds(steps: list[tuple[Any, ...]]):
    with transaction.atomic():
        provider = online_node(
            name="a1", devices=4, on_demand="2.00", spot_floor="1.00", cluster="A"
        ).provider
        online_node(provider, name="a2", devices=4, on_demand="2.40", spot_floor="1.30", cluster="A")
        online_node(provider, name="b1", devices=8, on_demand="2.20", spot_floor="0.90", cluster="B")
        buyer = funded_buyer(500)
        orders: list[Order] = []
        for n, action in enumerate(steps):
            try:
                if action[0] == "place":
                    _, term, devices, nodes, limit = action
                    request = OrderRequest(
                        term=term,
                        devices_per_node=devices,
                        node_count=nodes,
                        price_limit_micros=limit,
                        job=SPEC,
                    )
                    orders.append(order_place(buyer=buyer, request=request, idempotency_key=f"k{n}")[0])
                elif action[0] == "match":
                    matching_run()
                elif action[0] == "spot":
                    spot_round()
                elif action[0] == "run":
                    jobs = list(Job.objects.filter(status=JobStatus.ASSIGNED).order_by("pk"))
                    if jobs:
                        job = jobs[action[1] % len(jobs)]
                        agent_reports(job, "accepted")
                        agent_reports(job, "running")
                elif orders:
                    order_cancel(order=orders[action[1] % len(orders)])
            except SuanliError:
                pass  # refusals (funds, transitions) are fine; the invariants must hold regardless
            check_invariants()
        transaction.set_rollback(True)
