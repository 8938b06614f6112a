"""Spend controls: a monthly spend cap that refuses orders (402 with the figures) and a
low-balance e-mail sent once per crossing. Real PostgreSQL; Django's locmem mail backend."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import time_machine
from django.core import mail
from rest_framework.test import APIClient

from billing.models import AccountKind, TransactionKind
from billing.services import account_get, accounts_lock, buyer_accounts, hold_place, hold_release
from billing.services.ledger import Posting, posting_write
from billing.services.spend import low_balance_alerts_send, spend_controls_set, spend_figures
from billing.tasks import settle_task
from marketplace.models import Order
from marketplace.services.jobs import JobSpec
from marketplace.services.orders import OrderRequest, order_place
from tests.billing.conftest import fund
from tests.marketplace.market_helpers import MICROS, funded_buyer

pytestmark = pytest.mark.django_db

JOB = {"runtime": "docker", "image": "nvcr.io/nvidia/pytorch:24.05-py3", "command": ["python", "train.py"]}


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def order_body(devices: int = 2, limit: str = "3.00") -> dict:
    return {"term": "on_demand", "devices_per_node": devices, "price_limit": limit, "job": JOB}


def charge(buyer, micros: int, *, at: datetime, key: str) -> None:
    """Post a settlement charge of the buyer's wallet (as settlement would) dated ``at``."""
    wallet = buyer_accounts(user_id=buyer.pk).wallet
    payable = account_get(kind=AccountKind.PROVIDER_PAYABLE, provider_id=999_999)
    accounts_lock([wallet.pk, payable.pk])
    posting = Posting(TransactionKind.SETTLEMENT, key, wallet.currency, posted_at=at)
    posting.add(wallet.pk, -micros)
    posting.add(payable.pk, micros)
    posting_write(posting)


def test_an_order_past_the_monthly_cap_is_refused_with_402_and_the_figures():
    # Given a buyer with 1,000.00 and a cap of 10.00
    buyer = funded_buyer(1000)
    client = client_for(buyer)
    reply = client.patch("/api/v1/spend-controls", {"monthly_cap": "10.00"}, format="json")
    assert reply.status_code == 200, reply.content
    assert reply.json()["monthly_cap"] == "10.00"

    # When a first order needs 6.00 (2 devices x 3.00 x 1 h held) it is accepted
    first = client.post("/api/v1/orders", order_body(), format="json", HTTP_IDEMPOTENCY_KEY="o1")
    assert first.status_code == 201, first.content

    # Then a second one (6.00 more: 12.00 > 10.00) is refused with the figures, and writes nothing
    second = client.post("/api/v1/orders", order_body(), format="json", HTTP_IDEMPOTENCY_KEY="o2")
    assert second.status_code == 402, second.content
    error = second.json()["error"]
    assert error["code"] == "spend_cap_exceeded"
    assert error["fields"] == {
        "monthly_cap": ["10.00"],
        "spent_this_month": ["6.00"],
        "order_charge": ["6.00"],
    }
    assert "10.00" in error["message"] and "6.00" in error["message"]
    assert Order.objects.filter(buyer=buyer).count() == 1

    # and an order that fits what is left (1 device: 3.00, 9.00 <= 10.00) is accepted
    third = client.post("/api/v1/orders", order_body(devices=1), format="json", HTTP_IDEMPOTENCY_KEY="o3")
    assert third.status_code == 201, third.content


