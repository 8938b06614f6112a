"""Property tests of DESIGN.md section 7, invariants 1-4, on random markets.

1. No device is used twice in a round; capacity is never exceeded.
2. Orders are all-or-nothing; a gang lands in one cluster.
3. Every placement satisfies its order's requirements; provider floor <= price paid <= buyer limit.
4. One spot price per pool per round and every winner pays it; preemption respects tiers, the
   notice, and the 10-minute rule for spot-on-spot.

And the market rules of a round: firm orders by price-time priority (an order's placement never
depends on orders ranked below it), and an order that waited long enough is placed.
"""

from __future__ import annotations

import random
from datetime import timedelta

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from marketplace.matching import (
    Market,
    Order,
    PoolKey,
    PreemptReason,
    RoundPolicy,
    RoundResult,
    RunningSpot,
    Term,
    explain,
    match_round,
)
from marketplace.matching.engine import firm_priority, firm_rank
from marketplace.matching.requirements import parse_software_spec, software_satisfied

from .factories import A100, H100, NOW, device_ids, make_job, make_market, make_node, make_order

MODELS = (H100, A100)
REGIONS = ("r1", "r2")
POLICY = RoundPolicy()
PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def markets(draw: st.DrawFn) -> tuple[Market, list[RunningSpot]]:
    nodes, free, jobs = [], {}, []
    for node_id in range(1, draw(st.integers(1, 12)) + 1):
        size = draw(st.integers(1, 8))
        on_demand = draw(st.integers(5, 40)) * 100_000
        nodes.append(
            make_node(
                node_id,
                model=draw(st.sampled_from(MODELS)),
                devices=size,
                memory_mib=draw(st.sampled_from((40_960, 81_920))),
                region=draw(st.sampled_from(REGIONS)),
                cluster=draw(st.sampled_from("abc")),
                reliability=draw(st.sampled_from((0.9, 0.95, 0.99))),
                software={"cuda": draw(st.sampled_from(("11.8", "12.1", "12.4")))},
                on_demand=on_demand,
                reserved=draw(st.integers(1, on_demand // 100_000)) * 100_000,
                floor=draw(st.integers(1, 30)) * 100_000,
                listed=draw(st.integers(0, 9)) > 0,
                verified=draw(st.booleans()),
                min_rental=timedelta(hours=draw(st.sampled_from((0, 0, 1, 5)))),
                max_rental=draw(st.sampled_from((None, None, timedelta(hours=2), timedelta(hours=8)))),
            )
        )
        ids = device_ids(node_id, size)
        mask = draw(st.lists(st.booleans(), min_size=size, max_size=size))
        free[node_id] = [d for d, is_free in zip(ids, mask, strict=True) if is_free]
        busy = [d for d, is_free in zip(ids, mask, strict=True) if not is_free]
        while busy and draw(st.booleans()):  # some busy devices run spot jobs
            take = draw(st.integers(1, len(busy)))
            jobs.append(
                make_job(
                    len(jobs) + 1,
                    node_id,
                    busy[:take],
                    bid=draw(st.integers(1, 40)) * 100_000,
                    age=timedelta(minutes=draw(st.integers(0, 30))),
                )
            )
            busy = busy[take:]
    return make_market(nodes, free=free), jobs


@st.composite
def orders(draw: st.DrawFn) -> list[Order]:
    result = []
    for order_id in range(1, draw(st.integers(0, 25)) + 1):
        term = draw(st.sampled_from(list(Term)))
        node_count = draw(st.sampled_from((1, 1, 1, 2, 3)))
        start = (
            NOW + timedelta(minutes=draw(st.sampled_from((-30, 0, 3, 60)))) if term is Term.RESERVED else None
        )
        result.append(
            make_order(
                order_id,
                term=term,
                limit=draw(st.integers(1, 40)) * 100_000,
                devices=draw(st.integers(1, 8 if node_count == 1 else 3)),
                nodes=node_count,
                models=draw(st.sets(st.sampled_from(MODELS), max_size=2)),
                region=draw(st.sampled_from((None, *REGIONS))),
                software=draw(st.sampled_from(("", "", "cuda>=12.1", "cuda<12"))),
                min_reliability=draw(st.sampled_from((0.0, 0.0, 0.95))),
                min_memory_mib=draw(st.sampled_from((0, 0, 81_920))),
                age=timedelta(minutes=draw(st.integers(0, 90))),
                window_start=start,
                window_end=start + timedelta(hours=draw(st.sampled_from((1, 4, 12)))) if start else None,
            )
        )
    return result


@st.composite
def previous_prices(draw: st.DrawFn) -> dict[PoolKey, int]:
    pools = [PoolKey(model, region) for model in MODELS for region in REGIONS]
    return {pool: draw(st.integers(1, 40)) * 100_000 for pool in pools if draw(st.booleans())}


def check_round(market: Market, orders: list[Order], jobs: list[RunningSpot], result: RoundResult) -> None:
    nodes = {node.id: node for node in market.nodes}
    device_node = {device.id: (node, device) for node in market.nodes for device in node.devices}
    by_order = {order.id: order for order in orders}
    by_job = {job.job_id: job for job in jobs}
    holder = {d: job.job_id for job in jobs for slot in job.slots for d in slot.device_ids}
    preempted = {p.job_id: p for p in result.preempt}
    assert len(preempted) == len(result.preempt), "a job is preempted at most once"

    used: set[int] = set()
    placed: set[int] = set()
    for placement in result.placements:
        devices = placement.device_ids
        # 1. no device used twice
        assert len(set(devices)) == len(devices) and used.isdisjoint(devices)
        used.update(devices)
        if placement.job_id is not None:  # a running spot job keeps exactly its devices
            assert placement.slots == by_job[placement.job_id].slots
            assert placement.job_id not in preempted
            continue
        assert placement.order_id not in placed
        placed.add(placement.order_id)
        order = by_order[placement.order_id]
        req = order.requirements
        # 1. capacity: free devices, or those of spot jobs stopped (with notice) for this placement
        for device_id in devices:
            if device_id not in market.free[device_node[device_id][0].id]:
                job_id = holder[device_id]
                assert job_id in preempted and job_id in placement.preempts
                assert preempted[job_id].deadline == NOW + POLICY.preempt_notice
        # 2. all-or-nothing; a gang on distinct nodes of one cluster, one model
        assert len(placement.slots) == req.node_count
        assert len({slot.node_id for slot in placement.slots}) == req.node_count
        assert len({nodes[slot.node_id].cluster for slot in placement.slots}) == 1
        assert len({device_node[d][1].model_id for d in devices}) == 1
        for slot in placement.slots:
            node = nodes[slot.node_id]
            assert len(slot.device_ids) == req.devices_per_node
            # 3. requirements
            for device_id in slot.device_ids:
                owner, device = device_node[device_id]
                assert owner.id == node.id
                assert not req.model_ids or device.model_id in req.model_ids
                assert req.kind is None or device.kind == req.kind
                assert device.memory_mib >= req.min_memory_mib
            assert req.region is None or node.region == req.region
            assert software_satisfied(parse_software_spec(req.software), node.software)
            assert node.reliability >= req.min_reliability
            assert node.offer.listed
            # 3. provider floor <= price paid <= buyer limit
            assert node.offer.floor_for(order.term) <= placement.unit_price_micros <= order.limit_micros
        if order.term is Term.RESERVED:
            assert order.window_start is None or order.window_start <= market.now + market.horizon
            # the booked window fits every node's rental length
            assert order.window_start is not None and order.window_end is not None
            booked = order.window_end - max(order.window_start, market.now)
            assert all(nodes[slot.node_id].offer.admits(booked) for slot in placement.slots)

    assert placed.isdisjoint(result.unplaced)
    assert placed | set(result.unplaced) == set(by_order)
    assert all(result.unplaced.values()), "every unplaced order has a reason"

    # 4. one spot price per pool; winners pay it; their bids cover it; it covers every used floor
    spot_placements = [p for p in result.placements if p.term is Term.SPOT]
    cleared = [winner for clearing in result.clearing.values() for winner in clearing.winners]
    assert sorted(map(id, spot_placements)) == sorted(map(id, cleared))
    for pool, clearing in result.clearing.items():
        for winner in clearing.winners:
            assert winner.unit_price_micros == clearing.price_micros
            bid = (
                by_job[winner.job_id].bid_micros if winner.job_id else by_order[winner.order_id].limit_micros
            )
            assert bid >= clearing.price_micros
            for device_id in winner.device_ids:
                node, device = device_node[device_id]
                assert PoolKey(device.model_id, node.region) == pool
                assert node.offer.spot_floor_micros <= clearing.price_micros

    # 4. preemption respects tiers, the notice and the 10-minute rule
    firm_preempts = {j for p in result.placements if p.term is not Term.SPOT for j in p.preempts}
    spot_preempts = {j for p in result.placements if p.term is Term.SPOT for j in p.preempts}
    for job_id, preemption in preempted.items():
        assert preemption.deadline == NOW + POLICY.preempt_notice
        if preemption.reason is PreemptReason.HIGHER_TIER:
            assert job_id in firm_preempts
        elif preemption.reason is PreemptReason.OUTBID:
            assert job_id in spot_preempts
            assert NOW - by_job[job_id].started_at >= POLICY.spot_min_run


@PROPERTY_SETTINGS
@given(markets(), orders(), previous_prices())
def test_round_invariants(
    market_jobs: tuple[Market, list[RunningSpot]], orders: list[Order], prices: dict[PoolKey, int]
) -> None:
    market, jobs = market_jobs
    result = match_round(market=market, orders=orders, running_spot=jobs, spot_prices=prices, policy=POLICY)
    check_round(market, orders, jobs, result)


@PROPERTY_SETTINGS
@given(markets(), orders(), previous_prices())
def test_young_spot_jobs_are_never_preempted_because_of_spot_bids(
    market_jobs: tuple[Market, list[RunningSpot]], orders: list[Order], prices: dict[PoolKey, int]
) -> None:
    # Whatever spot bids arrive, a job in its first 10 minutes loses to spot reasons only if it
    # would lose without any new spot bid at all (its own floor rose above its bid).
    market, jobs = market_jobs
    young = {job.job_id for job in jobs if NOW - job.started_at < POLICY.spot_min_run}
    spot_reasons = {PreemptReason.OUTBID, PreemptReason.PRICE_ABOVE_BID}

    def young_lost(order_list: list[Order]) -> set[int]:
        result = match_round(market=market, orders=order_list, running_spot=jobs, spot_prices=prices)
        return {p.job_id for p in result.preempt if p.job_id in young and p.reason in spot_reasons}

    firm_only = [order for order in orders if order.term is not Term.SPOT]
    assert young_lost(orders) <= young_lost(firm_only)


@PROPERTY_SETTINGS
@given(markets(), orders(), previous_prices(), st.randoms(use_true_random=False))
def test_round_is_deterministic(
    market_jobs: tuple[Market, list[RunningSpot]],
    orders: list[Order],
    prices: dict[PoolKey, int],
    rng: random.Random,
) -> None:
    market, jobs = market_jobs
    first = match_round(market=market, orders=orders, running_spot=jobs, spot_prices=prices)
    shuffled_nodes, shuffled_orders, shuffled_jobs = list(market.nodes), list(orders), list(jobs)
    for items in (shuffled_nodes, shuffled_orders, shuffled_jobs):
        rng.shuffle(items)
    again = match_round(
        market=make_market(shuffled_nodes, free=market.free),
        orders=shuffled_orders,
        running_spot=shuffled_jobs,
        spot_prices=prices,
    )
    assert again == first


@PROPERTY_SETTINGS
@given(markets(), orders())
def test_explain_agrees_with_a_round_for_a_lone_firm_order(
    market_jobs: tuple[Market, list[RunningSpot]], orders: list[Order]
) -> None:
    market, jobs = market_jobs
    for order in orders:
        if order.term is Term.SPOT:
            continue
        result = match_round(market=market, orders=[order], running_spot=jobs)
        reasons = explain(order, market, running_spot=jobs)
        placed = any(p.order_id == order.id and p.job_id is None for p in result.placements)
        assert placed == (reasons == [])
        if not placed:
            assert list(result.unplaced[order.id]) == reasons


@PROPERTY_SETTINGS
@given(markets(), orders())
def test_firm_orders_follow_price_time_priority(
    market_jobs: tuple[Market, list[RunningSpot]], orders: list[Order]
) -> None:
    # Price-time priority within a round: an order ranked higher (aged limit, then age, then id)
    # is decided before, so an order's placement is the same whether or not the orders ranked
    # below it (and every spot bid) take part in the round.
    market, jobs = market_jobs
    firm = sorted(
        (order for order in orders if order.term is not Term.SPOT),
        key=lambda order: firm_priority(order, NOW, POLICY),
    )
    full = {
        p.order_id: p
        for p in match_round(market=market, orders=orders, running_spot=jobs, policy=POLICY).placements
        if p.job_id is None
    }
    for position, order in enumerate(firm):
        alone = match_round(market=market, orders=firm[: position + 1], running_spot=jobs, policy=POLICY)
        mine = [p for p in alone.placements if p.order_id == order.id and p.job_id is None]
        assert mine == ([full[order.id]] if order.id in full else [])


@PROPERTY_SETTINGS
@given(
    st.integers(1, 8),
    st.lists(st.tuples(st.integers(1, 40), st.integers(0, 120)), min_size=1, max_size=12),
    st.sampled_from((0, 500, 1_000)),
    st.randoms(use_true_random=False),
)
def test_identical_firm_orders_are_placed_highest_limit_then_oldest_first(
    devices: int, bids: list[tuple[int, int]], boost: int, rng: random.Random
) -> None:
    # One node, one-device orders that all fit it: the placed ones are exactly the top ``devices``
    # by aged limit, then by age, whatever their terms and the order they arrive in.
    policy = RoundPolicy(firm_age_boost_bps_per_hour=boost)
    market = make_market([make_node(1, devices=devices, on_demand=100_000, reserved=100_000)])
    orders = [
        make_order(
            order_id,
            term=rng.choice((Term.ON_DEMAND, Term.RESERVED)),
            limit=limit * 100_000,
            age=timedelta(minutes=minutes),
            window_start=NOW,
            window_end=NOW + timedelta(hours=1),
        )
        for order_id, (limit, minutes) in enumerate(bids, start=1)
    ]
    ranked = sorted(
        orders, key=lambda o: (-firm_rank(o.limit_micros, NOW - o.created_at, policy), o.created_at, o.id)
    )
    shuffled = list(orders)
    rng.shuffle(shuffled)
    result = match_round(market=market, orders=shuffled, policy=policy)
    assert {p.order_id for p in result.placements} == {o.id for o in ranked[:devices]}


@PROPERTY_SETTINGS
@given(
    st.integers(1, 8),
    st.integers(2, 40),
    st.lists(st.tuples(st.integers(1, 400), st.integers(0, 120)), min_size=1, max_size=10),
    st.sampled_from((100, 500, 2_000)),
    st.sampled_from(list(Term)),
)
def test_an_order_that_waited_long_enough_is_placed(
    devices: int, limit: int, rivals: list[tuple[int, int]], boost: int, rival_term: Term
) -> None:
    # Whatever limits the fresh orders competing for the same devices carry (up to 10 x higher),
    # an order whose limit covers the ask is placed once it has waited long enough: its aged rank
    # passes every rival's. Spot rivals never come first at all.
    policy = RoundPolicy(firm_age_boost_bps_per_hour=boost)
    ask = 100_000
    market = make_market([make_node(1, devices=devices, on_demand=ask, reserved=ask, floor=ask)])
    limit_micros = limit * 100_000
    competing = [
        make_order(
            order_id,
            term=rival_term,
            devices=devices,
            limit=max(ask, limit_micros * tenths // 40),
            age=timedelta(minutes=minutes),
            window_start=NOW if rival_term is Term.RESERVED else None,
            window_end=NOW + timedelta(hours=1) if rival_term is Term.RESERVED else None,
        )
        for order_id, (tenths, minutes) in enumerate(rivals, start=2)
    ]
    top = max(firm_rank(o.limit_micros, NOW - o.created_at, policy) for o in competing)
    assume(top >= firm_rank(limit_micros, timedelta(0), policy))  # it would lose when fresh
    # The age at which its rank passes ``top``: limit x (36e6 + boost x seconds) > top.
    seconds = (top // limit_micros - 10_000 * 3600) // boost + 1
    patient = make_order(1, devices=devices, limit=limit_micros, age=timedelta(seconds=seconds))
    result = match_round(market=market, orders=[*competing, patient], policy=policy)
    assert [p.order_id for p in result.placements if p.job_id is None] == [1] or (
        rival_term is Term.SPOT and 1 in {p.order_id for p in result.placements}
    )
