"""Provider payouts over Stripe Connect: lock, write in-progress, commit, call Stripe, record.

``pending`` (payable moved to in-transit, committed) -> ``submitted`` (written before the Stripe
call, so a crash leaves a visible, resumable payout) -> ``paid`` (transfer id recorded; in-transit
leaves through Stripe clearing) | ``failed`` (entries reversed back to payable). A transfer Stripe
reverses later moves ``paid -> failed`` and reverses too.
"""

from __future__ import annotations

from typing import Any

import structlog
from django.conf import settings
from django.db import IntegrityError, transaction

from billing import stripe_gateway
from billing.models import Account, AccountKind, Payout, PayoutAccount, PayoutStatus, TransactionKind
from billing.services.ledger import Posting, account_get, accounts_lock, posting_write
from core.errors import InvalidTransition, PaymentProviderError

log = structlog.get_logger(__name__)

MINOR_UNIT_MICROS = 10_000


def payout_account_onboard(*, provider_id: int, refresh_url: str, return_url: str) -> str:
    """Create (once) the provider's Stripe Connect Express account and return a fresh onboarding
    link. Stripe is called outside any transaction; its idempotency key is per provider."""
    account = PayoutAccount.objects.filter(provider_id=provider_id).first()
    if account is None:
        account_id = stripe_gateway.connect_account_create(provider_id=provider_id)
        try:
            with transaction.atomic():
                account = PayoutAccount.objects.create(provider_id=provider_id, stripe_account_id=account_id)
        except IntegrityError:
            account = PayoutAccount.objects.get(provider_id=provider_id)
    return stripe_gateway.account_link_create(
        account_id=account.stripe_account_id, refresh_url=refresh_url, return_url=return_url
    )


def _move(payout: Payout, old: str, new: str, **fields: Any) -> None:
    if new not in Payout.TRANSITIONS.get(PayoutStatus(old), set()):
        raise InvalidTransition(f"payout {old} -> {new} is not allowed")
    if Payout.objects.filter(pk=payout.pk, status=old).update(status=new, **fields) != 1:
        raise InvalidTransition(f"Payout {payout.pk} is no longer {old}.")


def payouts_create(*, threshold_micros: int | None = None) -> list[Payout]:
    """Create a ``pending`` payout for every provider payable at or above the threshold (default
    ``BILLING_PAYOUT_THRESHOLD_MICROS``) that has a Connect account and nothing in flight.

    Locks each payable row; moves the whole cents of it payable -> in-transit in the same
    transaction. A partial unique index allows one in-flight payout per provider and currency.
    """
    threshold = settings.BILLING_PAYOUT_THRESHOLD_MICROS if threshold_micros is None else threshold_micros
    connected = dict(PayoutAccount.objects.values_list("provider_id", "stripe_account_id"))
    created: list[Payout] = []
    candidates = Account.objects.filter(
        kind=AccountKind.PROVIDER_PAYABLE, balance_micros__gte=threshold, provider_id__in=list(connected)
    ).order_by("pk")
    for payable in candidates:
        assert payable.provider_id is not None
        in_transit = account_get(
            kind=AccountKind.PROVIDER_IN_TRANSIT, currency=payable.currency, provider_id=payable.provider_id
        )
        with transaction.atomic():
            locked = accounts_lock([payable.pk, in_transit.pk])[payable.pk]
            amount = locked.balance_micros - locked.balance_micros % MINOR_UNIT_MICROS
            if amount < threshold or amount <= 0:
                continue
            if Payout.objects.filter(
                provider_id=payable.provider_id,
                currency=payable.currency,
                status__in=[PayoutStatus.PENDING, PayoutStatus.SUBMITTED],
            ).exists():
                continue
            payout = Payout.objects.create(
                provider_id=payable.provider_id,
                currency=payable.currency,
                amount_micros=amount,
                stripe_account_id=connected[payable.provider_id],
            )
            posting = Posting(TransactionKind.PAYOUT, f"payout:{payout.pk}:start", payout.currency)
            posting.add(payable.pk, -amount)
            posting.add(in_transit.pk, amount)
            posting_write(posting)
        created.append(payout)
        log.info(
            "billing.payout_created",
            payout_id=payout.pk,
            provider_id=payout.provider_id,
            amount_micros=amount,
        )
    return created


