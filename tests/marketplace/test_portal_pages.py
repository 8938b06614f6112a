"""Marketplace portal pages: market, offers, the order form, orders, jobs, nodes and pricing.

Each page is checked for what it shows, that another user's objects are a 404 (or absent), and
that its query count does not grow with the number of rows it shows.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from billing.models import UsageSample
from marketplace.models import Job, JobLogChunk, Offer, Order, OrderStatus, SpotPrice
from marketplace.services.jobs import JobSpec
from marketplace.services.matching import matching_run
from marketplace.services.orders import OrderRequest, order_place
from tests.marketplace.market_helpers import MICROS, agent_reports, funded_buyer, online_node
from tests.providers.factories import ProviderFactory, member_of

pytestmark = pytest.mark.django_db

SPEC = JobSpec(runtime="docker", image="nvcr.io/nvidia/pytorch:24.05-py3", command=["python", "train.py"])


def client_for(user) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(user)
    return client


def place(buyer, key: str, devices: int = 1, offer: Offer | None = None) -> Order:  # type: ignore[no-untyped-def]
    order, _ = order_place(
        buyer=buyer,
        request=OrderRequest(
            term="on_demand",
            devices_per_node=devices,
            price_limit_micros=3 * MICROS,
            job=SPEC,
            offer_id=offer.pk if offer else None,
        ),
        idempotency_key=key,
    )
    return order


def running_job(buyer, key: str = "k1") -> Job:  # type: ignore[no-untyped-def]
    order = place(buyer, key)
    matching_run()
    job = Job.objects.get(order=order)
    agent_reports(job, "accepted")
    return agent_reports(job, "running")


# --- Market ------------------------------------------------------------------------------------


def test_market_lists_offers_with_every_price_and_filters(client):
    online_node(name="sh-h100", on_demand="2.50", reserved="2.00", spot_floor="1.00")
    online_node(name="gz-h100", region="cn-south", on_demand="3.10", reserved="2.90", spot_floor="1.50")
    body = client.get("/market/").content.decode()
    assert "sh-h100" in body and "gz-h100" in body
    for price in ("$2.50", "$2.00", "$1.00", "$3.10"):
        assert price in body
    assert "kgCO2e" in body
    filtered = client.get("/market/", {"region": "cn-south", "sort": "carbon"}).content.decode()
    assert "gz-h100" in filtered and "sh-h100" not in filtered
    cheap = client.get("/market/", {"max_price": "2.60"}).content.decode()
    assert "sh-h100" in cheap and "gz-h100" not in cheap


def test_an_empty_market_explains_why(client):
    online_node(name="sh-h100", on_demand="2.50")
    body = client.get("/market/", {"max_price": "0.10", "min_reliability": "0.99"}).content.decode()
    assert "No offers match" in body
    assert "maximum price may be below" in body and "reliability of 0.600" in body
    empty = client.get("/market/").content.decode()
    assert "0 offers" not in empty or "No offers match" in empty


def test_invalid_filters_are_reported_not_crashing(client):
    response = client.get("/market/", {"min_reliability": "7", "devices": "x"})
    assert response.status_code == 200
    assert "Some filters are not valid" in response.content.decode()


def test_market_query_count_does_not_grow_with_offers(client, django_assert_max_num_queries):
    provider = ProviderFactory()
    for n in range(6):
        online_node(provider, name=f"n{n}", devices=2)
    with django_assert_max_num_queries(4):
        response = client.get("/market/")
    assert response.content.decode().count("/order/?term=") == 6


def test_offer_detail_shows_node_devices_software_and_spot_history(client):
    node = online_node(name="sh-h100", devices=4)
    offer = Offer.objects.get(node=node)
    now = timezone.now()
    SpotPrice.objects.bulk_create(
        SpotPrice(accelerator_id=offer.accelerator_id, region=offer.region, round_at=now - timedelta(minutes=i),
                  price_micros=1_000_000 + i * 10_000)
        for i in range(5)
    )  # fmt: skip
    body = client.get(f"/market/offers/{offer.pk}/").content.decode()
    assert "sh-h100" in body and "cuda" in body and "12.4" in body
    assert "Spot price history" in body and "<svg" in body and "Reliability history" in body
    assert body.count('data-label="#"') == 4
    assert client.get("/market/offers/999999/").status_code == 404


# --- Order form ----------------------------------------------------------------------------------


def test_order_form_estimates_validates_live_and_places_an_order():
    node = online_node(name="sh-h100", on_demand="2.50")
    offer = Offer.objects.get(node=node)
    buyer = funded_buyer(100)
    client = client_for(buyer)
    page = client.get(f"/market/offers/{offer.pk}/order/?term=on_demand").content.decode()
    assert "about $2.50 per hour; your balance covers 40.0 hours" in page

    # Live validation: the same form, checked on the server, answered as JSON.
    check = client.post(
        f"/market/offers/{offer.pk}/order/",
        {"validate": "1", "term": "on_demand", "devices": "9", "price_limit": "2.50", "runtime": "docker",
         "image": "", "idempotency_key": "x"},
    ).json()  # fmt: skip
    assert check["valid"] is False
    assert "devices" in check["errors"] and "image" in check["errors"]
    ok = client.post(
        f"/market/offers/{offer.pk}/order/",
        {"validate": "1", "term": "on_demand", "devices": "2", "price_limit": "2.50", "runtime": "docker",
         "image": "pytorch/pytorch:2.3", "idempotency_key": "x"},
    ).json()  # fmt: skip
    assert ok["valid"] is True and "$5.00 per hour" in ok["estimate"] and "20.0 hours" in ok["estimate"]

    response = client.post(
        f"/market/offers/{offer.pk}/order/",
        {"term": "on_demand", "devices": "2", "price_limit": "2.50", "runtime": "docker",
         "image": "pytorch/pytorch:2.3", "command": "python -c 'print(1)'", "env": "A=1\nB=two",
         "ports": "8888", "idempotency_key": "form-1"},
    )  # fmt: skip
    order = Order.objects.get(buyer=buyer)
    assert response.status_code == 302 and response["Location"] == f"/orders/{order.pk}/"
    assert order.command == ["python", "-c", "print(1)"] and order.env == {"A": "1", "B": "two"}
    assert order.ports == [8888] and order.offer_id == offer.pk and order.devices_per_node == 2
    # A double submit (same idempotency key) does not place a second order.
    client.post(
        f"/market/offers/{offer.pk}/order/",
        {"term": "on_demand", "devices": "2", "price_limit": "2.50", "runtime": "docker",
         "image": "pytorch/pytorch:2.3", "command": "python -c 'print(1)'", "env": "A=1\nB=two",
         "ports": "8888", "idempotency_key": "form-1"},
    )  # fmt: skip
    assert Order.objects.filter(buyer=buyer).count() == 1


def test_order_form_refuses_what_the_wallet_cannot_cover_and_checks_the_window():
    node = online_node(name="sh-h100", on_demand="2.50")
    offer = Offer.objects.get(node=node)
    buyer = funded_buyer(1)
    client = client_for(buyer)
    response = client.post(
        f"/market/offers/{offer.pk}/order/",
        {"term": "on_demand", "devices": "1", "price_limit": "2.50", "runtime": "docker",
         "image": "pytorch/pytorch:2.3", "idempotency_key": "k"},
    )  # fmt: skip
    assert response.status_code == 200
    assert "top up your wallet" in response.content.decode()
    assert not Order.objects.exists()
    start = (timezone.now() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    reserved = client.post(
        f"/market/offers/{offer.pk}/order/",
        {"validate": "1", "term": "reserved", "devices": "1", "price_limit": "2.00", "runtime": "docker",
         "image": "pytorch/pytorch:2.3", "window_start": start, "window_end": start, "idempotency_key": "k"},
    ).json()  # fmt: skip
    assert "window_end" in reserved["errors"]


# --- Orders and jobs ------------------------------------------------------------------------------


def test_orders_page_lists_only_the_users_orders_with_bounded_queries(django_assert_max_num_queries):
    online_node(name="sh-h100", devices=8)
    buyer, other = funded_buyer(1000), funded_buyer(1000)
    for n in range(5):
        place(buyer, f"b{n}")
    place(other, "o1")
    matching_run()
    client = client_for(buyer)
    with django_assert_max_num_queries(8):
        body = client.get("/orders/").content.decode()
    mine = list(Order.objects.filter(buyer=buyer).values_list("pk", flat=True))
    theirs = Order.objects.get(buyer=other).pk
    assert all(f"/orders/{pk}/" in body for pk in mine)
    assert f"/orders/{theirs}/" not in body


def test_order_detail_explains_an_unmatched_order_and_hides_others_orders():
    online_node(name="small", devices=1)
    buyer, other = funded_buyer(1000), funded_buyer(1000)
    order = place(buyer, "big", devices=4)
    body = client_for(buyer).get(f"/orders/{order.pk}/").content.decode()
    assert "Why this order is not matched yet" in body and "fewer devices than requested" in body
    assert "Order placed" in body
    assert client_for(other).get(f"/orders/{order.pk}/").status_code == 404
    assert client_for(other).post(f"/orders/{order.pk}/cancel/").status_code == 404
    order.refresh_from_db()
    assert order.status == OrderStatus.OPEN


def test_cancel_asks_first_then_cancels():
    online_node(name="small", devices=1)
    buyer = funded_buyer(1000)
    order = place(buyer, "big", devices=4)
    client = client_for(buyer)
    confirm = client.get(f"/orders/{order.pk}/cancel/").content.decode()
    assert "Cancel this order?" in confirm
    order.refresh_from_db()
    assert order.status == OrderStatus.OPEN
    assert client.post(f"/orders/{order.pk}/cancel/").status_code == 302
    order.refresh_from_db()
    assert order.status == OrderStatus.CANCELLED


def test_job_page_shows_its_timeline_log_and_stops_after_confirmation():
    online_node(name="sh-h100")
    buyer, other = funded_buyer(1000), funded_buyer(1000)
    job = running_job(buyer)
    JobLogChunk.objects.create(job=job, offset=0, end_offset=12, data=b"hello world\n")
    Job.objects.filter(pk=job.pk).update(log_size=12)
    client = client_for(buyer)
    body = client.get(f"/jobs/{job.pk}/").content.decode()
    assert "hello world" in body and f'data-log-url="/api/v1/jobs/{job.pk}/logs"' in body
    assert 'data-next-offset="12"' in body and "Refresh" in body
    order_page = client.get(f"/orders/{job.order_id}/").content.decode()
    assert "billing started" in order_page
    assert client_for(other).get(f"/jobs/{job.pk}/").status_code == 404
    assert client_for(other).post(f"/jobs/{job.pk}/stop/").status_code == 404
    assert "Stop this job?" in client.get(f"/jobs/{job.pk}/stop/").content.decode()
    job.refresh_from_db()
    assert job.stop_requested_at is None
    client.post(f"/jobs/{job.pk}/stop/")
    job.refresh_from_db()
    assert job.stop_requested_at is not None and job.stop_reason == "buyer"


def test_a_preemption_notice_is_shown():
    online_node(name="sh-h100")
    buyer = funded_buyer(1000)
    job = running_job(buyer)
    Job.objects.filter(pk=job.pk).update(
        stop_reason="preemption", preemption_reason="outbid", stop_requested_at=timezone.now(),
        stop_deadline=timezone.now() + timedelta(seconds=120),
    )  # fmt: skip
    client = client_for(buyer)
    assert "Preemption notice" in client.get(f"/orders/{job.order_id}/").content.decode()
    assert "Preemption notice" in client.get(f"/jobs/{job.pk}/").content.decode()


# --- Sellers -------------------------------------------------------------------------------------


def test_nodes_page_shows_the_members_nodes_only_with_bounded_queries(django_assert_max_num_queries):
    mine, theirs = ProviderFactory(name="Mine"), ProviderFactory(name="Theirs")
    member = member_of(mine)
    for n in range(4):
        online_node(mine, name=f"mine-{n}", devices=2)
    online_node(theirs, name="theirs-0")
    client = client_for(member)
    with django_assert_max_num_queries(8):
        body = client.get("/provider/nodes/").content.decode()
    assert all(f"mine-{n}" in body for n in range(4)) and "theirs-0" not in body
    assert "Online" in body


def test_node_detail_charts_usage_samples_and_is_private():
    provider = ProviderFactory()
    member, stranger = member_of(provider), member_of(ProviderFactory())
    node = online_node(provider, name="sh-h100")
    buyer = funded_buyer(1000)
    job = running_job(buyer)
    now = timezone.now()
    UsageSample.objects.bulk_create(
        UsageSample(job_id=job.pk, seq=i, window_start=now - timedelta(minutes=30 - i * 10),
                    window_end=now - timedelta(minutes=20 - i * 10), device_count=1, utilization_pct=80 + i,
                    power_w=600)
        for i in range(3)
    )  # fmt: skip
    body = client_for(member).get(f"/provider/nodes/{node.pk}/").content.decode()
    assert "Utilisation (24 hours)" in body and body.count("<svg") >= 3
    assert client_for(stranger).get(f"/provider/nodes/{node.pk}/").status_code == 404


def test_pricing_page_updates_prices_and_listing_through_the_service(django_assert_max_num_queries):
    provider = ProviderFactory()
    member, stranger = member_of(provider), member_of(ProviderFactory())
    node = online_node(provider, name="sh-h100")
    offer = Offer.objects.get(node=node)
    SpotPrice.objects.create(accelerator_id=offer.accelerator_id, region=offer.region, round_at=timezone.now(),
                             price_micros=1_230_000)  # fmt: skip
    client = client_for(member)
    with django_assert_max_num_queries(8):
        body = client.get("/provider/pricing/").content.decode()
    assert "Recent clearing prices in this pool" in body and "$1.23" in body
    prefix = f"node-{node.pk}"
    response = client.post(
        f"/provider/pricing/{node.pk}/",
        {f"{prefix}-on_demand_price": "3.00", f"{prefix}-reserved_price": "2.50", f"{prefix}-spot_floor": "1.20",
         f"{prefix}-listed": "on"},
    )  # fmt: skip
    assert response.status_code == 302
    offer.refresh_from_db()
    assert (offer.on_demand_price_micros, offer.reserved_price_micros, offer.spot_floor_micros) == (
        3_000_000, 2_500_000, 1_200_000,
    )  # fmt: skip
    bad = client.post(
        f"/provider/pricing/{node.pk}/",
        {f"{prefix}-on_demand_price": "1.00", f"{prefix}-reserved_price": "0.50", f"{prefix}-spot_floor": "2.00",
         f"{prefix}-listed": "on"},
    )  # fmt: skip
    assert bad.status_code == 400 and "cannot exceed the on-demand price" in bad.content.decode()
    assert client_for(stranger).post(f"/provider/pricing/{node.pk}/", {}).status_code == 404
    assert "sh-h100" not in client_for(stranger).get("/provider/pricing/").content.decode()


def test_order_form_shows_an_error_on_its_hidden_request_key():
    offer = Offer.objects.get(node=online_node(name="sh-h100"))
    client = client_for(funded_buyer(100))
    body = client.post(
        f"/market/offers/{offer.pk}/order/",
        {"term": "on_demand", "devices": "1", "price_limit": "2.50", "runtime": "docker", "image": "pytorch/pytorch:2.3"},
    ).content.decode()  # fmt: skip
    assert "<li>Request key: Missing; reload the page and submit the form again.</li>" in body
    assert not Order.objects.exists()


@pytest.mark.parametrize(("minimum_s", "minutes", "error"), [
    (600, 5, "A reservation lasts at least 10 minutes."),
    (120, 1, "A reservation lasts at least 2 minutes."),
    (120, 5, None),
    (90, 1, "A reservation lasts at least 90 seconds."),
])  # fmt: skip
def test_order_form_checks_the_configured_minimum_reservation(settings, minimum_s, minutes, error):
    settings.SUANLI_MIN_RESERVATION_S = minimum_s
    offer = Offer.objects.get(node=online_node(name="sh-h100"))
    client = client_for(funded_buyer(100))
    start = timezone.now() + timedelta(hours=1)
    check = client.post(
        f"/market/offers/{offer.pk}/order/",
        {"validate": "1", "term": "reserved", "devices": "1", "price_limit": "2.00", "runtime": "docker",
         "image": "pytorch/pytorch:2.3", "idempotency_key": "k", "window_start": start.strftime("%Y-%m-%dT%H:%M"),
         "window_end": (start + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M")},
    ).json()  # fmt: skip
    assert check["errors"].get("window_end") == ([error] if error else None)
    assert check["valid"] is (error is None)
