"""Wallets and holds.

A buyer's money sits in three accounts: ``buyer_wallet`` (available to spend), ``buyer_holds``
(set aside for orders that have not started) and ``reservation_escrow`` (prepaid leases). The
wallet may go below zero only down to its credit line (``credit_limit_micros``, default
``BILLING_CREDIT_LINE_MICROS``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from billing.models import Account, AccountKind, Hold, HoldStatus, Lease, TransactionKind
from billing.services.ledger import Posting, account_get, accounts_lock, default_currency, posting_write
from core.errors import Forbidden, InsufficientFunds, InvalidTransition, ValidationFailed
from core.money import format_amount

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuyerAccounts:
    wallet: Account
    holds: Account
    escrow: Account


def buyer_accounts(*, user_id: int, currency: str | None = None) -> BuyerAccounts:
    currency = currency or default_currency()
    return BuyerAccounts(
        wallet=account_get(kind=AccountKind.BUYER_WALLET, currency=currency, user_id=user_id),
        holds=account_get(kind=AccountKind.BUYER_HOLDS, currency=currency, user_id=user_id),
        escrow=account_get(kind=AccountKind.RESERVATION_ESCROW, currency=currency, user_id=user_id),
    )


def available_micros(wallet: Account) -> int:
    return wallet.balance_micros + wallet.credit_limit_micros


def wallet_set_credit_line(*, user_id: int, credit_limit_micros: int, currency: str | None = None) -> Account:
    """Set a buyer's credit line (operators only). Locks the wallet row."""
    if credit_limit_micros < 0:
        raise ValidationFailed("credit line must not be negative")
    wallet = buyer_accounts(user_id=user_id, currency=currency).wallet
    with transaction.atomic():
        Account.objects.select_for_update().filter(pk=wallet.pk).update(
            credit_limit_micros=credit_limit_micros
        )
    wallet.refresh_from_db()
    return wallet


# The most one development credit may add (1,000,000.00): a typo should not mint a fortune.
MAX_DEVELOPMENT_CREDIT_MICROS = 1_000_000 * 1_000_000


def wallet_fund_development(
    *,
    user_id: int,
    amount_micros: int,
    idempotency_key: str,
    memo: str = "development credit",
    currency: str | None = None,
) -> int | None:
    """Credit a buyer wallet without Stripe: demo and development money (``manage.py fundwallet``).

    Contract: refused with ``Forbidden`` when ``SUANLI_ENV=production``; the amount is more than
    zero and at most ``MAX_DEVELOPMENT_CREDIT_MICROS`` (``ValidationFailed``). Posts the balanced
    transaction a paid Checkout posts (Stripe clearing -> wallet, kind ``top_up``, ``memo`` saying
    it is not real money) under locks of both accounts, so every invariant of the ledger holds.
    Idempotent on ``idempotency_key``: returns the transaction id, or None if already posted.
    """
    if settings.PRODUCTION:
        raise Forbidden(_("Development credit is refused in production; buyers top up through Stripe."))
    if not 0 < amount_micros <= MAX_DEVELOPMENT_CREDIT_MICROS:
        message = _("More than 0 and at most %(max)s.") % {
            "max": format_amount(MAX_DEVELOPMENT_CREDIT_MICROS)
        }
        raise ValidationFailed(message, fields={"amount": message})
    accounts = buyer_accounts(user_id=user_id, currency=currency)
    clearing = account_get(kind=AccountKind.STRIPE_CLEARING, currency=accounts.wallet.currency)
    with transaction.atomic():
        accounts_lock([accounts.wallet.pk, clearing.pk])
        posting = Posting(TransactionKind.TOP_UP, idempotency_key, accounts.wallet.currency, memo=memo)
        posting.add(clearing.pk, -amount_micros)
        posting.add(accounts.wallet.pk, amount_micros)
        transaction_id = posting_write(posting)
    log.info(
        "billing.wallet_funded_development user_id=%s amount_micros=%s transaction_id=%s",
        user_id,
        amount_micros,
        transaction_id,
    )
    return transaction_id


