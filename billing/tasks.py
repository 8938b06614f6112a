"""Billing tasks: thin adapters over services, stable names, safe to run twice."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone

from billing import services
from billing.services.settlement import CHUNK_SIZE
from billing.services.spend import low_balance_alerts_send
from config.celery_app import app
from core.metrics import timed_settlement_run
from core.tasks import SuanliTask


@app.task(base=SuanliTask, name="billing.settle", soft_time_limit=240, time_limit=300)
@timed_settlement_run
def settle_task(until: str | None = None, chunk_size: int = CHUNK_SIZE) -> dict[str, Any]:
    """Settle every lease through ``until`` (ISO 8601; default: now). Idempotent per ``until``."""
    moment = datetime.fromisoformat(until) if until else timezone.now()
    result = services.settle(until=moment, chunk_size=chunk_size)
    # Settlement is what lowers balances: check the low-balance alerts right after it.
    low_balance_alerts_send()
    return {"leases": result.leases, "transactions": result.transactions}


@app.task(base=SuanliTask, name="billing.reconcile")
def reconcile_task() -> dict[str, Any]:
    report = services.ledger_reconcile()
    return {"accounts": report.accounts_checked, "drift": len(report.drift) + len(report.escrow_drift)}


@app.task(base=SuanliTask, name="billing.payouts.run", soft_time_limit=540, time_limit=600)
def payouts_task() -> int:
    return len(services.payouts_run())


@app.task(base=SuanliTask, name="billing.statements.finalize", soft_time_limit=540, time_limit=600)
def statements_finalize_task() -> int:
    return len(services.statements_finalize())


@app.task(base=SuanliTask, name="billing.statements.refresh", soft_time_limit=540, time_limit=600)
def statements_refresh_task() -> int:
    """Keep the current month's drafts current (daily)."""
    return len(services.statements_build_month(period_start=timezone.now().date()))