def _reverse(payout: Payout, *, from_kind: str, key: str) -> None:
    source = account_get(
        kind=from_kind,
        currency=payout.currency,
        provider_id=None if from_kind == AccountKind.STRIPE_CLEARING else payout.provider_id,
    )
    payable = account_get(
        kind=AccountKind.PROVIDER_PAYABLE, currency=payout.currency, provider_id=payout.provider_id
    )
    accounts_lock([source.pk, payable.pk])
    posting = Posting(TransactionKind.PAYOUT_REVERSAL, key, payout.currency)
    posting.add(source.pk, -payout.amount_micros)
    posting.add(payable.pk, payout.amount_micros)
    posting_write(posting)


def payout_submit(*, payout: Payout) -> Payout:
    """Send one payout to Stripe (``Transfer`` with idempotency key ``payout:<id>``).

    Contract: ``pending`` is moved to ``submitted`` and committed before the call; a ``submitted``
    payout without a transfer id (a crash or a timeout) is simply submitted again with the same key.
    Stripe accepting records the transfer id and ``paid``; Stripe rejecting marks ``failed`` and
    reverses in-transit back to payable; Stripe unreachable leaves it ``submitted`` for the next run.
    """
    payout = Payout.objects.get(pk=payout.pk)
    if payout.status == PayoutStatus.PENDING:
        _move(payout, PayoutStatus.PENDING, PayoutStatus.SUBMITTED)
    elif payout.status != PayoutStatus.SUBMITTED or payout.stripe_transfer_id:
        return payout
    try:
        transfer_id = stripe_gateway.transfer_create(
            payout_id=payout.pk,
            amount_micros=payout.amount_micros,
            currency=payout.currency,
            destination=payout.stripe_account_id,
        )
    except stripe_gateway.StripeRejected as exc:
        with transaction.atomic():
            _move(payout, PayoutStatus.SUBMITTED, PayoutStatus.FAILED, failure_reason=str(exc)[:500])
            _reverse(payout, from_kind=AccountKind.PROVIDER_IN_TRANSIT, key=f"payout:{payout.pk}:failed")
        log.warning("billing.payout_failed", payout_id=payout.pk)
        return Payout.objects.get(pk=payout.pk)
    except PaymentProviderError:
        log.warning("billing.payout_stripe_unavailable", payout_id=payout.pk)
        return Payout.objects.get(pk=payout.pk)
    with transaction.atomic():
        in_transit = account_get(
            kind=AccountKind.PROVIDER_IN_TRANSIT, currency=payout.currency, provider_id=payout.provider_id
        )
        clearing = account_get(kind=AccountKind.STRIPE_CLEARING, currency=payout.currency)
        accounts_lock([in_transit.pk, clearing.pk])
        _move(payout, PayoutStatus.SUBMITTED, PayoutStatus.PAID, stripe_transfer_id=transfer_id)
        posting = Posting(TransactionKind.PAYOUT_PAID, f"payout:{payout.pk}:paid", payout.currency)
        posting.add(in_transit.pk, -payout.amount_micros)
        posting.add(clearing.pk, payout.amount_micros)
        posting_write(posting)
    log.info("billing.payout_paid", payout_id=payout.pk, transfer_id=transfer_id)
    return Payout.objects.get(pk=payout.pk)


def payouts_run(*, threshold_micros: int | None = None) -> list[Payout]:
    """The daily run: create payouts, then submit everything pending or stuck in submitted."""
    payouts_create(threshold_micros=threshold_micros)
    stuck = Payout.objects.filter(
        status__in=[PayoutStatus.PENDING, PayoutStatus.SUBMITTED], stripe_transfer_id__isnull=True
    ).order_by("pk")
    return [payout_submit(payout=p) for p in stuck]


def payout_transfer_reversed(*, transfer: dict[str, Any]) -> bool:
    """``transfer.reversed``: the money came back from the connected account; a ``paid`` payout
    becomes ``failed`` and its amount returns to payable (once: unique ledger key)."""
    payout = Payout.objects.select_for_update().filter(stripe_transfer_id=transfer.get("id")).first()
    if payout is None:
        return True
    if payout.status == PayoutStatus.PAID:
        _move(payout, PayoutStatus.PAID, PayoutStatus.FAILED, failure_reason="transfer reversed")
        _reverse(payout, from_kind=AccountKind.STRIPE_CLEARING, key=f"payout:{payout.pk}:reversed")
    return True
