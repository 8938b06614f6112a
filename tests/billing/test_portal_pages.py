"""Billing portal pages: the wallet (balances, top-up through Stripe Checkout, usage, invoices)
and a provider's earnings (payable, in transit, paid; Connect onboarding; payouts; statements)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from billing.models import Lease, Payout, PayoutAccount, StatementKind, TopUp
from billing.services import lease_close, lease_open, settle, statement_build
from tests.billing.conftest import fund, make_user

pytestmark = pytest.mark.django_db

PROVIDER = 9101


def client_for(user) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(user)
    return client


def closed_lease(buyer, *, job_id: int, hours: int = 2, rate: int = 2_000_000) -> Lease:  # type: ignore[no-untyped-def]
    start = timezone.now() - timedelta(hours=hours + 1)
    lease = lease_open(
        buyer=buyer, provider_id=PROVIDER, job_id=job_id, device_count=1, rate_micros=rate, started_at=start,
        idempotency_key=f"test-lease:{job_id}",
    )  # fmt: skip
    lease_close(lease=lease, at=start + timedelta(hours=hours))
    settle(until=timezone.now())
    return Lease.objects.get(pk=lease.pk)


def test_wallet_shows_balances_usage_and_invoices_of_the_user_only(django_assert_max_num_queries):
    buyer, other = make_user("buyer"), make_user("other")
    fund(buyer, 100_000_000)
    fund(other, 7_777_000_000)
    for job_id in range(1, 6):
        closed_lease(buyer, job_id=job_id, hours=1)
    closed_lease(other, job_id=99, hours=3)
    statement_build(kind=StatementKind.BUYER_INVOICE, period_start=timezone.now().date(), currency="USD",
                    user_id=buyer.pk)  # fmt: skip
    client = client_for(buyer)
    with django_assert_max_num_queries(12):
        body = client.get("/wallet/").content.decode()
    assert "$90.00" in body  # 100.00 - 5 jobs x 1 h x 2.00
    assert body.count("/jobs/") >= 5 and "/jobs/99/" not in body
    assert "Device-hours per day" in body and "Cost per day" in body
    assert "$7,777" not in body
    assert "/billing/statements/" in body and ".csv" in body


def test_top_up_goes_to_stripe_checkout_and_the_webhook_credits_the_wallet(fake_stripe, webhooks):
    buyer = make_user("buyer")
    client = client_for(buyer)
    response = client.post("/wallet/top-up/", {"amount": "25.00", "idempotency_key": "tu-1"})
    top_up = TopUp.objects.get(buyer=buyer)
    assert response.status_code == 302 and response["Location"] == top_up.checkout_url
    assert response["Location"].startswith("https://checkout.stripe.test/")
    assert "Thank you" in client.get(f"/wallet/?top_up={top_up.pk}", follow=True).content.decode()
    session = dict(fake_stripe.objects[top_up.stripe_session_id])
    session.update(status="complete", payment_status="paid", payment_intent="pi_portal")
    assert webhooks.deliver(webhooks.event("checkout.session.completed", session)).status_code == 200
    body = client.get(f"/wallet/?top_up={top_up.pk}").content.decode()
    assert "Your top-up of $25.00 is in your wallet." in body and "$25.00" in body
    # Another user's top-up id says nothing.
    stranger = client_for(make_user("stranger")).get(f"/wallet/?top_up={top_up.pk}").content.decode()
    assert "$25.00" not in stranger


def test_a_too_small_top_up_is_refused_with_a_message():
    client = client_for(make_user("buyer"))
    response = client.post("/wallet/top-up/", {"amount": "1.00", "idempotency_key": "tu"}, follow=True)
    assert "The smallest top-up is 5" in response.content.decode()
    assert not TopUp.objects.exists()


def test_earnings_show_payable_payouts_and_statements_of_the_members_providers(
    fake_stripe, django_assert_max_num_queries
):
    from tests.providers.factories import ProviderFactory, member_of

    provider, other_provider = ProviderFactory(name="Huaxia"), ProviderFactory(name="Elsewhere")
    member, stranger = member_of(provider), member_of(other_provider)
    buyer = make_user("buyer")
    fund(buyer, 100_000_000)
    start = timezone.now() - timedelta(hours=3)
    lease = lease_open(buyer=buyer, provider_id=provider.pk, job_id=1, device_count=4, rate_micros=5_000_000,
                       started_at=start, idempotency_key="earn")  # fmt: skip
    lease_close(lease=lease, at=start + timedelta(hours=2))
    settle(until=timezone.now())
    PayoutAccount.objects.create(provider_id=provider.pk, stripe_account_id="acct_test_portal")
    from billing.services import payouts_run

    payouts_run(threshold_micros=1_000_000)
    statement_build(kind=StatementKind.PROVIDER_EARNINGS, period_start=timezone.now().date(), currency="USD",
                    provider_id=provider.pk)  # fmt: skip
    client = client_for(member)
    with django_assert_max_num_queries(14):
        body = client.get("/provider/payouts/").content.decode()
    payout = Payout.objects.get(provider_id=provider.pk)
    assert payout.status == "paid"
    assert "Huaxia" in body and "Elsewhere" not in body
    assert "$36.00" in body  # 40.00 gross - 10% fee, paid out
    assert "Stripe Connect account linked" in body and "/billing/statements/" in body
    other = client_for(stranger).get("/provider/payouts/").content.decode()
    assert "$36.00" not in other and "Set up payouts with Stripe" in other


def test_connect_onboarding_redirects_to_stripe_for_members_only(fake_stripe):
    from tests.providers.factories import ProviderFactory, member_of

    provider = ProviderFactory()
    member, stranger = member_of(provider), member_of(ProviderFactory())
    response = client_for(member).post("/provider/payouts/onboard/", {"provider": provider.pk})
    assert response.status_code == 302 and response["Location"].startswith("https://connect.stripe.test/")
    assert PayoutAccount.objects.filter(provider_id=provider.pk).exists()
    assert (
        client_for(stranger).post("/provider/payouts/onboard/", {"provider": provider.pk}).status_code == 404
    )


def zh_client_for(user) -> Client:  # type: ignore[no-untyped-def]
    client = client_for(user)
    client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/"})
    return client


def test_a_statement_reads_in_chinese_on_a_zh_page():
    buyer = make_user("buyer")
    fund(buyer, 100_000_000)
    closed_lease(buyer, job_id=7, hours=1)
    invoice = statement_build(kind=StatementKind.BUYER_INVOICE, period_start=timezone.now().date(),
                              currency="USD", user_id=buyer.pk)  # fmt: skip
    body = zh_client_for(buyer).get(f"/billing/statements/{invoice.pk}.html").content.decode()
    assert '<html lang="zh-Hans">' in body and "<h1>账单</h1>" in body and "<td>设备时长</td>" in body
    for english in ("Period", "Draft", "Device-hours", "Total", "<td>lease</td>"):
        assert english not in body
    english = client_for(buyer).get(f"/billing/statements/{invoice.pk}.html").content.decode()
    assert "<h1>Invoice</h1>" in english and "<td>Device time</td>" in english
    csv_text = client_for(buyer).get(f"/billing/statements/{invoice.pk}.csv").content.decode()
    assert csv_text.splitlines()[1].startswith("lease,")  # the CSV keeps its machine codes


def test_a_top_up_stripe_cannot_take_says_why_in_chinese(fake_stripe):
    fake_stripe.unavailable = True
    client = zh_client_for(make_user("buyer"))
    body = client.post(
        "/wallet/top-up/", {"amount": "25.00", "idempotency_key": "tu"}, follow=True
    ).content.decode()
    # The top-up's own words in the page's language (never the stripe library's text).
    from django.utils import translation
    from django.utils.html import escape

    with translation.override("zh-hans"):
        expected = translation.gettext(
            "The top-up could not be started: the card payment service (Stripe) is not reachable from "
            "this exchange right now. Nothing was charged; try again in a few minutes."
        )
    assert escape(expected) in body
    assert "Stripe is unavailable" not in body and "Service unavailable" not in body


def test_why_a_payout_failed_reads_in_chinese(fake_stripe):
    from tests.providers.factories import ProviderFactory, member_of

    provider = ProviderFactory(name="Huaxia")
    member = member_of(provider)
    Payout.objects.create(provider_id=provider.pk, amount_micros=1_000_000, currency="USD", status="failed",
                          stripe_account_id="acct_x", failure_reason="transfer reversed")  # fmt: skip
    Payout.objects.create(provider_id=provider.pk, amount_micros=2_000_000, currency="USD", status="failed",
                          stripe_account_id="acct_x",
                          failure_reason="Stripe rejected the request: No such destination: 'acct_x'")  # fmt: skip
    body = zh_client_for(member).get("/provider/payouts/").content.decode()
    assert "转账已被退回" in body and "Stripe 拒绝了请求：No such destination: &#x27;acct_x&#x27;" in body
    assert "transfer reversed" not in body and "rejected the request" not in body
