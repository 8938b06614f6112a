"""Worked examples of lease billing; every number can be checked by hand."""

from datetime import timedelta

import pytest

from billing.models import AccountKind, Entry, Lease, LeaseStatus, Transaction
from billing.services import (
    lease_close,
    lease_open,
    lease_pause,
    lease_resume,
    lease_set_rate,
    leases_unable_to_pay,
    ledger_reconcile,
    settle,
)
from billing.services.ledger import account_get
from tests.billing.conftest import T0, fund, make_user

pytestmark = pytest.mark.django_db

PROVIDER = 41


def open_lease(buyer, *, devices=3, rate=2_500_000, key=None, started_at=T0, **kw):  # type: ignore[no-untyped-def]
    return lease_open(
        buyer=buyer,
        provider_id=kw.pop("provider_id", PROVIDER),
        job_id=kw.pop("job_id", 1),
        device_count=devices,
        rate_micros=rate,
        started_at=started_at,
        idempotency_key=key or f"lease-{buyer.pk}-{started_at.timestamp()}-{rate}-{devices}",
        **kw,
    )


def wallet(user) -> int:  # type: ignore[no-untyped-def]
    return account_get(kind=AccountKind.BUYER_WALLET, user_id=user.pk).balance_micros


def payable(provider_id: int = PROVIDER) -> int:
    return account_get(kind=AccountKind.PROVIDER_PAYABLE, provider_id=provider_id).balance_micros


def fees() -> int:
    return account_get(kind=AccountKind.PLATFORM_FEE).balance_micros


DURATION = timedelta(hours=1, minutes=23, seconds=17)  # 4,997 s
HALF = timedelta(seconds=2498)


def test_single_shot_three_devices_at_2_50_for_1h23m17s() -> None:
    # 3 x 2.50 x 4997 / 3600 = 10.4104166... -> 10.410417
    buyer = make_user()
    fund(buyer, 100_000_000)
    lease = open_lease(buyer)
    lease_close(lease=lease, at=T0 + DURATION)

    settle(until=T0 + DURATION)

    lease.refresh_from_db()
    assert lease.charged_micros == 10_410_417
    assert wallet(buyer) == 100_000_000 - 10_410_417


def test_settled_every_60s_with_price_change_halfway_equals_single_shot() -> None:
    # 3 x 2.50 x 2498 s + 3 x 3.10 x 2499 s = 18735.0 + 23240.7 = 41975.7 device-unit-seconds
    # 41975.7 / 3600 = 11.6599166... -> 11.659917; fee 10% = 1.1659917 -> 1.165992;
    # provider = 11.659917 - 1.165992 = 10.493925.
    every_minute, single = make_user("minute"), make_user("single")
    fund(every_minute, 100_000_000)
    fund(single, 100_000_000)
    a = open_lease(every_minute, provider_id=1)
    b = open_lease(single, provider_id=2)

    rate_changed = closed = False
    tick = T0
    while not closed:
        tick += timedelta(seconds=60)
        if not rate_changed and tick >= T0 + HALF:
            lease_set_rate(lease=a, rate_micros=3_100_000, at=T0 + HALF)
            rate_changed = True
        if tick >= T0 + DURATION:
            lease_close(lease=a, at=T0 + DURATION)
            closed = True
        settle(until=tick, lease_ids=[a.pk])
    lease_set_rate(lease=b, rate_micros=3_100_000, at=T0 + HALF)
    lease_close(lease=b, at=T0 + DURATION)
    settle(until=T0 + DURATION, lease_ids=[b.pk])

    a.refresh_from_db()
    b.refresh_from_db()
    assert a.charged_micros == b.charged_micros == 11_659_917
    assert a.fee_micros == b.fee_micros == 1_165_992
    assert payable(1) == payable(2) == 10_493_925
    assert a.settle_seq == 84  # one posting per minute: 83 full minutes and the last 17 s
    assert 100_000_000 - wallet(every_minute) == payable(1) + 1_165_992
    assert a.settled_final and a.status == LeaseStatus.CLOSED


def test_rerun_posts_nothing() -> None:
    buyer = make_user()
    fund(buyer, 50_000_000)
    open_lease(buyer)
    settle(until=T0 + timedelta(minutes=10))
    count = Transaction.objects.count(), Entry.objects.count()

    again = settle(until=T0 + timedelta(minutes=10))

    assert again.transactions == 0
    assert (Transaction.objects.count(), Entry.objects.count()) == count


def test_sixty_second_minimum() -> None:
    # 1 device x 3.60/h closed after 10 s is billed 60 s: 3.60 / 60 = 0.06
    buyer = make_user()
    fund(buyer, 1_000_000)
    lease = open_lease(buyer, devices=1, rate=3_600_000)
    lease_close(lease=lease, at=T0 + timedelta(seconds=10))

    settle(until=T0 + timedelta(minutes=1))

    lease.refresh_from_db()
    assert lease.charged_micros == 60_000


