"""`make run`'s demo data gives the money pages something real: a settled job, an invoice, a
provider statement and a payout, once however often seeddemo runs."""

import pytest
from django.core.management import call_command
from django.test import Client

from billing.models import Lease, Payout, Statement, StatementKind

pytestmark = pytest.mark.django_db


def test_seeddemo_creates_billing_history_once():
    call_command("seeddemo")
    call_command("seeddemo")
    lease = Lease.objects.get(idempotency_key="demo:lease:history")
    assert lease.charged_micros == 40_000_000  # 8 h x 2 devices x 2.50
    payout = Payout.objects.get(provider_id=lease.provider_id)
    assert payout.amount_micros == 36_000_000  # after the 10% platform fee
    assert Statement.objects.filter(kind=StatementKind.BUYER_INVOICE, user=lease.buyer).count() == 1
    assert (
        Statement.objects.filter(kind=StatementKind.PROVIDER_EARNINGS, provider_id=lease.provider_id).count()
        == 1
    )

    buyer, provider = Client(), Client()
    assert buyer.login(username="buyer@demo.suanli", password="demo-buyer-pass")
    assert provider.login(username="provider@demo.suanli", password="demo-provider-pass")
    wallet = buyer.get("/wallet/").content.decode()
    assert "$40.00" in wallet and "/billing/statements/" in wallet
    earnings = provider.get("/provider/payouts/").content.decode()
    assert "$36.00" in earnings and "Huaxia Compute" in earnings and "/billing/statements/" in earnings
