"""Spot clearing: one uniform price per pool (accelerator model x region) per round.

The rule, as implemented (``clearing_price``):

* Bidders are the new spot orders of the pool and its running spot jobs; they are ranked by bid,
  raised by the capped age boost (``age_boost_bps``), incumbents first on a tie, then by id.
* Running jobs in their first ``spot_min_run`` (10 minutes) are kept before anyone else is
  considered: another spot bid never takes their devices, and no new bid can push the price above
  theirs (later winners are held to floors <= every earlier winner's bid). Such a job only loses
  if its node's floor rose above its bid since it started, a provider's act, not a bid's. Tiers
  (on-demand, reserved) may still preempt it.
* In rank order, each bidder wins if it fits, all-or-nothing: a new bid takes free devices on the
  cheapest best-fitting nodes, and only if nothing free fits, devices of lower-ranked running jobs
  (which are then preempted as ``outbid``); a running job wins if it still holds its devices.
  A bidder may only use devices whose floor is <= its bid and <= every earlier winner's bid, and
  only if its bid >= every floor used so far: so at the end, every winner's bid >= every used floor.
* ``F`` = the marginal provider floor: the highest floor among devices used by winners (with no
  winner, the lowest floor listed in the pool). ``L`` = the highest losing bid, among losers that
  could have been placed on the pool's capacity at the start of the round and that bid no more
  than the lowest winner (a loser that outbid a winner lost on shape, not on price).
* ``raw = max(F, L)``; with a previous price ``P``, ``raw`` is clamped to ``P +/- P*max_move_bps/10000``
  (integer division); then ``price = max(raw, F)`` and, with winners, ``price = min(price, lowest
  winning bid)``. The cap yields to the floor and to the winners' bids, never the other way round,
  so ``every used floor <= price <= every winner's bid`` always holds.
* Winners pay ``price``, never their bid. Running jobs that lose are preempted with the notice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from marketplace.matching.capacity import (
    TERM_INDEX,
    Candidate,
    CapacityIndex,
    Need,
    PoolIndex,
    choose_gang,
    choose_single,
    eviction_order,
)
from marketplace.matching.market import (
    ClearingResult,
    Market,
    Order,
    Placement,
    PoolKey,
    Preemption,
    PreemptReason,
    RoundPolicy,
    RunningSpot,
    Term,
)
from marketplace.matching.requirements import SoftwareSpecError

SPOT = TERM_INDEX[Term.SPOT]


def age_boost_bps(age: timedelta, policy: RoundPolicy) -> int:
    """Linear in waiting time up to the cap: a bid's rank rises by at most ``age_boost_cap_bps``."""
    if age <= timedelta(0) or policy.age_boost_ramp <= timedelta(0):
        return policy.age_boost_cap_bps if age > timedelta(0) else 0
    return min(policy.age_boost_cap_bps, int(policy.age_boost_cap_bps * (age / policy.age_boost_ramp)))


def spot_rank(bid_micros: int, waited: timedelta, policy: RoundPolicy) -> int:
    """The value spot bids are ranked by (higher first); payment always uses the real bid."""
    return bid_micros * (10_000 + age_boost_bps(waited, policy))


def clearing_price(
    *,
    marginal_floor: int,
    highest_losing_bid: int | None,
    lowest_winning_bid: int | None,
    previous_price: int | None,
    max_move_bps: int,
) -> int:
    """The pool's price; see the module docstring for the rule and why it keeps the invariants."""
    raw = max(marginal_floor, highest_losing_bid or 0)
    if previous_price is not None:
        move = previous_price * max_move_bps // 10_000
        raw = min(max(raw, previous_price - move), previous_price + move)
    price = max(raw, marginal_floor)
    if lowest_winning_bid is not None:
        price = min(price, lowest_winning_bid)
    return price


def clear_pool(
    *,
    pool: PoolKey,
    bids: Sequence[Order],
    running_spot: Sequence[RunningSpot],
    free_capacity: Market,
    previous_price: int | None,
    max_move_bps: int,
    now: datetime,
    policy: RoundPolicy | None = None,
) -> ClearingResult:
    """Clear one spot pool on its own: ``free_capacity`` is the market after higher tiers placed."""
    policy = replace(policy or RoundPolicy(), spot_max_move_bps=max_move_bps)
    index = CapacityIndex(free_capacity, running_spot)
    pool_index = index.pools.get(pool)
    entries: list[tuple[Order, Need]] = []
    outside: list[int] = []
    for order in sorted(bids, key=lambda o: o.id):
        need = _spot_need(index, order)
        if need is None or pool_index is None or pool_index not in need.pools:
            outside.append(order.id)
        else:
            entries.append((order, need))
    if pool_index is None:
        return ClearingResult(pool, previous_price or 0, (), tuple(outside), ())
    result = PoolClearing(index, pool_index, now, policy).run(entries, previous_price)
    return replace(result.result, losers=tuple(sorted((*result.result.losers, *outside))))


