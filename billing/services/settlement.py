"""Settlement: post, for every unsettled lease, the difference between its cumulative charge and
what was already posted. Re-running posts nothing; rounding never drifts.

Each posting debits prepayment (escrow) first, then the wallet, but never takes the wallet below
its credit line: what the buyer cannot cover stays owed on the lease (charge not yet posted) and
is retried on the next run. The auto-stop service stops such jobs, so the unpaid amount is bounded
by one interval. Buyer charge = provider earning + platform fee, exactly, in every posting.
"""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

import structlog
from django.conf import settings
from django.db import connection, transaction

from billing.models import Account, AccountKind, Lease, LeaseKind, LeaseStatus, TransactionKind
from billing.services.leases import fee_for, horizon, lease_charge_until
from billing.services.ledger import Posting, account_get, postings_write

log = structlog.get_logger(__name__)

CHUNK_SIZE = 5000


@dataclass
class SettlementResult:
    leases: int = 0
    transactions: int = 0
    entries: int = 0
    charged_micros: int = 0
    owed_micros: int = 0


class _LeaseRow(NamedTuple):
    """The columns settlement needs, read without model instantiation (hot loop)."""

    pk: int
    buyer_id: int
    provider_id: int
    kind: str
    currency: str
    device_count: int
    status: str
    fee_bps: int
    rate_micros: int
    opening_rate_micros: int
    started_at: datetime
    segment_started_at: datetime | None
    ends_at: datetime | None
    accrued_micro_seconds: Decimal
    accrued_seconds: Decimal
    charged_micros: int
    fee_micros: int
    prepaid_micros: int
    settle_seq: int


_LEASE_COLUMNS = ", ".join(_LeaseRow._fields).replace("pk,", "id,", 1)


def _lock_leases(until: datetime, after_id: int, chunk_size: int, only: list[int] | None) -> list[_LeaseRow]:
    # skip_locked: a lease another settler (or a lease_* call) holds is left for its holder or the
    # next run. Lock order everywhere: leases first, then accounts in primary-key order.
    sql = (
        f"SELECT {_LEASE_COLUMNS} FROM {Lease._meta.db_table} "  # noqa: S608
        "WHERE settled_final = false AND started_at <= %s AND id > %s "
        "AND (billed_through IS NULL OR billed_through <= %s)"
    )
    params: list[Any] = [until, after_id, until]
    if only is not None:
        sql += " AND id = ANY(%s)"
        params.append(list(only))
    sql += " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
    params.append(chunk_size)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [_LeaseRow(*row) for row in cursor.fetchall()]


def _account_ids(
    leases: list[_LeaseRow],
) -> tuple[dict[tuple[int, str, str], int], dict[tuple[int, str], int], dict[str, int]]:
    """Account ids for the chunk: buyer (user, currency, kind), provider payables, fee accounts."""
    table = Account._meta.db_table
    buyer: dict[tuple[int, str, str], int] = {}
    payable: dict[tuple[int, str], int] = {}
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, user_id, currency, kind FROM {table} WHERE kind = ANY(%s) AND user_id = ANY(%s)",  # noqa: S608
            [
                [AccountKind.BUYER_WALLET.value, AccountKind.RESERVATION_ESCROW.value],
                list({le.buyer_id for le in leases}),
            ],
        )
        for pk, user_id, currency, kind in cursor.fetchall():
            buyer[(user_id, currency, kind)] = pk
        cursor.execute(
            f"SELECT id, provider_id, currency FROM {table} WHERE kind = %s AND provider_id = ANY(%s)",  # noqa: S608
            [AccountKind.PROVIDER_PAYABLE.value, list({le.provider_id for le in leases})],
        )
        for pk, provider_id, currency in cursor.fetchall():
            payable[(provider_id, currency)] = pk
    fee: dict[str, int] = {}
    # (kind, currency, user id, provider id) of the accounts still to find or create.
    wanted: set[tuple[str, str, int, int]] = set()
    for lease in leases:
        for kind in (AccountKind.BUYER_WALLET, AccountKind.RESERVATION_ESCROW):
            if (lease.buyer_id, lease.currency, kind.value) not in buyer:
                wanted.add((kind.value, lease.currency, lease.buyer_id, 0))
        if (lease.provider_id, lease.currency) not in payable:
            wanted.add((AccountKind.PROVIDER_PAYABLE.value, lease.currency, 0, lease.provider_id))
        wanted.add((AccountKind.PLATFORM_FEE.value, lease.currency, 0, 0))
    # A missing account is created inside this chunk's transaction, so its unique-index entry stays
    # locked until the chunk commits. Concurrent settlers therefore create them in one global order,
    # as they lock rows: in any other order two of them can each wait for the other's insert.
    for kind, currency, user_id, provider_id in sorted(wanted):
        pk = account_get(
            kind=kind, currency=currency, user_id=user_id or None, provider_id=provider_id or None
        ).pk
        if kind == AccountKind.PLATFORM_FEE:
            fee[currency] = pk
        elif kind == AccountKind.PROVIDER_PAYABLE:
            payable[(provider_id, currency)] = pk
        else:
            buyer[(user_id, currency, kind)] = pk
    return buyer, payable, fee


