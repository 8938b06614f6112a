"""Billing test helpers: users, funded wallets, the fake Stripe server and signed webhooks."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from billing.models import AccountKind, TransactionKind
from billing.services import Posting, account_get, accounts_lock, buyer_accounts, posting_write
from tests.support.fake_stripe import FakeStripe, event_payload, sign_event

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
_seq = itertools.count(1)


def make_user(name: str | None = None) -> Any:
    name = name or f"user{next(_seq)}"
    return get_user_model().objects.create_user(
        username=f"{name}-{next(_seq)}", email=f"{name}@example.test", password="x"
    )


def fund(user: Any, micros: int, *, key: str | None = None) -> None:
    """Credit a wallet as a completed top-up would (Stripe clearing -> wallet)."""
    from django.db import transaction

    wallet = buyer_accounts(user_id=user.pk).wallet
    clearing = account_get(kind=AccountKind.STRIPE_CLEARING)
    with transaction.atomic():
        accounts_lock([wallet.pk, clearing.pk])
        posting = Posting(TransactionKind.TOP_UP, key or f"test-fund:{next(_seq)}", wallet.currency)
        posting.add(clearing.pk, -micros)
        posting.add(wallet.pk, micros)
        posting_write(posting)


def balance(kind: str, **owner: Any) -> int:
    return account_get(kind=kind, **owner).balance_micros if owner or kind else 0


@pytest.fixture(scope="session")
def fake_stripe_server() -> Iterator[FakeStripe]:
    server = FakeStripe().start()
    yield server
    server.stop()


@pytest.fixture
def fake_stripe(fake_stripe_server: FakeStripe, settings: Any) -> FakeStripe:
    settings.STRIPE_API_BASE = fake_stripe_server.url
    fake_stripe_server.reject_transfers = False
    fake_stripe_server.unavailable = False
    return fake_stripe_server


class Webhooks:
    """Signs events with the real stripe library and posts them to the webhook endpoint."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.client = Client()

    def deliver(self, payload: bytes, *, signature: str | None = None) -> Any:
        return self.client.post(
            "/billing/stripe/webhook",
            data=payload,
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=signature or sign_event(payload, self.secret),
        )

    def event(self, event_type: str, obj: dict[str, Any], *, event_id: str | None = None) -> bytes:
        return event_payload(event_type, obj, event_id=event_id)


@pytest.fixture
def webhooks(settings: Any) -> Webhooks:
    return Webhooks(settings.STRIPE_WEBHOOK_SECRET)