def hold_place(*, buyer: object, amount_micros: int, reference: str, currency: str | None = None) -> Hold:
    """Set ``amount_micros`` aside from the buyer's available balance.

    Contract: locks the buyer's wallet row; raises ``InsufficientFunds`` when the amount does not
    fit the available balance (balance + credit line), leaving nothing behind. ``reference`` is the
    idempotency key: placing the same reference again returns the existing hold unchanged.
    Posts wallet -> holds.
    """
    if amount_micros <= 0:
        raise ValidationFailed("hold amount must be positive", fields={"amount_micros": "must be positive"})
    user_id = int(buyer.pk)  # type: ignore[attr-defined]
    currency = currency or default_currency()
    existing = Hold.objects.filter(reference=reference).first()
    if existing is not None:
        return existing
    accounts = buyer_accounts(user_id=user_id, currency=currency)
    with transaction.atomic():
        locked = accounts_lock([accounts.wallet.pk, accounts.holds.pk])
        existing = Hold.objects.filter(reference=reference).first()
        if existing is not None:
            return existing
        wallet = locked[accounts.wallet.pk]
        if amount_micros > available_micros(wallet):
            raise InsufficientFunds(
                "The hold does not fit the available balance.",
                fields={"amount": f"available {available_micros(wallet)} micro-units"},
            )
        hold = Hold.objects.create(
            buyer_id=user_id, currency=currency, amount_micros=amount_micros, reference=reference
        )
        posting = Posting(TransactionKind.HOLD_PLACE, f"hold:{hold.pk}:place", currency, memo=reference)
        posting.add(wallet.pk, -amount_micros)
        posting.add(accounts.holds.pk, amount_micros)
        posting_write(posting)
    return hold


def _hold_resolve(hold: Hold, status: str, lease: Lease | None) -> Hold:
    accounts = buyer_accounts(user_id=hold.buyer_id, currency=hold.currency)
    with transaction.atomic():
        locked_hold = Hold.objects.select_for_update().get(pk=hold.pk)
        if locked_hold.status != HoldStatus.OPEN:
            raise InvalidTransition(f"Hold {hold.pk} is already {locked_hold.status}.")
        locked_lease = None
        if lease is not None:
            locked_lease = Lease.objects.select_for_update().get(pk=lease.pk)
            if locked_lease.buyer_id != hold.buyer_id or locked_lease.currency != hold.currency:
                raise ValidationFailed("The lease belongs to another buyer or currency.")
            if not locked_lease.is_live:
                raise InvalidTransition(f"Lease {lease.pk} is {locked_lease.status}.")
        accounts_lock([accounts.wallet.pk, accounts.holds.pk, accounts.escrow.pk])
        if status == HoldStatus.RELEASED:
            posting = Posting(TransactionKind.HOLD_RELEASE, f"hold:{hold.pk}:release", hold.currency)
            posting.add(accounts.holds.pk, -hold.amount_micros)
            posting.add(accounts.wallet.pk, hold.amount_micros)
        else:
            assert locked_lease is not None
            posting = Posting(TransactionKind.HOLD_CAPTURE, f"hold:{hold.pk}:capture", hold.currency)
            posting.add(accounts.holds.pk, -hold.amount_micros, locked_lease.pk)
            posting.add(accounts.escrow.pk, hold.amount_micros, locked_lease.pk)
            Lease.objects.filter(pk=locked_lease.pk).update(
                prepaid_micros=locked_lease.prepaid_micros + hold.amount_micros, settled_final=False
            )
        posting_write(posting)
        # Conditional update: exactly one resolution can win.
        changed = Hold.objects.filter(pk=hold.pk, status=HoldStatus.OPEN).update(
            status=status, resolved_at=timezone.now(), lease_id=locked_lease.pk if locked_lease else None
        )
        if changed != 1:
            raise InvalidTransition(f"Hold {hold.pk} was resolved concurrently.")
    return Hold.objects.get(pk=hold.pk)


def hold_release(*, hold: Hold) -> Hold:
    """Return a hold's money to the wallet. Resolves the hold exactly once: a second release or
    capture raises ``InvalidTransition`` and posts nothing."""
    return _hold_resolve(hold, HoldStatus.RELEASED, None)


def hold_capture(*, hold: Hold, lease: Lease) -> Hold:
    """Turn a hold into prepayment for ``lease``: the money moves holds -> escrow and settlement
    draws on it before the wallet; what the lease does not use returns to the wallet when it
    closes. Resolves the hold exactly once (``InvalidTransition`` otherwise)."""
    return _hold_resolve(hold, HoldStatus.CAPTURED, lease)
