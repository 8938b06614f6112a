"""Matching engine: decisions per second of one in-memory round, and allocation quality.

A seeded market of open orders (reserved, on-demand, spot; 1/2/4/8 devices; a few gangs; some
software and reliability requirements; prices around the providers' floors) and nodes (eight
accelerator models, four regions, 1-8 devices, partly busy, some running spot jobs).

* ``decisions_per_s``: orders decided (placed, or given reasons) per second by ``match_round`` on
  the full market, index build and reasons included; the median of five rounds.
* ``quality``: allocative efficiency, the minimum over the markets of ``--quality-seeds``
  (20250602, 7 and 42; ``lp_orders x lp_nodes`` each, made by the same generator), each in
  ``quality_by_seed``. Per market: the round's gains from trade (``engine_welfare``: the sum over
  placed orders and kept running spot jobs of (the buyer's limit or bid - the node's ask for that
  term) x devices, each node-slot at its own node's ask) over the LP bound of gains from trade
  with tier priority built in (``welfare_bounds``, HiGHS): first the maximum firm (on-demand and
  reserved) welfare, then the maximum total welfare with the firm welfare held at that maximum.
  The LP has fractional node-slots ``y[o, s]`` in [0, 1] for every (order, node stock) pair whose
  requirements fit and whose ask is <= the limit, ``sum_s y[o, s] <= 1``, a gang's one cluster
  (``z[o, c]``, exactly ``node_count x z`` node-slots of it), running spot jobs keeping their
  devices (``k[j]``), and per stock devices used <= free devices plus those of running spot jobs
  (firm orders may preempt them). Reserved orders whose window starts after the round's horizon
  are out of both. Price-time priority, cheapest-node-first, the uniform spot price and the
  10-minute rule are *not* in the LP, so the gap includes what those rules cost.
  ``firm_quality`` = the round's firm welfare / the maximum firm welfare; ``spot_quality`` = the
  round's spot welfare (new winners and kept jobs) / the LP maximum of spot welfare on the
  capacity the round's firm placements left; both at the seed that sets ``quality``.
  ``value_ratio`` is the figure called ``quality`` before 2026-12: matched value (``limit x
  devices``) over a value-only LP with no asks and no tiers, on the first seed.
* ``commits_per_s``: allocations committed per second to PostgreSQL through the rounds' real commit
  path (``marketplace.services.matching.placements_commit``: per chunk of ``COMMIT_CHUNK`` orders,
  lock the orders and nodes, write the allocations, one slot per device under the exclusion
  constraint, the jobs, the orders' transition, the nodes' nudge; every order all or nothing) on a
  scratch database ``suanli_bench_matching`` created (and dropped) on the ``DATABASE_URL`` server:
  ``commit_nodes`` 8-device nodes, ``commit_orders`` on-demand orders of 1-8 devices, placed in
  memory by ``match_round``. The baseline in the same run, ``per_order_commits_per_s``, commits the
  same placements one transaction per order (``placement_commit``: what a chunk that meets a
  conflict falls back to; before 2026-12 also the path of every placement that preempted spot
  jobs or booked escrow) on the same database after the first run is undone; ``commit_ratio`` =
  batched / per order. ``reserved_commits_per_s`` and
  ``reserved_per_order_commits_per_s``: the same two paths for ``commit_orders / 3`` reserved
  orders (a two-hour window an hour ahead, 20 funded buyers) whose placements also move their
  price from the wallet into escrow. ``--no-commits`` skips these (null).

Prints one JSON line: {"orders", "nodes", "decisions_per_s", "commits_per_s", "quality",
"quality_by_seed", "firm_quality", "spot_quality", "value_ratio", "lp_orders", "lp_nodes"} (and
"per_order_commits_per_s", "commit_ratio", "reserved_commits_per_s",
"reserved_per_order_commits_per_s", "reserved_committed", "commit_orders", "commit_nodes",
"committed").
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_array

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from marketplace.matching import (  # noqa: E402
    Device,
    Market,
    Node,
    Offer,
    Order,
    Requirements,
    RoundResult,
    RunningSpot,
    Slot,
    Term,
    match_round,
)
from marketplace.matching.capacity import TERM_INDEX, CapacityIndex, Stock  # noqa: E402

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
REGIONS = ("cn-north-1", "cn-east-2", "us-west-1", "eu-central-1")


@dataclass(frozen=True, slots=True)
class Model:
    id: int
    kind: str
    memory_mib: int
    price_micros: int  # typical on-demand price per device-hour
    stack: str
    versions: tuple[str, ...]
    weight: float


MODELS = (
    Model(1, "gpu", 81_559, 2_500_000, "cuda", ("12.1", "12.2", "12.4"), 0.22),
    Model(2, "gpu", 81_920, 1_600_000, "cuda", ("11.8", "12.1", "12.2"), 0.18),
    Model(3, "gpu", 46_068, 900_000, "cuda", ("12.2", "12.4"), 0.14),
    Model(4, "gpu", 24_564, 400_000, "cuda", ("12.1", "12.4"), 0.14),
    Model(5, "gpu", 196_608, 2_200_000, "rocm", ("6.0", "6.1"), 0.08),
    Model(6, "npu", 65_536, 1_300_000, "cann", ("7.0", "8.0.RC1", "8.0.RC2"), 0.12),
    Model(7, "mlu", 49_152, 800_000, "neuware", ("3.9", "4.0"), 0.06),
    Model(8, "gaudi", 98_304, 1_100_000, "synapseai", ("1.16", "1.17"), 0.06),
)
MODEL_WEIGHTS = [m.weight for m in MODELS]


def _price(rng: random.Random, base: int, low: float, high: float) -> int:
    # Providers and buyers quote round numbers (whole cents): ties are common, as in real listings.
    return max(10_000, round(base * rng.uniform(low, high) / 10_000) * 10_000)


def generate(order_count: int, node_count: int, seed: int) -> tuple[Market, list[Order], list[RunningSpot]]:
    rng = random.Random(seed)
    nodes, free, running = [], {}, []
    device_id = job_id = 0
    for node_id in range(1, node_count + 1):
        model = rng.choices(MODELS, MODEL_WEIGHTS)[0]
        size = rng.choices((8, 4, 2, 1), (0.6, 0.25, 0.1, 0.05))[0]
        devices = []
        for index in range(size):
            device_id += 1
            devices.append(Device(device_id, index, model.id, model.kind, model.memory_mib))
        on_demand = _price(rng, model.price_micros, 0.9, 1.1)
        region = rng.choice(REGIONS)
        node = Node(
            id=node_id,
            provider_id=1 + node_id % 400,
            region=region,
            cluster=f"{region}-c{rng.randrange(25)}",
            reliability=round(rng.uniform(0.9, 0.999), 3),
            software={model.stack: rng.choice(model.versions), "driver": "550.54"},
            devices=tuple(devices),
            offer=Offer(on_demand, on_demand * 8 // 10, _price(rng, on_demand, 0.45, 0.55)),
        )
        nodes.append(node)
        busy = rng.choice((0, 0, 0, size // 2, size))
        ids = [d.id for d in devices]
        if busy and rng.random() < 0.3:  # some busy devices run spot jobs that may be preempted
            job_id += 1
            started = NOW - timedelta(minutes=rng.uniform(1, 120))
            bid = _price(rng, node.offer.spot_floor_micros, 1.0, 1.5)
            running.append(
                RunningSpot(job_id, 1_000_000 + job_id, bid, started, (Slot(node_id, tuple(ids[:busy])),))
            )
        free[node_id] = frozenset(ids[busy:])
    orders = [_order(rng, order_id) for order_id in range(1, order_count + 1)]
    return Market(tuple(nodes), free, NOW, horizon=timedelta(minutes=5)), orders, running


def _order(rng: random.Random, order_id: int) -> Order:
    model = rng.choices(MODELS, MODEL_WEIGHTS)[0]
    term = rng.choices((Term.RESERVED, Term.ON_DEMAND, Term.SPOT), (0.1, 0.4, 0.5))[0]
    roll = rng.random()
    model_ids = frozenset({model.id}) if roll < 0.85 else frozenset()
    kind = model.kind if roll >= 0.85 else None
    per_node = rng.choices((1, 2, 4, 8), (0.35, 0.25, 0.2, 0.2))[0]
    node_count = rng.choice((2, 3, 4)) if rng.random() < 0.01 else 1
    if node_count > 1:
        per_node = 8
    software = f"{model.stack}>={model.versions[0]}" if rng.random() < 0.2 else ""
    requirements = Requirements(
        model_ids=model_ids,
        kind=kind,
        devices_per_node=per_node,
        node_count=node_count,
        region=rng.choice(REGIONS) if rng.random() < 0.7 else None,
        software=software,
        min_reliability=0.95 if rng.random() < 0.2 else 0.0,
    )
    if term is Term.SPOT:
        limit = _price(rng, model.price_micros // 2, 0.8, 1.6)
    elif term is Term.RESERVED:
        limit = _price(rng, model.price_micros * 8 // 10, 0.95, 1.3)
    else:
        limit = _price(rng, model.price_micros, 0.95, 1.4)
    created = NOW - timedelta(seconds=rng.uniform(0, 7200))
    start = NOW + timedelta(minutes=rng.choice((0, 0, 2, 60))) if term is Term.RESERVED else None
    end = start + timedelta(hours=8) if start is not None else None
    return Order(order_id, term, requirements, limit, created, start, end)


def matched_value(result: RoundResult, orders: list[Order], running: list[RunningSpot]) -> int:
    by_order = {order.id: order for order in orders}
    bids = {job.job_id: job.bid_micros for job in running}
    value = 0
    for placement in result.placements:
        devices = len(placement.device_ids)
        if placement.job_id is not None:
            value += bids[placement.job_id] * devices
        else:
            value += by_order[placement.order_id].limit_micros * devices
    return value


class _Program:
    """A maximisation LP in sparse form: columns with gains, rows ``sum(coeff x) <= rhs``, 0 <= x <= 1.

    Every column also carries a ``firm`` gain (its gain if it belongs to a reserved or on-demand
    order, else 0): ``maximise_tiered`` first maximises the firm gains, then the total under
    "firm gains stay at their maximum".
    """

    def __init__(self) -> None:
        self.gains: list[float] = []
        self.firm: list[float] = []
        self.entries: tuple[list[int], list[int], list[float]] = ([], [], [])
        self.rhs: list[float] = []

    def column(self, gain: int, *, firm: bool = False) -> int:
        self.gains.append(gain * 1e-6)  # micro-units to units keeps HiGHS well conditioned
        self.firm.append(gain * 1e-6 if firm else 0.0)
        return len(self.gains) - 1

    def row(self, coefficients: dict[int, float], rhs: float) -> None:
        for column, value in coefficients.items():
            self.entries[0].append(len(self.rhs))
            self.entries[1].append(column)
            self.entries[2].append(value)
        self.rhs.append(rhs)

    def _solve(self, gains: list[float], extra: tuple[list[float], float] | None = None) -> float:
        rows, cols, vals = (list(part) for part in self.entries)
        rhs = list(self.rhs)
        if extra is not None:
            coefficients, bound = extra
            for column, value in enumerate(coefficients):
                if value:
                    rows.append(len(rhs))
                    cols.append(column)
                    vals.append(value)
            rhs.append(bound)
        if not gains:
            return 0.0
        matrix = coo_array((vals, (rows, cols)), shape=(len(rhs), len(gains))).tocsr()
        solved = linprog(-np.array(gains), A_ub=matrix, b_ub=np.array(rhs), bounds=(0, 1), method="highs")
        if solved.status != 0:
            raise RuntimeError(f"LP failed: {solved.message}")
        return -solved.fun * 1e6

    def maximise(self) -> float:
        return self._solve(self.gains)

    def maximise_tiered(self) -> tuple[float, float]:
        """(maximum firm gains, maximum total gains while the firm gains stay at their maximum)."""
        firm = self._solve(self.firm)
        # A hair of slack (1e-9 relative) so the second stage stays feasible despite rounding.
        floor = firm * 1e-6 * (1 - 1e-9)
        total = self._solve(self.gains, ([-g for g in self.firm], -floor))
        return firm, total


def _eligible(order: Order, market: Market) -> bool:
    """A reserved order whose window has not started by the round's horizon is not placeable."""
    return not (
        order.term is Term.RESERVED
        and order.window_start
        and order.window_start > market.now + market.horizon
    )


