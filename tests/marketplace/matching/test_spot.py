"""Spot clearing worked examples: who wins, at what price, and who is preempted."""

from __future__ import annotations

from datetime import timedelta

import pytest

from marketplace.matching import (
    PoolKey,
    PreemptReason,
    RoundPolicy,
    Slot,
    Term,
    age_boost_bps,
    clear_pool,
    clearing_price,
    match_round,
    preemptions_for,
)
from marketplace.matching.market import ClearingResult, Market, Order, RunningSpot

from .factories import A100, NOW, UNIT, device_ids, make_job, make_market, make_node, make_order

POOL = PoolKey(1, "cn-north-1")


def spot(order_id: int, bid: int, devices: int, **kwargs: object) -> Order:
    return make_order(order_id, term=Term.SPOT, limit=bid, devices=devices, **kwargs)  # type: ignore[arg-type]


def pool_market() -> Market:
    """Floors: node 1 8 x 1.00, node 2 8 x 1.20, node 3 4 x 0.90; all free."""
    return make_market(
        [
            make_node(1, devices=8, floor=UNIT),
            make_node(2, devices=8, floor=1_200_000),
            make_node(3, devices=4, floor=900_000),
        ]
    )


def clear(
    bids: list[Order],
    *,
    market: Market | None = None,
    running: list[RunningSpot] | None = None,
    previous: int | None = None,
    max_move_bps: int = 2_000,
) -> ClearingResult:
    return clear_pool(
        pool=POOL,
        bids=bids,
        running_spot=running or [],
        free_capacity=market or pool_market(),
        previous_price=previous,
        max_move_bps=max_move_bps,
        now=NOW,
    )


def four_bids() -> list[Order]:
    return [spot(1, 1_500_000, 8), spot(2, 1_100_000, 4), spot(3, 1_050_000, 4), spot(4, 950_000, 8)]


def test_highest_bids_win_and_pay_one_price() -> None:
    # 1.50 x 8 takes node 1 (cheapest 8-free, floor 1.00); 1.10 x 4 the exact fit node 3 (0.90).
    # 1.05 x 4 only has node 2 left (floor 1.20): it loses, though it fitted the opening capacity.
    # 0.95 x 8 is below the floor already used (1.00). Price = max(F 1.00, L 1.05) = 1.05.
    result = clear(four_bids())
    assert [(w.order_id, w.slots[0].node_id) for w in result.winners] == [(1, 1), (2, 3)]
    assert result.price_micros == 1_050_000
    assert {w.unit_price_micros for w in result.winners} == {1_050_000}
    assert result.losers == (3, 4)
    assert result.preempt == ()


def test_floor_overrides_the_move_cap() -> None:
    # previous 0.80, cap 10%: the cap would stop at 0.88, but a used floor is 1.00
    assert clear(four_bids(), previous=800_000, max_move_bps=1_000).price_micros == UNIT


def test_the_move_cap_holds_the_price_between_floor_and_bids() -> None:
    # previous 1.02, cap 2%: 1.05 is clamped to 1.02 + 0.0204 = 1.0404, above the floor 1.00
    assert clear(four_bids(), previous=1_020_000, max_move_bps=200).price_micros == 1_040_400
    # falling: previous 1.40, cap 5% -> at most down to 1.33, which is above the 1.10 winner: 1.10
    assert clear(four_bids(), previous=1_400_000, max_move_bps=500).price_micros == 1_100_000


@pytest.mark.parametrize(
    ("floor", "losing", "lowest", "previous", "bps", "price"),
    [
        (100, 120, 150, None, 0, 120),
        (100, None, 150, None, 0, 100),
        (100, 140, 150, 100, 1_000, 110),
        (100, 90, 190, 200, 1_000, 180),
        (100, 90, 150, 300, 1_000, 150),  # capped fall would be 270; a winner bid 150
        (100, None, None, 300, 1_000, 270),  # no winner: the price drifts down within the cap
        (500, None, None, 300, 1_000, 500),  # ... but never below the cheapest floor
    ],
)
def test_clearing_price_rule(
    floor: int, losing: int | None, lowest: int | None, previous: int | None, bps: int, price: int
) -> None:
    assert (
        clearing_price(
            marginal_floor=floor,
            highest_losing_bid=losing,
            lowest_winning_bid=lowest,
            previous_price=previous,
            max_move_bps=bps,
        )
        == price
    )


def test_a_loser_that_outbid_a_winner_does_not_set_the_price() -> None:
    # the 8-device bid at 2.00 cannot fit anywhere free (one 4-device node); 1.10 x 4 wins
    market = make_market([make_node(3, devices=4, floor=900_000)])
    result = clear([spot(1, 2 * UNIT, 8), spot(2, 1_100_000, 4)], market=market)
    assert [w.order_id for w in result.winners] == [2]
    assert result.price_micros == 900_000


def test_running_job_keeps_its_devices_and_pays_the_new_price() -> None:
    market = make_market([make_node(3, devices=4, floor=900_000)], free={3: ()})
    job = make_job(5, 3, device_ids(3, 4), bid=1_300_000, age=timedelta(hours=1))
    result = clear([spot(1, 1_000_000, 4)], market=market, running=[job])
    (kept,) = result.winners
    assert (kept.job_id, kept.slots, kept.unit_price_micros) == (5, (Slot(3, device_ids(3, 4)),), 1_000_000)
    assert result.losers == (1,)


