"""Stripe top-ups and the webhook events that move buyer money in and out."""

from __future__ import annotations

from typing import Any

import structlog
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from billing import stripe_gateway
from billing.models import AccountKind, TopUp, TopUpStatus, TransactionKind, WebhookEvent
from billing.services.ledger import Posting, account_get, accounts_lock, default_currency, posting_write
from billing.services.wallets import available_micros, buyer_accounts
from core.errors import Conflict, PaymentProviderError, ValidationFailed
from core.money import MoneyFormatError, format_amount, to_minor_units

log = structlog.get_logger(__name__)


def topup_create(*, buyer: Any, amount_micros: int, client_key: str | None = None) -> TopUp:
    """Create a Stripe Checkout Session for a wallet top-up and return the top-up with its URL.

    Contract: the row is committed before Stripe is called (a crash leaves a visible ``created``
    top-up); Stripe's idempotency key is ``topup:<id>``, so a retry returns the same session.
    ``client_key`` (the request's ``Idempotency-Key``) makes the whole call idempotent per buyer;
    reusing it for another amount raises ``Conflict``. Credits nothing: only the
    ``checkout.session.completed`` webhook does.
    """
    if amount_micros < settings.BILLING_MIN_TOP_UP_MICROS:
        minimum = _("The smallest top-up is %(amount)s.") % {
            "amount": format_amount(settings.BILLING_MIN_TOP_UP_MICROS)
        }
        raise ValidationFailed(minimum, fields={"amount": minimum})
    try:
        to_minor_units(amount_micros)
    except MoneyFormatError:
        raise ValidationFailed(
            _("Top-ups are whole cents."), fields={"amount": _("Top-ups are whole cents.")}
        ) from None
    currency = default_currency()
    key = client_key or f"auto:{timezone.now().timestamp()}"
    try:
        with transaction.atomic():
            top_up, _created = TopUp.objects.get_or_create(
                buyer=buyer, client_key=key, defaults={"amount_micros": amount_micros, "currency": currency}
            )
    except IntegrityError:
        top_up = TopUp.objects.get(buyer=buyer, client_key=key)
    if top_up.amount_micros != amount_micros:
        raise Conflict(_("This Idempotency-Key was used for another amount."))
    if top_up.checkout_url:
        return top_up
    try:
        session = stripe_gateway.checkout_session_create(
            top_up_id=top_up.pk,
            amount_micros=amount_micros,
            currency=currency,
            success_url=f"{settings.SITE_URL}/wallet?top_up={top_up.pk}",
            cancel_url=f"{settings.SITE_URL}/wallet",
            email=getattr(buyer, "email", None) or None,
        )
    except PaymentProviderError as exc:
        # The gateway logged Stripe's own words; the buyer gets what happened and what to do.
        log.warning("billing.top_up_not_started", top_up_id=top_up.pk, error=exc.message)
        raise PaymentProviderError(_top_up_failure_message(buyer, exc), code=exc.code) from exc
    TopUp.objects.filter(pk=top_up.pk, status=TopUpStatus.CREATED).update(
        status=TopUpStatus.OPEN, stripe_session_id=session.id, checkout_url=session.url
    )
    top_up.refresh_from_db()
    log.info("billing.top_up_created", top_up_id=top_up.pk, session_id=session.id)
    return top_up


def _top_up_failure_message(buyer: Any, error: PaymentProviderError) -> str:
    if isinstance(error, stripe_gateway.StripeRejected):
        message = _(
            "The top-up could not be started: the card payment service (Stripe) refused it. Nothing "
            "was charged; contact the exchange's support if this happens again."
        )
    elif isinstance(error, stripe_gateway.StripeNotConfigured):
        message = _(
            "The top-up could not be started: card payments are not set up on this exchange. Nothing "
            "was charged."
        )
    else:
        message = _(
            "The top-up could not be started: the card payment service (Stripe) is not reachable from "
            "this exchange right now. Nothing was charged; try again in a few minutes."
        )
    if settings.PRODUCTION:
        return message
    # Development (make run) has no Stripe account: say how to get demo money instead.
    return (
        message
        + " "
        + _(
            "On a development server, add demo money with: python manage.py fundwallet %(user)s 100.00 "
            "(see README)."
        )
        % {"user": getattr(buyer, "username", "USER")}
    )


def _top_up_for_session(session: dict[str, Any]) -> TopUp | None:
    ref = session.get("client_reference_id") or (session.get("metadata") or {}).get("top_up_id")
    query = TopUp.objects.select_for_update()
    if ref and str(ref).isdigit():
        found = query.filter(pk=int(ref)).first()
        if found is not None:
            return found
    return query.filter(stripe_session_id=session.get("id")).first()


