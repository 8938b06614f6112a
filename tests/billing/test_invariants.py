"""Property-based test: random sequences of money operations keep DESIGN.md section 7, items 5-10.

A Hypothesis state machine drives the real services against PostgreSQL (top-ups and refunds
through signed webhooks, holds, leases with rate changes, pauses and closes, settlement, payouts
through the fake Stripe, reservations) and checks every invariant after every step. Lease charges
are also checked against an independent oracle written with ``fractions.Fraction``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import connection
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from billing.models import (
    AccountKind,
    Entry,
    Hold,
    HoldStatus,
    Lease,
    PayoutAccount,
    Reservation,
    ReservationStatus,
    TopUp,
    TopUpStatus,
    TransactionKind,
)
from billing.services import (
    hold_capture,
    hold_place,
    hold_release,
    lease_charge_until,
    lease_close,
    lease_open,
    lease_pause,
    lease_resume,
    lease_set_rate,
    ledger_reconcile,
    payouts_run,
    reservation_book,
    reservation_cancel,
    settle,
    webhook_receive,
)
from billing.services.ledger import account_get
from core.errors import InsufficientFunds
from tests.billing.conftest import T0, make_user
from tests.support.fake_stripe import event_payload, sign_event

_ids = itertools.count(1)


def half_even(value: Fraction) -> int:
    floor = value.numerator // value.denominator
    rest = value - floor
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2):
        return floor + 1
    return floor


@dataclass
class LeaseModel:
    """The oracle: rate segments in plain Python, charged by the definition in DESIGN.md."""

    pk: int
    buyer: int
    devices: int
    rate: int
    started: datetime
    opening_rate: int = 0
    segments: list[list[Any]] = field(default_factory=list)  # [start, end|None, rate]
    status: str = "open"

    def charge(self, until: datetime) -> int:
        if until < self.started:
            return 0
        total = Fraction(0)
        seconds = Fraction(0)
        for start, end, rate in self.segments:
            stop = min(until, end) if end else until
            if stop > start:
                s = Fraction(int((stop - start) / timedelta(microseconds=1)), 1_000_000)
                total += rate * self.devices * s
                seconds += s
        total = max(total, Fraction(self.opening_rate * self.devices * 60))
        return half_even(total / 3600)


class Ledger(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.now = T0
        self.buyers = [make_user("prop-a"), make_user("prop-b")]
        self.providers = [900_000 + next(_ids), 900_000 + next(_ids)]
        for provider_id in self.providers:
            PayoutAccount.objects.create(provider_id=provider_id, stripe_account_id=f"acct_prop{provider_id}")
        self.leases: dict[int, LeaseModel] = {}
        self.holds: list[Hold] = []
        self.reservations: list[Reservation] = []
        self.top_ups: list[TopUp] = []
        self.last_event: bytes | None = None
        self.snapshot = self._journal_fingerprint()

    # --- helpers ------------------------------------------------------------------------------

    def _journal_fingerprint(self) -> tuple[int, int, int]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT COALESCE(MAX(id), 0) FROM billing_entry")
            max_id = cursor.fetchone()[0]
            cursor.execute(
                "SELECT COUNT(*), COALESCE(SUM(amount_micros * (MOD(id, 9973) + 1)), 0) FROM billing_entry WHERE id <= %s",
                [max_id],
            )
            count, weighted = cursor.fetchone()
        return int(max_id), int(count), int(weighted)

    def _deliver(self, event_type: str, obj: dict[str, Any]) -> None:
        payload = event_payload(event_type, obj)
        webhook_receive(payload=payload, signature=sign_event(payload, django_settings.STRIPE_WEBHOOK_SECRET))
        self.last_event = payload

    def _wallet(self, buyer: Any) -> Any:
        return account_get(kind=AccountKind.BUYER_WALLET, user_id=buyer.pk)

    # --- rules --------------------------------------------------------------------------------

    @rule(buyer=st.integers(0, 1), cents=st.integers(500, 5_000))
    def top_up(self, buyer: int, cents: int) -> None:
        n = next(_ids)
        top_up = TopUp.objects.create(
            buyer=self.buyers[buyer], amount_micros=cents * 10_000, currency="USD", client_key=f"prop-{n}",
            status=TopUpStatus.OPEN, stripe_session_id=f"cs_prop_{n}",
        )  # fmt: skip
        self._deliver(
            "checkout.session.completed",
            {"id": f"cs_prop_{n}", "client_reference_id": str(top_up.pk), "amount_total": cents,
             "payment_status": "paid", "payment_intent": f"pi_prop_{n}"},
        )  # fmt: skip
        top_up.refresh_from_db()
        self.top_ups.append(top_up)

    @precondition(lambda self: self.top_ups)
    @rule(data=st.data())
    def refund(self, data: st.DataObject) -> None:
        top_up = data.draw(st.sampled_from(self.top_ups))
        top_up.refresh_from_db()
        credited = top_up.credited_micros // 10_000
        refunded = data.draw(st.integers(top_up.refunded_micros // 10_000, credited))
        self._deliver(
            "charge.refunded",
            {
                "id": f"ch_{top_up.pk}",
                "payment_intent": top_up.stripe_payment_intent_id,
                "amount_refunded": refunded,
            },
        )

    @precondition(lambda self: self.last_event is not None)
    @rule()
    def replay_last_webhook(self) -> None:
        before = self._journal_fingerprint()
        assert self.last_event is not None
        webhook_receive(
            payload=self.last_event,
            signature=sign_event(self.last_event, django_settings.STRIPE_WEBHOOK_SECRET),
        )
        assert self._journal_fingerprint() == before  # item 8: a replay changes nothing

    @rule(buyer=st.integers(0, 1), amount=st.integers(1, 30_000_000))
    def place_hold(self, buyer: int, amount: int) -> None:
        wallet = self._wallet(self.buyers[buyer])
        fits = amount <= wallet.balance_micros + wallet.credit_limit_micros
        try:
            self.holds.append(
                hold_place(
                    buyer=self.buyers[buyer], amount_micros=amount, reference=f"prop-hold-{next(_ids)}"
                )
            )
            assert fits
        except InsufficientFunds:
            assert not fits

    @precondition(lambda self: any(h.status == HoldStatus.OPEN for h in self.holds))
    @rule(data=st.data(), capture=st.booleans())
    def resolve_hold(self, data: st.DataObject, capture: bool) -> None:
        hold = data.draw(st.sampled_from([h for h in self.holds if h.status == HoldStatus.OPEN]))
        live = [
            m for m in self.leases.values() if m.buyer == hold.buyer_id and m.status in ("open", "paused")
        ]
        if capture and live:
            resolved = hold_capture(hold=hold, lease=Lease.objects.get(pk=live[0].pk))
        else:
            resolved = hold_release(hold=hold)
        self.holds[self.holds.index(hold)] = resolved

    @rule(
        buyer=st.integers(0, 1),
        provider=st.integers(0, 1),
        devices=st.integers(1, 8),
        rate=st.integers(0, 9_000_000),
    )
    def open_lease(self, buyer: int, provider: int, devices: int, rate: int) -> None:
        lease = lease_open(
            buyer=self.buyers[buyer], provider_id=self.providers[provider], job_id=next(_ids), device_count=devices,
            rate_micros=rate, started_at=self.now, idempotency_key=f"prop-lease-{next(_ids)}",
        )  # fmt: skip
        self.leases[lease.pk] = LeaseModel(
            lease.pk, self.buyers[buyer].pk, devices, rate, self.now, rate, [[self.now, None, rate]]
        )

    def _live(self, status: str) -> list[LeaseModel]:
        return [m for m in self.leases.values() if m.status == status]

    @precondition(lambda self: self._live("open"))
    @rule(data=st.data(), rate=st.integers(0, 9_000_000))
    def change_rate(self, data: st.DataObject, rate: int) -> None:
        model = data.draw(st.sampled_from(self._live("open")))
        lease_set_rate(lease=Lease.objects.get(pk=model.pk), rate_micros=rate, at=self.now)
        model.segments[-1][1] = self.now
        model.segments.append([self.now, None, rate])
        model.rate = rate

    @precondition(lambda self: self._live("open"))
    @rule(data=st.data())
    def pause(self, data: st.DataObject) -> None:
        model = data.draw(st.sampled_from(self._live("open")))
        lease_pause(lease=Lease.objects.get(pk=model.pk), at=self.now)
        model.segments[-1][1] = self.now
        model.status = "paused"

    @precondition(lambda self: self._live("paused"))
    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        model = data.draw(st.sampled_from(self._live("paused")))
        lease_resume(lease=Lease.objects.get(pk=model.pk), at=self.now)
        model.segments.append([self.now, None, model.rate])
        model.status = "open"

    @precondition(lambda self: self._live("open") or self._live("paused"))
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        model = data.draw(st.sampled_from(self._live("open") + self._live("paused")))
        lease_close(lease=Lease.objects.get(pk=model.pk), at=self.now)
        if model.segments[-1][1] is None:
            model.segments[-1][1] = self.now
        model.status = "closed"

    @rule(seconds=st.integers(1, 900))
    def advance(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @rule()
    def run_settlement(self) -> None:
        settle(until=self.now, lease_ids=list(self.leases))
        for model in self.leases.values():
            lease = Lease.objects.get(pk=model.pk)
            expected = model.charge(min(self.now, lease.ends_at) if lease.ends_at else self.now)
            assert lease_charge_until(lease, self.now) == expected  # the oracle agrees
            if lease.kind == "reserved" or model.status == "cancelled":
                continue
            # Item 7: everything billable up to now is posted, unless the wallet has no room left.
            wallet = account_get(kind=AccountKind.BUYER_WALLET, user_id=model.buyer)
            assert lease.charged_micros == expected or (
                lease.charged_micros < expected and wallet.balance_micros + wallet.credit_limit_micros == 0
            )

    @rule()
    def pay_out(self) -> None:
        payouts_run(threshold_micros=1_000_000)

    @rule(buyer=st.integers(0, 1), hours=st.integers(1, 3), rate=st.integers(100_000, 3_000_000))
    def book_reservation(self, buyer: int, hours: int, rate: int) -> None:
        start = self.now + timedelta(minutes=30)
        try:
            reservation = reservation_book(
                buyer=self.buyers[buyer], provider_id=self.providers[buyer], device_count=1, rate_micros=rate,
                starts_at=start, ends_at=start + timedelta(hours=hours), idempotency_key=f"prop-res-{next(_ids)}",
            )  # fmt: skip
        except InsufficientFunds:
            return
        self.reservations.append(reservation)
        model = LeaseModel(
            reservation.lease_id,
            self.buyers[buyer].pk,
            1,
            rate,
            start,
            rate,
            [[start, start + timedelta(hours=hours), rate]],
        )
        model.status = "reserved"
        self.leases[reservation.lease_id] = model

    @precondition(lambda self: self.reservations)
    @rule(data=st.data())
    def cancel_reservation(self, data: st.DataObject) -> None:
        reservation = data.draw(st.sampled_from(self.reservations))
        reservation.refresh_from_db()
        lease = Lease.objects.get(pk=reservation.lease_id)
        if reservation.status == ReservationStatus.CONFIRMED and self.now < lease.started_at:
            reservation_cancel(reservation=reservation, at=self.now)
            self.leases[lease.pk].status = "cancelled"

    # --- invariants (DESIGN.md section 7) ----------------------------------------------------------

    @invariant()
    def every_transaction_balances_and_caches_match(self) -> None:  # item 5
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT COUNT(*) FROM (SELECT transaction_id FROM billing_entry GROUP BY transaction_id "
                "HAVING SUM(amount_micros) <> 0) t"
            )
            assert cursor.fetchone()[0] == 0
        report = ledger_reconcile()
        assert report.ok, (report.drift, report.escrow_drift)

    @invariant()
    def buyer_charges_equal_provider_earnings_plus_fees(self) -> None:  # item 6
        buyer_kinds = [AccountKind.BUYER_WALLET, AccountKind.RESERVATION_ESCROW]
        for kind in (TransactionKind.SETTLEMENT, TransactionKind.RESERVATION_CANCEL):
            legs = Entry.objects.filter(transaction__kind=kind)
            buyer = sum(legs.filter(account__kind__in=buyer_kinds).values_list("amount_micros", flat=True))
            earned = sum(
                legs.filter(account__kind=AccountKind.PROVIDER_PAYABLE).values_list(
                    "amount_micros", flat=True
                )
            )
            fees = sum(
                legs.filter(account__kind=AccountKind.PLATFORM_FEE).values_list("amount_micros", flat=True)
            )
            assert -buyer == earned + fees
        for model in self.leases.values():
            lease = Lease.objects.get(pk=model.pk)
            legs = Entry.objects.filter(lease_id=lease.pk, transaction__kind=TransactionKind.SETTLEMENT)
            assert sum(
                legs.filter(account__kind=AccountKind.PROVIDER_PAYABLE).values_list(
                    "amount_micros", flat=True
                )
            ) == (lease.charged_micros - lease.fee_micros)

    @invariant()
    def nothing_billed_beyond_the_clock(self) -> None:  # item 7 (never more than the oracle)
        for model in self.leases.values():
            lease = Lease.objects.get(pk=model.pk)
            if lease.billed_through is not None:
                assert lease.charged_micros <= model.charge(
                    lease.billed_through
                ) or lease.charged_micros <= lease_charge_until(lease, lease.billed_through)

    @invariant()
    def wallets_within_credit_line_and_holds_resolved_once(self) -> None:  # item 9
        for buyer in self.buyers:
            wallet = self._wallet(buyer)
            assert wallet.balance_micros >= -wallet.credit_limit_micros
        for hold in self.holds:
            keys = set(
                Entry.objects.filter(transaction__idempotency_key__startswith=f"hold:{hold.pk}:").values_list(
                    "transaction__idempotency_key", flat=True
                )
            )
            resolved = {k for k in keys if not k.endswith(":place")}
            assert f"hold:{hold.pk}:place" in keys and len(resolved) == (
                0 if hold.status == HoldStatus.OPEN else 1
            )

    @invariant()
    def posted_entries_never_change(self) -> None:  # item 10
        max_id, count, weighted = self.snapshot
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT COUNT(*), COALESCE(SUM(amount_micros * (MOD(id, 9973) + 1)), 0) FROM billing_entry WHERE id <= %s",
                [max_id],
            )
            assert tuple(int(x) for x in cursor.fetchone()) == (count, weighted)
        self.snapshot = self._journal_fingerprint()


@pytest.mark.django_db
def test_ledger_invariants_hold_after_every_step(fake_stripe: Any) -> None:
    run_state_machine_as_test(
        Ledger,
        settings=settings(
            max_examples=25,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