def test_spent_this_month_is_charges_posted_this_utc_month_plus_open_holds_and_escrow():
    buyer = funded_buyer(1000)
    with time_machine.travel(datetime(2026, 3, 15, 12, tzinfo=UTC), tick=False):
        # last month's charge does not count; this month's does
        charge(buyer, 40 * MICROS, at=datetime(2026, 2, 28, 23, 59, 59, tzinfo=UTC), key="feb")
        charge(buyer, 7 * MICROS, at=datetime(2026, 3, 1, 0, 0, 0, tzinfo=UTC), key="mar")
        hold = hold_place(buyer=buyer, amount_micros=5 * MICROS, reference="open-order")
        figures = spend_figures(user_id=buyer.pk)
        assert (figures.charged_micros, figures.committed_micros, figures.spent_micros) == (
            7 * MICROS,
            5 * MICROS,
            12 * MICROS,
        )
        # a released hold is no longer committed
        hold_release(hold=hold)
        assert spend_figures(user_id=buyer.pk).spent_micros == 7 * MICROS

        # Then with a cap of 13.00, an order needing 6.00 (7 + 6 = 13) fits and the next one does not
        spend_controls_set(user_id=buyer.pk, monthly_cap_micros=13 * MICROS)
        spec = JobSpec(runtime="docker", image="img")
        request = OrderRequest(term="on_demand", devices_per_node=2, price_limit_micros=3 * MICROS, job=spec)
        order_place(buyer=buyer, request=request, idempotency_key="fits")
        body = client_for(buyer).get("/api/v1/spend-controls").json()
        assert body["spent_this_month"] == "13.00" and body["charged_this_month"] == "7.00"
        assert body["month_start"].startswith("2026-03-01T00:00:00")
        reply = client_for(buyer).post(
            "/api/v1/orders", order_body(devices=1, limit="0.01"), format="json", HTTP_IDEMPOTENCY_KEY="over"
        )
        assert reply.status_code == 402 and reply.json()["error"]["fields"]["spent_this_month"] == ["13.00"]


def test_no_cap_means_no_limit_and_null_clears_a_cap():
    buyer = funded_buyer(1000)
    client = client_for(buyer)
    assert client.get("/api/v1/spend-controls").json()["monthly_cap"] is None
    client.patch("/api/v1/spend-controls", {"monthly_cap": "1.00"}, format="json")
    assert (
        client.post("/api/v1/orders", order_body(), format="json", HTTP_IDEMPOTENCY_KEY="a").status_code
        == 402
    )
    cleared = client.patch("/api/v1/spend-controls", {"monthly_cap": None}, format="json")
    assert cleared.status_code == 200 and cleared.json()["monthly_cap"] is None
    assert (
        client.post("/api/v1/orders", order_body(), format="json", HTTP_IDEMPOTENCY_KEY="b").status_code
        == 201
    )


@pytest.mark.parametrize(
    "body",
    [
        {"monthly_cap": "-1.00"},
        {"monthly_cap": "abc"},
        {"monthly_cap": 1.5},
        {"monthly_cap": "1e999999"},
        {"monthly_cap": "10000000000.00"},
        {"low_balance_threshold": "0.0000001"},
        {"low_balance_threshold": ["1"]},
    ],
)
def test_bad_limits_are_field_errors(body):
    client = client_for(funded_buyer(1))
    reply = client.patch("/api/v1/spend-controls", body, format="json")
    assert reply.status_code == 400, reply.content
    assert set(reply.json()["error"]["fields"]) == set(body)


def test_spend_controls_need_a_login():
    assert APIClient().get("/api/v1/spend-controls").status_code in (401, 403)


@pytest.fixture
def on_commit(django_capture_on_commit_callbacks):
    """Run after-commit callbacks (the e-mail is sent after the alert mark commits)."""

    def run(call):
        with django_capture_on_commit_callbacks(execute=True):
            return call()

    return run


def test_low_balance_email_is_sent_once_per_crossing(on_commit):
    # Given a buyer with 1,000.00 who wants to hear below 100.00
    buyer = funded_buyer(1000)
    reply = client_for(buyer).patch(
        "/api/v1/spend-controls", {"low_balance_threshold": "100.00"}, format="json"
    )
    assert reply.status_code == 200 and reply.json()["low_balance_threshold"] == "100.00"
    assert on_commit(low_balance_alerts_send) == [] and mail.outbox == []

    # When the available balance falls to 50.00, one e-mail; later runs (settlement) send no more
    hold = hold_place(buyer=buyer, amount_micros=950 * MICROS, reference="big")
    assert on_commit(low_balance_alerts_send) == [buyer.pk]
    on_commit(settle_task)  # settlement runs the check too
    on_commit(low_balance_alerts_send)
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == [buyer.email] and "50.00" in message.body and "100.00" in message.subject

    # Then after the balance recovers and falls again, a second e-mail
    hold_release(hold=hold)
    assert on_commit(low_balance_alerts_send) == []
    hold_place(buyer=buyer, amount_micros=990 * MICROS, reference="again")
    on_commit(settle_task)
    assert len(mail.outbox) == 2 and "10.00" in mail.outbox[1].body


