"""The in-memory capacity index one matching round works on.

Capacity is indexed by pool (accelerator model x region), then per term by free-device count:
``buckets[term][k]`` is the list of node stocks with exactly ``k`` free devices, sorted by (price
for the term, verified before unverified, -reliability, node id). Finding the cheapest,
best-fitting node for an order that needs ``d`` devices reads the head of buckets ``d..max``
only, so a round costs about O(orders x bucket count), not O(orders x nodes). Gangs and
placements that must preempt spot jobs are rare and take a linear scan of their pools.

A *stock* is the devices of one class (model, memory) on one node; a placement slot always takes
its devices from one stock, so every device of a node slot is the same model and size.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeAlias

from marketplace.matching.market import Market, Node, Order, PoolKey, RunningSpot, Slot, Term
from marketplace.matching.requirements import SoftwareConstraint, parse_software_spec, software_satisfied

TERM_INDEX = {Term.ON_DEMAND: 0, Term.RESERVED: 1, Term.SPOT: 2}

# (price for the term, 0 if the node is verified else 1, -reliability, node id, stock index): the
# order within a bucket.
BucketEntry: TypeAlias = tuple[int, int, float, int, int]


@dataclass(slots=True, eq=False)
class Stock:
    index: int
    node: Node
    pool: PoolKey
    memory_mib: int
    device_ids: tuple[int, ...]
    total: int
    prices: tuple[int, int, int]
    entries: tuple[BucketEntry, BucketEntry, BucketEntry]
    free: list[int] = field(default_factory=list)
    holders: dict[int, tuple[int, ...]] = field(default_factory=dict)  # spot job id -> its devices here


@dataclass(slots=True, eq=False)
class PoolIndex:
    key: PoolKey
    stocks: list[Stock]
    held: list[Stock]  # stocks where running spot jobs held devices when the round began
    buckets: list[list[list[BucketEntry]]]  # [term][free count] -> sorted entries


@dataclass(frozen=True, slots=True)
class Need:
    """An order's requirements, resolved once per order against the index."""

    order: Order
    term: int
    devices_per_node: int
    node_count: int
    limit: int
    min_memory_mib: int
    min_reliability: float
    spec: str
    constraints: tuple[SoftwareConstraint, ...]
    pools: tuple[PoolIndex, ...]
    runtime: str | None = None
    node_ids: frozenset[int] = frozenset()
    # A reserved order's booked length (its window from the round's now on); None for the others.
    rental: timedelta | None = None


@dataclass(frozen=True, slots=True)
class Candidate:
    stock: Stock
    price: int
    evict: tuple[int, ...]
    cost: int
    leftover: int

    @property
    def rank(self) -> tuple[int, int, int, int, float, int, int]:
        # Price first (cheapest for the buyer), then the spot value destroyed, then best fit (the
        # fullest node that fits keeps whole nodes free), then verified nodes, then reliability,
        # then node id.
        return (
            self.price,
            self.cost,
            self.leftover,
            0 if self.stock.node.verified else 1,
            -self.stock.node.reliability,
            self.stock.node.id,
            self.stock.index,
        )


def eviction_order(job: RunningSpot) -> tuple[int, float, int]:
    """Which spot job goes first: lowest bid, then the most recently started (least work lost)."""
    return (job.bid_micros, -job.started_at.timestamp(), job.job_id)


