"""Worked examples of one matching round: numbers small enough to check by hand."""

from __future__ import annotations

import random
from datetime import timedelta

from marketplace.matching import (
    Order,
    Placement,
    PreemptReason,
    Reason,
    ReasonCode,
    RoundPolicy,
    Slot,
    Term,
    explain,
    match_round,
)
from marketplace.matching.engine import firm_rank

from .factories import (
    A100,
    ASCEND_910B,
    H100,
    NOW,
    UNIT,
    device_ids,
    make_job,
    make_market,
    make_node,
    make_order,
)


def three_node_market():
    """Node 1: 8 x H100 at 3.00; node 2: 8 x H100 at 2.50; node 3: 4 x H100 at 2.50 (on-demand)."""
    return make_market(
        [
            make_node(1, devices=8, on_demand=3 * UNIT, cluster="a", reliability=0.99),
            make_node(2, devices=8, on_demand=2_500_000, cluster="a", reliability=0.95),
            make_node(3, devices=4, on_demand=2_500_000, cluster="b", reliability=0.999),
        ]
    )


def by_order(placements: tuple[Placement, ...]) -> dict[int, Placement]:
    return {placement.order_id: placement for placement in placements}


def test_cheapest_then_best_fit_then_price_paid_is_the_ask() -> None:
    # given three on-demand orders at one limit, oldest first: 4 devices, 4 devices, 8 devices
    market = three_node_market()
    orders = [
        make_order(1, devices=4, limit=3_500_000, age=timedelta(minutes=3)),
        make_order(2, devices=4, limit=3_500_000, age=timedelta(minutes=2)),
        make_order(3, devices=8, limit=3_500_000, age=timedelta(minutes=1)),
    ]
    # when the round runs
    placed = by_order(match_round(market=market, orders=orders).placements)
    # then order 1 takes the exact fit among the cheapest nodes (node 3 at 2.50, 4 of 4 devices),
    # order 2 the other 2.50 node, and order 3, the only one that fits 8, pays node 1's 3.00
    assert placed[1].slots == (Slot(3, device_ids(3, 4)),)
    assert placed[1].unit_price_micros == 2_500_000
    assert placed[2].slots == (Slot(2, device_ids(2, 4)),)
    assert placed[2].unit_price_micros == 2_500_000
    assert placed[3].slots == (Slot(1, device_ids(1, 8)),)
    assert placed[3].unit_price_micros == 3 * UNIT


def test_cap_below_every_ask_is_explained_with_the_lowest_floor() -> None:
    result = match_round(market=three_node_market(), orders=[make_order(1, limit=2 * UNIT)])
    assert result.placements == ()
    (reason,) = result.unplaced[1]
    assert reason.code is ReasonCode.PRICE_LIMIT_BELOW_FLOOR
    assert reason.lowest_floor_micros == 2_500_000
    assert reason.nodes == 3


def test_reliability_breaks_ties_between_equal_fits() -> None:
    market = make_market(
        [
            make_node(1, devices=2, on_demand=UNIT, reliability=0.91),
            make_node(2, devices=2, on_demand=UNIT, reliability=0.97),
        ]
    )
    (placement,) = match_round(market=market, orders=[make_order(1, devices=2)]).placements
    assert placement.slots[0].node_id == 2


def test_firm_orders_beat_spot_whatever_the_age_and_the_bid() -> None:
    # given one node of 8 and three 8-device orders; the spot one waited for hours with a big bid
    market = make_market([make_node(1, devices=8, on_demand=2 * UNIT)])
    spot = make_order(1, term=Term.SPOT, devices=8, limit=9 * UNIT, age=timedelta(hours=10))
    on_demand = make_order(2, devices=8, limit=3 * UNIT, age=timedelta(hours=1))
    reserved = make_order(
        3,
        term=Term.RESERVED,
        devices=8,
        limit=3_500_000,
        age=timedelta(seconds=1),
        window_start=NOW + timedelta(minutes=2),
    )
    result = match_round(market=market, orders=[spot, on_demand, reserved])
    # then the higher firm limit wins (reserved and on-demand share one price-time queue)
    (placement,) = result.placements
    assert placement.order_id == 3
    assert placement.unit_price_micros == 1_600_000  # the reserved price
    assert result.unplaced[2][0].code is ReasonCode.CAPACITY_BUSY
    assert result.unplaced[1][0].code in {ReasonCode.CAPACITY_BUSY, ReasonCode.OUTBID}


def test_reserved_and_on_demand_at_one_limit_go_oldest_first() -> None:
    market = make_market([make_node(1, devices=8)])
    on_demand = make_order(1, devices=8, age=timedelta(minutes=9))
    reserved = make_order(2, term=Term.RESERVED, devices=8, age=timedelta(minutes=1), window_start=NOW)
    (placement,) = match_round(market=market, orders=[reserved, on_demand]).placements
    assert placement.order_id == 1


