"""Rules of the matching and spot rounds on PostgreSQL that the flows in test_market_flow.py do not
reach: re-rating incumbents, one price per pool across runtimes, a refused commit, the end of a
reserved window, and the configurable preemption notice."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from billing.models import Lease
from core.money import parse_amount
from marketplace.matching.market import ReasonCode
from marketplace.models import SPAN_DEVICE_STRIDE, Allocation, Job, JobStatus, Offer, OrderStatus, SpotPrice
from marketplace.services.jobs import JobSpec
from marketplace.services.matching import matching_run, spot_round
from marketplace.services.offers import OfferChange, offer_update
from marketplace.services.orders import OrderRequest, order_place
from marketplace.services.provisioning import jobs_promote_deferred, jobs_stop_at_allocation_end
from providers.models import Node
from tests.marketplace.market_helpers import MICROS, agent_reports, funded_buyer, online_node

pytestmark = pytest.mark.django_db

DOCKER = JobSpec(runtime="docker", image="nvcr.io/nvidia/pytorch:24.05-py3", command=["python", "train.py"])
PROCESS = JobSpec(runtime="process", command=["python", "-c", "print(1)"])


def request(term: str, devices: int, limit: str, job: JobSpec = DOCKER, **extra: Any) -> OrderRequest:
    return OrderRequest(
        term=term, devices_per_node=devices, price_limit_micros=int(Decimal(limit) * MICROS), job=job, **extra
    )


def run(job: Job) -> Job:
    agent_reports(job, "accepted")
    return agent_reports(job, "running")


def test_a_running_spot_job_pays_the_new_clearing_price_from_the_next_round():
    node = online_node(name="n", devices=8, on_demand="2.50", spot_floor="1.00")
    order, _ = order_place(buyer=funded_buyer(), request=request("spot", 4, "1.80"), idempotency_key="s")
    assert spot_round().placed == [order.pk]
    job = run(Job.objects.get(order=order))
    assert Lease.objects.get(pk=job.lease_id).rate_micros == 1_000_000

    # The provider raises the floor to 1.20: the job (bid 1.80) keeps its devices at the new price
    offer_update(node=node, change=OfferChange(spot_floor_micros=parse_amount("1.20")))
    with time_machine.travel(timezone.now() + timedelta(seconds=30)):
        report = spot_round()
    assert report.preempted == []
    assert Allocation.objects.get(pk=job.allocation_id).unit_price_micros == 1_200_000
    assert Lease.objects.get(pk=job.lease_id).rate_micros == 1_200_000
    assert SpotPrice.objects.order_by("-round_at").first().price_micros == 1_200_000


def test_one_clearing_price_per_pool_whatever_the_runtimes_of_the_bids():
    # One pool; a docker bid and a process bid at different prices, and room for only one of them
    online_node(name="n", devices=4, on_demand="2.50", spot_floor="1.00")
    docker, _ = order_place(buyer=funded_buyer(), request=request("spot", 4, "1.50"), idempotency_key="d")
    process, _ = order_place(
        buyer=funded_buyer(), request=request("spot", 4, "1.90", job=PROCESS), idempotency_key="p"
    )
    report = spot_round()
    # The higher bid wins (whatever its runtime); the lower one sets the price it pays
    assert report.placed == [process.pk]
    price = SpotPrice.objects.get()
    assert (price.winners, price.losers) == (1, 1)
    assert price.price_micros == 1_500_000
    assert Allocation.objects.get(order=process).unit_price_micros == 1_500_000
    docker.refresh_from_db()
    assert docker.status == OrderStatus.OPEN


def test_an_order_billing_refuses_rolls_back_alone_and_the_round_goes_on():
    node = online_node(name="n", devices=8)
    # An offer with no minimum rental (below what the API accepts) leaves the refusal to billing.
    Offer.objects.filter(node=node).update(min_rental_minutes=0)
    buyer = funded_buyer()
    start = (timezone.now() + timedelta(hours=1)).replace(microsecond=0)
    end = start + timedelta(minutes=10)
    reserved, _ = order_place(
        buyer=buyer,
        request=request("reserved", 8, "3.00", window_start=start, window_end=end),
        idempotency_key="r",
    )
    with time_machine.travel(end - timedelta(seconds=30)):
        # A full node until 30 s before the window ends was only now freed: billing will not book
        # under a minute; the on-demand order placed after it must still be matched.
        on_demand, _ = order_place(buyer=buyer, request=request("on_demand", 8, "3.00"), idempotency_key="o")
        report = matching_run()
    assert report.conflicts == [reserved.pk]
    assert report.placed == [on_demand.pk]
    reserved.refresh_from_db()
    assert reserved.status == OrderStatus.OPEN and not Allocation.objects.filter(order=reserved).exists()


def test_a_reserved_job_gets_its_whole_window_and_is_killed_at_its_end():
    online_node(name="n", devices=8, reserved="2.00")
    start = (timezone.now() + timedelta(hours=1)).replace(microsecond=0)
    end = start + timedelta(minutes=10)
    order, _ = order_place(
        buyer=funded_buyer(),
        request=request("reserved", 2, "3.00", window_start=start, window_end=end),
        idempotency_key="r",
    )
    matching_run()
    job = Job.objects.get(order=order)
    with time_machine.travel(start + timedelta(seconds=1)):
        assert jobs_promote_deferred() == [job.pk]
    # 20 s before the end, the agent has still not acknowledged: a stop now would end the job at
    # once, so it is left alone...
    with time_machine.travel(end - timedelta(seconds=20)):
        assert jobs_stop_at_allocation_end() == []
        job.refresh_from_db()
        assert job.status == JobStatus.ASSIGNED
        # ...until it runs: then SIGTERM now and SIGKILL exactly at the window's end
        run(job)
        assert jobs_stop_at_allocation_end() == [job.pk]
    job.refresh_from_db()
    assert job.stop_deadline == end
    assert job.status == JobStatus.RUNNING


def test_the_preemption_notice_is_configurable(settings: Any):
    settings.SUANLI_PREEMPTION_NOTICE_S = 5
    online_node(name="n", devices=4, on_demand="2.50", spot_floor="1.00")
    spot, _ = order_place(buyer=funded_buyer(), request=request("spot", 4, "1.50"), idempotency_key="s")
    spot_round()
    spot_job = run(Job.objects.get(order=spot))
    on_demand, _ = order_place(
        buyer=funded_buyer(), request=request("on_demand", 4, "3.00"), idempotency_key="o"
    )
    before = timezone.now()
    assert matching_run().placed == [on_demand.pk]
    spot_job.refresh_from_db()
    assert spot_job.stop_deadline - spot_job.stop_requested_at == timedelta(seconds=5)
    allocation = Allocation.objects.get(order=on_demand)
    assert before + timedelta(seconds=4) <= allocation.starts_at <= timezone.now() + timedelta(seconds=5)


def test_a_reserved_window_outside_the_offers_rental_length_is_not_placed_and_says_why():
    # The offer rents for 2 to 4 hours; windows of 1 h and 6 h stay open with the reason, 3 h fits
    node = online_node(name="n", devices=8, reserved="2.00")
    offer_update(node=node, change=OfferChange(min_rental_minutes=120, max_rental_hours=4))
    buyer = funded_buyer()
    start = (timezone.now() + timedelta(hours=1)).replace(microsecond=0)

    def reserved(key: str, hours: int) -> Any:
        order, _ = order_place(
            buyer=buyer,
            request=request(
                "reserved", 1, "3.00", window_start=start, window_end=start + timedelta(hours=hours)
            ),
            idempotency_key=key,
        )
        return order

    short, long_, fits = reserved("short", 1), reserved("long", 6), reserved("fits", 3)
    report = matching_run()
    assert report.placed == [fits.pk]
    assert [r.code for r in report.unplaced[short.pk]] == [ReasonCode.WINDOW_SHORTER_THAN_MIN_RENTAL]
    assert [r.code for r in report.unplaced[long_.pk]] == [ReasonCode.WINDOW_LONGER_THAN_MAX_RENTAL]
    # "why not matched", through the API and the portal
    client = APIClient()
    client.force_authenticate(buyer)
    detail = client.get(f"/api/v1/orders/{short.pk}").json()
    assert detail["unmatched_reasons"][0]["code"] == "window_shorter_than_min_rental"
    assert detail["unmatched_reasons"][0]["nodes"] == 1
    portal = Client()
    portal.force_login(buyer)
    page = portal.get(reverse("marketplace:order_detail", args=[long_.pk])).content.decode()
    assert "do not rent for a window this long" in page


def test_an_on_demand_job_is_stopped_with_notice_at_the_offers_maximum_rental():
    node = online_node(name="n", devices=8)
    offer_update(node=node, change=OfferChange(max_rental_hours=2))
    order, _ = order_place(buyer=funded_buyer(), request=request("on_demand", 2, "3.00"), idempotency_key="o")
    assert matching_run().placed == [order.pk]
    job = run(Job.objects.get(order=order))
    allocation = Allocation.objects.get(order=order)
    end = (allocation.starts_at + timedelta(hours=2)).replace(microsecond=0)
    assert allocation.ends_at == end
    # the slots end there too: the devices are free for bookings from then on
    for slot in allocation.slots.all():
        assert slot.span.upper == slot.device_id * SPAN_DEVICE_STRIDE + int(end.timestamp())
    with time_machine.travel(end - timedelta(minutes=5)):
        assert jobs_stop_at_allocation_end() == []
    with time_machine.travel(end - timedelta(seconds=20)):
        assert jobs_stop_at_allocation_end() == [job.pk]
    job.refresh_from_db()
    assert job.stop_deadline == end and job.status == JobStatus.RUNNING
    # The buyer reads why: the rental period ended (not "stopped by an operator").
    assert job.stop_reason == "rental_end"


def test_a_verified_node_wins_a_tie_and_a_higher_limit_goes_first():
    plain = online_node(name="plain", devices=4)
    checked = online_node(name="checked", devices=4)
    Node.objects.filter(pk=plain.pk).update(verified_at=None)
    Node.objects.filter(pk=checked.pk).update(verified_at=timezone.now())
    buyer = funded_buyer()
    # Placed first, at a lower limit: price-time priority puts it behind the later, dearer order
    early, _ = order_place(buyer=buyer, request=request("on_demand", 4, "2.60"), idempotency_key="early")
    dear, _ = order_place(buyer=buyer, request=request("on_demand", 4, "3.00"), idempotency_key="dear")
    assert matching_run().placed == [early.pk, dear.pk]
    # Equal price and fit: the dearer order was decided first and took the verified node
    assert Job.objects.get(order=dear).node_id == checked.pk
    assert Job.objects.get(order=early).node_id == plain.pk


def test_a_round_places_reserved_and_preempting_orders_in_one_chunk(monkeypatch: pytest.MonkeyPatch):
    # Spot jobs hold one node; two on-demand orders must preempt them; two reserved orders book
    # escrow on the other. Every placement commits in one transaction per run of terms, not one
    # per order, and each still does all it did alone.
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    spot_node = online_node(name="spot", devices=4, on_demand="2.50", spot_floor="1.00")
    spot_orders = [
        order_place(buyer=funded_buyer(), request=request("spot", 2, "1.50"), idempotency_key=f"s{i}")[0]
        for i in range(2)
    ]
    assert sorted(spot_round().placed) == sorted(o.pk for o in spot_orders)
    spot_jobs = [run(Job.objects.get(order=o)) for o in spot_orders]
    online_node(name="reserved", devices=4, on_demand="9.00", reserved="2.00")
    buyer = funded_buyer()
    start = (timezone.now() + timedelta(hours=1)).replace(microsecond=0)
    reserved = [
        order_place(
            buyer=buyer,
            request=request("reserved", 2, "2.40", window_start=start, window_end=start + timedelta(hours=2)),
            idempotency_key=f"r{i}",
        )[0]
        for i in range(2)
    ]
    on_demand = [
        order_place(buyer=buyer, request=request("on_demand", 2, "3.00"), idempotency_key=f"o{i}")[0]
        for i in range(2)
    ]
    with CaptureQueriesContext(connection) as queries:
        report = matching_run()
    assert report.placed == sorted(o.pk for o in [*reserved, *on_demand]) and report.conflicts == []
    assert sorted(report.preempted) == sorted(j.pk for j in spot_jobs)
    commits = [
        q for q in queries.captured_queries if q["sql"].startswith('INSERT INTO "marketplace_allocation"')
    ]
    assert len(commits) == 2  # one chunk for the on-demand run, one for the reserved run
    for order in reserved:
        order.refresh_from_db()
        assert order.status == OrderStatus.ALLOCATED and order.reservation_id is not None
        assert Job.objects.get(order=order).lease_id is not None
    for job in spot_jobs:
        job.refresh_from_db()
        assert job.stop_requested_at is not None and job.preemption_reason == "higher_tier"
    for order in on_demand:
        allocation = Allocation.objects.get(order=order)
        assert allocation.node_id == spot_node.pk
        assert allocation.starts_at >= spot_jobs[0].stop_deadline - timedelta(seconds=1)