def lp_bound(market: Market, orders: list[Order], running: list[RunningSpot]) -> float:
    """The value-only LP relaxation (the pre-2026-12 ``quality``, kept as ``value_ratio``).

    A gang gets one variable per cluster (``z[o, c]``, worth the whole order) with its node-slots
    ``y[o, s] <= z[o, c]`` and ``sum_s y[o, s] >= node_count * z[o, c]``: the one-cluster rule stays
    in the relaxation, which keeps the bound honest for gangs.

    """
    index = CapacityIndex(market, running)
    opening = {stock.index: len(stock.free) + sum(map(len, stock.holders.values())) for stock in index.stocks}
    program = _Program()
    usage: dict[int, dict[int, float]] = {}  # stock -> {column: devices}

    for order in orders:
        if not _eligible(order, market):
            continue
        need = index.need(order)
        per_node = need.devices_per_node
        stocks = [
            c.stock
            for c in index.candidates(need, evictable=lambda _j: True)
            if opening[c.stock.index] >= per_node
        ]
        if need.node_count == 1:
            columns = {program.column(order.limit_micros * per_node): 1.0 for _ in stocks}
            for column, stock in zip(columns, stocks, strict=True):
                usage.setdefault(stock.index, {})[column] = per_node
            program.row(columns, 1)
            continue
        clusters: dict[tuple[object, str], list[int]] = {}
        for stock in stocks:
            clusters.setdefault((stock.pool, stock.node.cluster), []).append(stock.index)
        choices: dict[int, float] = {}
        for members in clusters.values():
            if len(members) < need.node_count:
                continue
            whole = program.column(order.limit_micros * per_node * need.node_count)
            choices[whole] = 1.0
            slots = {}
            for stock_index in members:
                slot = program.column(0)
                slots[slot] = -1.0
                usage.setdefault(stock_index, {})[slot] = per_node
                program.row({slot: 1.0, whole: -1.0}, 0)
            program.row({whole: float(need.node_count), **slots}, 0)
        if choices:
            program.row(choices, 1)
    for job in running:
        stock = index.device_stock[job.slots[0].device_ids[0]]
        devices = sum(len(slot.device_ids) for slot in job.slots)
        usage.setdefault(stock.index, {})[program.column(job.bid_micros * devices)] = devices
    for stock_index, columns in sorted(usage.items()):
        program.row(columns, opening[stock_index])
    return program.maximise()