def _lock_accounts(ids: set[int]) -> dict[int, tuple[int, int]]:
    """Row-lock accounts in primary-key order; returns id -> (balance, credit limit)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, balance_micros, credit_limit_micros FROM {Account._meta.db_table} "  # noqa: S608
            "WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
            [sorted(ids)],
        )
        return {pk: (balance, credit) for pk, balance, credit in cursor.fetchall()}


def _settle_chunk(
    until: datetime, after_id: int, chunk_size: int, only: list[int] | None, result: SettlementResult
) -> int | None:
    """Settle one chunk of leases in one database transaction; returns the last lease id seen."""
    with transaction.atomic():
        leases = _lock_leases(until, after_id, chunk_size, only)
        if not leases:
            return None
        buyer_ids, payable_ids, fee_ids = _account_ids(leases)
        wallet_key = AccountKind.BUYER_WALLET.value
        escrow_key = AccountKind.RESERVATION_ESCROW.value
        # Escrow rows are only touched by leases with prepayment; payable and fee rows are only
        # added to, but are locked too so concurrent settlers take every row lock in one order.
        to_lock = {buyer_ids[(le.buyer_id, le.currency, wallet_key)] for le in leases}
        to_lock |= {buyer_ids[(le.buyer_id, le.currency, escrow_key)] for le in leases if le.prepaid_micros}
        to_lock |= {payable_ids[(le.provider_id, le.currency)] for le in leases} | set(fee_ids.values())
        locked = _lock_accounts(to_lock)
        wallet_balance = {pk: balance for pk, (balance, _) in locked.items()}

        postings: list[Posting] = []
        lease_rows: list[tuple[int, int, int, int, int, bool, str]] = []
        for lease in leases:
            wallet = buyer_ids[(lease.buyer_id, lease.currency, wallet_key)]
            escrow = buyer_ids[(lease.buyer_id, lease.currency, escrow_key)]
            payable = payable_ids[(lease.provider_id, lease.currency)]
            fee_account = fee_ids[lease.currency]

            target = lease_charge_until(lease, until)
            delta = target - lease.charged_micros
            from_prepaid = from_wallet = 0
            if delta > 0:
                from_prepaid = min(delta, lease.prepaid_micros)
                room = max(0, wallet_balance[wallet] + locked[wallet][1])
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

        written = postings_write(postings, fresh=True)
        result.leases += len(leases)
        result.transactions += len(written)
        result.entries += sum(len(p.legs) for p in postings if p.idempotency_key in written)
        _leases_update(lease_rows, until)
        return leases[-1].pk


def _leases_update(rows: list[tuple[int, int, int, int, int, bool, str]], until: datetime) -> None:
    """Write the chunk's new lease marks: COPY into a session temp table, then one joined UPDATE."""
    if not rows:
        return
    table = Lease._meta.db_table
    buffer = io.StringIO(
        "".join(f"{r[0]}\t{r[1]}\t{r[2]}\t{r[3]}\t{r[4]}\t{'t' if r[5] else 'f'}\t{r[6]}\n" for r in rows)
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE IF NOT EXISTS billing_settle_marks (id bigint, charged bigint, fee bigint, "
            "prepaid bigint, seq integer, final boolean, status varchar(12)) ON COMMIT DELETE ROWS"
        )
        # Emptied here too: inside an enclosing transaction (tests, callers) no commit clears it.
        cursor.execute("TRUNCATE billing_settle_marks")
        cursor.copy_expert("COPY billing_settle_marks FROM STDIN", buffer)
        cursor.execute(
            f"UPDATE {table} AS l SET charged_micros = v.charged, fee_micros = v.fee, prepaid_micros = v.prepaid, "  # noqa: S608
            "settle_seq = v.seq, settled_final = v.final, status = v.status, billed_through = %s "
            "FROM billing_settle_marks AS v WHERE l.id = v.id",
            [until],
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