class CapacityIndex:
    def __init__(self, market: Market, running_spot: Sequence[RunningSpot] = ()) -> None:
        self.stocks: list[Stock] = []
        self.pools: dict[PoolKey, PoolIndex] = {}
        self.device_stock: dict[int, Stock] = {}
        self.device_rank: dict[int, int] = {}
        self.vacating: dict[int, int] = {}  # device id -> spot job that must leave it first
        self.now = market.now
        self.jobs: dict[int, RunningSpot] = {job.job_id: job for job in running_spot}
        self.evicted: set[int] = set()
        self.job_pool: dict[int, PoolKey] = {}
        self.model_kind: dict[int, str] = {}
        self.model_regions: dict[int, list[str]] = {}
        self._software_ok: dict[tuple[str, int], bool] = {}
        self._pool_cache: dict[tuple[frozenset[int], str | None, str | None], tuple[PoolIndex, ...]] = {}
        # The distinct rental bounds of the listed offers: a length all of them admit needs no check.
        self._rental_bounds: set[tuple[timedelta, timedelta | None]] = set()
        self._build(market, running_spot)

    # -- building -------------------------------------------------------------------------------

    def _build(self, market: Market, running_spot: Sequence[RunningSpot]) -> None:
        held = {d: job.job_id for job in running_spot for slot in job.slots for d in slot.device_ids}
        by_pool: dict[PoolKey, list[Stock]] = {}
        for node in sorted(market.nodes, key=lambda n: n.id):
            if not node.offer.listed:
                continue
            self._rental_bounds.add((node.offer.min_rental, node.offer.max_rental))
            free = market.free.get(node.id, frozenset())
            classes: dict[tuple[int, int], list[int]] = {}
            for device in sorted(node.devices, key=lambda dev: (dev.index, dev.id)):
                self.model_kind.setdefault(device.model_id, device.kind)
                self.device_rank[device.id] = device.index
                classes.setdefault((device.model_id, device.memory_mib), []).append(device.id)
            for (model_id, memory_mib), device_ids in sorted(classes.items()):
                stock = self._new_stock(node, PoolKey(model_id, node.region), memory_mib, device_ids)
                for device_id in device_ids:
                    self.device_stock[device_id] = stock
                    if device_id in held:
                        job_id = held[device_id]
                        stock.holders[job_id] = (*stock.holders.get(job_id, ()), device_id)
                        self.job_pool.setdefault(job_id, stock.pool)
                    elif device_id in free:
                        stock.free.append(device_id)
                by_pool.setdefault(stock.pool, []).append(stock)
        for key in sorted(by_pool):
            self.pools[key] = self._new_pool(key, by_pool[key])
            self.model_regions.setdefault(key.model_id, []).append(key.region)

    def _new_stock(self, node: Node, pool: PoolKey, memory_mib: int, device_ids: list[int]) -> Stock:
        offer = node.offer
        prices = (offer.on_demand_micros, offer.reserved_micros, offer.spot_floor_micros)
        index = len(self.stocks)
        unverified = 0 if node.verified else 1
        entries = tuple((price, unverified, -node.reliability, node.id, index) for price in prices)
        stock = Stock(index, node, pool, memory_mib, tuple(device_ids), len(device_ids), prices, entries)  # type: ignore[arg-type]
        self.stocks.append(stock)
        return stock

    @staticmethod
    def _new_pool(key: PoolKey, stocks: list[Stock]) -> PoolIndex:
        top = max(stock.total for stock in stocks)
        buckets: list[list[list[BucketEntry]]] = [[[] for _ in range(top + 1)] for _ in TERM_INDEX]
        for stock in stocks:
            if stock.free:
                for term, entry in enumerate(stock.entries):
                    buckets[term][len(stock.free)].append(entry)
        for per_term in buckets:
            for bucket in per_term:
                bucket.sort()
        return PoolIndex(key, stocks, [stock for stock in stocks if stock.holders], buckets)

    # -- orders ---------------------------------------------------------------------------------

    def need(self, order: Order, *, limit: int | None = None) -> Need:
        """Resolve an order; raises ``SoftwareSpecError`` for an unparseable software spec."""
        req = order.requirements
        rental = None
        if order.term is Term.RESERVED and order.window_end is not None:
            rental = order.window_end - max(order.window_start or self.now, self.now)
            if all(low <= rental and (high is None or rental <= high) for low, high in self._rental_bounds):
                rental = None  # every offer rents for this long: no node to rule out (and shared caches)
        return Need(
            order=order,
            term=TERM_INDEX[order.term],
            devices_per_node=req.devices_per_node,
            node_count=req.node_count,
            limit=order.limit_micros if limit is None else limit,
            min_memory_mib=req.min_memory_mib,
            min_reliability=req.min_reliability,
            spec=req.software,
            constraints=parse_software_spec(req.software),
            pools=self.pools_for(order),
            runtime=req.runtime,
            node_ids=req.node_ids,
            rental=rental,
        )

    def pools_for(self, order: Order) -> tuple[PoolIndex, ...]:
        req = order.requirements
        cache_key = (req.model_ids, req.kind, req.region)
        cached = self._pool_cache.get(cache_key)
        if cached is None:
            models = req.model_ids or frozenset(self.model_kind)
            keys = [
                PoolKey(model_id, region)
                for model_id in sorted(models)
                if req.kind is None or self.model_kind.get(model_id) == req.kind
                for region in self.model_regions.get(model_id, ())
                if req.region is None or region == req.region
            ]
            cached = tuple(self.pools[key] for key in keys)
            self._pool_cache[cache_key] = cached
        return cached

    def suits(self, stock: Stock, need: Need) -> bool:
        """The static requirements: memory, reliability, software (price and free count aside)."""
        if stock.memory_mib < need.min_memory_mib or stock.node.reliability < need.min_reliability:
            return False
        if need.node_ids and stock.node.id not in need.node_ids:
            return False
        if need.rental is not None and not stock.node.offer.admits(need.rental):
            return False
        if not runtime_offered(stock.node, need.runtime):
            return False
        return self.software_ok(need, stock.node)

    def software_ok(self, need: Need, node: Node) -> bool:
        """Whether ``node``'s stacks meet the order's software spec (cached per spec and node)."""
        if not need.constraints:
            return True
        cache_key = (need.spec, node.id)
        ok = self._software_ok.get(cache_key)
        if ok is None:
            ok = software_satisfied(need.constraints, node.software)
            self._software_ok[cache_key] = ok
        return ok

    def best_free(
        self, need: Need, *, pools: Iterable[PoolIndex] | None = None, limit: int | None = None
    ) -> Stock | None:
        """The single node stock an order's slot should take from free devices, or None."""
        best: Stock | None = None
        best_key: tuple[int, int, int, float, int, int] | None = None
        term, devices = need.term, need.devices_per_node
        limit = need.limit if limit is None else limit
        for pool in need.pools if pools is None else pools:
            per_count = pool.buckets[term]
            for count in range(devices, len(per_count)):
                for price, unverified, neg_rel, node_id, stock_index in per_count[count]:
                    if price > limit or (best_key is not None and (price, count) > best_key[:2]):
                        break  # sorted by price: nothing further in this bucket can win
                    stock = self.stocks[stock_index]
                    if not self.suits(stock, need):
                        continue
                    key = (price, count, unverified, neg_rel, node_id, stock_index)
                    if best_key is None or key < best_key:
                        best, best_key = stock, key
                    break
        return best

    def candidates(
        self,
        need: Need,
        *,
        limit: int | None = None,
        evictable: Callable[[int], bool] | None = None,
        pools: Iterable[PoolIndex] | None = None,
        held_only: bool = False,
    ) -> list[Candidate]:
        """Every stock that could take one slot, evicting ``evictable`` spot jobs if allowed.

        ``held_only`` skips stocks without spot jobs: for when no free stock fits anyway.
        """
        cap = need.limit if limit is None else limit
        devices = need.devices_per_node
        found: list[Candidate] = []
        for pool in need.pools if pools is None else pools:
            for stock in pool.held if held_only else pool.stocks:
                shortfall = devices - len(stock.free)
                if shortfall > 0 and (evictable is None or not stock.holders):
                    continue  # the cheap test first: most stocks are full in a busy market
                price = stock.prices[need.term]
                if price > cap or stock.total < devices or not self.suits(stock, need):
                    continue
                if shortfall <= 0 or evictable is None:
                    found.append(Candidate(stock, price, (), 0, -shortfall))
                    continue
                victims = self.evictions_on(stock, shortfall, evictable)
                if victims is not None:
                    freed = sum(len(stock.holders[job_id]) for job_id in victims)
                    cost = sum(self.jobs[j].bid_micros * _device_total(self.jobs[j]) for j in victims)
                    found.append(Candidate(stock, price, victims, cost, freed - shortfall))
        return found

    def evictions_on(
        self, stock: Stock, shortfall: int, evictable: Callable[[int], bool]
    ) -> tuple[int, ...] | None:
        jobs = [
            self.jobs[job_id] for job_id in stock.holders if job_id not in self.evicted and evictable(job_id)
        ]
        chosen: list[int] = []
        freed = 0
        for job in sorted(jobs, key=eviction_order):
            if freed >= shortfall:
                break
            chosen.append(job.job_id)
            freed += len(stock.holders[job.job_id])
        return tuple(chosen) if freed >= shortfall else None

    # -- changing state -------------------------------------------------------------------------

    def commit(self, need: Need, chosen: Sequence[Candidate]) -> tuple[tuple[Slot, ...], tuple[int, ...]]:
        """Take ``devices_per_node`` devices from each chosen stock; returns slots and jobs to preempt."""
        for candidate in chosen:
            for job_id in candidate.evict:
                self.vacate(job_id)
        slots: list[Slot] = []
        preempts: set[int] = set()
        for candidate in chosen:
            stock = candidate.stock
            # Truly free devices first (a vacating one delays the job by the notice), then those
            # of the jobs evicted for this slot in eviction order, so every eviction is used.
            order = {job_id: position for position, job_id in enumerate(candidate.evict)}

            def preference(device_id: int, order: dict[int, int] = order) -> tuple[int, int, int]:
                job_id = self.vacating.get(device_id)
                if job_id is None:
                    return (0, 0, self.device_rank[device_id])
                return (1, order.get(job_id, len(order)), self.device_rank[device_id])

            picked = sorted(stock.free, key=preference)[: need.devices_per_node]
            self._set_free(stock, [d for d in stock.free if d not in picked])
            preempts.update(self.vacating[d] for d in picked if d in self.vacating)
            slots.append(Slot(stock.node.id, tuple(sorted(picked, key=self.device_rank.__getitem__))))
        return tuple(slots), tuple(sorted(preempts))

    def vacate(self, job_id: int) -> None:
        """Evict a running spot job: its devices become usable, behind its notice."""
        if job_id in self.evicted:
            return
        self.evicted.add(job_id)
        for slot in self.jobs[job_id].slots:
            for device_id in slot.device_ids:
                stock = self.device_stock.get(device_id)
                if stock is None or job_id not in stock.holders:
                    continue
                devices = stock.holders.pop(job_id)
                for vacated in devices:
                    self.vacating[vacated] = job_id
                self._set_free(stock, [*stock.free, *devices])

    def _set_free(self, stock: Stock, free: list[int]) -> None:
        old, new = len(stock.free), len(free)
        stock.free = free
        if old == new:
            return
        pool = self.pools[stock.pool]
        for term, entry in enumerate(stock.entries):
            if old:
                bucket = pool.buckets[term][old]
                del bucket[bisect_left(bucket, entry)]
            if new:
                insort(pool.buckets[term][new], entry)