@dataclass(frozen=True, slots=True)
class Welfare:
    """Gains from trade per device-hour, in micro-units: (buyer's limit or bid - node's ask) x devices."""

    firm: float
    spot: float

    @property
    def total(self) -> float:
        return self.firm + self.spot


def engine_welfare(
    market: Market, orders: list[Order], running: list[RunningSpot], result: RoundResult
) -> Welfare:
    """The round's gains from trade: every placed order and every running spot job it keeps.

    Each node-slot counts at its own node's ask for the order's term (a gang's nodes may ask
    different prices; the rate the gang pays is a transfer between buyer and provider, not a gain).
    """
    asks = {node.id: node.offer for node in market.nodes}
    by_order = {order.id: order for order in orders}
    bids = {job.job_id: job.bid_micros for job in running}
    firm = spot = 0
    for placement in result.placements:
        if placement.job_id is not None:
            value, term = bids[placement.job_id], Term.SPOT
        else:
            order = by_order[placement.order_id]
            value, term = order.limit_micros, order.term
        gain = sum(
            (value - asks[slot.node_id].floor_for(term)) * len(slot.device_ids) for slot in placement.slots
        )
        if term is Term.SPOT:
            spot += gain
        else:
            firm += gain
    return Welfare(firm, spot)


def _welfare_program(
    market: Market,
    orders: list[Order],
    running: list[RunningSpot],
    *,
    capacity: dict[int, int] | None = None,
    spot_only: bool = False,
) -> _Program:
    """The gains-from-trade LP: fractional node-slots ``y[o, s]`` in [0, 1] for every (order, stock)
    pair whose requirements fit and whose ask for the order's term is <= its limit, worth
    ``(limit - ask) x devices``; ``sum_s y[o, s] <= 1`` for a single-node order; a gang chooses one
    cluster ``z[o, c]`` (``sum_c z <= 1``) and takes exactly ``node_count x z`` node-slots of it,
    each ``<= z``; running spot jobs keep their devices with weight ``k[j]`` worth
    ``(bid - floor) x devices``; per stock, devices used <= ``capacity`` (by default its free
    devices plus those of running spot jobs, which firm orders may preempt).
    """
    index = CapacityIndex(market, running)
    opening = capacity or {
        stock.index: len(stock.free) + sum(map(len, stock.holders.values())) for stock in index.stocks
    }
    program = _Program()
    usage: dict[int, dict[int, float]] = {}  # stock -> {column: devices}
    for order in orders:
        if not _eligible(order, market) or (spot_only and order.term is not Term.SPOT):
            continue
        firm = order.term is not Term.SPOT
        need = index.need(order)
        per_node = need.devices_per_node
        stocks = [
            c.stock
            for c in index.candidates(need, evictable=lambda _j: True)
            if opening.get(c.stock.index, 0) >= per_node
        ]

        def gain(stock: Stock, order: Order = order, per_node: int = per_node) -> int:
            return (order.limit_micros - stock.prices[TERM_INDEX[order.term]]) * per_node

        if need.node_count == 1:
            placed_on = {program.column(gain(stock), firm=firm): stock for stock in stocks}
            for column, stock in placed_on.items():
                usage.setdefault(stock.index, {})[column] = per_node
            program.row(dict.fromkeys(placed_on, 1.0), 1)
            continue
        clusters: dict[tuple[object, str], list[Stock]] = {}
        for stock in stocks:
            clusters.setdefault((stock.pool, stock.node.cluster), []).append(stock)
        choices: dict[int, float] = {}
        for members in clusters.values():
            if len({stock.node.id for stock in members}) < need.node_count:
                continue
            whole = program.column(0, firm=firm)
            choices[whole] = 1.0
            slots = {}
            for stock in members:
                slot = program.column(gain(stock), firm=firm)
                slots[slot] = 1.0
                usage.setdefault(stock.index, {})[slot] = per_node
                program.row({slot: 1.0, whole: -1.0}, 0)
            # exactly node_count node-slots of the chosen cluster
            program.row({**slots, whole: -float(need.node_count)}, 0)
            program.row({**{s: -1.0 for s in slots}, whole: float(need.node_count)}, 0)
        if choices:
            program.row(choices, 1)
    for job in running:
        stock = index.device_stock[job.slots[0].device_ids[0]]
        devices = sum(len(slot.device_ids) for slot in job.slots)
        column = program.column((job.bid_micros - stock.prices[TERM_INDEX[Term.SPOT]]) * devices)
        usage.setdefault(stock.index, {})[column] = devices
    for stock_index, used in sorted(usage.items()):
        program.row(used, opening.get(stock_index, 0))
    return program


