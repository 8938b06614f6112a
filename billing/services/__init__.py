"""Billing write services. Import from here: ``from billing.services import lease_open``."""

from billing.services.leases import (
    fee_for,
    lease_charge_until,
    lease_close,
    lease_open,
    lease_pause,
    lease_resume,
    lease_set_rate,
)
from billing.services.ledger import Leg, Posting, account_get, accounts_lock, posting_write, postings_write
from billing.services.payouts import payout_account_onboard, payout_submit, payouts_create, payouts_run
from billing.services.reconcile import ReconciliationReport, ledger_reconcile
from billing.services.reservations import reservation_book, reservation_cancel, reservation_price
from billing.services.settlement import LeaseShortfall, SettlementResult, leases_unable_to_pay, settle
from billing.services.statements import statement_build, statements_build_month, statements_finalize
from billing.services.topups import topup_create, webhook_receive
from billing.services.usage import UsageRecordResult, UsageSampleIn, usage_samples_record
from billing.services.wallets import (
    buyer_accounts,
    hold_capture,
    hold_place,
    hold_release,
    wallet_set_credit_line,
)

__all__ = [
    "LeaseShortfall",
    "Leg",
    "Posting",
    "ReconciliationReport",
    "SettlementResult",
    "UsageRecordResult",
    "UsageSampleIn",
    "account_get",
    "accounts_lock",
    "buyer_accounts",
    "fee_for",
    "hold_capture",
    "hold_place",
    "hold_release",
    "lease_charge_until",
    "lease_close",
    "lease_open",
    "lease_pause",
    "lease_resume",
    "lease_set_rate",
    "leases_unable_to_pay",
    "ledger_reconcile",
    "payout_account_onboard",
    "payout_submit",
    "payouts_create",
    "payouts_run",
    "posting_write",
    "postings_write",
    "reservation_book",
    "reservation_cancel",
    "reservation_price",
    "settle",
    "statement_build",
    "statements_build_month",
    "statements_finalize",
    "topup_create",
    "usage_samples_record",
    "wallet_set_credit_line",
    "webhook_receive",
]