def test_pause_and_resume_skip_the_gap() -> None:
    # 2 devices x 1.80/h: 30 min running, 15 min paused, 30 min running = 1 h billed = 3.60
    buyer = make_user()
    fund(buyer, 10_000_000)
    lease = open_lease(buyer, devices=2, rate=1_800_000)
    lease_pause(lease=lease, at=T0 + timedelta(minutes=30))
    settle(until=T0 + timedelta(minutes=40))
    lease_resume(lease=lease, at=T0 + timedelta(minutes=45))
    lease_close(lease=lease, at=T0 + timedelta(minutes=75))

    settle(until=T0 + timedelta(minutes=76))

    lease.refresh_from_db()
    assert lease.charged_micros == 3_600_000
    assert wallet(buyer) == 6_400_000


def test_close_in_the_past_refunds_what_was_over_billed() -> None:
    # Billed 10 min at 6.00/h = 1.00; the node had died after 5 min: final charge 0.50.
    buyer = make_user()
    fund(buyer, 5_000_000)
    lease = open_lease(buyer, devices=1, rate=6_000_000)
    settle(until=T0 + timedelta(minutes=10))
    assert wallet(buyer) == 4_000_000

    lease_close(lease=lease, at=T0 + timedelta(minutes=5))
    settle(until=T0 + timedelta(minutes=11))

    lease.refresh_from_db()
    assert lease.charged_micros == 500_000
    assert lease.fee_micros == 50_000
    assert wallet(buyer) == 4_500_000
    assert payable() == 450_000
    assert fees() == 50_000


def test_wallet_never_goes_below_zero_the_rest_stays_owed() -> None:
    # 20 min at 6.00/h = 2.00, but only 1.00 in the wallet.
    buyer = make_user()
    fund(buyer, 1_000_000)
    lease = open_lease(buyer, devices=1, rate=6_000_000)

    result = settle(until=T0 + timedelta(minutes=20))

    lease.refresh_from_db()
    assert wallet(buyer) == 0
    assert lease.charged_micros == 1_000_000
    assert result.owed_micros == 1_000_000

    fund(buyer, 5_000_000)
    settle(until=T0 + timedelta(minutes=20, seconds=1))
    lease.refresh_from_db()
    # 20 min 1 s at 6.00/h = 2.001666... -> 2.001667
    assert lease.charged_micros == 2_001_667
    assert ledger_reconcile().ok


def test_credit_line_lets_the_wallet_go_that_far_below_zero() -> None:
    from billing.services import wallet_set_credit_line

    buyer = make_user()
    wallet_set_credit_line(user_id=buyer.pk, credit_limit_micros=500_000)
    lease = open_lease(buyer, devices=1, rate=6_000_000)

    settle(until=T0 + timedelta(minutes=10))

    lease.refresh_from_db()
    assert wallet(buyer) == -500_000
    assert lease.charged_micros == 500_000


def test_auto_stop_lists_leases_whose_buyer_cannot_cover_two_intervals() -> None:
    # 6.00/h = 0.10 per minute; two 60 s intervals need 0.20.
    poor, rich = make_user("poor"), make_user("rich")
    fund(poor, 150_000)
    fund(rich, 10_000_000)
    poor_lease = open_lease(poor, devices=1, rate=6_000_000, job_id=11)
    open_lease(rich, devices=1, rate=6_000_000, job_id=12)

    listed = leases_unable_to_pay(at=T0, intervals=2)

    assert [(s.lease_id, s.job_id, s.needed_micros, s.available_micros) for s in listed] == [
        (poor_lease.pk, 11, 200_000, 150_000)
    ]
    assert leases_unable_to_pay(at=T0, intervals=1) == []


def test_bad_debt_bounded_by_one_interval_when_auto_stop_acts() -> None:
    # The buyer has 0.25: the lease is stopped as soon as it is listed; nothing stays owed
    # beyond what one 60 s interval (0.10) costs.
    buyer = make_user()
    fund(buyer, 250_000)
    lease = open_lease(buyer, devices=1, rate=6_000_000)
    tick = T0
    while True:
        tick += timedelta(seconds=60)
        settle(until=tick)
        if leases_unable_to_pay(at=tick):
            lease_close(lease=lease, at=tick)
            settle(until=tick)
            break
    lease.refresh_from_db()
    owed = 6_000_000 * (tick - T0).total_seconds() / 3600 - lease.charged_micros
    assert 0 <= owed <= 100_000
    assert wallet(buyer) >= 0


def test_idempotent_open_and_query_count(django_assert_max_num_queries) -> None:  # type: ignore[no-untyped-def]
    buyer = make_user()
    fund(buyer, 1_000_000_000)
    first = open_lease(buyer, key="order-7")
    assert open_lease(buyer, key="order-7").pk == first.pk
    for i in range(40):
        open_lease(buyer, key=f"bulk-{i}", job_id=100 + i)

    settle(until=T0 + timedelta(minutes=1))  # creates the provider and fee accounts

    # Query count does not grow with the number of leases in a chunk.
    with django_assert_max_num_queries(18):
        result = settle(until=T0 + timedelta(minutes=5))
    assert result.leases == 41
    assert Lease.objects.filter(settle_seq=2).count() == 41
