"""Orders through matching, provisioning and billing, on PostgreSQL, with numbers checkable by hand."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from billing.models import AccountKind, Hold, HoldStatus, Lease, LeaseStatus
from billing.services import account_get, settle
from core.errors import Conflict, InsufficientFunds, ValidationFailed
from marketplace.matching.market import ReasonCode
from marketplace.models import (
    Allocation,
    AllocationSlot,
    Job,
    JobStatus,
    Order,
    OrderReason,
    OrderStatus,
    SpotPrice,
)
from marketplace.services.job_spec import job_spec_parse
from marketplace.services.jobs import JobSpec
from marketplace.services.matching import matching_run, order_explain, spot_round
from marketplace.services.orders import OrderRequest, order_cancel, order_place
from tests.marketplace.market_helpers import MICROS, agent_reports, funded_buyer, online_node

pytestmark = pytest.mark.django_db

SPEC = JobSpec(runtime="docker", image="nvcr.io/nvidia/pytorch:24.05-py3", command=["python", "train.py"])


def on_demand(devices: int = 2, limit: str = "3.00", **extra):
    return OrderRequest(
        term="on_demand",
        devices_per_node=devices,
        price_limit_micros=int(Decimal(limit) * MICROS),
        job=SPEC,
        **extra,
    )


def test_on_demand_order_runs_and_is_billed_from_running_to_exit():
    # Given two H100 nodes at 2.50 and 2.20 per device-hour and a buyer with 1,000.00
    online_node(name="dear", on_demand="2.50")
    cheap = online_node(name="cheap", on_demand="2.20")
    buyer = funded_buyer(1000)

    # When the buyer orders 2 devices at up to 3.00 and the matcher runs
    order, created = order_place(buyer=buyer, request=on_demand(2), idempotency_key="k1")
    assert created
    hold = Hold.objects.get(pk=order.hold_id)
    assert hold.amount_micros == 2 * 3 * MICROS  # one hour at the limit, 2 devices
    report = matching_run()

    # Then it lands on the cheaper node at that node's price, as an assigned job
    assert report.placed == [order.pk]
    allocation = Allocation.objects.get(order=order)
    assert allocation.node_id == cheap.pk
    assert allocation.unit_price_micros == 2_200_000
    job = Job.objects.get(order=order)
    assert job.status == JobStatus.ASSIGNED
    assert len(job.device_indexes) == 2
    assert AllocationSlot.objects.filter(allocation=allocation, live=True).count() == 2

    # Billing starts when the agent reports running and ends when the job exits: 30 minutes
    start = timezone.now()  # event times are clamped to no earlier than the assignment
    agent_reports(job, "accepted", at=start)
    agent_reports(job, "running", at=start)
    job.refresh_from_db()
    order.refresh_from_db()
    assert order.status == OrderStatus.RUNNING
    lease = Lease.objects.get(pk=job.lease_id)
    assert lease.rate_micros == 2_200_000
    assert Hold.objects.get(pk=order.hold_id).status == HoldStatus.CAPTURED
    with time_machine.travel(start + timedelta(minutes=30, seconds=5), tick=False):
        agent_reports(job, "exited", at=start + timedelta(minutes=30), exit_code=0)
        settle(until=start + timedelta(minutes=31))

    lease.refresh_from_db()
    assert lease.status == LeaseStatus.CLOSED
    # 2 devices x 2.20 x 0.5 h = 2.20, of which 10% platform fee
    assert lease.charged_micros == 2_200_000
    assert lease.fee_micros == 220_000
    payable = account_get(kind=AccountKind.PROVIDER_PAYABLE, provider_id=cheap.provider_id)
    assert payable.balance_micros == 1_980_000
    order.refresh_from_db()
    assert order.status == OrderStatus.ENDED
    assert not AllocationSlot.objects.filter(allocation=allocation, live=True).exists()


def test_job_that_never_starts_is_not_billed_and_releases_the_hold():
    online_node(name="n")
    buyer = funded_buyer(100)
    order, _ = order_place(buyer=buyer, request=on_demand(1), idempotency_key="k")
    matching_run()
    job = Job.objects.get(order=order)
    agent_reports(job, "accepted")
    agent_reports(job, "failed")
    order.refresh_from_db()
    assert order.status == OrderStatus.FAILED
    assert job.lease_id is None
    assert Hold.objects.get(pk=order.hold_id).status == HoldStatus.RELEASED
    assert not Lease.objects.exists()


def test_idempotent_placement_and_conflicting_reuse():
    online_node(name="n")
    buyer = funded_buyer(100)
    first, created = order_place(buyer=buyer, request=on_demand(1), idempotency_key="same")
    again, created_again = order_place(buyer=buyer, request=on_demand(1), idempotency_key="same")
    assert created and not created_again
    assert again.pk == first.pk
    with pytest.raises(Conflict):
        order_place(buyer=buyer, request=on_demand(2), idempotency_key="same")
    assert Order.objects.count() == 1
    assert Hold.objects.count() == 1


def test_insufficient_funds_writes_nothing():
    online_node(name="n")
    buyer = funded_buyer(1)
    with pytest.raises(InsufficientFunds):
        order_place(buyer=buyer, request=on_demand(2, limit="3.00"), idempotency_key="k")
    assert not Order.objects.exists()
    assert not Hold.objects.exists()


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"image": "nginx", "privileged": True}, "job.privileged"),
        ({"image": "nginx", "volumes": ["/:/host"]}, "job.volumes"),
        ({"image": "not a valid image!"}, "job.image"),
        ({"image": "nginx", "command": "rm -rf /"}, "job.command"),
        ({"image": "nginx", "env": {"1BAD": "x"}}, "job.env"),
        ({"image": "nginx", "ports": [0]}, "job.ports"),
        ({"image": "nginx", "network_mode": "host"}, "job.network_mode"),
    ],
)
def test_job_spec_rejects_unsafe_or_malformed_specs(spec, field):
    with pytest.raises(ValidationFailed) as caught:
        job_spec_parse(spec)
    assert field in caught.value.fields


def test_job_spec_accepts_registry_tags_and_digests():
    for image in (
        "nvcr.io/nvidia/pytorch:24.05-py3",
        "localhost:5000/team/train",
        "ascendhub.huawei.com/public-ascendhub/ascend-pytorch:24.0.RC1-A2",
        "python@sha256:" + "a" * 64,
    ):
        assert job_spec_parse({"image": image}).image == image


def test_why_not_matched_names_the_price_floor():
    online_node(name="n", on_demand="2.50")
    buyer = funded_buyer(100)
    order, _ = order_place(buyer=buyer, request=on_demand(1, limit="1.00"), idempotency_key="k")
    matching_run()
    order.refresh_from_db()
    assert order.status == OrderStatus.OPEN
    reasons = order_explain(order=order)
    assert reasons[0].code == ReasonCode.PRICE_LIMIT_BELOW_FLOOR
    assert reasons[0].lowest_floor_micros == 2_500_000


def test_why_not_matched_while_an_open_ended_job_holds_the_node():
    # A running on-demand job holds its devices until released or until the offer's maximum
    # rental (30 days by default) ends it: the reason is "busy", freeing at that end, and neither
    # the service nor the pages fail on it.
    online_node(name="n", devices=8)
    buyer = funded_buyer(100)
    order_place(buyer=buyer, request=on_demand(8), idempotency_key="a")
    second, _ = order_place(buyer=buyer, request=on_demand(8), idempotency_key="b")
    matching_run()
    second.refresh_from_db()
    assert second.status == OrderStatus.OPEN
    (reason,) = order_explain(order=second)
    (allocation,) = Allocation.objects.exclude(order=second)
    assert allocation.ends_at == (allocation.starts_at + timedelta(hours=24 * 30)).replace(microsecond=0)
    assert reason.code == ReasonCode.CAPACITY_BUSY and reason.frees_at == allocation.ends_at
    client = Client()
    client.force_login(buyer)
    assert client.get(reverse("marketplace:order_detail", args=[second.pk])).status_code == 200


def test_cancel_open_order_releases_the_hold():
    buyer = funded_buyer(100)
    order, _ = order_place(buyer=buyer, request=on_demand(1), idempotency_key="k")
    order_cancel(order=order)
    order.refresh_from_db()
    assert order.status == OrderStatus.CANCELLED
    assert Hold.objects.get(pk=order.hold_id).status == HoldStatus.RELEASED
    wallet = account_get(kind=AccountKind.BUYER_WALLET, user_id=buyer.pk)
    assert wallet.balance_micros == 100 * MICROS


def test_gang_lands_in_one_cluster_or_not_at_all():
    provider = online_node(name="a1", devices=8, cluster="A").provider
    online_node(provider, name="a2", devices=8, cluster="A")
    online_node(provider, name="b1", devices=8, cluster="B")
    buyer = funded_buyer(1000)
    gang, _ = order_place(buyer=buyer, request=on_demand(8, node_count=2), idempotency_key="g")
    too_big, _ = order_place(buyer=buyer, request=on_demand(8, node_count=3), idempotency_key="g3")
    matching_run()
    clusters = {a.node.cluster for a in Allocation.objects.filter(order=gang).select_related("node")}
    assert clusters == {"A"}
    assert Allocation.objects.filter(order=gang).count() == 2
    too_big.refresh_from_db()
    assert too_big.status == OrderStatus.OPEN
    assert not Allocation.objects.filter(order=too_big).exists()


def test_spot_bidders_pay_one_clearing_price_and_on_demand_preempts_the_lower_bid():
    # One 8-device node, spot floor 1.00; two spot bids of 4 devices each at 1.80 and 1.40
    node = online_node(name="n", devices=8, on_demand="2.50", spot_floor="1.00")
    high = funded_buyer(1000)
    low = funded_buyer(1000)
    spot = lambda limit: OrderRequest(  # noqa: E731
        term="spot", devices_per_node=4, price_limit_micros=int(Decimal(limit) * MICROS), job=SPEC
    )
    o_high, _ = order_place(buyer=high, request=spot("1.80"), idempotency_key="h")
    o_low, _ = order_place(buyer=low, request=spot("1.40"), idempotency_key="l")
    report = spot_round()
    assert sorted(report.placed) == sorted([o_high.pk, o_low.pk])
    prices = {a.unit_price_micros for a in Allocation.objects.filter(order__in=[o_high, o_low])}
    price = SpotPrice.objects.get().price_micros
    # Both fit, nobody lost: the price is the marginal floor, 1.00, paid by both (not their bids)
    assert prices == {price} == {1_000_000}

    for job in Job.objects.filter(order__in=[o_high, o_low]):
        agent_reports(job, "accepted")
        agent_reports(job, "running")

    # An on-demand order for 4 devices arrives: the lower spot bid is preempted with notice
    od_buyer = funded_buyer(1000)
    o_od, _ = order_place(buyer=od_buyer, request=on_demand(4), idempotency_key="od")
    report = matching_run()
    assert report.placed == [o_od.pk]
    low_job = Job.objects.get(order=o_low)
    high_job = Job.objects.get(order=o_high)
    assert low_job.stop_reason == "preemption"
    assert low_job.preemption_reason == "higher_tier"
    assert low_job.stop_deadline - low_job.stop_requested_at == timedelta(seconds=120)
    assert high_job.stop_requested_at is None
    # The on-demand job waits for the notice to run out before it is handed to the agent
    od_job = Job.objects.get(order=o_od)
    assert od_job.status == JobStatus.QUEUED
    agent_reports(low_job, "stopped", exit_code=143)
    low_job.refresh_from_db()
    assert low_job.status == JobStatus.PREEMPTED
    assert node.pk == od_job.node_id


def test_reserved_order_is_paid_into_escrow_and_starts_at_its_window():
    online_node(name="n", reserved="2.00")
    buyer = funded_buyer(1000)
    start = (timezone.now() + timedelta(hours=1)).replace(microsecond=0)
    request = OrderRequest(
        term="reserved", devices_per_node=2, price_limit_micros=3 * MICROS, job=SPEC,
        window_start=start, window_end=start + timedelta(hours=2),
    )  # fmt: skip
    order, _ = order_place(buyer=buyer, request=request, idempotency_key="r")
    matching_run()
    order.refresh_from_db()
    assert order.status == OrderStatus.ALLOCATED
    escrow = account_get(kind=AccountKind.RESERVATION_ESCROW, user_id=buyer.pk)
    assert escrow.balance_micros == 2 * 2 * 2 * MICROS  # 2 devices x 2.00 x 2 h
    job = Job.objects.get(order=order)
    assert job.status == JobStatus.QUEUED

    from marketplace.services.provisioning import jobs_promote_deferred

    assert jobs_promote_deferred() == []
    with time_machine.travel(start + timedelta(seconds=1)):
        assert jobs_promote_deferred() == [job.pk]
    job.refresh_from_db()
    assert job.status == JobStatus.ASSIGNED


def test_offer_list_filters_sorts_and_shows_only_free_capacity():
    online_node(name="a", on_demand="2.50", region="cn-east")
    online_node(name="b", on_demand="2.00", region="cn-south")
    client = APIClient()
    rows = client.get("/api/v1/offers", {"sort": "price"}).json()["results"]
    assert [r["node"]["name"] for r in rows] == ["b", "a"]
    first = rows[0]
    # 2.00 per device-hour over 0.9894 PFLOPS dense FP16 = 2.021427... per PFLOP-hour
    assert first["price_per_pflop_hour"] == "2.021427"
    # 700 W x PUE 1.40 x 0.5271 kg/kWh (cn-south) = 0.517 kg CO2e per device-hour
    assert first["kg_co2e_per_device_hour"] == "0.517"
    assert client.get("/api/v1/offers", {"region": "cn-east"}).json()["results"][0]["node"]["name"] == "a"
    assert client.get("/api/v1/offers", {"max_price": "2.10"}).json()["results"][0]["node"]["name"] == "b"
    bad = client.get("/api/v1/offers", {"sort": "nonsense"})
    assert bad.status_code == 400
    assert "sort" in bad.json()["error"]["fields"]


def test_provider_sets_prices_by_patch_and_bad_prices_get_field_errors():
    from tests.providers.factories import member_of

    node = online_node(name="n", on_demand="2.50")
    owner = member_of(node.provider)
    stranger = member_of(online_node(name="other").provider)
    client = APIClient()
    client.force_authenticate(owner)

    ok = client.patch(
        f"/api/v1/provider/nodes/{node.pk}", {"on_demand_price": "3.10", "spot_floor": "1.20"}, format="json"
    )
    assert ok.status_code == 200, ok.json()
    assert ok.json()["offer"]["on_demand_price"] == "3.10"
    assert ok.json()["offer"]["spot_floor"] == "1.20"

    negative = client.patch(f"/api/v1/provider/nodes/{node.pk}", {"on_demand_price": "-1.00"}, format="json")
    assert negative.status_code == 400
    assert "on_demand_price" in negative.json()["error"]["fields"]
    absurd = client.patch(f"/api/v1/provider/nodes/{node.pk}", {"spot_floor": "99999.00"}, format="json")
    assert absurd.status_code == 400
    assert "spot_floor" in absurd.json()["error"]["fields"]
    floor_above_price = client.patch(
        f"/api/v1/provider/nodes/{node.pk}", {"spot_floor": "5.00"}, format="json"
    )
    assert floor_above_price.status_code == 400
    assert "spot_floor" in floor_above_price.json()["error"]["fields"]

    client.force_authenticate(stranger)
    assert (
        client.patch(
            f"/api/v1/provider/nodes/{node.pk}", {"on_demand_price": "0.01"}, format="json"
        ).status_code
        == 404
    )
    node.offer.refresh_from_db()
    assert node.offer.on_demand_price_micros == 3_100_000


def test_order_api_round_trip_with_idempotency_and_error_shape():
    online_node(name="n")
    buyer = funded_buyer(100)
    client = APIClient()
    client.force_authenticate(buyer)
    body = {
        "term": "on_demand", "devices_per_node": 1, "price_limit": "3.00",
        "job": {"image": "nvcr.io/nvidia/pytorch:24.05-py3", "command": ["python", "-V"]},
    }  # fmt: skip
    created = client.post("/api/v1/orders", body, format="json", HTTP_IDEMPOTENCY_KEY="abc")
    assert created.status_code == 201, created.json()
    replay = client.post("/api/v1/orders", body, format="json", HTTP_IDEMPOTENCY_KEY="abc")
    assert replay.status_code == 200
    assert replay.json()["id"] == created.json()["id"]
    conflict = client.post(
        "/api/v1/orders", {**body, "devices_per_node": 2}, format="json", HTTP_IDEMPOTENCY_KEY="abc"
    )
    assert conflict.status_code == 409
    unsafe = client.post(
        "/api/v1/orders",
        {**body, "job": {"image": "x", "privileged": True}},
        format="json",
        HTTP_IDEMPOTENCY_KEY="u",
    )
    assert unsafe.status_code == 400
    assert "job.privileged" in unsafe.json()["error"]["fields"]
    no_key = client.post("/api/v1/orders", body, format="json")
    assert no_key.status_code == 400

    other = APIClient()
    other.force_authenticate(funded_buyer(1))
    assert other.get(f"/api/v1/orders/{created.json()['id']}").status_code == 404
    detail = client.get(f"/api/v1/orders/{created.json()['id']}").json()
    assert detail["status"] == "open"
    assert detail["unmatched_reasons"] == []  # it can be placed at the next round


def test_gang_members_get_a_grace_to_finish_before_the_rest_are_stopped():
    from marketplace.services.provisioning import GANG_GRACE, jobs_stop_gang_remainders

    provider = online_node(name="g1", devices=8, cluster="A").provider
    online_node(provider, name="g2", devices=8, cluster="A")
    buyer = funded_buyer(1000)
    gang, _ = order_place(buyer=buyer, request=on_demand(8, node_count=2), idempotency_key="g")
    matching_run()
    first, second = Job.objects.filter(order=gang).order_by("pk")
    for job in (first, second):
        agent_reports(job, "accepted")
        agent_reports(job, "running")

    agent_reports(first, "exited", exit_code=0)
    # The other member may still finish on its own: nothing is stopped yet.
    assert jobs_stop_gang_remainders() == []
    second.refresh_from_db()
    assert second.stop_requested_at is None
    gang.refresh_from_db()
    assert gang.status == OrderStatus.RUNNING

    with time_machine.travel(timezone.now() + GANG_GRACE + timedelta(seconds=1)):
        assert jobs_stop_gang_remainders() == [second.pk]
        second.refresh_from_db()
        assert second.stop_reason == "operator"
        agent_reports(second, "stopped", exit_code=143)
    gang.refresh_from_db()
    assert gang.status == OrderStatus.ENDED


def test_reserved_order_that_finds_no_capacity_expires_and_its_hold_returns():
    from marketplace.services.orders import orders_expire_reserved

    buyer = funded_buyer(100)
    start = (timezone.now() + timedelta(hours=1)).replace(microsecond=0)
    request = OrderRequest(
        term="reserved", devices_per_node=2, price_limit_micros=3 * MICROS, job=SPEC,
        window_start=start, window_end=start + timedelta(hours=1),
    )  # fmt: skip
    order, _ = order_place(buyer=buyer, request=request, idempotency_key="r")
    matching_run()  # no node exists: it stays open, its hold placed
    assert orders_expire_reserved() == []
    assert Hold.objects.get(pk=order.hold_id).status == HoldStatus.OPEN

    # 51 minutes into the window less than the 10-minute minimum remains: it expires, once.
    with time_machine.travel(start + timedelta(minutes=51)):
        assert orders_expire_reserved() == [order.pk]
        assert orders_expire_reserved() == []
    order.refresh_from_db()
    assert order.status == OrderStatus.FAILED
    assert order.status_reason == OrderReason.RESERVED_WINDOW_PASSED
    assert Hold.objects.get(pk=order.hold_id).status == HoldStatus.RELEASED
    wallet = account_get(kind=AccountKind.BUYER_WALLET, user_id=buyer.pk)
    assert wallet.balance_micros == 100 * MICROS