def test_reserved_order_waits_for_its_window() -> None:
    market = make_market([make_node(1)])
    later = make_order(1, term=Term.RESERVED, window_start=NOW + timedelta(hours=1))
    over = make_order(2, term=Term.RESERVED, window_start=NOW - timedelta(hours=2), window_end=NOW)
    result = match_round(market=market, orders=[later, over])
    assert result.placements == ()
    assert result.unplaced[1][0].code is ReasonCode.WINDOW_NOT_STARTED
    assert result.unplaced[2][0].code is ReasonCode.WINDOW_ENDED


def test_at_one_limit_on_demand_is_first_come_first_served() -> None:
    market = make_market([make_node(1, devices=4)])
    young = make_order(1, devices=4, age=timedelta(minutes=1))
    old = make_order(2, devices=4, age=timedelta(minutes=9))
    (placement,) = match_round(market=market, orders=[young, old]).placements
    assert placement.order_id == 2


def test_a_higher_limit_goes_before_an_older_order() -> None:
    # price-time priority: 3.50 placed a minute ago beats 3.00 placed nine minutes ago
    market = make_market([make_node(1, devices=4, on_demand=2 * UNIT)])
    old = make_order(1, devices=4, limit=3 * UNIT, age=timedelta(minutes=9))
    dear = make_order(2, devices=4, limit=3_500_000, age=timedelta(minutes=1))
    result = match_round(market=market, orders=[old, dear])
    (placement,) = result.placements
    assert placement.order_id == 2
    assert placement.unit_price_micros == 2 * UNIT  # the ask, not the limit
    assert result.unplaced[1][0].code is ReasonCode.CAPACITY_BUSY


def test_the_age_boost_lets_a_long_waiting_low_limit_through() -> None:
    # 5 % of its own limit per hour waited: 2.50 after 9 h ranks as 2.50 x 1.45 = 3.625 > 3.50,
    # after 3 h as 2.875 < 3.50
    policy = RoundPolicy(firm_age_boost_bps_per_hour=500)
    market = make_market([make_node(1, devices=4, on_demand=2 * UNIT)])
    dear = make_order(2, devices=4, limit=3_500_000, age=timedelta(seconds=5))
    for hours, winner in ((3, 2), (9, 1)):
        patient = make_order(1, devices=4, limit=2_500_000, age=timedelta(hours=hours))
        (placement,) = match_round(market=market, orders=[dear, patient], policy=policy).placements
        assert placement.order_id == winner
    assert firm_rank(2_500_000, timedelta(hours=9), policy) > firm_rank(3_500_000, timedelta(0), policy)


def test_a_verified_node_wins_a_tie_of_price_and_fit() -> None:
    market = make_market(
        [
            make_node(1, devices=2, on_demand=UNIT, reliability=0.999),
            make_node(2, devices=2, on_demand=UNIT, reliability=0.95, verified=True),
            make_node(3, devices=1, on_demand=UNIT, reliability=0.95, verified=True),
        ]
    )
    # price first, then fit (node 3 is an exact fit for one device), then verified, then reliability
    placed = by_order(match_round(market=market, orders=[make_order(1, devices=2)]).placements)
    assert placed[1].slots[0].node_id == 2
    placed = by_order(match_round(market=market, orders=[make_order(1, devices=1)]).placements)
    assert placed[1].slots[0].node_id == 3
    gang = make_order(1, devices=2, nodes=2)
    two_clusters = make_market(
        [
            make_node(1, devices=2, on_demand=UNIT, cluster="a", reliability=0.999),
            make_node(2, devices=2, on_demand=UNIT, cluster="a", reliability=0.999),
            make_node(3, devices=2, on_demand=UNIT, cluster="b", verified=True),
            make_node(4, devices=2, on_demand=UNIT, cluster="b", verified=True),
        ]
    )
    (placement,) = match_round(market=two_clusters, orders=[gang]).placements
    assert [slot.node_id for slot in placement.slots] == [3, 4]