def welfare_bounds(
    market: Market, orders: list[Order], running: list[RunningSpot], result: RoundResult
) -> tuple[float, float, float]:
    """(maximum firm welfare, maximum total welfare with the firm maximum kept, spot bound on what
    the engine's firm tier leaves)."""
    firm, total = _welfare_program(market, orders, running).maximise_tiered()
    index = CapacityIndex(market, running)
    capacity = {
        stock.index: len(stock.free) + sum(map(len, stock.holders.values())) for stock in index.stocks
    }
    terms = {order.id: order.term for order in orders}
    for placement in result.placements:
        if placement.job_id is None and terms[placement.order_id] is not Term.SPOT:
            for device_id in placement.device_ids:
                capacity[index.device_stock[device_id].index] -= 1
    spot = _welfare_program(market, orders, running, capacity=capacity, spot_only=True).maximise()
    return firm, total, spot


def time_round(
    market: Market, orders: list[Order], running: list[RunningSpot], repeat: int
) -> tuple[float, RoundResult]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = match_round(market=market, orders=orders, running_spot=running)
        times.append(time.perf_counter() - started)
    assert result is not None
    return statistics.median(times), result


def commits_per_s(
    order_count: int, node_count: int, seed: int
) -> tuple[tuple[float, float, int], tuple[float, float, int]]:
    """Allocations committed per second through the real commit path, on a scratch database:
    (on-demand batched, per order, allocations), (reserved batched, per order, allocations)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("SUANLI_ENV", "test")
    os.environ["DATABASE_TEST_NAME"] = "suanli_bench_matching"
    import django

    django.setup()
    from django.db import connection

    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    try:
        on_demand = _commit_run(order_count, node_count, seed)
        return on_demand, _reserved_run(order_count // 3, seed)
    finally:
        connection.close()
        connection.creation.destroy_test_db(old_name, verbosity=0)


def _commit_run(order_count: int, node_count: int, seed: int) -> tuple[float, float, int]:
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from marketplace.models import Offer
    from marketplace.models import Order as OrderRow
    from marketplace.services import matching as db
    from providers.models import AcceleratorModel, Device, NodeStatus, Provider
    from providers.models import Node as NodeRow

    rng = random.Random(seed)
    accelerator = AcceleratorModel.objects.order_by("pk").first()
    assert accelerator is not None, "the catalog migration seeds the accelerator models"
    provider = Provider.objects.create(name="bench", slug="bench")
    now = timezone.now()
    nodes = NodeRow.objects.bulk_create(
        NodeRow(
            provider=provider, name=f"n{i}", region=rng.choice(REGIONS), cluster=f"c{i % 25}",
            status=NodeStatus.ONLINE, last_heartbeat_at=now,
            software={"cuda": "12.4", "runtimes": "docker,process"},
        )
        for i in range(node_count)
    )  # fmt: skip
    Device.objects.bulk_create(
        Device(node=node, accelerator=accelerator, index=i, uuid=f"GPU-{node.pk}-{i}", memory_mib=81_559)
        for node in nodes
        for i in range(8)
    )
    Offer.objects.bulk_create(
        Offer(
            node=node, accelerator=accelerator, device_count=8, region=node.region, listed=True,
            on_demand_price_micros=(price := _price(rng, 2_500_000, 0.9, 1.1)),
            reserved_price_micros=price * 8 // 10, spot_floor_micros=price // 2,
        )
        for node in nodes
    )  # fmt: skip
    buyer = get_user_model().objects.create_user("bench-buyer")
    orders = OrderRow.objects.bulk_create(
        OrderRow(
            buyer=buyer, term="on_demand", devices_per_node=rng.choices((1, 2, 4, 8), (0.35, 0.25, 0.2, 0.2))[0],
            price_limit_micros=3_000_000, image="bench", idempotency_key=f"o{i}",
        )
        for i in range(order_count)
    )  # fmt: skip
    loaded = db.market_load()
    free = loaded.free_during(now, now + db.RESERVATION_GUARD, None)
    market = Market(nodes=tuple(loaded.nodes[n] for n in sorted(free)), free=free, now=now)
    rows = {order.pk: order for order in OrderRow.objects.filter(pk__in=[o.pk for o in orders])}
    batched, per_order, expected = _commit_both_ways(rows, market, loaded, now)
    _undo(rows)
    return batched, per_order, expected


def _commit_both_ways(
    rows: Mapping[int, Any], market: Market, loaded: Any, now: Any
) -> tuple[float, float, int]:
    """Decide ``rows`` in one round, then commit its placements one transaction per order (the
    baseline, undone after) and in the rounds' chunks of COMMIT_CHUNK orders: slots/s of each."""
    from marketplace.services import matching as db

    result = match_round(market=market, orders=[db.domain_order(order) for order in rows.values()])
    items = [(rows[placement.order_id], placement) for placement in result.placements]
    expected = sum(len(p.slots) for p in result.placements)

    started = time.perf_counter()
    for order, placement in items:
        assert db.placement_commit(order=order, placement=placement, loaded=loaded, now=now)
    per_order = expected / (time.perf_counter() - started)
    _undo(rows)

    started = time.perf_counter()
    placed, conflicts = db.placements_commit(items=items, loaded=loaded, now=now)
    batched = expected / (time.perf_counter() - started)
    assert not conflicts and len(placed) == len(items), "every in-memory placement commits"
    return batched, per_order, expected


