"""A real Celery worker is killed with SIGKILL in the middle of a settlement run."""

import time
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model

from billing.models import Entry, Lease, LeaseSegment
from billing.services import ledger_reconcile, settle
from billing.tasks import settle_task
from tests.billing.conftest import T0, fund
from tests.support.worker import CeleryWorker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]

N = 2000
UNTIL = T0 + timedelta(hours=1, minutes=7, seconds=13)


def make_leases(prefix: str, buyers: list) -> list[Lease]:  # type: ignore[type-arg]
    leases = [
        Lease(
            buyer=buyers[i % len(buyers)],
            provider_id=700 + i % 5,
            job_id=i,
            device_count=1 + i % 4,
            rate_micros=1_000_000 + 1_777 * i,
            opening_rate_micros=1_000_000 + 1_777 * i,
            started_at=T0 + timedelta(seconds=i % 97),
            segment_started_at=T0 + timedelta(seconds=i % 97),
            currency="USD",
            fee_bps=1000,
            idempotency_key=f"{prefix}-{i}",
        )
        for i in range(N)
    ]
    Lease.objects.bulk_create(leases)
    LeaseSegment.objects.bulk_create(
        LeaseSegment(
            lease=le, rate_micros=le.rate_micros, device_count=le.device_count, started_at=le.started_at
        )
        for le in leases
    )
    return leases


def ledger_of(leases: list[Lease]) -> list[tuple]:  # type: ignore[type-arg]
    """Per lease: what was charged and every leg posted for it (account kind and amount)."""
    ids = [le.pk for le in leases]
    legs: dict[int, list[tuple[str, str, int]]] = {pk: [] for pk in ids}
    for lease_id, key, kind, amount in Entry.objects.filter(lease_id__in=ids).values_list(
        "lease_id", "transaction__idempotency_key", "account__kind", "amount_micros"
    ):
        legs[lease_id].append((key.split(":", 2)[2], kind, amount))
    return [
        (
            lease.charged_micros,
            lease.fee_micros,
            lease.settle_seq,
            lease.settled_final,
            sorted(legs[lease.pk]),
        )
        for lease in Lease.objects.filter(pk__in=ids).order_by("pk")
    ]


def test_worker_killed_mid_settlement_then_restarted_equals_uninterrupted_run(
    celery_worker: CeleryWorker,
) -> None:
    # Given two identical sets of leases (one for the worker that dies, one settled without trouble)
    users = get_user_model().objects.bulk_create(
        [get_user_model()(username=f"crash-{i}") for i in range(2 * 20)]
    )
    for user in users:
        fund(user, 100_000_000_000)  # ample: every lease is fully charged
    crashed = make_leases("crash", users[:20])
    reference = make_leases("reference", users[20:])

    # When a worker settles the first set in small chunks and is SIGKILLed halfway
    settle_task.delay(until=UNTIL.isoformat(), chunk_size=20)
    ids = [le.pk for le in crashed]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = Lease.objects.filter(pk__in=ids, billed_through__isnull=False).count()
        if done >= N // 5:
            break
        time.sleep(0.02)
    celery_worker.kill9()
    partial = Lease.objects.filter(pk__in=ids, billed_through__isnull=False).count()
    assert 0 < partial < N, "the worker must die in the middle of the run"

    # ...and a fresh worker runs the (re-dispatched) settlement again
    restarted = CeleryWorker()
    restarted.start()
    try:
        settle_task.delay(until=UNTIL.isoformat(), chunk_size=20)
        deadline = time.monotonic() + 120
        while (
            time.monotonic() < deadline
            and Lease.objects.filter(pk__in=ids, billed_through__isnull=True).exists()
        ):
            time.sleep(0.1)
    finally:
        restarted.stop()
    settle(until=UNTIL, lease_ids=[le.pk for le in reference])

    # Then the two ledgers are identical, lease by lease and leg by leg
    assert not Lease.objects.filter(pk__in=ids, billed_through__isnull=True).exists()
    got, want = ledger_of(crashed), ledger_of(reference)
    assert got == want
    assert all(seq == 1 for _, _, seq, _, _ in got)  # each lease posted exactly once
    assert ledger_reconcile().ok
