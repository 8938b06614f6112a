"""Holds and reserved bookings."""

from datetime import timedelta

import pytest

from billing.models import AccountKind, HoldStatus, LeaseStatus, ReservationStatus
from billing.selectors import wallet_get
from billing.services import (
    hold_capture,
    hold_place,
    hold_release,
    lease_close,
    lease_open,
    ledger_reconcile,
    reservation_book,
    reservation_cancel,
    settle,
)
from billing.services.ledger import account_get
from core.errors import InsufficientFunds, InvalidTransition
from tests.billing.conftest import T0, fund, make_user

pytestmark = pytest.mark.django_db


def test_hold_that_does_not_fit_raises_and_writes_nothing() -> None:
    buyer = make_user()
    fund(buyer, 3_000_000)

    with pytest.raises(InsufficientFunds):
        hold_place(buyer=buyer, amount_micros=5_000_000, reference="order-1")

    view = wallet_get(user=buyer)
    assert (view.balance_micros, view.held_micros, view.available_micros) == (3_000_000, 0, 3_000_000)


def test_hold_release_exactly_once() -> None:
    buyer = make_user()
    fund(buyer, 10_000_000)
    hold = hold_place(buyer=buyer, amount_micros=6_000_000, reference="order-2")
    assert hold_place(buyer=buyer, amount_micros=6_000_000, reference="order-2").pk == hold.pk
    view = wallet_get(user=buyer)
    assert (view.balance_micros, view.held_micros, view.available_micros) == (
        10_000_000,
        6_000_000,
        4_000_000,
    )

    hold_release(hold=hold)
    with pytest.raises(InvalidTransition):
        hold_release(hold=hold)
    with pytest.raises(InvalidTransition):
        hold_capture(
            hold=hold,
            lease=lease_open(
                buyer=buyer,
                provider_id=1,
                job_id=1,
                device_count=1,
                rate_micros=1,
                started_at=T0,
                idempotency_key="x",
            ),
        )

    view = wallet_get(user=buyer)
    assert (view.balance_micros, view.held_micros, view.available_micros) == (10_000_000, 0, 10_000_000)
    assert ledger_reconcile().ok


def test_captured_hold_prepays_the_lease_and_the_rest_returns() -> None:
    # Hold 6.00 (one hour at 6.00/h); the job runs 20 min = 2.00 from the prepayment; 4.00 returns.
    buyer = make_user()
    fund(buyer, 10_000_000)
    hold = hold_place(buyer=buyer, amount_micros=6_000_000, reference="order-3")
    lease = lease_open(
        buyer=buyer,
        provider_id=5,
        job_id=3,
        device_count=1,
        rate_micros=6_000_000,
        started_at=T0,
        idempotency_key="l3",
    )
    assert hold_capture(hold=hold, lease=lease).status == HoldStatus.CAPTURED

    settle(until=T0 + timedelta(minutes=10))
    assert wallet_get(user=buyer).available_micros == 4_000_000  # paid from the prepayment
    lease_close(lease=lease, at=T0 + timedelta(minutes=20))
    settle(until=T0 + timedelta(minutes=21))

    view = wallet_get(user=buyer)
    assert (view.available_micros, view.held_micros, view.reserved_micros) == (8_000_000, 0, 0)
    assert account_get(kind=AccountKind.PROVIDER_PAYABLE, provider_id=5).balance_micros == 1_800_000
    assert ledger_reconcile().ok


def test_reserved_booking_escrow_released_as_time_passes() -> None:
    # 2 devices x 3.00/h for 2 h = 12.00 to escrow; after 30 min 3.00 released (2.70 + 0.30 fee).
    buyer = make_user()
    fund(buyer, 20_000_000)
    start = T0 + timedelta(hours=1)
    reservation = reservation_book(
        buyer=buyer, provider_id=9, device_count=2, rate_micros=3_000_000,
        starts_at=start, ends_at=start + timedelta(hours=2), idempotency_key="r1",
    )  # fmt: skip
    assert reservation.amount_micros == 12_000_000
    view = wallet_get(user=buyer)
    assert (view.available_micros, view.reserved_micros) == (8_000_000, 12_000_000)

    settle(until=start + timedelta(minutes=30))
    assert account_get(kind=AccountKind.PROVIDER_PAYABLE, provider_id=9).balance_micros == 2_700_000
    assert wallet_get(user=buyer).reserved_micros == 9_000_000

    settle(until=start + timedelta(hours=3))
    reservation.lease.refresh_from_db()
    assert reservation.lease.status == LeaseStatus.CLOSED and reservation.lease.settled_final
    assert account_get(kind=AccountKind.PROVIDER_PAYABLE, provider_id=9).balance_micros == 10_800_000
    assert account_get(kind=AccountKind.PLATFORM_FEE).balance_micros == 1_200_000
    view = wallet_get(user=buyer)
    assert (view.available_micros, view.reserved_micros) == (8_000_000, 0)
    with pytest.raises(InvalidTransition):
        reservation_cancel(reservation=reservation, at=start + timedelta(hours=3))


def test_reservation_that_does_not_fit_is_refused() -> None:
    buyer = make_user()
    fund(buyer, 1_000_000)
    with pytest.raises(InsufficientFunds):
        reservation_book(
            buyer=buyer, provider_id=9, device_count=1, rate_micros=3_000_000,
            starts_at=T0, ends_at=T0 + timedelta(hours=1), idempotency_key="r-big",
        )  # fmt: skip
    assert wallet_get(user=buyer).available_micros == 1_000_000


def test_cancel_before_start_refunds_minus_the_fee() -> None:
    # 12.00 booked; the default cancellation fee is 10%: 10.80 back, 1.20 kept.
    buyer = make_user()
    fund(buyer, 20_000_000)
    start = T0 + timedelta(days=1)
    reservation = reservation_book(
        buyer=buyer, provider_id=9, device_count=2, rate_micros=3_000_000,
        starts_at=start, ends_at=start + timedelta(hours=2), idempotency_key="r2",
    )  # fmt: skip

    cancelled = reservation_cancel(reservation=reservation, at=T0)

    assert cancelled.status == ReservationStatus.CANCELLED and cancelled.cancel_fee_micros == 1_200_000
    assert wallet_get(user=buyer).available_micros == 18_800_000
    assert account_get(kind=AccountKind.PLATFORM_FEE).balance_micros == 1_200_000
    with pytest.raises(InvalidTransition):
        reservation_cancel(reservation=reservation, at=T0)
    settle(until=start + timedelta(hours=3))  # a cancelled booking is never billed
    assert account_get(kind=AccountKind.PROVIDER_PAYABLE, provider_id=9).balance_micros == 0
    assert ledger_reconcile().ok
