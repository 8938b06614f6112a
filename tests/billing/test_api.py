"""The money endpoints, scoped to their owners; statements from draft to finalized."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.test import Client
from rest_framework.test import APIClient

from billing.models import Statement, StatementKind, StatementStatus
from billing.services import (
    UsageSampleIn,
    hold_place,
    lease_close,
    lease_open,
    settle,
    statement_build,
    statements_finalize,
    usage_samples_record,
)
from providers.models import Provider, ProviderMembership
from tests.billing.conftest import T0, fund, make_user

pytestmark = pytest.mark.django_db


def api(user):  # type: ignore[no-untyped-def]
    client = APIClient()
    client.force_authenticate(user)
    return client


def billed_month(buyer, provider_id: int = 31):  # type: ignore[no-untyped-def]
    # 2 devices x 3.00/h for 90 min = 9.00 (fee 0.90, provider 8.10)
    fund(buyer, 20_000_000)
    lease = lease_open(
        buyer=buyer, provider_id=provider_id, job_id=4242, device_count=2, rate_micros=3_000_000,
        started_at=T0, idempotency_key=f"api-{buyer.pk}",
    )  # fmt: skip
    lease_close(lease=lease, at=T0 + timedelta(minutes=90))
    settle(until=T0 + timedelta(minutes=90))
    return lease


def test_wallet_shows_balance_held_available() -> None:
    buyer = make_user()
    fund(buyer, 20_000_000)
    hold_place(buyer=buyer, amount_micros=5_500_000, reference="api-hold")

    body = api(buyer).get("/api/v1/wallet").json()

    assert body == {
        "currency": "USD", "balance": "20.00", "held": "5.50", "available": "14.50", "reserved": "0.00", "credit_line": "0.00",
    }  # fmt: skip


def test_usage_lists_own_leases_with_aggregates() -> None:
    buyer, other = make_user(), make_user()
    billed_month(buyer)
    billed_month(other)
    # Two 30 s windows at 80 % and 100 %, 600 W each: energy = 2 x 600 W x 30 s = 0.01 kWh
    usage_samples_record(
        samples=[
            UsageSampleIn(4242, seq, T0 + timedelta(seconds=30 * seq), T0 + timedelta(seconds=30 * (seq + 1)), 2,
                          Decimal(pct), 1000, Decimal("600.0"))
            for seq, pct in ((0, "80"), (1, "100"))
        ]
    )  # fmt: skip

    body = api(buyer).get("/api/v1/usage").json()

    [row] = body["results"]
    assert (row["charged"], row["rate"], row["device_count"], row["owed"]) == ("9.00", "3.00", 2, "0.00")
    assert (row["avg_utilization_pct"], row["energy_kwh"]) == ("90.00", "0.010000")


def test_invoices_draft_then_finalized_scoped_and_downloadable() -> None:
    buyer, other = make_user(), make_user()
    billed_month(buyer)
    draft = statement_build(
        kind=StatementKind.BUYER_INVOICE, period_start=T0.date(), currency="USD", user_id=buyer.pk
    )
    assert draft.status == StatementStatus.DRAFT
    [line] = [item for item in draft.lines if item["type"] == "lease"]
    assert (line["device_hours"], line["rate"], line["amount"]) == ("3.0000", "3.00", "9.00")

    finalized = statements_finalize(now=datetime(2026, 4, 1, 2, 0, tzinfo=UTC))
    invoice = Statement.objects.get(kind=StatementKind.BUYER_INVOICE, user=buyer)
    assert invoice in finalized and invoice.status == StatementStatus.FINALIZED
    assert invoice.total_micros == 9_000_000 and invoice.number.startswith("INV-202603-")
    assert (
        statement_build(
            kind=StatementKind.BUYER_INVOICE, period_start=T0.date(), currency="USD", user_id=buyer.pk
        ).pk
        == invoice.pk
    )

    assert [i["id"] for i in api(buyer).get("/api/v1/invoices").json()["results"]] == [invoice.pk]
    assert api(buyer).get(f"/api/v1/invoices/{invoice.pk}").json()["total"] == "9.00"
    assert api(other).get(f"/api/v1/invoices/{invoice.pk}").status_code == 404

    web = Client()
    web.force_login(buyer)
    csv_text = web.get(f"/billing/statements/{invoice.pk}.csv").content.decode()
    assert f"lease,{invoice.lines[0]['lease_id']},4242,,3.0000,3.00,,,9.00" in csv_text
    assert "total,,,,,,,,9.00" in csv_text
    assert "9.00" in web.get(f"/billing/statements/{invoice.pk}.html").content.decode()
    web.force_login(other)
    assert web.get(f"/billing/statements/{invoice.pk}.csv").status_code == 404


def test_provider_endpoints_only_for_members() -> None:
    member, outsider, buyer = make_user(), make_user(), make_user()
    provider = Provider.objects.create(name="Acme GPUs", slug="acme-billing")
    ProviderMembership.objects.create(provider=provider, user=member)
    billed_month(buyer, provider_id=provider.pk)
    statements_finalize(now=datetime(2026, 4, 1, 2, 0, tzinfo=UTC))

    mine = api(member).get("/api/v1/provider/earnings").json()["results"]
    assert [(r["provider_id"], r["payable"]) for r in mine] == [(provider.pk, "8.10")]
    [statement] = mine[0]["statements"]
    assert statement["total"] == "8.10" and statement["lines"][0]["fee"] == "0.90"
    assert api(outsider).get("/api/v1/provider/earnings").json()["results"] == []
    assert api(outsider).get("/api/v1/provider/payouts").json()["results"] == []
    denied = api(outsider).post(
        "/api/v1/provider/payout-account", {"provider_id": provider.pk}, format="json"
    )
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"


def test_anonymous_gets_the_error_shape() -> None:
    response = APIClient().get("/api/v1/wallet")
    assert response.status_code in (401, 403)
    assert set(response.json()["error"]) == {"code", "message", "fields"}
