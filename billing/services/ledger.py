"""The posting primitive: balanced transactions, cached balances, accounts.

Every write to the journal goes through ``postings_write``. Callers lock the accounts they touch
(``accounts_lock``, always in primary-key order) before they decide amounts, so the cached
balances they read are the ones they update.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from billing.models import Account, AccountKind, Entry, Transaction

BATCH_ROWS = 2000


@dataclass(frozen=True)
class Leg:
    account_id: int
    amount_micros: int
    lease_id: int | None = None


@dataclass
class Posting:
    kind: str
    idempotency_key: str
    currency: str
    legs: list[Leg] = field(default_factory=list)
    posted_at: datetime | None = None
    memo: str = ""

    def add(self, account_id: int, amount_micros: int, lease_id: int | None = None) -> None:
        if amount_micros:
            self.legs.append(Leg(account_id, amount_micros, lease_id))


def default_currency() -> str:
    return str(settings.SUANLI_CURRENCY)


def account_get(
    *, kind: str, currency: str | None = None, user_id: int | None = None, provider_id: int | None = None
) -> Account:
    """The account of this kind and owner, created on first use (race-safe)."""
    currency = currency or default_currency()
    lookup = {"kind": kind, "currency": currency, "user_id": user_id, "provider_id": provider_id}
    account = Account.objects.filter(**lookup).first()
    if account is not None:
        return account
    defaults = {}
    if kind == AccountKind.BUYER_WALLET:
        defaults["credit_limit_micros"] = settings.BILLING_CREDIT_LINE_MICROS
    try:
        with transaction.atomic():
            return Account.objects.create(**lookup, **defaults)
    except IntegrityError:
        return Account.objects.get(**lookup)


def accounts_lock(account_ids: Iterable[int]) -> dict[int, Account]:
    """Row-lock accounts in primary-key order (the one lock order) and return them by id."""
    ids = sorted(set(account_ids))
    return {a.pk: a for a in Account.objects.select_for_update().filter(pk__in=ids).order_by("pk")}


def postings_write(postings: Sequence[Posting], *, fresh: bool = False) -> dict[str, int]:
    """Write balanced postings and update cached balances; must run inside ``transaction.atomic``.

    Contract: each posting's legs sum to zero (checked here, and again by the deferred constraint
    trigger at commit). A posting whose idempotency key already exists is skipped entirely (it was
    posted before), so a retry posts nothing twice. The caller holds row locks on every account
    touched. Returns ``{idempotency_key: transaction_id}`` for the postings written now.
    ``fresh=True`` promises every key is new (bulk COPY; a duplicate raises instead of skipping).
    """
    if not connection.in_atomic_block:
        raise RuntimeError("postings_write must run inside transaction.atomic")
    postings = [p for p in postings if p.legs]
    for p in postings:
        if sum(leg.amount_micros for leg in p.legs) != 0:
            raise ValueError(f"posting {p.idempotency_key} does not balance")
    if not postings:
        return {}
    now = timezone.now()
    written: dict[str, int] = {}
    txn_table = Transaction._meta.db_table
    entry_table = Entry._meta.db_table
    account_table = Account._meta.db_table
    with connection.cursor() as cursor:
        if fresh:
            # Keys known to be new (derived from rows the caller holds locked): allocate ids and
            # COPY, the fastest bulk path. A duplicate would still fail on the unique index.
            cursor.execute(
                f"SELECT nextval(pg_get_serial_sequence('{txn_table}', 'id')) FROM generate_series(1, %s)",  # noqa: S608
                [len(postings)],
            )
            ids = [row[0] for row in cursor.fetchall()]
            buffer = io.StringIO(
                "".join(
                    f"{txn_id}\t{p.kind}\t{_copy_text(p.idempotency_key)}\t{p.currency}\t{_copy_text(p.memo)}\t"
                    f"{(p.posted_at or now).isoformat()}\n"
                    for txn_id, p in zip(ids, postings, strict=True)
                )
            )
            cursor.copy_expert(
                f"COPY {txn_table} (id, kind, idempotency_key, currency, memo, posted_at) FROM STDIN", buffer
            )
            written = {p.idempotency_key: txn_id for txn_id, p in zip(ids, postings, strict=True)}
        for start in range(0, 0 if fresh else len(postings), BATCH_ROWS):
            chunk = postings[start : start + BATCH_ROWS]
            values = ", ".join(["(%s, %s, %s, %s, %s)"] * len(chunk))
            params: list[Any] = []
            for p in chunk:
                params += [p.kind, p.idempotency_key, p.currency, p.memo, p.posted_at or now]
            cursor.execute(
                f"INSERT INTO {txn_table} (kind, idempotency_key, currency, memo, posted_at) "  # noqa: S608
                f"VALUES {values} ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key, id",
                params,
            )
            written.update(dict(cursor.fetchall()))
        rows = [
            (written[p.idempotency_key], leg.account_id, leg.amount_micros, leg.lease_id)
            for p in postings
            if p.idempotency_key in written
            for leg in p.legs
        ]
        if rows:
            # COPY is PostgreSQL's fastest bulk path; row triggers (the deferred balance check)
            # fire for copied rows exactly as for inserted ones.
            buffer = io.StringIO(
                "".join(
                    f"{txn_id}\t{account_id}\t{amount}\t{'' if lease_id is None else lease_id}\n"
                    for txn_id, account_id, amount, lease_id in rows
                )
            )
            cursor.copy_expert(
                f"COPY {entry_table} (transaction_id, account_id, amount_micros, lease_id) FROM STDIN WITH (NULL '')",
                buffer,
            )
        deltas: dict[int, int] = defaultdict(int)
        for _, account_id, amount, _ in rows:
            deltas[account_id] += amount
        changed = sorted((k, v) for k, v in deltas.items() if v)
        if changed:
            values = ", ".join(["(%s::bigint, %s::bigint)"] * len(changed))
            cursor.execute(
                f"UPDATE {account_table} AS a SET balance_micros = a.balance_micros + v.delta "  # noqa: S608
                f"FROM (VALUES {values}) AS v(id, delta) WHERE a.id = v.id",
                [x for pair in changed for x in pair],
            )
    return written


def _copy_text(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def posting_write(posting: Posting) -> int | None:
    """One posting (see ``postings_write``); returns its transaction id, or None if already posted."""
    return postings_write([posting]).get(posting.idempotency_key)
