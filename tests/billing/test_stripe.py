"""Top-ups, webhooks and payouts through the real stripe library against the local fake Stripe."""

import json
import random

import pytest
from rest_framework.test import APIClient

from billing.models import AccountKind, Payout, PayoutAccount, PayoutStatus, TopUp, TopUpStatus, WebhookEvent
from billing.selectors import wallet_get
from billing.services import ledger_reconcile, payout_submit, payouts_create, payouts_run
from billing.services.ledger import account_get
from tests.billing.conftest import fund, make_user
from tests.support.fake_stripe import sign_event

pytestmark = pytest.mark.django_db

PROVIDER = 77


def api(user):  # type: ignore[no-untyped-def]
    client = APIClient()
    client.force_authenticate(user)
    return client


def start_top_up(user, amount: str = "50.00", key: str = "k1", *, replay: bool = False):  # type: ignore[no-untyped-def]
    response = api(user).post(
        "/api/v1/wallet/top-ups", {"amount": amount}, format="json", HTTP_IDEMPOTENCY_KEY=key
    )
    # A replay with the same Idempotency-Key may answer 200 (the stored response) instead of 201.
    assert response.status_code in ((200, 201) if replay else (201,)), response.content
    return response.json()


def completed_session(fake, top_up_id: int, *, payment_intent: str = "pi_1") -> dict:  # type: ignore[no-untyped-def]
    session = dict(fake.objects[TopUp.objects.get(pk=top_up_id).stripe_session_id])
    session.update(status="complete", payment_status="paid", payment_intent=payment_intent)
    return session


def test_top_up_creates_a_checkout_session_with_a_deterministic_key(fake_stripe) -> None:  # type: ignore[no-untyped-def]
    buyer = make_user()

    body = start_top_up(buyer)
    again = start_top_up(buyer, replay=True)

    assert body["checkout_url"].startswith("https://checkout.stripe.test/")
    assert again["id"] == body["id"] and again["checkout_url"] == body["checkout_url"]
    call = fake_stripe.calls("/v1/checkout/sessions")[-1]
    assert (
        call["line_items"]["0"]["price_data"]["unit_amount"] == "5000"
    )  # cents, converted in the gateway only
    keys = [key for method, path, _, key in fake_stripe.requests if path == "/v1/checkout/sessions"]
    assert keys[-1] == f"topup:{body['id']}"
    assert wallet_get(user=buyer).balance_micros == 0  # nothing is credited before the webhook


def test_top_up_rejects_bad_amounts(fake_stripe) -> None:  # type: ignore[no-untyped-def]
    buyer = make_user()
    for amount in ("1.00", "12.345", "abc", 5.0):
        response = api(buyer).post("/api/v1/wallet/top-ups", {"amount": amount}, format="json")
        assert response.status_code == 400
        assert set(response.json()["error"]) == {"code", "message", "fields"}


def test_webhook_replayed_100_times_credits_once(fake_stripe, webhooks) -> None:  # type: ignore[no-untyped-def]
    buyer = make_user()
    top_up = start_top_up(buyer)
    payload = webhooks.event("checkout.session.completed", completed_session(fake_stripe, top_up["id"]))

    for _ in range(100):
        assert webhooks.deliver(payload).status_code == 200

    assert wallet_get(user=buyer).balance_micros == 50_000_000
    assert WebhookEvent.objects.count() == 1
    assert TopUp.objects.get(pk=top_up["id"]).status == TopUpStatus.COMPLETED
    assert ledger_reconcile().ok


def test_two_events_for_one_session_credit_once(fake_stripe, webhooks) -> None:  # type: ignore[no-untyped-def]
    buyer = make_user()
    top_up = start_top_up(buyer)
    session = completed_session(fake_stripe, top_up["id"])

    webhooks.deliver(webhooks.event("checkout.session.completed", session))
    webhooks.deliver(webhooks.event("checkout.session.async_payment_succeeded", session))

    assert wallet_get(user=buyer).balance_micros == 50_000_000


def test_bad_signature_is_rejected_and_stores_nothing(fake_stripe, webhooks) -> None:  # type: ignore[no-untyped-def]
    buyer = make_user()
    top_up = start_top_up(buyer)
    payload = webhooks.event("checkout.session.completed", completed_session(fake_stripe, top_up["id"]))

    response = webhooks.deliver(payload, signature=sign_event(payload, "whsec_someone_else"))

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"
    assert not WebhookEvent.objects.exists()
    assert wallet_get(user=buyer).balance_micros == 0


def test_refund_reverses_in_any_arrival_order(fake_stripe, webhooks) -> None:  # type: ignore[no-untyped-def]
    # 50.00 top-up, then two partial refunds (cumulative amount_refunded 10.00 then 30.00); the
    # events arrive shuffled, each several times.
    buyer = make_user()
    top_up = start_top_up(buyer)
    events = [
        webhooks.event(
            "checkout.session.completed", completed_session(fake_stripe, top_up["id"], payment_intent="pi_9")
        ),
        webhooks.event(
            "charge.refunded",
            {"id": "ch_1", "object": "charge", "payment_intent": "pi_9", "amount_refunded": 1000},
        ),
        webhooks.event(
            "charge.refunded",
            {"id": "ch_1", "object": "charge", "payment_intent": "pi_9", "amount_refunded": 3000},
        ),
    ]
    deliveries = events * 3
    random.Random(7).shuffle(deliveries)
    deliveries.insert(0, events[2])  # a refund strictly before its completion

    for payload in deliveries:
        assert webhooks.deliver(payload).status_code == 200

    assert wallet_get(user=buyer).balance_micros == 20_000_000
    assert account_get(kind=AccountKind.STRIPE_CLEARING).balance_micros == -20_000_000
    assert WebhookEvent.objects.filter(processed_at__isnull=True).count() == 0
    assert ledger_reconcile().ok