def _reserved_run(order_count: int, seed: int) -> tuple[float, float, int]:
    """Reserved placements (each moves its price into escrow) on the same nodes: batched / per order."""
    from django.contrib.auth import get_user_model
    from django.db import transaction
    from django.utils import timezone

    from billing.models import AccountKind, TransactionKind
    from billing.services import Posting, account_get, accounts_lock, buyer_accounts, posting_write
    from marketplace.models import Order as OrderRow
    from marketplace.services import matching as db

    rng = random.Random(seed + 1)
    buyers = []
    clearing = account_get(kind=AccountKind.STRIPE_CLEARING)
    for i in range(20):
        buyer = get_user_model().objects.create_user(f"bench-reserver-{i}")
        wallet = buyer_accounts(user_id=buyer.pk).wallet
        with transaction.atomic():
            accounts_lock(sorted([wallet.pk, clearing.pk]))
            posting = Posting(TransactionKind.TOP_UP, f"bench-fund:{buyer.pk}", wallet.currency)
            posting.add(clearing.pk, -(10**12))
            posting.add(wallet.pk, 10**12)
            posting_write(posting)
        buyers.append(buyer)
    now = timezone.now()
    start = (now + timedelta(hours=1)).replace(microsecond=0)
    orders = OrderRow.objects.bulk_create(
        OrderRow(
            buyer=rng.choice(buyers), term="reserved",
            devices_per_node=rng.choices((1, 2, 4, 8), (0.35, 0.25, 0.2, 0.2))[0],
            price_limit_micros=3_000_000, image="bench", idempotency_key=f"r{i}",
            window_start=start, window_end=start + timedelta(hours=2),
        )
        for i in range(order_count)
    )  # fmt: skip
    loaded = db.market_load()
    free = loaded.free_during(start, start + timedelta(hours=2), None)
    market = Market(
        nodes=tuple(loaded.nodes[n] for n in sorted(free)),
        free=free,
        now=now,
        horizon=start - now + timedelta(seconds=1),
    )
    rows = {order.pk: order for order in OrderRow.objects.filter(pk__in=[o.pk for o in orders])}
    return _commit_both_ways(rows, market, loaded, now)


