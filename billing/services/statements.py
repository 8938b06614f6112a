"""Monthly statements: buyer invoices and provider earnings statements.

A statement is a draft, rebuilt from the journal, while its month runs; after the month it is
built one last time and finalized, and a database trigger rejects any change from then on.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import structlog
from django.db import transaction
from django.utils import timezone

from billing.models import (
    Account,
    AccountKind,
    Entry,
    Lease,
    LeaseSegment,
    Statement,
    StatementKind,
    StatementStatus,
    TransactionKind,
)
from billing.services.leases import seconds_between
from core.money import format_amount

log = structlog.get_logger(__name__)


def month_start(day: date) -> date:
    return day.replace(day=1)


def next_month(day: date) -> date:
    return date(day.year + (day.month == 12), day.month % 12 + 1, 1)


def _bounds(period_start: date) -> tuple[datetime, datetime]:
    start = datetime(period_start.year, period_start.month, 1, tzinfo=UTC)
    end_day = next_month(period_start)
    return start, datetime(end_day.year, end_day.month, 1, tzinfo=UTC)


def _entries(account_ids: list[int], start: datetime, end: datetime) -> list[dict[str, Any]]:
    rows: Any = (
        Entry.objects.filter(
            account_id__in=account_ids, transaction__posted_at__gte=start, transaction__posted_at__lt=end
        )
        .values(
            "amount_micros",
            "lease_id",
            "account_id",
            "transaction_id",
            "transaction__kind",
            "transaction__posted_at",
        )
        .order_by("transaction__posted_at", "id")
    )
    return list(rows)


def _device_hours(leases: dict[int, Lease], start: datetime, end: datetime) -> dict[int, Decimal]:
    hours: dict[int, Decimal] = defaultdict(Decimal)
    for seg in LeaseSegment.objects.filter(lease_id__in=list(leases)):
        lease = leases[seg.lease_id]
        seg_end = seg.ended_at or lease.ends_at or end
        if lease.ends_at:
            seg_end = min(seg_end, lease.ends_at)
        secs = seconds_between(max(seg.started_at, start), min(seg_end, end))
        hours[seg.lease_id] += secs * seg.device_count / Decimal(3600)
    return hours


def _money(micros: int) -> str:
    return format_amount(micros)


def _buyer_lines(
    user_id: int, currency: str, start: datetime, end: datetime
) -> tuple[list[dict[str, Any]], int]:
    accounts = dict(
        Account.objects.filter(
            user_id=user_id,
            currency=currency,
            kind__in=[AccountKind.BUYER_WALLET, AccountKind.RESERVATION_ESCROW],
        ).values_list("pk", "kind")
    )
    charges: dict[int, int] = defaultdict(int)
    fees: dict[int, int] = defaultdict(int)
    money_lines: list[dict[str, Any]] = []
    for e in _entries(list(accounts), start, end):
        kind = e["transaction__kind"]
        if kind == TransactionKind.SETTLEMENT:
            charges[e["lease_id"]] -= e["amount_micros"]
        elif kind == TransactionKind.RESERVATION_CANCEL:
            fees[e["lease_id"]] -= e["amount_micros"]
        elif kind in (TransactionKind.TOP_UP, TransactionKind.REFUND):
            money_lines.append(
                {
                    "type": "top_up" if kind == TransactionKind.TOP_UP else "refund",
                    "date": e["transaction__posted_at"].date().isoformat(),
                    "amount_micros": e["amount_micros"],
                    "amount": _money(e["amount_micros"]),
                }
            )
    leases = Lease.objects.in_bulk(list(set(charges) | set(fees)))
    hours = _device_hours(leases, start, end)
    lines: list[dict[str, Any]] = []
    for lease_id in sorted(leases):
        lease = leases[lease_id]
        amount = charges.get(lease_id, 0)
        rates = set(lease.segments.values_list("rate_micros", flat=True))
        rate = rates.pop() if len(rates) == 1 else None
        if amount:
            lines.append(
                {
                    "type": "lease",
                    "lease_id": lease_id,
                    "job_id": lease.job_id,
                    "kind": lease.kind,
                    "device_hours": str(hours[lease_id].quantize(Decimal("0.0001"))),
                    "rate": _money(rate) if rate is not None else "varies",
                    "amount_micros": amount,
                    "amount": _money(amount),
                }
            )
        if fees.get(lease_id):
            lines.append(
                {
                    "type": "cancellation_fee",
                    "lease_id": lease_id,
                    "amount_micros": fees[lease_id],
                    "amount": _money(fees[lease_id]),
                }
            )
    total = sum(charges.values()) + sum(fees.values())
    return lines + money_lines, total


def _provider_lines(
    provider_id: int, currency: str, start: datetime, end: datetime
) -> tuple[list[dict[str, Any]], int]:
    payable = Account.objects.filter(
        provider_id=provider_id, currency=currency, kind=AccountKind.PROVIDER_PAYABLE
    ).first()
    if payable is None:
        return [], 0
    net: dict[int, int] = defaultdict(int)
    settlement_txns: list[int] = []
    payout_lines: list[dict[str, Any]] = []
    for e in _entries([payable.pk], start, end):
        if e["transaction__kind"] == TransactionKind.SETTLEMENT:
            net[e["lease_id"]] += e["amount_micros"]
            settlement_txns.append(e["transaction_id"])
        elif e["transaction__kind"] in (TransactionKind.PAYOUT, TransactionKind.PAYOUT_REVERSAL):
            payout_lines.append(
                {
                    "type": "payout" if e["amount_micros"] < 0 else "payout_reversal",
                    "date": e["transaction__posted_at"].date().isoformat(),
                    "amount_micros": e["amount_micros"],
                    "amount": _money(e["amount_micros"]),
                }
            )
    fees: dict[int, int] = defaultdict(int)
    # The fee legs of the same settlement transactions (reached by transaction id, which is indexed).
    for lease_id, amount in Entry.objects.filter(
        transaction_id__in=settlement_txns, account__kind=AccountKind.PLATFORM_FEE
    ).values_list("lease_id", "amount_micros"):
        if lease_id is not None:
            fees[lease_id] += amount
    leases = Lease.objects.in_bulk(list(net))
    hours = _device_hours(leases, start, end)
    lines = [
        {
            "type": "lease",
            "lease_id": lease_id,
            "job_id": leases[lease_id].job_id,
            "device_hours": str(hours[lease_id].quantize(Decimal("0.0001"))),
            "gross_micros": net[lease_id] + fees[lease_id],
            "fee_micros": fees[lease_id],
            "amount_micros": net[lease_id],
            "gross": _money(net[lease_id] + fees[lease_id]),
            "fee": _money(fees[lease_id]),
            "amount": _money(net[lease_id]),
        }
        for lease_id in sorted(net)
    ]
    return lines + payout_lines, sum(net.values())


def statement_build(
    *,
    kind: str,
    period_start: date,
    currency: str,
    user_id: int | None = None,
    provider_id: int | None = None,
) -> Statement:
    """(Re)build the draft statement of one owner and month from the journal. A finalized
    statement is returned unchanged (it is immutable)."""
    period_start = month_start(period_start)
    start, end = _bounds(period_start)
    owner = {"user_id": user_id} if kind == StatementKind.BUYER_INVOICE else {"provider_id": provider_id}
    existing = Statement.objects.filter(
        kind=kind, currency=currency, period_start=period_start, **owner
    ).first()
    if existing is not None and existing.status == StatementStatus.FINALIZED:
        return existing
    if kind == StatementKind.BUYER_INVOICE:
        assert user_id is not None
        lines, total = _buyer_lines(user_id, currency, start, end)
    else:
        assert provider_id is not None
        lines, total = _provider_lines(provider_id, currency, start, end)
    with transaction.atomic():
        statement, _ = Statement.objects.update_or_create(
            kind=kind,
            currency=currency,
            period_start=period_start,
            **owner,  # type: ignore[arg-type]
            defaults={"lines": lines, "total_micros": total},
        )
    return statement


def statements_build_month(*, period_start: date) -> list[Statement]:
    """Build the statement of every buyer and provider with journal activity in the month."""
    start, end = _bounds(month_start(period_start))
    owners = (
        Account.objects.filter(
            entries__transaction__posted_at__gte=start, entries__transaction__posted_at__lt=end
        )
        .filter(
            kind__in=[AccountKind.BUYER_WALLET, AccountKind.RESERVATION_ESCROW, AccountKind.PROVIDER_PAYABLE]
        )
        .values_list("kind", "user_id", "provider_id", "currency")
        .distinct()
    )
    built: dict[tuple[Any, ...], Statement] = {}
    for kind, user_id, provider_id, currency in owners:
        if kind == AccountKind.PROVIDER_PAYABLE:
            key: tuple[Any, ...] = (StatementKind.PROVIDER_EARNINGS, provider_id, currency)
            if key not in built:
                built[key] = statement_build(
                    kind=StatementKind.PROVIDER_EARNINGS,
                    period_start=start.date(),
                    currency=currency,
                    provider_id=provider_id,
                )
        else:
            key = (StatementKind.BUYER_INVOICE, user_id, currency)
            if key not in built:
                built[key] = statement_build(
                    kind=StatementKind.BUYER_INVOICE,
                    period_start=start.date(),
                    currency=currency,
                    user_id=user_id,
                )
    return list(built.values())


def statements_finalize(*, now: datetime | None = None) -> list[Statement]:
    """Finalize every draft of a month that has ended (rebuilt one last time first, so late
    settlement postings are in). Finalizing twice changes nothing."""
    now = now or timezone.now()
    current = month_start(now.astimezone(UTC).date())
    months = set(
        Statement.objects.filter(status=StatementStatus.DRAFT, period_start__lt=current).values_list(
            "period_start", flat=True
        )
    )
    previous = month_start(date.fromordinal(current.toordinal() - 1))
    months.add(previous)
    finalized: list[Statement] = []
    for period in sorted(months):
        statements_build_month(period_start=period)
        for statement in Statement.objects.filter(status=StatementStatus.DRAFT, period_start=period):
            number = f"{'INV' if statement.kind == StatementKind.BUYER_INVOICE else 'ERN'}-{period:%Y%m}-{statement.pk:06d}"
            changed = Statement.objects.filter(pk=statement.pk, status=StatementStatus.DRAFT).update(
                status=StatementStatus.FINALIZED, finalized_at=now, number=number
            )
            if changed:
                finalized.append(Statement.objects.get(pk=statement.pk))
                log.info("billing.statement_finalized", statement_id=statement.pk, number=number)
    return finalized