def test_a_reserved_window_must_fit_the_offers_rental_length() -> None:
    # node 1 rents for 2 to 6 hours, node 2 (dearer) for 1 hour to 24 hours
    market = make_market(
        [
            make_node(1, on_demand=2 * UNIT, min_rental=timedelta(hours=2), max_rental=timedelta(hours=6)),
            make_node(2, on_demand=3 * UNIT, min_rental=timedelta(hours=1), max_rental=timedelta(hours=24)),
        ]
    )

    def reserved(order_id: int, hours: float) -> Order:
        return make_order(
            order_id,
            term=Term.RESERVED,
            limit=5 * UNIT,
            window_start=NOW,
            window_end=NOW + timedelta(hours=hours),
        )

    fits, short, long_, too_short, too_long = (
        reserved(1, 4),
        reserved(2, 1.5),
        reserved(3, 12),
        reserved(4, 0.5),
        reserved(5, 48),
    )
    for order, node_id in ((fits, 1), (short, 2), (long_, 2)):
        (placement,) = match_round(market=market, orders=[order]).placements
        assert placement.slots[0].node_id == node_id
    result = match_round(market=market, orders=[too_short, too_long])
    assert result.placements == ()
    assert result.unplaced[4] == (Reason(ReasonCode.WINDOW_SHORTER_THAN_MIN_RENTAL, 2),)
    assert result.unplaced[5] == (Reason(ReasonCode.WINDOW_LONGER_THAN_MAX_RENTAL, 2),)
    assert explain(too_long, market) == [Reason(ReasonCode.WINDOW_LONGER_THAN_MAX_RENTAL, 2)]
    # a window already under way is booked (and judged) from now: 2.5 h left of a 3 h window
    started = make_order(
        6,
        term=Term.RESERVED,
        limit=5 * UNIT,
        window_start=NOW - timedelta(minutes=30),
        window_end=NOW + timedelta(hours=2, minutes=30),
    )
    (placement,) = match_round(market=market, orders=[started]).placements
    assert placement.slots[0].node_id == 1
    # on-demand and spot orders have no length: the offer's rental bounds never keep them out
    on_demand = make_order(7, limit=5 * UNIT)
    assert [p.order_id for p in match_round(market=market, orders=[on_demand]).placements] == [7]


def test_gang_lands_on_distinct_nodes_of_one_cluster() -> None:
    # node 3 is cheapest but alone in cluster b; cluster a has two nodes
    market = make_market(
        [
            make_node(1, cluster="a", on_demand=2 * UNIT),
            make_node(2, cluster="a", on_demand=2_200_000),
            make_node(3, cluster="b", on_demand=UNIT),
        ]
    )
    (placement,) = match_round(market=market, orders=[make_order(1, devices=8, nodes=2)]).placements
    assert [slot.node_id for slot in placement.slots] == [1, 2]
    assert all(len(slot.device_ids) == 8 for slot in placement.slots)
    assert placement.unit_price_micros == 2_200_000  # one rate for the gang: its dearest node's ask


def test_gang_is_all_or_nothing() -> None:
    # cluster a has two nodes but only one with 8 free devices: nothing is allocated at all
    market = make_market(
        [make_node(1, cluster="a"), make_node(2, cluster="a"), make_node(3, cluster="b")],
        free={2: device_ids(2, 4)},
    )
    result = match_round(market=market, orders=[make_order(1, devices=8, nodes=2)])
    assert result.placements == ()
    assert result.unplaced[1][0].code is ReasonCode.CAPACITY_BUSY


def test_gang_without_a_big_enough_cluster() -> None:
    market = make_market([make_node(1, cluster="a"), make_node(2, cluster="b")])
    result = match_round(market=market, orders=[make_order(1, devices=8, nodes=2)])
    assert result.placements == ()
    assert result.unplaced[1][0].code is ReasonCode.NO_CLUSTER_FITS_GANG


def test_a_node_gives_at_most_one_slot_to_a_gang() -> None:
    # one 16-device node could hold two 8-device slots, but a gang needs two nodes
    market = make_market([make_node(1, devices=16)])
    result = match_round(market=market, orders=[make_order(1, devices=8, nodes=2)])
    assert result.placements == ()
    assert result.unplaced[1][0].code is ReasonCode.NO_CLUSTER_FITS_GANG


def test_on_demand_preempts_spot_lowest_bid_first_even_young_jobs() -> None:
    # node 1: 4 devices, two young spot jobs (2 devices each); nothing else is free
    market = make_market([make_node(1, devices=4, on_demand=2 * UNIT, floor=UNIT)], free={1: ()})
    cheap = make_job(7, 1, (100, 101), bid=1_100_000, age=timedelta(minutes=1))
    dear = make_job(8, 1, (102, 103), bid=1_500_000, age=timedelta(minutes=1))
    result = match_round(market=market, orders=[make_order(1, devices=2)], running_spot=[cheap, dear])
    placed = by_order(result.placements)
    assert placed[1].slots == (Slot(1, (100, 101)),)
    assert placed[1].preempts == (7,)
    assert [(p.job_id, p.reason, p.deadline) for p in result.preempt] == [
        (7, PreemptReason.HIGHER_TIER, NOW + timedelta(seconds=120))
    ]
    # the dearer job keeps its devices and pays the pool's clearing price
    kept = [p for p in result.placements if p.job_id == 8]
    assert kept[0].slots == (Slot(1, (102, 103)),)


