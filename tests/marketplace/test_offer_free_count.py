"""The offer list's stored free-device count (issue 12, item 4) equals counting the rows.

``offers_list`` reads ``FreeDeviceCount`` when the request time is inside the stored window and no
slot or device write has marked the node since; otherwise it counts devices and slots as it always
did before the store existed (``todays_free_devices`` below, the selector's former code). These tests draw random markets (on-demand, spot and reserved
slots in past, current and future windows, released slots, failed devices) and check, at moments
on both sides of every slot boundary, before and after ``offer_free_devices_refresh``, and after
writes, that the list equals a count done here in Python from the rows.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.db import connection, transaction
from django.db.models import BigIntegerField, Count, ExpressionWrapper, F, IntegerField, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg2.extras import NumericRange
from rest_framework.test import APIClient

from marketplace.models import (
    SPAN_DEVICE_STRIDE,
    Allocation,
    AllocationSlot,
    FreeDeviceChange,
    FreeDeviceCount,
    JobStatus,
    Offer,
    Order,
    Term,
)
from marketplace.selectors import OfferFilters, offers_list
from marketplace.services.jobs import JobSpec
from marketplace.services.matching import OPEN_END, matching_run
from marketplace.services.offers import offer_free_devices_refresh
from marketplace.services.orders import OrderRequest, order_place
from providers.models import Device, DeviceHealth, Node, NodeStatus
from tests.marketplace.market_helpers import MICROS, agent_reports, funded_buyer, online_node

pytestmark = pytest.mark.django_db

SPEC = JobSpec(runtime="docker", image="nvcr.io/nvidia/pytorch:24.05-py3", command=["python", "train.py"])
DEVICES_PER_NODE = 4
HOUR = 3600


class Rollback(Exception):
    """Raised to undo one Hypothesis example's rows."""


