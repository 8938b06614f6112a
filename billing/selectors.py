"""Billing reads: wallets, usage, statements, earnings. Every query is scoped to its owner."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from billing.models import (
    Account,
    AccountKind,
    Entry,
    Lease,
    Payout,
    PayoutAccount,
    PayoutStatus,
    Statement,
    StatementKind,
    TopUp,
    TransactionKind,
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


# --- Portal reads ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DailyUsage:
    day: date
    device_hours: Decimal
    cost_micros: int


def usage_daily_for_buyer(*, user: Any, days: int = 14, now: datetime | None = None) -> list[DailyUsage]:
    """The buyer's last ``days`` UTC days (oldest first, every day present): device-hours from the
    agents' usage samples of the buyer's metered jobs, and cost as the settlement postings on the
    buyer's wallet and reservation escrow. Two queries however much usage there is."""
    now = now or timezone.now()
    first = (now.astimezone(UTC) - timedelta(days=days - 1)).date()
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    hours: dict[date, Decimal] = {}
    lease_table, sample_table = Lease._meta.db_table, UsageSample._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT (s.window_start AT TIME ZONE 'UTC')::date AS day, "  # noqa: S608
            "SUM(s.device_count * EXTRACT(EPOCH FROM (s.window_end - s.window_start))) / 3600 "
            f"FROM {sample_table} s WHERE s.window_start >= %s AND s.job_id IN "
            f"(SELECT job_id FROM {lease_table} WHERE buyer_id = %s AND job_id IS NOT NULL) GROUP BY day",
            [start, user.pk],
        )
        for day, value in cursor.fetchall():
            hours[day] = Decimal(value or 0).quantize(Decimal("0.01"))
    costs: dict[date, int] = {}
    rows = (
        Entry.objects.filter(
            account__user_id=user.pk,
            account__kind__in=[AccountKind.BUYER_WALLET, AccountKind.RESERVATION_ESCROW],
            transaction__kind=TransactionKind.SETTLEMENT,
            transaction__posted_at__gte=start,
        )
        .annotate(day=TruncDate("transaction__posted_at", tzinfo=UTC))
        .values("day")
        .annotate(total=Sum("amount_micros"))
        .values_list("day", "total")
    )
    for day, total in rows:
        costs[day] = -int(total or 0)
    out = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        out.append(
            DailyUsage(day=day, device_hours=hours.get(day, Decimal(0)), cost_micros=costs.get(day, 0))
        )
    return out


@dataclass(frozen=True)
class JobUsage:
    lease: Lease
    device_hours: Decimal
    cost_micros: int


def usage_per_job_for_buyer(*, user: Any, limit: int = 20, now: datetime | None = None) -> list[JobUsage]:
    """The buyer's most recent ``limit`` leases (one per job): device-hours metered so far and the
    amount charged (posted) so far. One query."""
    now = now or timezone.now()
    out = []
    for lease in Lease.objects.filter(buyer_id=user.pk).order_by("-started_at", "-id")[:limit]:
        seconds = Decimal(lease.accrued_seconds)
        if lease.segment_started_at is not None and lease.is_live:
            seconds += Decimal(max(0.0, (now - lease.segment_started_at).total_seconds()))
        device_hours = (seconds * lease.device_count / Decimal(3600)).quantize(Decimal("0.0001"))
        out.append(JobUsage(lease=lease, device_hours=device_hours, cost_micros=lease.charged_micros))
    return out


def provider_statements_for(*, user: Any) -> QuerySet[Statement]:
    """Earnings statements of every provider the user is a member of, newest month first."""
    return Statement.objects.filter(
        kind=StatementKind.PROVIDER_EARNINGS, provider_id__in=provider_ids_for(user)
    ).order_by("-period_start", "-id")


def payout_accounts_for(*, provider_ids: list[int]) -> set[int]:
    """The providers among ``provider_ids`` that have a Stripe Connect account."""
    return set(
        PayoutAccount.objects.filter(provider_id__in=provider_ids).values_list("provider_id", flat=True)
    )


@dataclass(frozen=True)
class UsagePoint:
    bucket: datetime
    utilization_pct: Decimal | None
    power_w: Decimal | None
    device_hours: Decimal


def usage_series(*, job_ids: list[int], since: datetime, bucket_seconds: int = 600) -> list[UsagePoint]:
    """Usage samples of ``job_ids`` since ``since`` in fixed buckets (oldest first): mean
    utilisation, total power drawn (summed over the jobs' samples, averaged over each bucket's
    windows) and device-hours. One query."""
    if not job_ids:
        return []
    table = UsageSample._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT to_timestamp(floor(EXTRACT(EPOCH FROM window_start) / %s) * %s) AS bucket, "  # noqa: S608
            "AVG(utilization_pct), "
            "SUM(power_w * EXTRACT(EPOCH FROM (window_end - window_start))) "
            "/ NULLIF(%s, 0), "
            "SUM(device_count * EXTRACT(EPOCH FROM (window_end - window_start))) / 3600 "
            f"FROM {table} WHERE job_id = ANY(%s) AND window_start >= %s GROUP BY bucket ORDER BY bucket",
            [bucket_seconds, bucket_seconds, bucket_seconds, list(job_ids), since],
        )
        rows = cursor.fetchall()
    return [
        UsagePoint(
            bucket=bucket,
            utilization_pct=None if util is None else Decimal(util).quantize(Decimal("0.1")),
            power_w=None if power is None else Decimal(power).quantize(Decimal("0.1")),
            device_hours=Decimal(hours or 0).quantize(Decimal("0.0001")),
        )
        for bucket, util, power, hours in rows
    ]


def topup_for_buyer(*, user: Any, top_up_id: int) -> TopUp | None:
    """One of the buyer's top-ups, or None (anyone else's is None too)."""
    return TopUp.objects.filter(pk=top_up_id, buyer_id=user.pk).first()


def provider_names_for(*, user: Any) -> dict[int, str]:
    """``{provider_id: name}`` for the providers the user belongs to (through the reverse relation
    the providers app adds to the user, so billing never imports providers)."""
    memberships = getattr(user, "provider_memberships", None)
    if memberships is None:
        return {}
    return dict(memberships.order_by("provider__name").values_list("provider_id", "provider__name"))