def _undo(rows: Mapping[int, Any]) -> None:
    """Remove what a commit run wrote and reopen the orders, for the next run."""
    from marketplace.models import Allocation, AllocationSlot, Job, Order

    Job.objects.all().delete()
    AllocationSlot.objects.all().delete()
    Allocation.objects.all().delete()
    Order.objects.filter(pk__in=list(rows)).update(status="open", matched_at=None)
    for order in rows.values():
        order.status = "open"


QUALITY_SEEDS = (20250602, 7, 42)


def quality_at(seed: int, order_count: int, node_count: int) -> dict[str, float]:
    """Allocative efficiency of one round on one seeded market (see the module docstring)."""
    market, orders, running = generate(order_count, node_count, seed)
    result = match_round(market=market, orders=orders, running_spot=running)
    welfare = engine_welfare(market, orders, running, result)
    firm_bound, total_bound, spot_bound = welfare_bounds(market, orders, running, result)
    return {
        "quality": welfare.total / total_bound,
        "firm_quality": welfare.firm / firm_bound if firm_bound else 1.0,
        "spot_quality": welfare.spot / spot_bound if spot_bound else 1.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=5_000)
    parser.add_argument("--lp-orders", type=int, default=2_000)
    parser.add_argument("--lp-nodes", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=20250601)
    parser.add_argument(
        "--quality-seeds",
        type=int,
        nargs="+",
        default=list(QUALITY_SEEDS),
        help="markets quality is measured on",
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--commit-orders", type=int, default=3_000)
    parser.add_argument("--commit-nodes", type=int, default=1_000)
    parser.add_argument("--no-commits", action="store_true", help="skip the PostgreSQL commit measurement")
    parser.add_argument("--no-decisions", action="store_true", help="skip the decisions/s measurement")
    args = parser.parse_args()

    market, orders, running = generate(args.orders, args.nodes, args.seed)
    seconds = None if args.no_decisions else time_round(market, orders, running, args.repeat)[0]

    by_seed = {seed: quality_at(seed, args.lp_orders, args.lp_nodes) for seed in args.quality_seeds}
    worst = min(by_seed, key=lambda seed: by_seed[seed]["quality"])
    # The pre-2026-12 figure (matched value over a value-only LP), on the first seed.
    lp_market, lp_orders, lp_running = generate(args.lp_orders, args.lp_nodes, args.quality_seeds[0])
    lp_result = match_round(market=lp_market, orders=lp_orders, running_spot=lp_running)
    value_ratio = matched_value(lp_result, lp_orders, lp_running) / lp_bound(lp_market, lp_orders, lp_running)

    (commits, per_order, committed), (reserved, reserved_per_order, reserved_committed) = (
        ((None, None, 0), (None, None, 0))
        if args.no_commits
        else commits_per_s(args.commit_orders, args.commit_nodes, args.seed)
    )
    line = {
        "orders": len(orders),
        "nodes": len(market.nodes),
        "decisions_per_s": None if seconds is None else round(len(orders) / seconds),
        "commits_per_s": None if commits is None else round(commits, 1),
        "per_order_commits_per_s": None if per_order is None else round(per_order, 1),
        "commit_ratio": None if commits is None or not per_order else round(commits / per_order, 2),
        "reserved_commits_per_s": None if reserved is None else round(reserved, 1),
        "reserved_per_order_commits_per_s": None
        if reserved_per_order is None
        else round(reserved_per_order, 1),
        "reserved_committed": reserved_committed,
        "quality": round(by_seed[worst]["quality"], 4),
        "quality_by_seed": {str(seed): round(q["quality"], 4) for seed, q in by_seed.items()},
        "firm_quality": round(by_seed[worst]["firm_quality"], 4),
        "spot_quality": round(by_seed[worst]["spot_quality"], 4),
        "value_ratio": round(value_ratio, 4),
        "lp_orders": args.lp_orders,
        "lp_nodes": args.lp_nodes,
        "commit_orders": args.commit_orders,
        "commit_nodes": args.commit_nodes,
        "committed": committed,
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