def preemptions_for(
    *,
    on_demand_needs: Mapping[int, int],
    running_spot: Sequence[RunningSpot],
    now: datetime,
    policy: RoundPolicy | None = None,
) -> list[Preemption]:
    """Spot jobs to evict so higher tiers get ``on_demand_needs[node_id]`` more devices on each node.

    Lowest bid first (then the most recently started, then job id). Tiers override the 10-minute
    rule, so young jobs are candidates too. A node whose spot jobs cannot cover the shortfall gets
    no evictions: killing jobs that would not make room helps nobody.
    """
    notice = (policy or RoundPolicy()).preempt_notice
    chosen: dict[int, None] = {}
    for node_id in sorted(on_demand_needs):
        shortfall = on_demand_needs[node_id]
        if shortfall <= 0:
            continue
        holding = [
            (job, sum(len(slot.device_ids) for slot in job.slots if slot.node_id == node_id))
            for job in running_spot
        ]
        freed, picks = 0, []
        for job, count in sorted(((j, c) for j, c in holding if c), key=lambda jc: eviction_order(jc[0])):
            if freed >= shortfall:
                break
            freed += count
            if job.job_id not in chosen:
                picks.append(job.job_id)
        if freed >= shortfall:
            chosen.update(dict.fromkeys(picks))
    return [Preemption(job_id, PreemptReason.HIGHER_TIER, now + notice) for job_id in chosen]


def _spot_need(index: CapacityIndex, order: Order) -> Need | None:
    try:
        return index.need(order)
    except SoftwareSpecError:
        return None


@dataclass(slots=True)
class PoolOutcome:
    result: ClearingResult
    could_fit: set[int]  # losing orders that fitted the pool's opening capacity at their bid


