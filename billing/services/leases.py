"""Leases: priced time, and the one function that says what a lease has cost up to an instant.

Rates are micro-units per device-hour. The cumulative charge at ``until`` is
``round_half_even(sum(rate x devices x billable_seconds) / 3600)`` with a 60-second minimum per
lease; settlement posts the difference between it and what was already posted.
"""

from __future__ import annotations

import decimal
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Protocol

from django.db import transaction

from billing.models import Lease, LeaseKind, LeaseSegment, LeaseStatus
from billing.services.ledger import default_currency
from core.errors import InvalidTransition, ValidationFailed
from core.money import round_micros

MINIMUM_SECONDS = Decimal(60)
_MINIMUM_USEC = 60_000_000
_USEC_PER_HOUR = Decimal(3_600_000_000)
_CTX = decimal.Context(prec=60)


def seconds_between(start: datetime, end: datetime) -> Decimal:
    """Exact seconds (microsecond resolution) from ``start`` to ``end``; never negative."""
    if end <= start:
        return Decimal(0)
    delta = end - start
    return Decimal(delta.days * 86_400 + delta.seconds) + Decimal(delta.microseconds).scaleb(-6)


class PricedTime(Protocol):
    """What the charge needs to know about a lease (a ``Lease`` or a lighter row)."""

    @property
    def accrued_micro_seconds(self) -> Decimal: ...
    @property
    def accrued_seconds(self) -> Decimal: ...
    @property
    def segment_started_at(self) -> datetime | None: ...
    @property
    def ends_at(self) -> datetime | None: ...
    @property
    def started_at(self) -> datetime: ...
    @property
    def rate_micros(self) -> int: ...
    @property
    def opening_rate_micros(self) -> int: ...
    @property
    def device_count(self) -> int: ...
    @property
    def status(self) -> str: ...


def _usec(start: datetime, end: datetime) -> int:
    if end <= start:
        return 0
    delta = end - start
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _cost_usec(lease: PricedTime, until: datetime) -> tuple[int, int]:
    """(rate micros x devices x microseconds, billable microseconds) up to ``until``: exact integers."""
    accrued = int(Decimal(lease.accrued_micro_seconds).scaleb(6))
    usec = int(Decimal(lease.accrued_seconds).scaleb(6))
    per_usec = lease.rate_micros * lease.device_count
    if lease.segment_started_at is not None:
        end = until if lease.ends_at is None else min(until, lease.ends_at)
        extra = _usec(lease.segment_started_at, end)
        accrued += per_usec * extra
        usec += extra
    if until >= lease.started_at and lease.status != LeaseStatus.CANCELLED:
        # The minimum is a floor on the cost (60 s at the opening rate), not extra seconds at the
        # current rate: so the cumulative charge never falls when a later segment is cheaper.
        accrued = max(accrued, lease.opening_rate_micros * lease.device_count * _MINIMUM_USEC)
        usec = max(usec, _MINIMUM_USEC)
    return accrued, usec


def lease_cost_exact(lease: PricedTime, until: datetime) -> tuple[Decimal, Decimal]:
    """(cost in micro-units x 3600, billable seconds) of ``lease`` up to ``until``, unrounded."""
    accrued, usec = _cost_usec(lease, until)
    return Decimal(accrued).scaleb(-6), Decimal(usec).scaleb(-6)


def lease_charge_until(lease: PricedTime, until: datetime) -> int:
    """The cumulative charge of ``lease`` through ``until`` in micro-units (booked rounding)."""
    accrued, _ = _cost_usec(lease, until)
    return round_micros(_CTX.divide(Decimal(accrued), _USEC_PER_HOUR))


def fee_for(charged_micros: int, fee_bps: int) -> int:
    """The platform fee inside a cumulative charge, itself rounded cumulatively."""
    return round_micros(_CTX.divide(Decimal(charged_micros) * fee_bps, Decimal(10_000)))


def _accrue(lease: Lease, at: datetime) -> None:
    """Fold the open segment up to ``at`` into the exact accumulators and close it."""
    assert lease.segment_started_at is not None
    end = at if lease.ends_at is None else min(at, lease.ends_at)
    seconds = seconds_between(lease.segment_started_at, end)
    lease.accrued_micro_seconds = _CTX.add(
        Decimal(lease.accrued_micro_seconds),
        _CTX.multiply(Decimal(lease.rate_micros * lease.device_count), seconds),
    )
    lease.accrued_seconds = Decimal(lease.accrued_seconds) + seconds
    LeaseSegment.objects.filter(lease=lease, ended_at__isnull=True).update(
        ended_at=max(end, lease.segment_started_at)
    )
    lease.segment_started_at = None


def _locked(lease: Lease) -> Lease:
    return Lease.objects.select_for_update().get(pk=lease.pk)


def _check_time(lease: Lease, at: datetime) -> None:
    if lease.segment_started_at is not None and at < lease.segment_started_at:
        raise ValidationFailed(
            f"{at.isoformat()} is before the current rate segment began ({lease.segment_started_at.isoformat()}).",
            fields={"at": "before the current segment"},
        )