def test_a_higher_bid_outbids_a_job_past_its_first_ten_minutes() -> None:
    market = make_market([make_node(3, devices=4, floor=900_000)], free={3: ()})
    job = make_job(5, 3, device_ids(3, 4), bid=1_000_000, age=timedelta(minutes=11))
    result = clear([spot(1, 1_300_000, 4)], market=market, running=[job])
    (winner,) = result.winners
    assert (winner.order_id, winner.preempts) == (1, (5,))
    assert [(p.job_id, p.reason, p.deadline) for p in result.preempt] == [
        (5, PreemptReason.OUTBID, NOW + timedelta(seconds=120))
    ]
    assert result.price_micros == 1_000_000  # the outbid job is the highest losing bid


def test_no_spot_bid_preempts_a_job_in_its_first_ten_minutes() -> None:
    market = make_market([make_node(3, devices=4, floor=900_000)], free={3: ()})
    job = make_job(5, 3, device_ids(3, 4), bid=1_000_000, age=timedelta(minutes=9))
    result = clear([spot(1, 5 * UNIT, 4)], market=market, running=[job])
    assert [w.job_id for w in result.winners] == [5]
    assert result.preempt == ()
    assert result.losers == (1,)


def test_price_rising_above_a_bid_preempts_only_after_ten_minutes() -> None:
    # the job holds the cheap node (floor 0.90); a big bid must use node 2 (floor 1.20)
    market = make_market(
        [make_node(2, devices=8, floor=1_200_000), make_node(3, devices=4, floor=900_000)], free={3: ()}
    )
    bids = [spot(1, 1_500_000, 8)]
    old = make_job(5, 3, device_ids(3, 4), bid=1_000_000, age=timedelta(minutes=30))
    result = clear(bids, market=market, running=[old])
    assert [w.order_id for w in result.winners] == [1]
    assert [(p.job_id, p.reason) for p in result.preempt] == [(5, PreemptReason.PRICE_ABOVE_BID)]
    assert result.price_micros == 1_200_000

    young = make_job(5, 3, device_ids(3, 4), bid=1_000_000, age=timedelta(minutes=5))
    result = clear(bids, market=market, running=[young])
    assert [w.job_id for w in result.winners] == [5]
    assert result.preempt == ()
    assert result.price_micros <= 1_000_000


def test_gang_spot_bid_is_all_or_nothing_in_one_cluster() -> None:
    market = make_market(
        [
            make_node(1, floor=UNIT, cluster="a"),
            make_node(2, floor=UNIT, cluster="b"),
            make_node(3, floor=UNIT, cluster="b"),
        ]
    )
    result = clear([spot(1, 2 * UNIT, 8, nodes=2), spot(2, 1_500_000, 8)], market=market)
    gang = next(w for w in result.winners if w.order_id == 1)
    assert [slot.node_id for slot in gang.slots] == [2, 3]
    assert [w.order_id for w in result.winners] == [1, 2]


def test_bids_outside_the_pool_lose() -> None:
    result = clear([spot(1, 2 * UNIT, 1, models=(A100,))])
    assert result.winners == ()
    assert result.losers == (1,)


def test_age_boost_ramps_to_a_cap() -> None:
    policy = RoundPolicy(age_boost_ramp=timedelta(minutes=30), age_boost_cap_bps=500)
    assert age_boost_bps(timedelta(0), policy) == 0
    assert age_boost_bps(timedelta(minutes=15), policy) == 250
    assert age_boost_bps(timedelta(minutes=30), policy) == 500
    assert age_boost_bps(timedelta(days=3), policy) == 500


def test_an_old_bid_beats_a_slightly_higher_new_one_but_not_past_the_cap() -> None:
    market = make_market([make_node(1, devices=4, floor=UNIT)])
    old = spot(1, 1_000_000, 4, age=timedelta(hours=5))  # boosted by the full 5%: ranks as 1.05

    def winner(new_bid: int) -> int:
        result = match_round(market=market, orders=[old, spot(2, new_bid, 4, age=timedelta(0))])
        (placement,) = result.placements
        return placement.order_id

    assert winner(1_040_000) == 1
    assert winner(1_060_000) == 2


def test_preemptions_for_lowest_bid_first() -> None:
    jobs = [
        make_job(1, 1, (100, 101), bid=1_000_000, age=timedelta(hours=1)),
        make_job(2, 1, (102, 103), bid=800_000, age=timedelta(hours=1)),
        make_job(3, 1, (104, 105, 106, 107), bid=1_200_000, age=timedelta(minutes=1)),
        make_job(4, 2, (200,), bid=100_000, age=timedelta(hours=1)),
    ]
    chosen = preemptions_for(on_demand_needs={1: 3}, running_spot=jobs, now=NOW)
    assert [(p.job_id, p.reason) for p in chosen] == [
        (2, PreemptReason.HIGHER_TIER),
        (1, PreemptReason.HIGHER_TIER),
    ]
    assert all(p.deadline == NOW + timedelta(seconds=120) for p in chosen)
    # young jobs are not protected from higher tiers
    everything = preemptions_for(on_demand_needs={1: 8}, running_spot=jobs, now=NOW)
    assert [p.job_id for p in everything] == [2, 1, 3]
    # a shortfall no eviction can cover evicts nobody
    assert preemptions_for(on_demand_needs={1: 9, 2: 0}, running_spot=jobs, now=NOW) == []
