"""The only module that talks to Stripe and the only place money becomes Stripe minor units.

``STRIPE_API_BASE`` points the library at another host (the local fake Stripe in tests and
development). Every creating call carries a deterministic idempotency key, so a retry after a
crash or timeout never creates a second object at Stripe.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import stripe
from django.conf import settings
from django.utils.translation import gettext as _

from core.errors import PaymentProviderError, ValidationFailed
from core.money import from_minor_units, to_minor_units

log = logging.getLogger(__name__)


class StripeRejected(PaymentProviderError):
    """Stripe answered and said no: retrying the same request will not help."""

    code = "payment_provider_rejected"


class StripeNotConfigured(PaymentProviderError):
    """Stripe refused the exchange's own API key: an operator must fix ``STRIPE_SECRET_KEY``."""


def client() -> stripe.StripeClient:
    base = settings.STRIPE_API_BASE
    kwargs: dict[str, Any] = {}
    if base:
        kwargs["base_addresses"] = {"api": base, "connect": base, "files": base}
    return stripe.StripeClient(str(settings.STRIPE_SECRET_KEY), max_network_retries=2, **kwargs)


def _call(fn: Any, params: dict[str, Any], idempotency_key: str | None = None) -> Any:
    """Call Stripe; its errors become ``StripeRejected`` (final) or ``PaymentProviderError`` (retry).

    The library's own text (host names, resolver and socket errors, request ids) goes to the log
    only: the message raised is meant for the buyer or provider who sees it.
    """
    options: dict[str, Any] = {"idempotency_key": idempotency_key} if idempotency_key else {}
    try:
        return fn(params=params, options=options)
    except (stripe.InvalidRequestError, stripe.CardError, stripe.PermissionError) as exc:
        log.warning("stripe.rejected key=%s error=%s: %s", idempotency_key, type(exc).__name__, exc)
        # Kept on a failed payout for operators; top-ups show their own message (topup_create).
        raise StripeRejected(f"Stripe rejected the request: {exc.user_message or exc}") from exc
    except stripe.AuthenticationError as exc:
        log.error("stripe.authentication_failed key=%s: %s (check STRIPE_SECRET_KEY)", idempotency_key, exc)
        raise StripeNotConfigured(
            _("Payments are not set up on this exchange (Stripe refused its key).")
        ) from exc
    except stripe.StripeError as exc:
        log.warning("stripe.unavailable key=%s error=%s: %s", idempotency_key, type(exc).__name__, exc)
        raise PaymentProviderError(_("Stripe cannot be reached right now.")) from exc


@dataclass(frozen=True)
class CheckoutSession:
    id: str
    url: str


def checkout_session_create(
    *, top_up_id: int, amount_micros: int, currency: str, success_url: str, cancel_url: str, email: str | None
) -> CheckoutSession:
    params: dict[str, Any] = {
        "mode": "payment",
        "client_reference_id": str(top_up_id),
        "metadata": {"top_up_id": str(top_up_id)},
        "payment_intent_data": {"metadata": {"top_up_id": str(top_up_id)}},
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": currency.lower(),
                    "unit_amount": to_minor_units(amount_micros),
                    "product_data": {"name": "Suanli Exchange wallet top-up"},
                },
            }
        ],
        "success_url": success_url,
        "cancel_url": cancel_url,
    }
    if email:
        params["customer_email"] = email
    session = _call(client().v1.checkout.sessions.create, params, f"topup:{top_up_id}")
    return CheckoutSession(id=session.id, url=session.url)


def connect_account_create(*, provider_id: int) -> str:
    params = {"type": "express", "metadata": {"provider_id": str(provider_id)}}
    account = _call(client().v1.accounts.create, params, f"connect-account:{provider_id}")
    return str(account.id)


def account_link_create(*, account_id: str, refresh_url: str, return_url: str) -> str:
    params = {
        "account": account_id,
        "refresh_url": refresh_url,
        "return_url": return_url,
        "type": "account_onboarding",
    }
    return str(_call(client().v1.account_links.create, params).url)


def transfer_create(*, payout_id: int, amount_micros: int, currency: str, destination: str) -> str:
    params = {
        "amount": to_minor_units(amount_micros),
        "currency": currency.lower(),
        "destination": destination,
        "metadata": {"payout_id": str(payout_id)},
        "transfer_group": f"payout:{payout_id}",
    }
    return str(_call(client().v1.transfers.create, params, f"payout:{payout_id}").id)


def webhook_event_verify(*, payload: bytes, signature: str | None) -> dict[str, Any]:
    """Verify the ``Stripe-Signature`` header and return the event as plain JSON."""
    try:
        stripe.Webhook.construct_event(payload, signature, str(settings.STRIPE_WEBHOOK_SECRET))
    except stripe.SignatureVerificationError as exc:
        raise ValidationFailed("Invalid Stripe signature.", code="invalid_signature") from exc
    except ValueError as exc:
        raise ValidationFailed("Malformed Stripe event.") from exc
    event = json.loads(payload)
    if not isinstance(event, dict) or "id" not in event or "type" not in event:
        raise ValidationFailed("Malformed Stripe event.")
    return event


def micros_from_stripe(amount_minor: int) -> int:
    return from_minor_units(int(amount_minor))