def test_refund_of_money_already_spent_never_takes_the_wallet_below_zero(fake_stripe, webhooks) -> None:  # type: ignore[no-untyped-def]
    buyer = make_user()
    top_up = start_top_up(buyer, "10.00")
    webhooks.deliver(
        webhooks.event(
            "checkout.session.completed", completed_session(fake_stripe, top_up["id"], payment_intent="pi_x")
        )
    )
    from billing.services import hold_place

    hold_place(buyer=buyer, amount_micros=8_000_000, reference="spent")

    webhooks.deliver(
        webhooks.event("charge.refunded", {"id": "ch", "payment_intent": "pi_x", "amount_refunded": 1000})
    )

    view = wallet_get(user=buyer)
    assert view.available_micros == 0
    assert account_get(kind=AccountKind.WRITE_OFF).balance_micros == -8_000_000
    assert ledger_reconcile().ok


def connected_provider(fake_stripe, provider_id: int = PROVIDER) -> str:  # type: ignore[no-untyped-def]
    from billing.services import payout_account_onboard

    url = payout_account_onboard(provider_id=provider_id, refresh_url="http://x/r", return_url="http://x/d")
    assert url.startswith("https://connect.stripe.test/setup/acct_")
    return PayoutAccount.objects.get(provider_id=provider_id).stripe_account_id


def earn(provider_id: int, micros: int) -> None:
    from datetime import timedelta

    from billing.services import lease_close, lease_open, settle
    from tests.billing.conftest import T0

    buyer = make_user()
    fund(buyer, micros * 2)
    # 1 device at `micros`/h for one hour, fee 0 so the provider earns exactly `micros`.
    lease = lease_open(
        buyer=buyer, provider_id=provider_id, job_id=1, device_count=1, rate_micros=micros,
        started_at=T0, idempotency_key=f"earn-{provider_id}-{micros}-{buyer.pk}", fee_bps=0,
    )  # fmt: skip
    lease_close(lease=lease, at=T0 + timedelta(hours=1))
    settle(until=T0 + timedelta(hours=1))


def test_payout_above_threshold_is_transferred_once(fake_stripe) -> None:  # type: ignore[no-untyped-def]
    account_id = connected_provider(fake_stripe)
    earn(PROVIDER, 25_123_456)  # 25.123456: the whole cents (25.12) go out, 0.003456 stays
    earn(PROVIDER + 1, 10_000_000)  # below the 20.00 threshold (and not connected)

    payouts = payouts_run()
    assert payouts_run() == []  # nothing new the second time

    assert [(p.provider_id, p.amount_micros, p.status) for p in payouts] == [
        (PROVIDER, 25_120_000, PayoutStatus.PAID)
    ]
    transfer = fake_stripe.calls("/v1/transfers")[-1]
    assert (transfer["amount"], transfer["destination"]) == ("2512", account_id)
    keys = [key for _, path, _, key in fake_stripe.requests if path == "/v1/transfers"]
    assert keys[-1] == f"payout:{payouts[0].pk}"
    assert account_get(kind=AccountKind.PROVIDER_PAYABLE, provider_id=PROVIDER).balance_micros == 3_456
    assert account_get(kind=AccountKind.PROVIDER_IN_TRANSIT, provider_id=PROVIDER).balance_micros == 0
    assert payouts[0].stripe_transfer_id.startswith("tr_")


def test_rejected_transfer_fails_and_reverses(fake_stripe) -> None:  # type: ignore[no-untyped-def]
    connected_provider(fake_stripe)
    earn(PROVIDER, 30_000_000)
    fake_stripe.reject_transfers = True

    [payout] = payouts_run()

    assert payout.status == PayoutStatus.FAILED
    assert account_get(kind=AccountKind.PROVIDER_PAYABLE, provider_id=PROVIDER).balance_micros == 30_000_000
    assert account_get(kind=AccountKind.PROVIDER_IN_TRANSIT, provider_id=PROVIDER).balance_micros == 0
    assert ledger_reconcile().ok


def test_stripe_unreachable_leaves_it_submitted_and_a_retry_uses_the_same_key(fake_stripe, settings) -> None:  # type: ignore[no-untyped-def]
    connected_provider(fake_stripe)
    earn(PROVIDER, 30_000_000)
    [payout] = payouts_create()
    fake_stripe.unavailable = True

    assert payout_submit(payout=payout).status == PayoutStatus.SUBMITTED
    fake_stripe.unavailable = False
    [retried] = payouts_run()

    assert retried.status == PayoutStatus.PAID
    keys = {key for _, path, _, key in fake_stripe.requests if path == "/v1/transfers"}
    assert f"payout:{payout.pk}" in keys
    assert Payout.objects.filter(provider_id=PROVIDER).count() == 1


def test_transfer_reversed_webhook_reverses_the_payout_once(fake_stripe, webhooks) -> None:  # type: ignore[no-untyped-def]
    connected_provider(fake_stripe)
    earn(PROVIDER, 30_000_000)
    [payout] = payouts_run()
    payload = webhooks.event(
        "transfer.reversed", {"id": payout.stripe_transfer_id, "object": "transfer", "amount_reversed": 3000}
    )

    for _ in range(3):
        webhooks.deliver(payload)
    webhooks.deliver(
        webhooks.event("transfer.reversed", json.loads(payload)["data"]["object"])
    )  # new event id

    payout.refresh_from_db()
    assert payout.status == PayoutStatus.FAILED
    assert account_get(kind=AccountKind.PROVIDER_PAYABLE, provider_id=PROVIDER).balance_micros == 30_000_000
    assert ledger_reconcile().ok