class PoolClearing:
    """One pool's clearing on a shared index (the round clears every pool on the same index)."""

    def __init__(self, index: CapacityIndex, pool: PoolIndex, now: datetime, policy: RoundPolicy) -> None:
        self.index, self.pool, self.now, self.policy = index, pool, now, policy
        self.jobs = [
            job
            for job_id, job in sorted(index.jobs.items())
            if index.job_pool.get(job_id) == pool.key and job_id not in index.evicted
        ]
        self.pinned = {job.job_id for job in self.jobs if now - job.started_at < policy.spot_min_run}
        # Opening capacity per stock: free devices plus those of jobs another bid may take.
        self.opening = {
            stock.index: len(stock.free)
            + sum(len(d) for job_id, d in stock.holders.items() if job_id not in self.pinned)
            for stock in pool.stocks
        }
        self.max_floor: int | None = None
        self.min_bid: int | None = None
        self.winners: list[tuple[Placement, int]] = []
        self.preempt: list[Preemption] = []
        self._cheapest_fit: dict[tuple[str, str | None, int, float, int], int | None] = {}

    def run(self, entries: Sequence[tuple[Order, Need]], previous_price: int | None) -> PoolOutcome:
        losing_bids: list[tuple[int, int | None, bool]] = []  # (bid, order id or None, could fit)
        for job in sorted((j for j in self.jobs if j.job_id in self.pinned), key=self._job_key):
            if not self._keep(job):
                losing_bids.append((job.bid_micros, None, False))
        pending = {job.job_id for job in self.jobs if job.job_id not in self.pinned}
        ranked: list[tuple[tuple[int, int, float, int], Order | RunningSpot, Need | None]] = [
            (self._job_key(job), job, None) for job in self.jobs if job.job_id in pending
        ]
        ranked += [(self._order_key(order), order, need) for order, need in entries]
        ranked.sort(key=lambda item: item[0])
        for _, bidder, need in ranked:
            if isinstance(bidder, RunningSpot):
                pending.discard(bidder.job_id)
                if bidder.job_id in self.index.evicted:
                    self._preempt(bidder.job_id, PreemptReason.OUTBID)
                    losing_bids.append((bidder.bid_micros, None, True))
                elif not self._keep(bidder):
                    losing_bids.append((bidder.bid_micros, None, False))
            elif need is not None and not self._place(bidder, need, pending):
                losing_bids.append(
                    (bidder.limit_micros, bidder.id, self._fits_opening(need, bidder.limit_micros))
                )
        return self._settle(losing_bids, previous_price)

    # -- ranking ---------------------------------------------------------------------------------

    def _job_key(self, job: RunningSpot) -> tuple[int, int, float, int]:
        rank = spot_rank(job.bid_micros, self.now - job.started_at, self.policy)
        return (-rank, 0, job.started_at.timestamp(), job.job_id)  # incumbents first on a tie

    def _order_key(self, order: Order) -> tuple[int, int, float, int]:
        rank = spot_rank(order.limit_micros, self.now - order.created_at, self.policy)
        return (-rank, 1, order.created_at.timestamp(), order.id)

    # -- winning ---------------------------------------------------------------------------------

    def _admissible(self, bid: int, floor: int) -> bool:
        return (
            floor <= bid
            and (self.max_floor is None or bid >= self.max_floor)
            and (self.min_bid is None or floor <= self.min_bid)
        )

    def _win(self, placement: Placement, bid: int, floor: int) -> None:
        self.max_floor = floor if self.max_floor is None else max(self.max_floor, floor)
        self.min_bid = bid if self.min_bid is None else min(self.min_bid, bid)
        self.winners.append((placement, bid))

    def _keep(self, job: RunningSpot) -> bool:
        floor = self._job_floor(job)
        if floor is not None and self._admissible(job.bid_micros, floor):
            self._win(
                Placement(job.order_id, job.slots, 0, Term.SPOT, job_id=job.job_id), job.bid_micros, floor
            )
            return True
        self.index.vacate(job.job_id)
        self._preempt(job.job_id, PreemptReason.PRICE_ABOVE_BID)
        return False

    def _job_floor(self, job: RunningSpot) -> int | None:
        stocks = [self.index.device_stock.get(d) for slot in job.slots for d in slot.device_ids]
        if any(stock is None for stock in stocks):
            return None
        return max(stock.prices[SPOT] for stock in stocks if stock is not None)

    def _place(self, order: Order, need: Need, pending: set[int]) -> bool:
        bid = order.limit_micros
        if self.max_floor is not None and bid < self.max_floor:
            return False
        limit = bid if self.min_bid is None else min(bid, self.min_bid)
        chosen = self._choose(need, limit, evictable=None)
        if chosen is None and pending:
            chosen = self._choose(need, limit, evictable=pending.__contains__)
        if chosen is None:
            return False
        slots, preempts = self.index.commit(need, chosen)
        floor = max(candidate.price for candidate in chosen)
        self._win(Placement(order.id, slots, 0, Term.SPOT, preempts), bid, floor)
        return True

    def _choose(
        self, need: Need, limit: int, *, evictable: Callable[[int], bool] | None
    ) -> list[Candidate] | None:
        """Where a bid goes on this pool, paying floors up to ``limit`` (its bid or less)."""
        pools = (self.pool,)
        if evictable is None and need.node_count == 1:
            stock = self.index.best_free(need, pools=pools, limit=limit)
            if stock is None:
                return None
            return [Candidate(stock, stock.prices[SPOT], (), 0, len(stock.free) - need.devices_per_node)]
        single = need.node_count == 1
        found = self.index.candidates(need, limit=limit, evictable=evictable, pools=pools, held_only=single)
        if single:
            best = choose_single(found)
            return None if best is None else [best]
        return choose_gang(found, need.node_count)

    def _preempt(self, job_id: int, reason: PreemptReason) -> None:
        self.preempt.append(Preemption(job_id, reason, self.now + self.policy.preempt_notice))

    # -- pricing ---------------------------------------------------------------------------------

    def _fits_opening(self, need: Need, bid: int) -> bool:
        """Could this bid have been placed on the pool's capacity at the start of the round?"""
        devices = need.devices_per_node
        if need.node_count == 1:
            key = (need.spec, need.runtime, need.min_memory_mib, need.min_reliability, devices)
            if key not in self._cheapest_fit:
                prices = [
                    stock.prices[SPOT]
                    for stock in self.pool.stocks
                    if self.opening[stock.index] >= devices and self.index.suits(stock, need)
                ]
                self._cheapest_fit[key] = min(prices, default=None)
            cheapest = self._cheapest_fit[key]
            return cheapest is not None and cheapest <= bid
        clusters: dict[str, set[int]] = {}
        for stock in self.pool.stocks:
            if (
                self.opening[stock.index] >= devices
                and stock.prices[SPOT] <= bid
                and self.index.suits(stock, need)
            ):
                clusters.setdefault(stock.node.cluster, set()).add(stock.node.id)
        return any(len(nodes) >= need.node_count for nodes in clusters.values())

    def _settle(
        self, losing_bids: list[tuple[int, int | None, bool]], previous_price: int | None
    ) -> PoolOutcome:
        if self.max_floor is not None:
            marginal_floor = self.max_floor
        else:
            marginal_floor = min(
                (stock.prices[SPOT] for stock in self.pool.stocks), default=previous_price or 0
            )
        setting = [
            bid for bid, _, fits in losing_bids if fits and (self.min_bid is None or bid <= self.min_bid)
        ]
        price = clearing_price(
            marginal_floor=marginal_floor,
            highest_losing_bid=max(setting, default=None),
            lowest_winning_bid=self.min_bid,
            previous_price=previous_price,
            max_move_bps=self.policy.spot_max_move_bps,
        )
        winners = tuple(replace(placement, unit_price_micros=price) for placement, _ in self.winners)
        losers = tuple(sorted(order_id for _, order_id, _ in losing_bids if order_id is not None))
        could_fit = {order_id for _, order_id, fits in losing_bids if order_id is not None and fits}
        result = ClearingResult(self.pool.key, price, winners, losers, tuple(self.preempt))
        return PoolOutcome(result, could_fit)
