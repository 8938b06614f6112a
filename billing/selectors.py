"""Billing reads: wallets, usage, statements, earnings. Every query is scoped to its owner."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import QuerySet, Sum

from billing.models import (
    Account,
    AccountKind,
    Lease,
    Payout,
    PayoutStatus,
    Statement,
    StatementKind,
    UsageSample,
)
from billing.services.ledger import default_currency


@dataclass(frozen=True)
class WalletView:
    currency: str
    balance_micros: int
    held_micros: int
    available_micros: int
    reserved_micros: int
    credit_limit_micros: int


def wallet_get(*, user: Any, currency: str | None = None) -> WalletView:
    """balance = available money + held money; available = wallet + credit line; reserved = escrow
    prepaying reserved bookings and started on-demand leases."""
    currency = currency or default_currency()
    rows = {a.kind: a for a in Account.objects.filter(user_id=user.pk, currency=currency)}
    wallet = rows.get(AccountKind.BUYER_WALLET)
    held = rows[AccountKind.BUYER_HOLDS].balance_micros if AccountKind.BUYER_HOLDS in rows else 0
    escrow = (
        rows[AccountKind.RESERVATION_ESCROW].balance_micros if AccountKind.RESERVATION_ESCROW in rows else 0
    )
    own = wallet.balance_micros if wallet else 0
    from django.conf import settings

    credit = wallet.credit_limit_micros if wallet else settings.BILLING_CREDIT_LINE_MICROS
    return WalletView(currency, own + held, held, own + credit, escrow, credit)


def provider_ids_for(user: Any) -> list[int]:
    """The providers a user is a member of, read through the reverse relation the providers app
    adds to the user (``provider_memberships``) so billing never imports providers."""
    memberships = getattr(user, "provider_memberships", None)
    if memberships is None:
        return []
    return sorted(memberships.values_list("provider_id", flat=True))


def leases_for_buyer(*, user: Any) -> QuerySet[Lease]:
    return Lease.objects.filter(buyer_id=user.pk)


@dataclass(frozen=True)
class UsageAggregate:
    samples: int
    avg_utilization_pct: Decimal | None
    energy_kwh: Decimal | None


def usage_aggregates(*, job_ids: list[int]) -> dict[int, UsageAggregate]:
    """Per job: sample count, mean utilisation, energy in kWh (sum of power x window, where known)."""
    if not job_ids:
        return {}
    table = UsageSample._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT job_id, COUNT(*), AVG(utilization_pct), "  # noqa: S608
            "SUM(power_w * EXTRACT(EPOCH FROM (window_end - window_start))) / 3600000 "
            f"FROM {table} WHERE job_id = ANY(%s) GROUP BY job_id",
            [list(job_ids)],
        )
        out = {}
        for job_id, count, avg, kwh in cursor.fetchall():
            out[int(job_id)] = UsageAggregate(
                samples=int(count),
                avg_utilization_pct=None if avg is None else Decimal(avg).quantize(Decimal("0.01")),
                energy_kwh=None if kwh is None else Decimal(kwh).quantize(Decimal("0.000001")),
            )
    return out


def invoices_for(*, user: Any) -> QuerySet[Statement]:
    return Statement.objects.filter(kind=StatementKind.BUYER_INVOICE, user_id=user.pk)


def statements_visible_to(*, user: Any) -> QuerySet[Statement]:
    from django.db.models import Q

    return Statement.objects.filter(Q(user_id=user.pk) | Q(provider_id__in=provider_ids_for(user)))


def provider_earnings(*, provider_id: int, currency: str | None = None) -> dict[str, Any]:
    currency = currency or default_currency()
    balances = dict(
        Account.objects.filter(provider_id=provider_id, currency=currency).values_list(
            "kind", "balance_micros"
        )
    )
    paid = (
        Payout.objects.filter(provider_id=provider_id, currency=currency, status=PayoutStatus.PAID).aggregate(
            total=Sum("amount_micros")
        )["total"]
        or 0
    )
    return {
        "provider_id": provider_id,
        "currency": currency,
        "payable_micros": balances.get(AccountKind.PROVIDER_PAYABLE, 0),
        "in_transit_micros": balances.get(AccountKind.PROVIDER_IN_TRANSIT, 0),
        "paid_out_micros": int(paid),
    }


def payouts_for(*, user: Any) -> QuerySet[Payout]:
    return Payout.objects.filter(provider_id__in=provider_ids_for(user))
