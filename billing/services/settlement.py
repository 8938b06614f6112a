"""Settlement: post, for every unsettled lease, the difference between its cumulative charge and
what was already posted. Re-running posts nothing; rounding never drifts.

Each posting debits prepayment (escrow) first, then the wallet, but never takes the wallet below
its credit line: what the buyer cannot cover stays owed on the lease (charge not yet posted) and
is retried on the next run. The auto-stop service stops such jobs, so the unpaid amount is bounded
by one interval. Buyer charge = provider earning + platform fee, exactly, in every posting.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

import structlog
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q

from billing.models import Account, AccountKind, Lease, LeaseKind, LeaseStatus, TransactionKind
from billing.services.leases import fee_for, horizon, lease_charge_until
from billing.services.ledger import Posting, account_get, accounts_lock, postings_write

log = structlog.get_logger(__name__)

CHUNK_SIZE = 500


@dataclass
class SettlementResult:
    leases: int = 0
    transactions: int = 0
    entries: int = 0
    charged_micros: int = 0
    owed_micros: int = 0


def _accounts_for(
    leases: list[Lease],
) -> tuple[dict[tuple[int, str, str], int], dict[tuple[int, str], int], dict[str, int]]:
    """Account ids for the chunk: buyer (user, currency, kind), provider payables, fee accounts."""
    users = {lease.buyer_id for lease in leases}
    providers = {lease.provider_id for lease in leases}
    currencies = {lease.currency for lease in leases}
    buyer: dict[tuple[int, str, str], int] = {}
    for a in Account.objects.filter(
        kind__in=[AccountKind.BUYER_WALLET, AccountKind.RESERVATION_ESCROW],
        user_id__in=users,
        currency__in=currencies,
    ).values("pk", "user_id", "currency", "kind"):
        buyer[(a["user_id"], a["currency"], a["kind"])] = a["pk"]
    payable: dict[tuple[int, str], int] = {}
    for pk, provider_id, currency in Account.objects.filter(
        kind=AccountKind.PROVIDER_PAYABLE, provider_id__in=providers, currency__in=currencies
    ).values_list("pk", "provider_id", "currency"):
        if provider_id is not None:
            payable[(provider_id, currency)] = pk
    fee: dict[str, int] = {}
    for lease in leases:
        for kind in (AccountKind.BUYER_WALLET, AccountKind.RESERVATION_ESCROW):
            key = (lease.buyer_id, lease.currency, kind)
            if key not in buyer:
                buyer[key] = account_get(kind=kind, currency=lease.currency, user_id=lease.buyer_id).pk
        if (lease.provider_id, lease.currency) not in payable:
            payable[(lease.provider_id, lease.currency)] = account_get(
                kind=AccountKind.PROVIDER_PAYABLE, currency=lease.currency, provider_id=lease.provider_id
            ).pk
        if lease.currency not in fee:
            fee[lease.currency] = account_get(kind=AccountKind.PLATFORM_FEE, currency=lease.currency).pk
    return buyer, payable, fee


def _settle_chunk(
    until: datetime, after_id: int, chunk_size: int, only: list[int] | None, result: SettlementResult
) -> int | None:
    """Settle one chunk of leases in one database transaction; returns the last lease id seen."""
    with transaction.atomic():
        query = Lease.objects.filter(settled_final=False, started_at__lte=until, pk__gt=after_id).filter(
            Q(billed_through__isnull=True) | Q(billed_through__lte=until)
        )
        if only is not None:
            query = query.filter(pk__in=only)
        # skip_locked: a lease another settler (or a lease_* call) holds is left for its holder or
        # the next run; leases first, then accounts in pk order — the one lock order.
        leases = list(query.select_for_update(skip_locked=True, of=("self",)).order_by("pk")[:chunk_size])
        if not leases:
            return None
        buyer_ids, payable_ids, fee_ids = _accounts_for(leases)
        locked = accounts_lock([*buyer_ids.values(), *payable_ids.values(), *fee_ids.values()])
        wallet_balance = {pk: a.balance_micros for pk, a in locked.items()}

        postings: list[Posting] = []
        lease_rows: list[tuple[int, int, int, int, int, bool, str]] = []
        for lease in leases:
            wallet = buyer_ids[(lease.buyer_id, lease.currency, AccountKind.BUYER_WALLET)]
            escrow = buyer_ids[(lease.buyer_id, lease.currency, AccountKind.RESERVATION_ESCROW)]
            payable = payable_ids[(lease.provider_id, lease.currency)]
            fee_account = fee_ids[lease.currency]

            target = lease_charge_until(lease, until)
            delta = target - lease.charged_micros
            from_prepaid = from_wallet = 0
            if delta > 0:
                from_prepaid = min(delta, lease.prepaid_micros)
                room = max(0, wallet_balance[wallet] + locked[wallet].credit_limit_micros)
                from_wallet = min(delta - from_prepaid, room)
            elif delta < 0:
                from_wallet = delta  # a correction: the buyer gets the money back
            paid = from_prepaid + from_wallet
            charged = lease.charged_micros + paid
            fee_total = fee_for(charged, lease.fee_bps)
            fee_delta = fee_total - lease.fee_micros
            prepaid = lease.prepaid_micros - from_prepaid
            seq = lease.settle_seq

            status = lease.status
            if (
                lease.kind == LeaseKind.RESERVED
                and status == LeaseStatus.OPEN
                and lease.ends_at
                and until >= lease.ends_at
            ):
                status = LeaseStatus.CLOSED
            ended = status == LeaseStatus.CLOSED and lease.ends_at is not None and until >= lease.ends_at
            final = ended and charged == target

            if paid:
                seq += 1
                posting = Posting(
                    TransactionKind.SETTLEMENT,
                    f"lease:{lease.pk}:settle:{seq}",
                    lease.currency,
                    posted_at=until,
                )
                posting.add(escrow, -from_prepaid, lease.pk)
                posting.add(wallet, -from_wallet, lease.pk)
                posting.add(payable, paid - fee_delta, lease.pk)
                posting.add(fee_account, fee_delta, lease.pk)
                postings.append(posting)
                wallet_balance[wallet] -= from_wallet
                result.charged_micros += paid
            if final and prepaid:
                refund = Posting(
                    TransactionKind.ESCROW_REFUND, f"lease:{lease.pk}:refund", lease.currency, posted_at=until
                )
                refund.add(escrow, -prepaid, lease.pk)
                refund.add(wallet, prepaid, lease.pk)
                postings.append(refund)
                wallet_balance[wallet] += prepaid
                prepaid = 0
            result.owed_micros += target - charged
            lease_rows.append((lease.pk, charged, fee_total, prepaid, seq, final, status))

        written = postings_write(postings)
        result.leases += len(leases)
        result.transactions += len(written)
        result.entries += sum(len(p.legs) for p in postings if p.idempotency_key in written)
        _leases_update(lease_rows, until)
        return leases[-1].pk


def _leases_update(rows: list[tuple[int, int, int, int, int, bool, str]], until: datetime) -> None:
    if not rows:
        return
    table = Lease._meta.db_table
    values = ", ".join(
        ["(%s::bigint, %s::bigint, %s::bigint, %s::bigint, %s::integer, %s::boolean, %s::varchar)"]
        * len(rows)
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} AS l SET charged_micros = v.charged, fee_micros = v.fee, prepaid_micros = v.prepaid, "  # noqa: S608
            "settle_seq = v.seq, settled_final = v.final, status = v.status, billed_through = %s "
            f"FROM (VALUES {values}) AS v(id, charged, fee, prepaid, seq, final, status) WHERE l.id = v.id",
            [until, *[x for row in rows for x in row]],
        )


def settle(
    *, until: datetime, chunk_size: int = CHUNK_SIZE, lease_ids: list[int] | None = None
) -> SettlementResult:
    """Bring every open, paused or recently closed lease up to date through ``until``.

    Contract: posts, per lease, ``cumulative_charge(until) - already_posted`` (rounded
    half-to-even on the cumulative amount, fee split cumulative too), so running it twice with the
    same ``until`` posts nothing the second time, and settling every 60 s equals settling once.
    Leases whose ``billed_through`` is after ``until`` are left alone (time never runs backwards).
    Commits per chunk of ``chunk_size`` leases: a crash loses at most the chunk in flight, which
    the next run redoes. Leases locked by someone else are skipped for this run.
    """
    result = SettlementResult()
    after_id = 0
    while True:
        last = _settle_chunk(until, after_id, chunk_size, lease_ids, result)
        if last is None:
            break
        after_id = last
    log.info(
        "billing.settled", until=until.isoformat(), leases=result.leases, transactions=result.transactions
    )
    return result


@dataclass(frozen=True)
class LeaseShortfall:
    lease_id: int
    job_id: int | None
    buyer_id: int
    needed_micros: int
    available_micros: int


def leases_unable_to_pay(*, at: datetime, intervals: int = 2) -> list[LeaseShortfall]:
    """Open leases whose buyer cannot cover what they owe now plus the next ``intervals``
    settlement intervals (the marketplace stops their jobs; bad debt stays within one interval).

    Prepayment (escrow) counts for its own lease; reserved leases are fully prepaid and never listed.
    """
    ahead = at + horizon(intervals, settings.BILLING_SETTLEMENT_INTERVAL_S)
    live = list(Lease.objects.filter(status=LeaseStatus.OPEN).exclude(kind=LeaseKind.RESERVED).order_by("pk"))
    needed: dict[tuple[int, str], int] = defaultdict(int)
    by_buyer: dict[tuple[int, str], list[Lease]] = defaultdict(list)
    for lease in live:
        cost = lease_charge_until(lease, ahead) - lease.charged_micros - lease.prepaid_micros
        needed[(lease.buyer_id, lease.currency)] += max(0, cost)
        by_buyer[(lease.buyer_id, lease.currency)].append(lease)
    wallets = {
        (a.user_id, a.currency): a.balance_micros + a.credit_limit_micros
        for a in Account.objects.filter(kind=AccountKind.BUYER_WALLET, user_id__in={k[0] for k in by_buyer})
    }
    out: list[LeaseShortfall] = []
    for key, leases in by_buyer.items():
        available = wallets.get(key, 0)
        if needed[key] > available:
            out += [
                LeaseShortfall(lease.pk, lease.job_id, lease.buyer_id, needed[key], available)
                for lease in leases
            ]
    return out
