"""One matching round, in memory: orders and free capacity in, placements and reasons out.

Priority is by tier: firm orders (reserved orders whose window starts within the round's horizon,
and on-demand) before spot. Firm orders are taken by price-time priority, as an exchange's order
book: the highest limit price first, then the oldest, then the lowest id. A waiting order's limit
is raised, for ranking only, by ``RoundPolicy.firm_age_boost_bps_per_hour`` of itself per hour
waited (``firm_rank``), without a cap, so an old order at a low limit is eventually placed when
capacity frees however many higher limits keep arriving; it always pays the node's ask. Spot is
cleared per pool by ``spot.PoolClearing`` at one uniform price with bids ranked by bid plus a
capped age boost. No boost lifts an order out of its tier: an hour-old spot bid still comes after
a fresh on-demand order.

Within a tier, a slot goes to the cheapest node for the order's term, then the best fit (the
fewest free devices left behind, so exact fits first and whole nodes stay free for big orders),
then a verified node, then the most reliable node, then the lowest node id. Nodes whose offer's
rental length does not admit a reserved window are not candidates for it. Gangs take
``node_count`` distinct nodes of one cluster (and one model), all or none. On-demand and reserved
orders that do not fit free capacity may preempt spot jobs, lowest bid first. Same input, same
output: everything is ordered by ids, never by hash order.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from marketplace.matching.capacity import (
    Candidate,
    CapacityIndex,
    Need,
    Stock,
    choose_gang,
    choose_single,
    runtime_offered,
)
from marketplace.matching.market import (
    ClearingResult,
    Market,
    Order,
    Placement,
    PoolKey,
    Preemption,
    PreemptReason,
    Reason,
    ReasonCode,
    RoundPolicy,
    RoundResult,
    RunningSpot,
    Term,
)
from marketplace.matching.requirements import SoftwareSpecError
from marketplace.matching.spot import SPOT, PoolClearing

# Diagnosis stages, earliest first; the furthest stage any node reached is the main reason.
_STAGES = (
    ReasonCode.MEMORY_BELOW_MIN,
    ReasonCode.SOFTWARE_UNSATISFIED,
    ReasonCode.RELIABILITY_BELOW_MIN,
    ReasonCode.WINDOW_SHORTER_THAN_MIN_RENTAL,
    ReasonCode.WINDOW_LONGER_THAN_MAX_RENTAL,
    ReasonCode.NODE_TOO_SMALL,
    ReasonCode.PRICE_LIMIT_BELOW_FLOOR,
    ReasonCode.NO_CLUSTER_FITS_GANG,
    ReasonCode.CAPACITY_BUSY,
)


def match_round(
    *,
    market: Market,
    orders: Sequence[Order],
    running_spot: Sequence[RunningSpot] = (),
    spot_prices: Mapping[PoolKey, int] | None = None,
    policy: RoundPolicy | None = None,
) -> RoundResult:
    """Decide every order of one round; pure: the caller commits the result.

    ``spot_prices`` are the previous round's clearing prices (the move cap is relative to them).
    ``RoundResult.placements`` holds new allocations and, with ``job_id`` set, the running spot
    jobs that keep their devices at the new price; ``preempt`` the spot jobs to stop with notice.
    """
    policy = policy or RoundPolicy()
    index = CapacityIndex(market, running_spot)
    diagnoser = Diagnoser(index, market)
    placements: list[Placement] = []
    unplaced: dict[int, tuple[Reason, ...]] = {}
    preempt: list[Preemption] = []
    firm: list[Need] = []
    spot: list[Need] = []
    for order in sorted(orders, key=lambda o: o.id):
        early = _order_reason(order, market)
        if early is not None:
            unplaced[order.id] = (early,)
            continue
        try:
            need = index.need(order)
        except SoftwareSpecError:
            unplaced[order.id] = (Reason(ReasonCode.SOFTWARE_SPEC_INVALID),)
            continue
        (spot if order.term is Term.SPOT else firm).append(need)

    firm.sort(key=lambda n: firm_priority(n.order, market.now, policy))
    for need in firm:
        chosen = choose_firm(index, need)
        if chosen is None:
            unplaced[need.order.id] = diagnoser.reasons(need)
            continue
        notice_at = market.now + policy.preempt_notice
        preempt += [Preemption(j, PreemptReason.HIGHER_TIER, notice_at) for c in chosen for j in c.evict]
        slots, preempts = index.commit(need, chosen)
        price = max(candidate.price for candidate in chosen)  # a gang pays one rate, its dearest node's
        placements.append(Placement(need.order.id, slots, price, need.order.term, preempts))

    clearing, outbid = _clear_spot(index, spot, spot_prices or {}, market.now, policy)
    for result in clearing.values():
        placements += result.winners
        preempt += result.preempt
    won = {p.order_id for p in placements}
    for need in spot:
        if need.order.id in won:
            continue
        if need.order.id in outbid:
            unplaced[need.order.id] = (
                Reason(ReasonCode.OUTBID, clearing_price_micros=outbid[need.order.id]),
            )
        else:
            unplaced[need.order.id] = diagnoser.reasons(need)
    return RoundResult(tuple(placements), dict(sorted(unplaced.items())), clearing, tuple(preempt))


def explain(order: Order, market: Market, *, running_spot: Sequence[RunningSpot] = ()) -> list[Reason]:
    """Why ``order`` cannot be placed on ``market`` as it stands; empty when it could be placed now.

    Reasons come furthest step first: ``reasons[0]`` is the answer to show, the rest say how many
    other nodes fell at earlier steps (wrong memory, software, reliability, too small, too dear).
    A spot order that fits is reported placeable: only a clearing round can say it was outbid.
    """
    early = _order_reason(order, market)
    if early is not None:
        return [early]
    index = CapacityIndex(market, running_spot)
    try:
        need = index.need(order)
    except SoftwareSpecError:
        return [Reason(ReasonCode.SOFTWARE_SPEC_INVALID)]
    if order.term is Term.SPOT:
        found = index.candidates(need)
        chosen = choose_single(found) if need.node_count == 1 else choose_gang(found, need.node_count)
    else:
        chosen = choose_firm(index, need)
    if chosen:
        return []
    return list(Diagnoser(index, market).reasons(need))


def choose_firm(index: CapacityIndex, need: Need) -> list[Candidate] | None:
    """Where an on-demand or reserved order goes: free capacity first, else preempting spot."""
    if need.node_count == 1:
        stock = index.best_free(need)
        if stock is not None:
            return [Candidate(stock, stock.prices[need.term], (), 0, len(stock.free) - need.devices_per_node)]
    else:
        gang = choose_gang(index.candidates(need), need.node_count)
        if gang is not None:
            return gang
    if len(index.evicted) == len(index.jobs):
        return None
    # Tiers override the spot 10-minute rule: every running spot job may be evicted.
    single = need.node_count == 1
    found = index.candidates(need, evictable=lambda _job_id: True, held_only=single)
    if single:
        best = choose_single(found)
        return None if best is None else [best]
    return choose_gang(found, need.node_count)


def firm_rank(limit_micros: int, waited: timedelta, policy: RoundPolicy) -> int:
    """A firm order's rank: its limit raised by ``firm_age_boost_bps_per_hour`` of itself per hour waited.

    In micro-units x 10^4 x 3600 (integer arithmetic, so equal inputs rank equal on every worker).
    The boost has no cap: a waiting order gains on every fresh order at a higher limit, so an order
    whose limit covers some node's ask is placed once capacity frees, however high later bids are.
    """
    seconds = max(int(waited.total_seconds()), 0)
    return limit_micros * (10_000 * 3600 + policy.firm_age_boost_bps_per_hour * seconds)


def firm_priority(order: Order, now: datetime, policy: RoundPolicy) -> tuple[int, datetime, int]:
    """The order in which a round considers firm orders (reserved and on-demand alike): price-time
    priority, the highest aged limit (``firm_rank``) first, then the oldest, then the lowest id."""
    return (-firm_rank(order.limit_micros, now - order.created_at, policy), order.created_at, order.id)


def _order_reason(order: Order, market: Market) -> Reason | None:
    if order.term is not Term.RESERVED:
        return None
    if order.window_end is not None and order.window_end <= market.now:
        return Reason(ReasonCode.WINDOW_ENDED)
    if order.window_start is not None and order.window_start > market.now + market.horizon:
        return Reason(ReasonCode.WINDOW_NOT_STARTED)
    return None


def _clear_spot(
    index: CapacityIndex,
    spot: Sequence[Need],
    previous: Mapping[PoolKey, int],
    now: datetime,
    policy: RoundPolicy,
) -> tuple[dict[PoolKey, ClearingResult], dict[int, int]]:
    """Clear every pool; an order open to several pools tries them cheapest first until it wins."""
    by_pool: dict[PoolKey, list[tuple[Order, Need]]] = {}
    for need in spot:
        for pool in need.pools:
            by_pool.setdefault(pool.key, []).append((need.order, need))

    def expected_price(key: PoolKey) -> tuple[int, PoolKey]:
        floor = min(stock.prices[SPOT] for stock in index.pools[key].stocks)
        return (previous.get(key, floor), key)

    clearing: dict[PoolKey, ClearingResult] = {}
    outbid: dict[int, int] = {}
    won: set[int] = set()
    for key in sorted(index.pools, key=expected_price):
        entries = [(order, need) for order, need in by_pool.get(key, ()) if order.id not in won]
        outcome = PoolClearing(index, index.pools[key], now, policy).run(entries, previous.get(key))
        clearing[key] = outcome.result
        won.update(w.order_id for w in outcome.result.winners if w.job_id is None)
        for order_id in outcome.could_fit:
            outbid[order_id] = min(
                outbid.get(order_id, outcome.result.price_micros), outcome.result.price_micros
            )
    return dict(sorted(clearing.items())), outbid


@dataclass(slots=True)
class _Sieve:
    """The price-independent part of a diagnosis, shared by orders with the same requirements."""

    failures: dict[ReasonCode, int]
    passing: list[Stock]  # sorted by the term's price
    prices: list[int]


class Diagnoser:
    """Turns an unplaced order into reasons, reusing work across orders with equal requirements."""

    def __init__(self, index: CapacityIndex, market: Market) -> None:
        self.index, self.market = index, market
        self._sieves: dict[tuple[object, ...], _Sieve] = {}
        self._suits: dict[tuple[object, ...], tuple[dict[ReasonCode, int], list[Stock]]] = {}
        # (id of a cached ``suited`` list, term) -> that list sorted by the term's bucket entry; the
        # lists live as long as ``_suits`` holds them, so their ids stay unique.
        self._ranked: dict[tuple[int, int], list[Stock]] = {}

    def reasons(self, need: Need) -> tuple[Reason, ...]:
        if not need.pools or (
            need.node_ids
            and not any(stock.node.id in need.node_ids for pool in need.pools for stock in pool.stocks)
        ):
            return (Reason(ReasonCode.NO_NODE_OF_MODEL_IN_REGION),)
        sieve = self._sieve(need)
        failures = dict(sieve.failures)
        affordable_count = bisect_right(sieve.prices, need.limit)
        affordable = sieve.passing[:affordable_count]
        lowest_floor = sieve.prices[affordable_count] if affordable_count < len(sieve.prices) else None
        if lowest_floor is not None:
            failures[ReasonCode.PRICE_LIMIT_BELOW_FLOOR] = len(sieve.passing) - affordable_count
        if affordable and need.node_count > 1 and not _cluster_fits(affordable, need.node_count):
            failures[ReasonCode.NO_CLUSTER_FITS_GANG] = len(affordable)
        elif affordable:
            failures[ReasonCode.CAPACITY_BUSY] = len(affordable)
        reasons = []
        for code in reversed(_STAGES):
            count = failures.get(code, 0)
            if not count:
                continue
            if code is ReasonCode.PRICE_LIMIT_BELOW_FLOOR:
                reasons.append(Reason(code, count, lowest_floor_micros=lowest_floor))
            elif code is ReasonCode.CAPACITY_BUSY:
                reasons.append(Reason(code, count, frees_at=self._frees_at(affordable, need)))
            else:
                reasons.append(Reason(code, count))
        return tuple(reasons)

    def _sieve(self, need: Need) -> _Sieve:
        pools = tuple(pool.key for pool in need.pools)
        key = (
            pools,
            need.min_memory_mib,
            need.min_reliability,
            need.spec,
            need.runtime,
            need.node_ids,
            need.devices_per_node,
            need.term,
            need.rental,
        )
        sieve = self._sieves.get(key)
        if sieve is None:
            failures, suited = self._suited(pools, need)
            failures = dict(failures)
            # By the term's bucket entry: price first. Sorted once per requirements and term; each
            # order size only filters it.
            ranked_key = (id(suited), need.term)
            ranked = self._ranked.get(ranked_key)
            if ranked is None:
                term = need.term
                ranked = sorted(suited, key=lambda stock: stock.entries[term])
                self._ranked[ranked_key] = ranked
            big_enough = [stock for stock in ranked if stock.total >= need.devices_per_node]
            if len(big_enough) < len(suited):
                failures[ReasonCode.NODE_TOO_SMALL] = len(suited) - len(big_enough)
            sieve = _Sieve(failures, big_enough, [stock.prices[need.term] for stock in big_enough])
            self._sieves[key] = sieve
        return sieve

    def _suited(self, pools: tuple[PoolKey, ...], need: Need) -> tuple[dict[ReasonCode, int], list[Stock]]:
        """Stocks meeting memory, software and reliability; failures counted at the first step missed."""
        key = (
            pools,
            need.min_memory_mib,
            need.min_reliability,
            need.spec,
            need.runtime,
            need.node_ids,
            need.rental,
        )
        cached = self._suits.get(key)
        if cached is not None:
            return cached
        failures: dict[ReasonCode, int] = {}
        suited: list[Stock] = []
        for pool in need.pools:
            for stock in pool.stocks:
                if need.node_ids and stock.node.id not in need.node_ids:
                    continue  # an order for one offer: other nodes are not candidates at all
                if stock.memory_mib < need.min_memory_mib:
                    code = ReasonCode.MEMORY_BELOW_MIN
                elif not runtime_offered(stock.node, need.runtime) or not self.index.software_ok(
                    need, stock.node
                ):
                    code = ReasonCode.SOFTWARE_UNSATISFIED
                elif stock.node.reliability < need.min_reliability:
                    code = ReasonCode.RELIABILITY_BELOW_MIN
                elif need.rental is not None and need.rental < stock.node.offer.min_rental:
                    code = ReasonCode.WINDOW_SHORTER_THAN_MIN_RENTAL
                elif need.rental is not None and not stock.node.offer.admits(need.rental):
                    code = ReasonCode.WINDOW_LONGER_THAN_MAX_RENTAL
                else:
                    suited.append(stock)
                    continue
                failures[code] = failures.get(code, 0) + 1
        self._suits[key] = (failures, suited)
        return failures, suited

    def _frees_at(self, stocks: Sequence[Stock], need: Need) -> datetime | None:
        """The earliest time enough of these stocks' devices are free, from the caller's busy-until."""
        busy_until = self.market.busy_until
        if not busy_until:
            return None
        ready: dict[tuple[PoolKey, str], list[tuple[datetime, int]]] = {}
        for stock in stocks:
            times = [self.market.now] * len(stock.free)
            times += sorted(
                busy_until[d] for d in stock.device_ids if d not in stock.free and d in busy_until
            )
            if len(times) >= need.devices_per_node:
                at = times[need.devices_per_node - 1]
                ready.setdefault((stock.pool, stock.node.cluster), []).append((at, stock.node.id))
        best: datetime | None = None
        for members in ready.values():
            per_node: dict[int, datetime] = {}
            for at, node_id in members:
                per_node[node_id] = min(at, per_node.get(node_id, at))
            if len(per_node) >= need.node_count:
                at = sorted(per_node.values())[need.node_count - 1]
                best = at if best is None else min(best, at)
        return best


def _cluster_fits(stocks: Sequence[Stock], node_count: int) -> bool:
    clusters: dict[tuple[PoolKey, str], set[int]] = {}
    for stock in stocks:
        clusters.setdefault((stock.pool, stock.node.cluster), set()).add(stock.node.id)
    return any(len(nodes) >= node_count for nodes in clusters.values())
