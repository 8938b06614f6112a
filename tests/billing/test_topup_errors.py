"""A top-up that cannot reach Stripe says so plainly, and development wallets are funded without it.

A local `make run` has no Stripe: a top-up answered 502 with the library's own text
("api.stripe.com ... NameResolutionError"). The buyer now gets a clear message (the raw error is in
the log) and, outside production, the way to get demo money: ``manage.py fundwallet USER AMOUNT``,
a balanced ledger transaction like a paid top-up's.
"""

from __future__ import annotations

import logging
import socket
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db.models import Sum
from django.test import Client
from rest_framework.test import APIClient

from billing.models import AccountKind, Entry, TopUp, TopUpStatus, Transaction, TransactionKind
from billing.selectors import wallet_get
from billing.services import ledger_reconcile
from billing.services.ledger import account_get
from tests.billing.conftest import make_user

pytestmark = pytest.mark.django_db

MICROS = 1_000_000
# What the stripe library says when it cannot connect; none of it may reach the buyer.
LIBRARY_WORDS = (
    "api.stripe.com",
    "127.0.0.1",
    "Error",
    "Connection",
    "HTTP",
    "Network",
    "support@stripe.com",
)


@pytest.fixture
def stripe_unreachable(settings: Any) -> str:
    """Stripe's API host is a local port nobody listens on (connection refused, like no network)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{port}"
    return settings.STRIPE_API_BASE


def api(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def top_up(user: Any, key: str = "k1") -> Any:
    return api(user).post(
        "/api/v1/wallet/top-ups", {"amount": "50.00"}, format="json", HTTP_IDEMPOTENCY_KEY=key
    )


def assert_no_library_words(message: str) -> None:
    for words in LIBRARY_WORDS:
        assert words not in message, message


def test_unreachable_stripe_is_a_clear_502_with_the_raw_error_in_the_log(stripe_unreachable, caplog):
    buyer = make_user("newcomer")

    with caplog.at_level(logging.WARNING):
        response = top_up(buyer)

    assert response.status_code == 502, response.content
    error = response.json()["error"]
    assert error["code"] == "payment_provider_error"
    assert_no_library_words(error["message"])
    assert "Stripe" in error["message"] and "Nothing was charged" in error["message"]
    # Development: the message says how to get demo money instead
    assert f"manage.py fundwallet {buyer.username} 100.00" in error["message"]
    # The library's own words are for the operator, in the log
    assert any(
        "stripe.unavailable" in r.getMessage() and "127.0.0.1" in r.getMessage() for r in caplog.records
    )
    assert wallet_get(user=buyer).balance_micros == 0
    assert TopUp.objects.get(buyer=buyer).status == TopUpStatus.CREATED


def test_in_production_the_message_names_no_development_command(stripe_unreachable, settings):
    settings.PRODUCTION = True
    response = top_up(make_user())

    assert response.status_code == 502
    message = response.json()["error"]["message"]
    assert_no_library_words(message)
    assert "fundwallet" not in message


def test_stripe_answering_503_is_the_same_clear_message_and_a_retry_succeeds(fake_stripe):
    buyer = make_user()
    fake_stripe.unavailable = True
    failed = top_up(buyer)
    assert failed.status_code == 502
    assert_no_library_words(failed.json()["error"]["message"])

    fake_stripe.unavailable = False
    retried = top_up(buyer)  # same Idempotency-Key: the failed attempt did not use it up
    assert retried.status_code == 201, retried.content
    assert retried.json()["checkout_url"].startswith("https://checkout.stripe.test/")


def test_portal_top_up_shows_the_clear_message(stripe_unreachable):
    buyer = make_user()
    client = Client()
    client.force_login(buyer)

    page = client.post("/wallet/top-up/", {"amount": "50.00", "idempotency_key": "p1"}, follow=True)

    body = page.content.decode()
    assert page.status_code == 200
    assert "Nothing was charged" in body
    assert "NameResolution" not in body and "api.stripe.com" not in body and "Connection" not in body


def test_fundwallet_credits_through_a_balanced_top_up_and_the_buyer_can_order():
    from marketplace.services.matching import matching_run
    from tests.marketplace.market_helpers import online_node

    buyer = make_user("newcomer")
    out = StringIO()

    call_command("fundwallet", buyer.username, "100.00", stdout=out)
    call_command("fundwallet", buyer.email, "20.50", "--key", "once", stdout=out)
    call_command("fundwallet", buyer.email, "20.50", "--key", "once", stdout=out)  # same key: nothing more

    assert wallet_get(user=buyer).balance_micros == 120_500_000
    assert "available 120.50" in out.getvalue()
    credits = Transaction.objects.filter(kind=TransactionKind.TOP_UP, memo="development credit")
    assert credits.count() == 2
    for credit in credits:
        assert credit.entries.aggregate(total=Sum("amount_micros"))["total"] == 0
        clearing = account_get(kind=AccountKind.STRIPE_CLEARING)
        assert set(credit.entries.values_list("account_id", flat=True)) == {
            clearing.pk,
            account_get(kind=AccountKind.BUYER_WALLET, user_id=buyer.pk).pk,
        }
    assert ledger_reconcile().ok
    assert Entry.objects.aggregate(total=Sum("amount_micros"))["total"] == 0

    # And the newcomer can place an order with it, no Stripe involved
    online_node(name="n")
    response = api(buyer).post(
        "/api/v1/orders",
        {"term": "on_demand", "devices_per_node": 1, "price_limit": "3.00", "job": {"image": "python:3.12"}},
        format="json",
        HTTP_IDEMPOTENCY_KEY="first-order",
    )
    assert response.status_code == 201, response.json()
    matching_run()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["nobody", "10.00"], "no user named"),
        (["{user}", "ten"], "is not an amount"),
        (["{user}", "10.001"], "is not an amount"),
        (["{user}", "-5"], "More than 0"),
        (["{user}", "0"], "More than 0"),
        (["{user}", "1e30"], "More than 0"),
    ],
)
def test_fundwallet_refuses_bad_input(args, words):
    buyer = make_user()
    with pytest.raises(CommandError, match=words):
        call_command("fundwallet", *[a.format(user=buyer.username) for a in args])
    assert wallet_get(user=buyer).balance_micros == 0


def test_fundwallet_is_refused_in_production(settings):
    settings.PRODUCTION = True
    buyer = make_user()
    with pytest.raises(CommandError, match="production"):
        call_command("fundwallet", buyer.username, "10.00")
    assert wallet_get(user=buyer).balance_micros == 0
    assert not Transaction.objects.filter(memo="development credit").exists()
