"""Reserved bookings: the whole amount goes to escrow at confirmation; the reserved lease releases it
to the provider (and the platform fee) as settlement passes through the window."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.models import (
    AccountKind,
    Lease,
    LeaseKind,
    LeaseStatus,
    Reservation,
    ReservationStatus,
    TransactionKind,
)
from billing.services.leases import MINIMUM_SECONDS, lease_open, seconds_between
from billing.services.ledger import Posting, account_get, accounts_lock, default_currency, posting_write
from billing.services.wallets import available_micros, buyer_accounts
from core.errors import InsufficientFunds, InvalidTransition, ValidationFailed
from core.money import round_micros


def reservation_price(*, device_count: int, rate_micros: int, starts_at: datetime, ends_at: datetime) -> int:
    """The booked amount: ``round_half_even(rate x devices x seconds / 3600)``."""
    return round_micros(
        Decimal(rate_micros * device_count) * seconds_between(starts_at, ends_at) / Decimal(3600)
    )


def reservation_book(
    *,
    buyer: object,
    provider_id: int,
    device_count: int,
    rate_micros: int,
    starts_at: datetime,
    ends_at: datetime,
    idempotency_key: str,
    job_id: int | None = None,
    currency: str | None = None,
) -> Reservation:
    """Confirm a reserved booking for ``[starts_at, ends_at)``.

    Contract: locks the buyer's wallet; moves the full price wallet -> escrow or raises
    ``InsufficientFunds`` (nothing written). Opens a ``reserved`` lease prepaid with that escrow and
    ending at ``ends_at``; settlement then releases it to provider payable + fee as time passes,
    and the released total equals the booked price exactly. Idempotent on ``idempotency_key``.
    """
    if ends_at <= starts_at or seconds_between(starts_at, ends_at) < MINIMUM_SECONDS:
        raise ValidationFailed("A reservation lasts at least 60 seconds.", fields={"ends_at": "too early"})
    currency = currency or default_currency()
    user_id = int(buyer.pk)  # type: ignore[attr-defined]
    existing = Reservation.objects.filter(lease__idempotency_key=idempotency_key).first()
    if existing is not None:
        return existing
    amount = reservation_price(
        device_count=device_count, rate_micros=rate_micros, starts_at=starts_at, ends_at=ends_at
    )
    accounts = buyer_accounts(user_id=user_id, currency=currency)
    with transaction.atomic():
        locked = accounts_lock([accounts.wallet.pk, accounts.escrow.pk])
        if amount > available_micros(locked[accounts.wallet.pk]):
            raise InsufficientFunds("The reservation does not fit the available balance.")
        lease = lease_open(
            buyer=buyer,
            provider_id=provider_id,
            job_id=job_id,
            device_count=device_count,
            rate_micros=rate_micros,
            started_at=starts_at,
            kind=LeaseKind.RESERVED,
            currency=currency,
            idempotency_key=idempotency_key,
            ends_at=ends_at,
            prepaid_micros=amount,
        )
        reservation = Reservation.objects.create(buyer_id=user_id, lease=lease, amount_micros=amount)
        posting = Posting(TransactionKind.RESERVATION, f"reservation:{reservation.pk}:book", currency)
        posting.add(accounts.wallet.pk, -amount, lease.pk)
        posting.add(accounts.escrow.pk, amount, lease.pk)
        posting_write(posting)
    return reservation


def reservation_cancel_fee(*, amount_micros: int) -> int:
    """What cancelling a booking of ``amount_micros`` before its start keeps as platform fee."""
    return round_micros(
        Decimal(amount_micros) * settings.BILLING_RESERVATION_CANCEL_FEE_BPS / Decimal(10_000)
    )


def reservation_cancel(*, reservation: Reservation, at: datetime | None = None) -> Reservation:
    """Cancel before the window starts: refund escrow minus ``BILLING_RESERVATION_CANCEL_FEE_BPS``
    (kept as platform fee). Locks the lease; after the start raises ``InvalidTransition``, and so
    does a second cancel."""
    at = at or timezone.now()
    with transaction.atomic():
        lease = Lease.objects.select_for_update().get(pk=reservation.lease_id)
        reservation = Reservation.objects.select_for_update().get(pk=reservation.pk)
        if reservation.status != ReservationStatus.CONFIRMED:
            raise InvalidTransition(f"Reservation {reservation.pk} is already {reservation.status}.")
        if at >= lease.started_at or lease.settle_seq:
            raise InvalidTransition("The reservation has started; it can no longer be cancelled.")
        accounts = buyer_accounts(user_id=lease.buyer_id, currency=lease.currency)
        fee_account = account_get(kind=AccountKind.PLATFORM_FEE, currency=lease.currency)
        accounts_lock([accounts.wallet.pk, accounts.escrow.pk, fee_account.pk])
        amount = lease.prepaid_micros
        fee = reservation_cancel_fee(amount_micros=amount)
        posting = Posting(
            TransactionKind.RESERVATION_CANCEL, f"reservation:{reservation.pk}:cancel", lease.currency
        )
        posting.add(accounts.escrow.pk, -amount, lease.pk)
        posting.add(accounts.wallet.pk, amount - fee, lease.pk)
        posting.add(fee_account.pk, fee, lease.pk)
        posting_write(posting)
        Lease.objects.filter(pk=lease.pk).update(
            status=LeaseStatus.CANCELLED,
            prepaid_micros=0,
            settled_final=True,
            segment_started_at=None,
            ends_at=at,
        )
        changed = Reservation.objects.filter(pk=reservation.pk, status=ReservationStatus.CONFIRMED).update(
            status=ReservationStatus.CANCELLED, cancel_fee_micros=fee, cancelled_at=at
        )
        if changed != 1:
            raise InvalidTransition("Reservation was cancelled concurrently.")
    return Reservation.objects.get(pk=reservation.pk)
