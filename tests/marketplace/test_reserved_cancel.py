"""Cancelling a confirmed reserved order, and stopping its queued job, before and after its window.

Before the window starts, cancelling the order (API or portal) or stopping its queued job (API or
portal) cancels the reservation: the escrow returns to the wallet less the cancellation fee
(``BILLING_RESERVATION_CANCEL_FEE_BPS``, kept as platform fee) and the devices are free for the
window again. Once the window has started the booking stays paid (DESIGN.md, "Reserved").
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from billing.models import AccountKind, Reservation, ReservationStatus
from billing.services import account_get
from marketplace.models import Allocation, AllocationStatus, Job, JobStatus, Order, OrderReason, OrderStatus
from marketplace.services.matching import matching_run
from tests.marketplace.market_helpers import MICROS, funded_buyer, online_node

pytestmark = pytest.mark.django_db

JOB = {"image": "nvcr.io/nvidia/pytorch:24.05-py3", "command": ["python", "train.py"]}
# 2 devices x 2.00 per device-hour x 2 hours, and 10 % of it kept when cancelled (the default fee).
BOOKED = 2 * 2 * 2 * MICROS
FEE = BOOKED // 10


def api_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def portal_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def wallet(user: Any) -> int:
    return account_get(kind=AccountKind.BUYER_WALLET, user_id=user.pk).balance_micros


def escrow(user: Any) -> int:
    return account_get(kind=AccountKind.RESERVATION_ESCROW, user_id=user.pk).balance_micros


def platform_fee() -> int:
    return account_get(kind=AccountKind.PLATFORM_FEE).balance_micros


def book(buyer: Any, start: datetime, *, key: str = "r", node_count: int = 1) -> Order:
    """A reserved order for 2 devices per node over [start, start + 2 h), placed and confirmed."""
    response = api_for(buyer).post(
        "/api/v1/orders",
        {
            "term": "reserved",
            "devices_per_node": 2,
            "node_count": node_count,
            "price_limit": "3.00",
            "window_start": start.isoformat(),
            "window_end": (start + timedelta(hours=2)).isoformat(),
            "job": JOB,
        },
        format="json",
        HTTP_IDEMPOTENCY_KEY=key,
    )
    assert response.status_code == 201, response.json()
    matching_run()
    order = Order.objects.get(pk=response.json()["id"])
    assert order.status == OrderStatus.ALLOCATED
    assert Job.objects.get(order=order, node__name="n").status == JobStatus.QUEUED
    return order


def start_in_an_hour() -> datetime:
    return (timezone.now() + timedelta(hours=1)).replace(microsecond=0)


def assert_cancelled_and_refunded(order: Order, buyer: Any, fee_before: int) -> None:
    order.refresh_from_db()
    assert order.status == OrderStatus.CANCELLED
    assert order.status_reason == OrderReason.CANCELLED_BY_BUYER
    assert wallet(buyer) == 1000 * MICROS - FEE * order.node_count
    assert escrow(buyer) == 0
    assert platform_fee() - fee_before == FEE * order.node_count
    reservations = Reservation.objects.filter(lease_id__in=[j.lease_id for j in order.jobs.all()])
    assert reservations.count() == order.node_count
    assert set(reservations.values_list("status", flat=True)) == {ReservationStatus.CANCELLED}
    assert set(order.jobs.values_list("status", flat=True)) == {JobStatus.STOPPED}
    assert not Allocation.objects.filter(order=order, status=AllocationStatus.LIVE).exists()


def assert_window_is_free_again(start: datetime) -> None:
    """Another buyer can book the same devices for the same window."""
    other = funded_buyer(1000)
    book(other, start, key="again")


def test_api_cancel_before_the_window_refunds_all_but_the_fee_and_frees_the_devices():
    # Given a confirmed reservation of both devices of the only node
    online_node(name="n", devices=2, reserved="2.00")
    buyer = funded_buyer(1000)
    start = start_in_an_hour()
    order = book(buyer, start)
    assert wallet(buyer) == 1000 * MICROS - BOOKED
    assert escrow(buyer) == BOOKED
    fee_before = platform_fee()

    # When the buyer cancels it through the API before the window
    response = api_for(buyer).post(f"/api/v1/orders/{order.pk}/cancel")

    # Then it is cancelled, refunded less the fee, and the devices are bookable again
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "cancelled"
    assert response.json()["status_reason_code"] == OrderReason.CANCELLED_BY_BUYER
    assert_cancelled_and_refunded(order, buyer, fee_before)
    assert_window_is_free_again(start)

    # And cancelling again changes nothing
    again = api_for(buyer).post(f"/api/v1/orders/{order.pk}/cancel")
    assert again.status_code == 200
    assert wallet(buyer) == 1000 * MICROS - FEE


def test_api_cancel_of_a_gang_reservation_refunds_every_node():
    online_node(name="n", devices=2, reserved="2.00", cluster="c")
    online_node(name="m", devices=2, reserved="2.00", cluster="c")
    buyer = funded_buyer(1000)
    order = book(buyer, start_in_an_hour(), node_count=2)
    assert escrow(buyer) == 2 * BOOKED
    fee_before = platform_fee()

    assert api_for(buyer).post(f"/api/v1/orders/{order.pk}/cancel").status_code == 200

    assert_cancelled_and_refunded(order, buyer, fee_before)


def test_portal_cancel_before_the_window_names_the_fee_then_refunds():
    online_node(name="n", devices=2, reserved="2.00")
    buyer = funded_buyer(1000)
    start = start_in_an_hour()
    order = book(buyer, start)
    fee_before = platform_fee()
    client = portal_for(buyer)

    confirm = client.get(f"/orders/{order.pk}/cancel/").content.decode()
    assert "Cancel this reservation?" in confirm
    assert "0.80" in confirm  # the fee the buyer will pay

    done = client.post(f"/orders/{order.pk}/cancel/", follow=True)
    assert done.status_code == 200
    assert "0.80" in done.content.decode()  # the confirmation names the fee kept
    assert_cancelled_and_refunded(order, buyer, fee_before)
    assert_window_is_free_again(start)


def test_api_stop_of_the_queued_job_before_the_window_cancels_the_reservation():
    online_node(name="n", devices=2, reserved="2.00")
    buyer = funded_buyer(1000)
    start = start_in_an_hour()
    order = book(buyer, start)
    job = Job.objects.get(order=order)
    fee_before = platform_fee()

    response = api_for(buyer).post(f"/api/v1/jobs/{job.pk}/stop")

    assert response.status_code == 200, response.json()
    assert response.json()["status"] == JobStatus.STOPPED
    assert_cancelled_and_refunded(order, buyer, fee_before)
    assert_window_is_free_again(start)


def test_portal_stop_of_the_queued_job_before_the_window_cancels_the_reservation():
    online_node(name="n", devices=2, reserved="2.00")
    buyer = funded_buyer(1000)
    order = book(buyer, start_in_an_hour())
    job = Job.objects.get(order=order)
    fee_before = platform_fee()

    assert portal_for(buyer).post(f"/jobs/{job.pk}/stop/").status_code == 302

    assert_cancelled_and_refunded(order, buyer, fee_before)


def test_after_the_window_started_stopping_ends_the_job_and_the_booking_stays_paid():
    online_node(name="n", devices=2, reserved="2.00")
    buyer = funded_buyer(1000)
    start = start_in_an_hour()
    order = book(buyer, start)
    job = Job.objects.get(order=order)

    with time_machine.travel(start + timedelta(minutes=5)):
        response = api_for(buyer).post(f"/api/v1/jobs/{job.pk}/stop")
        assert response.status_code == 200, response.json()
        # Cancelling the order now stops its jobs but refunds nothing either
        assert api_for(buyer).post(f"/api/v1/orders/{order.pk}/cancel").status_code == 200

    job.refresh_from_db()
    order.refresh_from_db()
    assert job.status == JobStatus.STOPPED
    assert order.status == OrderStatus.ENDED
    assert Reservation.objects.get(lease_id=job.lease_id).status == ReservationStatus.CONFIRMED
    assert wallet(buyer) == 1000 * MICROS - BOOKED