def _apply_session_completed(session: dict[str, Any]) -> bool:
    if session.get("payment_status") not in ("paid", "no_payment_required"):
        return True  # async payment methods: wait for a later event
    top_up = _top_up_for_session(session)
    if top_up is None:
        log.warning("billing.top_up_unknown_session", session_id=session.get("id"))
        return True
    if top_up.status == TopUpStatus.COMPLETED:
        return True
    amount = stripe_gateway.micros_from_stripe(session["amount_total"])
    accounts = buyer_accounts(user_id=top_up.buyer_id, currency=top_up.currency)
    clearing = account_get(kind=AccountKind.STRIPE_CLEARING, currency=top_up.currency)
    accounts_lock([accounts.wallet.pk, clearing.pk])
    posting = Posting(
        TransactionKind.TOP_UP, f"topup:session:{session['id']}", top_up.currency, memo=f"top-up {top_up.pk}"
    )
    posting.add(clearing.pk, -amount)
    posting.add(accounts.wallet.pk, amount)
    posting_write(posting)
    TopUp.objects.filter(pk=top_up.pk).update(
        status=TopUpStatus.COMPLETED,
        stripe_session_id=session["id"],
        stripe_payment_intent_id=session.get("payment_intent") or None,
        credited_micros=amount,
        completed_at=timezone.now(),
    )
    log.info("billing.top_up_credited", top_up_id=top_up.pk, amount_micros=amount)
    return True


def _apply_charge_refunded(charge: dict[str, Any]) -> bool:
    """Reverse refunded money; ``amount_refunded`` is cumulative, so we post the difference."""
    intent = charge.get("payment_intent")
    top_up = (
        TopUp.objects.select_for_update().filter(stripe_payment_intent_id=intent).first() if intent else None
    )
    if top_up is None or top_up.status != TopUpStatus.COMPLETED:
        return False  # arrived before the completion: applied when the top-up completes
    refunded = min(
        stripe_gateway.micros_from_stripe(charge.get("amount_refunded", 0)), top_up.credited_micros
    )
    delta = refunded - top_up.refunded_micros
    if delta <= 0:
        return True
    accounts = buyer_accounts(user_id=top_up.buyer_id, currency=top_up.currency)
    clearing = account_get(kind=AccountKind.STRIPE_CLEARING, currency=top_up.currency)
    write_off = account_get(kind=AccountKind.WRITE_OFF, currency=top_up.currency)
    locked = accounts_lock([accounts.wallet.pk, clearing.pk, write_off.pk])
    # Money already spent cannot leave the wallet again: the wallet gives back what it can, the
    # rest is the platform's loss (and the wallet never crosses its credit line).
    from_wallet = min(delta, max(0, available_micros(locked[accounts.wallet.pk])))
    posting = Posting(TransactionKind.REFUND, f"topup:{top_up.pk}:refunded:{refunded}", top_up.currency)
    posting.add(accounts.wallet.pk, -from_wallet)
    posting.add(write_off.pk, -(delta - from_wallet))
    posting.add(clearing.pk, delta)
    posting_write(posting)
    TopUp.objects.filter(pk=top_up.pk).update(refunded_micros=refunded)
    log.info("billing.top_up_refunded", top_up_id=top_up.pk, amount_micros=delta)
    return True


def _apply(event: WebhookEvent) -> bool:
    from billing.services.payouts import payout_transfer_reversed

    obj = event.payload.get("data", {}).get("object", {})
    if event.type == "checkout.session.completed" or event.type == "checkout.session.async_payment_succeeded":
        done = _apply_session_completed(obj)
        if done and obj.get("payment_intent"):
            _apply_waiting(str(obj["payment_intent"]))
        return done
    if event.type == "charge.refunded":
        return _apply_charge_refunded(obj)
    if event.type == "transfer.reversed":
        return payout_transfer_reversed(transfer=obj)
    return True  # an event we do not act on


def _apply_waiting(ref: str) -> None:
    for waiting in (
        WebhookEvent.objects.select_for_update().filter(ref=ref, processed_at__isnull=True).order_by("pk")
    ):
        if _apply(waiting):
            WebhookEvent.objects.filter(pk=waiting.pk).update(processed_at=timezone.now())


def webhook_receive(*, payload: bytes, signature: str | None) -> WebhookEvent:
    """Verify, store once and apply a Stripe event.

    Contract: the signature is checked with the real ``stripe`` library (``ValidationFailed``
    otherwise). The event is stored under its unique id; a redelivery finds it processed and
    changes nothing. Each effect has its own unique ledger key too (one credit per Checkout
    Session), so two different events for one session also credit once. An event that depends on
    one not yet seen (a refund before its completion) is kept and applied when that one arrives.
    """
    event = stripe_gateway.webhook_event_verify(payload=payload, signature=signature)
    obj = event.get("data", {}).get("object", {})
    ref = str(obj.get("payment_intent") or "") if event["type"].startswith("charge.") else ""
    with transaction.atomic():
        stored, _created = WebhookEvent.objects.get_or_create(
            event_id=event["id"], defaults={"type": event["type"], "payload": event, "ref": ref}
        )
        stored = WebhookEvent.objects.select_for_update().get(pk=stored.pk)
        if stored.processed_at is None and _apply(stored):
            stored.processed_at = timezone.now()
            WebhookEvent.objects.filter(pk=stored.pk).update(processed_at=stored.processed_at)
    return stored