def lease_open(
    *,
    buyer: object,
    provider_id: int,
    job_id: int | None,
    device_count: int,
    rate_micros: int,
    started_at: datetime,
    kind: str = LeaseKind.ON_DEMAND,
    currency: str | None = None,
    idempotency_key: str,
    ends_at: datetime | None = None,
    prepaid_micros: int = 0,
    fee_bps: int | None = None,
) -> Lease:
    """Start billing ``device_count`` devices at ``rate_micros`` per device-hour from ``started_at``.

    Contract: idempotent on ``idempotency_key`` (a second call returns the first lease unchanged).
    Posts nothing itself; the settlement run bills it from ``started_at``. Minimum charge: 60 s
    at the opening rate (a floor on the cumulative charge, unaffected by later rate changes).
    ``ends_at`` fixes the end up front (reserved bookings); ``prepaid_micros`` is escrow already
    moved for it (``reservation_book`` does both). The platform fee rate is fixed at opening.
    """
    from django.conf import settings

    existing = Lease.objects.filter(idempotency_key=idempotency_key).first()
    if existing is not None:
        return existing
    if device_count <= 0:
        raise ValidationFailed("device_count must be positive", fields={"device_count": "must be positive"})
    if rate_micros < 0:
        raise ValidationFailed("rate must not be negative", fields={"rate_micros": "negative"})
    if kind not in LeaseKind.values:
        raise ValidationFailed(f"unknown lease kind {kind!r}", fields={"kind": "unknown"})
    with transaction.atomic():
        lease = Lease.objects.create(
            buyer_id=int(buyer.pk),  # type: ignore[attr-defined]
            provider_id=provider_id,
            job_id=job_id,
            kind=kind,
            currency=currency or default_currency(),
            device_count=device_count,
            rate_micros=rate_micros,
            opening_rate_micros=rate_micros,
            started_at=started_at,
            segment_started_at=started_at,
            ends_at=ends_at,
            prepaid_micros=prepaid_micros,
            fee_bps=settings.SUANLI_PLATFORM_FEE_BPS if fee_bps is None else fee_bps,
            idempotency_key=idempotency_key,
        )
        LeaseSegment.objects.create(
            lease=lease, rate_micros=rate_micros, device_count=device_count, started_at=started_at
        )
    return lease


def lease_set_rate(*, lease: Lease, rate_micros: int, at: datetime) -> Lease:
    """Change the price from ``at`` on (spot clearing). Locks the lease.

    Time before ``at`` keeps its old rate. ``at`` must not precede the current segment. Reserved
    leases have a fixed price (``InvalidTransition``); so do closed ones.
    """
    if rate_micros < 0:
        raise ValidationFailed("rate must not be negative", fields={"rate_micros": "negative"})
    with transaction.atomic():
        lease = _locked(lease)
        if lease.kind == LeaseKind.RESERVED or not lease.is_live:
            raise InvalidTransition(
                f"Lease {lease.pk} ({lease.kind}, {lease.status}) cannot change its rate."
            )
        _check_time(lease, at)
        if lease.segment_started_at is not None:
            _accrue(lease, at)
            lease.segment_started_at = at
            LeaseSegment.objects.create(
                lease=lease, rate_micros=rate_micros, device_count=lease.device_count, started_at=at
            )
        lease.rate_micros = rate_micros
        lease.save(
            update_fields=["rate_micros", "segment_started_at", "accrued_micro_seconds", "accrued_seconds"]
        )
    return lease


def lease_pause(*, lease: Lease, at: datetime) -> Lease:
    """Stop the meter at ``at`` (node offline, job suspended). ``at`` may lie before the last
    settlement: the next run then posts the negative difference. Locks the lease."""
    with transaction.atomic():
        lease = _locked(lease)
        if lease.status != LeaseStatus.OPEN or lease.kind == LeaseKind.RESERVED:
            raise InvalidTransition(f"Lease {lease.pk} ({lease.kind}, {lease.status}) cannot be paused.")
        _check_time(lease, at)
        _accrue(lease, at)
        lease.status = LeaseStatus.PAUSED
        lease.settled_final = False
        lease.save(
            update_fields=[
                "status",
                "segment_started_at",
                "accrued_micro_seconds",
                "accrued_seconds",
                "settled_final",
            ]
        )
    return lease


def lease_resume(*, lease: Lease, at: datetime) -> Lease:
    """Start the meter again at ``at`` at the current rate. Locks the lease."""
    with transaction.atomic():
        lease = _locked(lease)
        if lease.status != LeaseStatus.PAUSED:
            raise InvalidTransition(f"Lease {lease.pk} is {lease.status}, not paused.")
        lease.status = LeaseStatus.OPEN
        lease.segment_started_at = at
        lease.settled_final = False
        LeaseSegment.objects.create(
            lease=lease, rate_micros=lease.rate_micros, device_count=lease.device_count, started_at=at
        )
        lease.save(update_fields=["status", "segment_started_at", "settled_final"])
    return lease


def lease_close(*, lease: Lease, at: datetime) -> Lease:
    """End billing at ``at`` (job stopped, node lost at its last heartbeat). Locks the lease.

    The next settlement run posts the final difference (negative if ``at`` lies before what was
    already billed) and returns unused prepayment to the wallet. A reserved lease closed before its
    window ends stops there too (the buyer is not charged for time the provider did not deliver).
    Closing a closed lease raises ``InvalidTransition``.
    """
    with transaction.atomic():
        lease = _locked(lease)
        if not lease.is_live:
            raise InvalidTransition(f"Lease {lease.pk} is already {lease.status}.")
        _check_time(lease, at)
        if lease.segment_started_at is not None:
            _accrue(lease, at)
        lease.ends_at = at if lease.ends_at is None else min(lease.ends_at, at)
        lease.status = LeaseStatus.CLOSED
        lease.settled_final = False
        lease.save(
            update_fields=[
                "status",
                "ends_at",
                "segment_started_at",
                "accrued_micro_seconds",
                "accrued_seconds",
                "settled_final",
            ]
        )
    return lease


def lease_owed_micros(lease: Lease, at: datetime) -> int:
    """Charge accrued but not yet posted (positive when the wallet could not cover it)."""
    return lease_charge_until(lease, at) - lease.charged_micros


def horizon(intervals: int, interval_s: int) -> timedelta:
    return timedelta(seconds=intervals * interval_s)