def at(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def todays_free_devices(now_epoch: int) -> ExpressionWrapper:
    """The offer list's free-device count as it was computed before the store (correlated
    subqueries per offer, verbatim from the former ``marketplace.selectors``)."""
    healthy = Subquery(
        Device.objects.filter(node_id=OuterRef("node_id"), health=DeviceHealth.OK)
        .order_by()
        .values("node_id")
        .annotate(n=Count("id"))
        .values("n"),
        output_field=IntegerField(),
    )
    busy = Subquery(
        AllocationSlot.objects.filter(live=True, device__node_id=OuterRef("node_id"))
        .filter(
            span__contains=ExpressionWrapper(
                F("device_id") * SPAN_DEVICE_STRIDE + now_epoch, output_field=BigIntegerField()
            )
        )
        .order_by()
        .values("device__node_id")
        .annotate(n=Count("id"))
        .values("n"),
        output_field=IntegerField(),
    )
    return ExpressionWrapper(Coalesce(healthy, 0) - Coalesce(busy, 0), output_field=IntegerField())


def counted_in_python(epoch: int) -> dict[int, int]:
    """Free devices per listed offer on an online node at ``epoch``, from the rows, by hand."""
    out = {}
    for offer in Offer.objects.filter(listed=True, node__status=NodeStatus.ONLINE):
        devices = list(Device.objects.filter(node_id=offer.node_id))
        healthy = sum(1 for d in devices if d.health == DeviceHealth.OK)
        busy = 0
        for slot in AllocationSlot.objects.filter(live=True, device__node_id=offer.node_id):
            point = slot.device_id * SPAN_DEVICE_STRIDE + epoch
            if not slot.span.isempty and slot.span.lower <= point < slot.span.upper:
                busy += 1
        out[offer.pk] = healthy - busy
    return out


def assert_list_is_exact(epoch: int) -> None:
    """At ``epoch``, the list (stored count or fallback) equals the Python count and the former
    subquery computation, for the unfiltered list and with a ``devices`` minimum."""
    by_hand = counted_in_python(epoch)
    with time_machine.travel(at(epoch), tick=False):
        computed = dict(
            Offer.objects.filter(listed=True, node__status=NodeStatus.ONLINE)
            .annotate(free=todays_free_devices(epoch))
            .values_list("id", "free")
        )
        assert computed == by_hand
        listed = [(o.pk, o.free_devices) for o in offers_list(filters=OfferFilters())]
        assert dict(listed) == {pk: n for pk, n in by_hand.items() if n > 0}
        assert len(listed) == len(dict(listed))
        wide = {o.pk: o.free_devices for o in offers_list(filters=OfferFilters(devices=3))}
        assert wide == {pk: n for pk, n in by_hand.items() if n >= 3}


def assert_store_is_fresh(epoch: int) -> None:
    """After a refresh at ``epoch``: no marks, and every listed offer's stored count is valid at
    ``epoch`` and equal to the Python count (so the list really reads the store)."""
    assert not FreeDeviceChange.objects.exists()
    stored = {c.node_id: c for c in FreeDeviceCount.objects.all()}
    for offer_id, free in counted_in_python(epoch).items():
        row = stored[Offer.objects.get(pk=offer_id).node_id]
        assert row.valid_from <= epoch < row.valid_until
        assert row.devices == free


@pytest.fixture
def market() -> dict[str, Any]:
    """Three online, listed nodes of four devices and one order to hang allocations on."""
    nodes = [online_node(name=f"n{i}", devices=DEVICES_PER_NODE) for i in range(3)]
    buyer = funded_buyer(10)
    order = Order.objects.create(
        buyer=buyer, term=Term.ON_DEMAND, devices_per_node=1, price_limit_micros=3 * MICROS,
        image="busybox", idempotency_key="fixture",
    )  # fmt: skip
    devices = [list(Device.objects.filter(node=node).order_by("index")) for node in nodes]
    return {"nodes": nodes, "order": order, "devices": devices, "t0": int(timezone.now().timestamp())}


def add_slot(
    market: dict[str, Any], device: Device, lo: int, hi: int | None, *, term: str, live: bool = True
) -> None:
    """A slot on ``device`` from epoch ``lo`` to ``hi`` (None: open-ended, as the matcher writes)."""
    allocation = Allocation.objects.create(
        order=market["order"], node_id=device.node_id, term=term, unit_price_micros=MICROS,
        starts_at=at(lo), ends_at=at(hi) if hi is not None else None,
    )  # fmt: skip
    base = device.pk * SPAN_DEVICE_STRIDE
    upper = base + (hi if hi is not None else OPEN_END)
    AllocationSlot.objects.create(
        allocation=allocation, device=device, span=NumericRange(base + lo, upper, "[)"), live=live
    )


# Per device: up to four distinct slot boundaries within three hours of t0. Consecutive pairs are
# windows (reserved, or an on-demand / spot slot cut short by the reservation after it); an odd
# last boundary starts an open-ended on-demand or spot slot. Plus, maybe, a released slot over t0.
device_plan = st.tuples(
    st.lists(st.integers(min_value=-3 * HOUR, max_value=3 * HOUR), max_size=4, unique=True).map(sorted),
    st.lists(st.sampled_from([Term.RESERVED, Term.ON_DEMAND, Term.SPOT]), min_size=3, max_size=3),
    st.booleans(),  # a released (not live) slot over t0
    st.sampled_from([DeviceHealth.OK, DeviceHealth.OK, DeviceHealth.OK, DeviceHealth.FAILED]),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    plans=st.lists(device_plan, min_size=3 * DEVICES_PER_NODE, max_size=3 * DEVICES_PER_NODE),
    moves=st.lists(st.integers(min_value=-4 * HOUR, max_value=4 * HOUR), min_size=1, max_size=4),
    writes=st.lists(
        st.tuples(st.sampled_from(["release", "heal", "fail", "delete"]), st.integers(0, 99)), max_size=4
    ),
)
def test_stored_count_equals_counting_rows_on_random_markets(market, plans, moves, writes):
    t0 = market["t0"]
    devices = [d for per_node in market["devices"] for d in per_node]
    try:
        with transaction.atomic():
            # Given a random market
            boundaries = {t0}
            for device, (points, terms, released, health) in zip(devices, plans, strict=True):
                if health != DeviceHealth.OK:
                    Device.objects.filter(pk=device.pk).update(health=health)
                for i in range(0, len(points) - 1, 2):
                    add_slot(market, device, t0 + points[i], t0 + points[i + 1], term=terms[i // 2])
                if len(points) % 2:
                    add_slot(
                        market,
                        device,
                        t0 + points[-1],
                        None,
                        term=terms[2] if terms[2] != Term.RESERVED else Term.SPOT,
                    )
                if released:
                    add_slot(market, device, t0 - HOUR, t0 + HOUR, term=Term.ON_DEMAND, live=False)
                boundaries |= {t0 + p for p in points}

            # Then the list is exact before any refresh (nothing stored: every node is counted)
            assert_list_is_exact(t0)
            # and after one, now from the store
            offer_free_devices_refresh(at=at(t0))
            assert_store_is_fresh(t0)
            assert_list_is_exact(t0)

            # When the clock moves past window starts and ends with no write
            for move in moves:
                now = t0 + move
                # Then the list is exact before the refresh (out-of-window rows are counted) ...
                assert_list_is_exact(now)
                # ... on both sides of the boundaries nearest to it ...
                for b in sorted(boundaries, key=lambda b: abs(b - now))[:2]:
                    assert_list_is_exact(b - 1)
                    assert_list_is_exact(b)
                # ... and after it, from the store
                offer_free_devices_refresh(at=at(now))
                assert_store_is_fresh(now)
                assert_list_is_exact(now)

            # When slots are released or deleted and devices fail or heal
            now = t0 + moves[-1]
            for action, pick in writes:
                slots = list(AllocationSlot.objects.filter(live=True).order_by("pk"))
                if action == "release" and slots:
                    AllocationSlot.objects.filter(pk=slots[pick % len(slots)].pk).update(live=False)
                elif action == "delete" and slots:
                    AllocationSlot.objects.filter(pk=slots[pick % len(slots)].pk).delete()
                else:
                    health = DeviceHealth.OK if action == "heal" else DeviceHealth.FAILED
                    Device.objects.filter(pk=devices[pick % len(devices)].pk).update(health=health)
                # Then the list follows at once (the write marked its node), and the refresh stores it
                assert_list_is_exact(now)
            offer_free_devices_refresh(at=at(now))
            assert_store_is_fresh(now)
            assert_list_is_exact(now)
            raise Rollback
    except Rollback:
        pass


def test_list_follows_matching_and_job_end_through_the_real_services():
    # Given an 8-device node whose count is stored
    node = online_node(name="solo", devices=8, on_demand="2.00")
    offer_free_devices_refresh()
    assert FreeDeviceChange.objects.count() == 0
    client = APIClient()
    assert client.get("/api/v1/offers").json()["results"][0]["free_devices"] == 8

    # When an on-demand order for 6 devices is matched
    buyer = funded_buyer(1000)
    request = OrderRequest(term="on_demand", devices_per_node=6, price_limit_micros=3 * MICROS, job=SPEC)
    order, _created = order_place(buyer=buyer, request=request, idempotency_key="free-1")
    assert matching_run().placed == [order.pk]

    # Then the slot write marked the node, and the list shows 2 free before and after the refresh
    assert FreeDeviceChange.objects.filter(node_id=node.pk).exists()
    assert client.get("/api/v1/offers").json()["results"][0]["free_devices"] == 2
    assert client.get("/api/v1/offers", {"devices": 3}).json()["results"] == []
    assert offer_free_devices_refresh() == 1
    stored = FreeDeviceCount.objects.get(node_id=node.pk)
    assert stored.devices == 2
    assert client.get("/api/v1/offers").json()["results"][0]["free_devices"] == 2

    # When the job exits, its slots are released: the list shows 8 again, at once
    job = order.jobs.get()
    agent_reports(job, "accepted")
    agent_reports(job, "running")
    agent_reports(job, "exited", exit_code=0)
    job.refresh_from_db()
    assert job.status == JobStatus.EXITED
    assert client.get("/api/v1/offers").json()["results"][0]["free_devices"] == 8
    offer_free_devices_refresh()
    assert FreeDeviceCount.objects.get(node_id=node.pk).devices == 8


def test_reserved_window_opening_ages_the_stored_count_out():
    # Given a node with a reservation starting in an hour, counted now
    node = online_node(name="r", devices=DEVICES_PER_NODE)
    order = Order.objects.create(
        buyer=funded_buyer(10), term=Term.RESERVED, devices_per_node=4, price_limit_micros=3 * MICROS,
        image="busybox", idempotency_key="r", window_start=timezone.now(), window_end=timezone.now() + timedelta(hours=3),
    )  # fmt: skip
    t0 = int(timezone.now().timestamp())
    market = {"order": order}
    for device in Device.objects.filter(node=node):
        add_slot(market, device, t0 + HOUR, t0 + 2 * HOUR, term=Term.RESERVED)
    offer_free_devices_refresh(at=at(t0))
    stored = FreeDeviceCount.objects.get(node_id=node.pk)
    assert (stored.devices, stored.valid_from, stored.valid_until) == (
        DEVICES_PER_NODE,
        -(1 << 62),
        t0 + HOUR,
    )

    # When the window opens with no write, the list no longer shows the node, refresh or not
    with time_machine.travel(at(t0 + HOUR), tick=False):
        assert list(offers_list(filters=OfferFilters())) == []
        offer_free_devices_refresh()
        assert list(offers_list(filters=OfferFilters())) == []
    stored.refresh_from_db()
    assert (stored.devices, stored.valid_from, stored.valid_until) == (0, t0 + HOUR, t0 + 2 * HOUR)
    # and when it closes, the node is back with every device
    with time_machine.travel(at(t0 + 2 * HOUR), tick=False):
        assert [o.free_devices for o in offers_list(filters=OfferFilters())] == [DEVICES_PER_NODE]


def _counts_while_listing(filters: OfferFilters) -> tuple[int, int]:
    """(offers listed, calls of the row-counting function meanwhile) in this transaction."""
    calls = (
        "SELECT pg_stat_get_xact_function_calls('marketplace_node_free_devices(bigint,bigint)'::regprocedure)"
    )
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL track_functions = 'all'")
        cursor.execute(calls)
        before = cursor.fetchone()[0] or 0
        listed = len(list(offers_list(filters=filters)))
        cursor.execute(calls)
        return listed, (cursor.fetchone()[0] or 0) - before


def test_a_fresh_store_is_read_without_counting_devices_or_slots():
    # Given ten nodes, one with a live slot, all refreshed
    nodes = [online_node(name=f"p{i}", devices=2) for i in range(10)]
    market = {
        "order": Order.objects.create(
            buyer=funded_buyer(10), term=Term.ON_DEMAND, devices_per_node=1, price_limit_micros=3 * MICROS,
            image="busybox", idempotency_key="p",
        )
    }  # fmt: skip
    t0 = int(timezone.now().timestamp())
    add_slot(market, Device.objects.filter(node=nodes[0]).first(), t0 - 60, None, term=Term.ON_DEMAND)
    offer_free_devices_refresh()

    # When the list runs, no node is counted from its rows
    assert _counts_while_listing(OfferFilters(devices=2)) == (9, 0)

    # But a node a write marked since is (and only it), until the next refresh
    Device.objects.filter(node=nodes[1]).update(health=DeviceHealth.DEGRADED)
    listed, counted = _counts_while_listing(OfferFilters(devices=2))
    assert listed == 8 and counted >= 1
    offer_free_devices_refresh()
    assert _counts_while_listing(OfferFilters(devices=2)) == (8, 0)


# --- ?verified= -----------------------------------------------------------------------------------


def test_offers_filter_on_verified_nodes_in_the_api_and_the_schema():
    checked = online_node(name="checked", on_demand="2.50")
    unchecked = online_node(name="unchecked", on_demand="2.00")
    Node.objects.filter(pk=checked.pk).update(verified_at=timezone.now())
    Node.objects.filter(pk=unchecked.pk).update(verified_at=None)
    client = APIClient()

    def names(**params: str) -> list[str]:
        reply = client.get("/api/v1/offers", params)
        assert reply.status_code == 200, reply.json()
        return [row["node"]["name"] for row in reply.json()["results"]]

    assert names() == ["unchecked", "checked"]
    assert names(verified="true") == ["checked"]
    assert names(verified="false") == ["unchecked"]
    rows = client.get("/api/v1/offers").json()["results"]
    assert {r["node"]["name"]: r["node"]["verified"] for r in rows} == {"checked": True, "unchecked": False}

    bad = client.get("/api/v1/offers", {"verified": "maybe"})
    assert bad.status_code == 400
    assert set(bad.json()["error"]) == {"code", "message", "fields"}
    assert "verified" in bad.json()["error"]["fields"]

    schema = client.get("/api/schema/", {"format": "json"}).json()
    parameters = {p["name"]: p for p in schema["paths"]["/api/v1/offers"]["get"]["parameters"]}
    assert parameters["verified"]["schema"]["type"] == "boolean"


def test_market_page_filters_on_verified_nodes(client):
    checked = online_node(name="alpha-verified", on_demand="2.50")
    unchecked = online_node(name="beta-plain", on_demand="2.00")
    Node.objects.filter(pk=checked.pk).update(verified_at=timezone.now())
    Node.objects.filter(pk=unchecked.pk).update(verified_at=None)

    everything = client.get(reverse("marketplace:market")).content.decode()
    assert "alpha-verified" in everything and "beta-plain" in everything
    only = client.get(reverse("marketplace:market"), {"verified": "on"}).content.decode()
    assert "alpha-verified" in only and "beta-plain" not in only


def test_offer_list_price_filter_still_compares_micro_units():
    # Guards the refactor of offers_list: the term price filter is untouched by the stored count.
    online_node(name="a", on_demand="2.50")
    offer_free_devices_refresh()
    assert list(offers_list(filters=OfferFilters(max_price_micros=int(Decimal("2.49") * MICROS)))) == []
    assert len(list(offers_list(filters=OfferFilters(max_price_micros=int(Decimal("2.50") * MICROS))))) == 1


def test_offer_serializer_direct_representation_equals_the_declared_fields():
    # The offer list builds each row directly; it must equal what the declared fields produce.
    from rest_framework import serializers

    from marketplace.api.trading import OfferListView, OfferSerializer

    for i, price in enumerate(["2.50", "0.123456", "7.00"]):
        online_node(name=f"s{i}", on_demand=price, reserved="0.10", spot_floor="0.05")
    Node.objects.filter(name="s1").update(verified_at=None)
    offer_free_devices_refresh()
    view = OfferListView()
    view.request = type("R", (), {"query_params": {"sort": "price"}})()
    rows = list(view.get_queryset())
    assert len(rows) == 3
    for offer in rows:
        direct = OfferSerializer(offer).data
        generic = serializers.ModelSerializer.to_representation(OfferSerializer(), offer)
        assert json.dumps(direct, sort_keys=True) == json.dumps(dict(generic), sort_keys=True)


def test_the_beat_runs_the_refresh():
    from config.celery_app import BEAT_SCHEDULE
    from marketplace.tasks import offer_free_devices_refresh as task

    entry = BEAT_SCHEDULE["marketplace-offer-free-devices"]
    assert entry["task"] == task.name == "marketplace.offers.free_devices_refresh"
    online_node(name="beat", devices=2)
    assert task() == 1  # the new offer's node had no stored count
    assert task() == 0  # nothing changed since