def runtime_offered(node: Node, runtime: str | None) -> bool:
    return runtime is None or not node.runtimes or runtime in node.runtimes


def _device_total(job: RunningSpot) -> int:
    return sum(len(slot.device_ids) for slot in job.slots)


def choose_single(candidates: Sequence[Candidate]) -> Candidate | None:
    return min(candidates, key=lambda c: c.rank, default=None)


def choose_gang(candidates: Sequence[Candidate], node_count: int) -> list[Candidate] | None:
    """The best ``node_count`` distinct nodes of one cluster (and one model), or None.

    Clusters are compared by the price the gang pays (the highest of its nodes), then the spot
    value destroyed, then the devices left over, then the unverified nodes, then reliability,
    then cluster name.
    """
    groups: dict[tuple[PoolKey, str], list[Candidate]] = {}
    for candidate in sorted(candidates, key=lambda c: c.rank):
        groups.setdefault((candidate.stock.pool, candidate.stock.node.cluster), []).append(candidate)
    best: list[Candidate] | None = None
    best_key: tuple[int, int, int, int, float, str, PoolKey] | None = None
    for (pool, cluster), members in groups.items():
        picked: list[Candidate] = []
        nodes: set[int] = set()
        for candidate in members:
            if candidate.stock.node.id not in nodes:  # one node-slot of a gang per node
                picked.append(candidate)
                nodes.add(candidate.stock.node.id)
            if len(picked) == node_count:
                break
        if len(picked) < node_count:
            continue
        key = (
            max(c.price for c in picked),
            sum(c.cost for c in picked),
            sum(c.leftover for c in picked),
            sum(0 if c.stock.node.verified else 1 for c in picked),
            -min(c.stock.node.reliability for c in picked),
            cluster,
            pool,
        )
        if best_key is None or key < best_key:
            best, best_key = picked, key
    return best
