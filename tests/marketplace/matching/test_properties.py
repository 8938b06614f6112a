"""Property tests of DESIGN.md section 7, invariants 1-4, on random markets.

1. No device is used twice in a round; capacity is never exceeded.
2. Orders are all-or-nothing; a gang lands in one cluster.
3. Every placement satisfies its order's requirements; provider floor <= price paid <= buyer limit.
4. One spot price per pool per round and every winner pays it; preemption respects tiers, the
   notice, and the 10-minute rule for spot-on-spot.
"""

from __future__ import annotations

import random
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
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
                window_end=start + timedelta(hours=4) if start else None,
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