def test_free_capacity_is_used_before_preempting_spot() -> None:
    market = make_market([make_node(1, devices=2), make_node(2, devices=2, on_demand=UNIT)], free={2: ()})
    job = make_job(1, 2, device_ids(2, 2), bid=600_000, age=timedelta(hours=1))
    result = match_round(market=market, orders=[make_order(1, devices=2)], running_spot=[job])
    assert by_order(result.placements)[1].slots[0].node_id == 1
    assert result.preempt == ()


def test_unmatched_reasons_are_machine_readable() -> None:
    market = make_market(
        [
            make_node(1, region="cn-north-1", software={"cuda": "12.0"}, reliability=0.99),
            make_node(2, region="cn-north-1", software={"cuda": "12.4"}, reliability=0.90),
            make_node(3, model=A100, region="us-west-1", devices=2, memory_mib=40_960),
        ]
    )
    orders = [
        make_order(1, models=(ASCEND_910B,), region="cn-north-1"),
        make_order(2, models=(H100,), region="us-west-1"),
        make_order(3, models=(A100,), min_memory_mib=81_920),
        make_order(4, models=(A100,), devices=4),
        make_order(5, software="cuda>=12.1", min_reliability=0.95),
        make_order(6, software="cuda>=12.9"),
        make_order(7, software="cuda=>12"),
    ]
    unplaced = match_round(market=market, orders=orders).unplaced
    codes = {order_id: [reason.code for reason in reasons] for order_id, reasons in unplaced.items()}
    assert codes[1] == [ReasonCode.NO_NODE_OF_MODEL_IN_REGION]
    assert codes[2] == [ReasonCode.NO_NODE_OF_MODEL_IN_REGION]
    assert codes[3] == [ReasonCode.MEMORY_BELOW_MIN]
    assert codes[4] == [ReasonCode.NODE_TOO_SMALL]
    # node 1 fails the software step, node 2 gets further and fails on reliability
    assert codes[5] == [ReasonCode.RELIABILITY_BELOW_MIN, ReasonCode.SOFTWARE_UNSATISFIED]
    assert [r.nodes for r in unplaced[5]] == [1, 1]
    assert codes[6] == [ReasonCode.SOFTWARE_UNSATISFIED]
    assert codes[7] == [ReasonCode.SOFTWARE_SPEC_INVALID]


def test_ascend_rc_builds_satisfy_a_cann_spec() -> None:
    market = make_market([make_node(1, model=ASCEND_910B, software={"cann": "8.0.RC1"})])
    order = make_order(1, models=(), kind="npu", software="cann>=8.0")
    assert [p.order_id for p in match_round(market=market, orders=[order]).placements] == [1]


def test_capacity_busy_says_when_capacity_frees() -> None:
    # node 1: 2 of 4 free, the others busy until +1 h and +2 h; node 2: all busy until +30 min
    busy = {
        102: NOW + timedelta(hours=1),
        103: NOW + timedelta(hours=2),
        **{device: NOW + timedelta(minutes=30) for device in device_ids(2, 4)},
    }
    market = make_market(
        [make_node(1, devices=4), make_node(2, devices=4)], free={1: (100, 101), 2: ()}, busy_until=busy
    )
    order = make_order(1, devices=3)
    (reason,) = explain(order, market)
    assert reason.code is ReasonCode.CAPACITY_BUSY
    assert reason.frees_at == NOW + timedelta(minutes=30)
    assert match_round(market=market, orders=[order]).unplaced[1] == (reason,)


def test_explain_is_empty_for_an_order_that_fits() -> None:
    assert explain(make_order(1, devices=8), three_node_market()) == []


def test_outbid_spot_order_is_told_the_clearing_price() -> None:
    market = make_market([make_node(1, devices=4, floor=UNIT)])
    high = make_order(1, term=Term.SPOT, devices=4, limit=1_500_000)
    low = make_order(2, term=Term.SPOT, devices=4, limit=1_200_000)
    result = match_round(market=market, orders=[high, low])
    (reason,) = result.unplaced[2]
    assert reason.code is ReasonCode.OUTBID
    assert reason.clearing_price_micros == 1_200_000  # the highest losing bid sets the price


def test_same_input_same_output_whatever_the_input_order() -> None:
    nodes = [make_node(i, devices=4, on_demand=(1 + i % 3) * UNIT, cluster="ab"[i % 2]) for i in range(1, 9)]
    orders = [
        make_order(
            i, term=list(Term)[i % 3], devices=1 + i % 4, limit=(2 + i % 3) * UNIT, age=timedelta(seconds=i)
        )
        for i in range(1, 30)
    ]
    first = match_round(market=make_market(nodes), orders=orders)
    shuffled_nodes, shuffled_orders = list(nodes), list(orders)
    random.Random(7).shuffle(shuffled_nodes)
    random.Random(8).shuffle(shuffled_orders)
    assert match_round(market=make_market(shuffled_nodes), orders=shuffled_orders) == first
