"""Reconciliation: cached balances against the journal they summarise."""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog
from django.db import connection

from billing.models import Account, Entry, Lease

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Drift:
    account_id: int
    cached_micros: int
    journal_micros: int


@dataclass
class ReconciliationReport:
    accounts_checked: int = 0
    drift: list[Drift] = field(default_factory=list)
    escrow_drift: list[Drift] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.drift and not self.escrow_drift


def ledger_reconcile() -> ReconciliationReport:
    """Compare every account's cached balance with the sum of its entries, and every escrow account
    with the prepayment its leases still hold. Reports drift (logged as errors); changes nothing."""
    a, e, lease = Account._meta.db_table, Entry._meta.db_table, Lease._meta.db_table
    report = ReconciliationReport(accounts_checked=Account.objects.count())
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT a.id, a.balance_micros, COALESCE(s.total, 0) FROM {a} a "  # noqa: S608
            f"LEFT JOIN (SELECT account_id, SUM(amount_micros) AS total FROM {e} GROUP BY account_id) s "
            "ON s.account_id = a.id WHERE a.balance_micros <> COALESCE(s.total, 0) ORDER BY a.id"
        )
        report.drift = [Drift(int(r[0]), int(r[1]), int(r[2])) for r in cursor.fetchall()]
        cursor.execute(
            f"SELECT a.id, a.balance_micros, COALESCE(p.total, 0) FROM {a} a "  # noqa: S608
            f"LEFT JOIN (SELECT buyer_id, currency, SUM(prepaid_micros) AS total FROM {lease} GROUP BY buyer_id, currency) p "
            "ON p.buyer_id = a.user_id AND p.currency = a.currency "
            "WHERE a.kind = 'reservation_escrow' AND a.balance_micros <> COALESCE(p.total, 0) ORDER BY a.id"
        )
        report.escrow_drift = [Drift(int(r[0]), int(r[1]), int(r[2])) for r in cursor.fetchall()]
    for d in report.drift + report.escrow_drift:
        log.error(
            "billing.balance_drift", account_id=d.account_id, cached=d.cached_micros, journal=d.journal_micros
        )
    log.info(
        "billing.reconciled",
        accounts=report.accounts_checked,
        drift=len(report.drift) + len(report.escrow_drift),
    )
    return report