def test_a_new_threshold_re_arms_the_alert(on_commit):
    buyer = funded_buyer(10)
    spend_controls_set(user_id=buyer.pk, low_balance_threshold_micros=20 * MICROS)
    assert on_commit(low_balance_alerts_send) == [buyer.pk]
    spend_controls_set(user_id=buyer.pk, low_balance_threshold_micros=15 * MICROS)
    assert on_commit(low_balance_alerts_send) == [buyer.pk]
    fund(buyer, 100 * MICROS)
    assert on_commit(low_balance_alerts_send) == []
    assert len(mail.outbox) == 2


# --- Portal ----------------------------------------------------------------------------------


def test_portal_page_saves_limits_and_adds_and_removes_a_webhook():
    from django.test import Client

    from billing.models import SpendControl
    from marketplace.models import WebhookEndpoint

    buyer = funded_buyer(100)
    browser = Client()
    browser.force_login(buyer)
    page = browser.get("/account/spend/")
    assert page.status_code == 200 and b"Spend controls and webhooks" in page.content

    saved = browser.post(
        "/account/spend/", {"limits-monthly_cap": "500.00", "limits-low_balance_threshold": "20"}
    )
    assert saved.status_code == 302
    control = SpendControl.objects.get(user=buyer)
    assert (control.monthly_cap_micros, control.low_balance_threshold_micros) == (500 * MICROS, 20 * MICROS)
    assert b"500.00" in browser.get("/account/spend/").content

    bad = browser.post("/account/spend/", {"limits-monthly_cap": "-5", "limits-low_balance_threshold": "x"})
    assert bad.status_code == 400 and b"has-error" in bad.content
    assert SpendControl.objects.get(user=buyer).monthly_cap_micros == 500 * MICROS

    added = browser.post(
        "/account/webhooks/", {"hook-url": "http://127.0.0.1:9/p", "hook-events": ["job.ended"]}
    )
    endpoint = WebhookEndpoint.objects.get(buyer=buyer)
    assert added.status_code == 200 and endpoint.secret.encode() in added.content
    assert endpoint.secret.encode() not in browser.get("/account/spend/").content  # shown once
    refused = browser.post("/account/webhooks/", {"hook-url": "gopher://x"})
    assert refused.status_code == 400 and WebhookEndpoint.objects.filter(buyer=buyer).count() == 1

    other = Client()
    other.force_login(funded_buyer(1))
    assert other.post(f"/account/webhooks/{endpoint.pk}/delete/").status_code == 404
    assert browser.post(f"/account/webhooks/{endpoint.pk}/delete/").status_code == 302
    assert not WebhookEndpoint.objects.get(pk=endpoint.pk).active


@pytest.mark.django_db(transaction=True)
def test_concurrent_orders_cannot_both_slip_under_the_cap():
    import threading

    from django.db import connection

    from core.errors import InsufficientFunds

    # Given a cap of 10.00 and two orders of 6.00 placed at the same moment
    buyer = funded_buyer(1000)
    spend_controls_set(user_id=buyer.pk, monthly_cap_micros=10 * MICROS)
    spec = JobSpec(runtime="docker", image="img")
    request = OrderRequest(term="on_demand", devices_per_node=2, price_limit_micros=3 * MICROS, job=spec)
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def place(key: str) -> None:
        try:
            barrier.wait()
            order_place(buyer=buyer, request=request, idempotency_key=key)
            outcomes.append("placed")
        except InsufficientFunds as error:
            outcomes.append(error.code)
        finally:
            connection.close()

    threads = [threading.Thread(target=place, args=(f"race-{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    # Then exactly one is placed (the cap row lock serialises them; the first one's hold counts)
    assert sorted(outcomes) == ["placed"] + ["spend_cap_exceeded"] * 3
    assert Order.objects.filter(buyer=buyer).count() == 1
    assert spend_figures(user_id=buyer.pk).spent_micros == 6 * MICROS
