"""The matching round on PostgreSQL: load the market, decide in memory, commit the decisions.

``matching_run`` (every 5 s and after every new order) places reserved and on-demand orders and
preempts spot jobs that stand in their way; ``spot_round`` (every 30 s) clears every spot pool at
one price, places winning bids, re-rates running spot leases and preempts the outbid. Both hold a
PostgreSQL advisory lock, so one round runs at a time across all workers.

Firm orders (reserved and on-demand) are taken by price-time priority (``engine.firm_priority``:
the highest limit, raised by ``SUANLI_FIRM_AGE_BOOST_BPS_PER_HOUR`` per hour waited, then the
oldest). In that order, each run of consecutive reserved orders is decided one order at a time
(each against the devices free over its own window) and each run of on-demand orders by one
in-memory round; every spot bid is decided by one round. Commits keep every order all or nothing
with the slot exclusion constraint as the last guard: placements are written ``COMMIT_CHUNK``
orders per transaction (those that preempt spot jobs shrink the jobs' slots in the same
transaction; reserved ones move their price to escrow in it), and a chunk that meets any conflict
or refusal is rolled back and retried one transaction per order, so a conflict costs that order
alone (the next round retries it).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import groupby

import psycopg2.errors
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, OperationalError, connection, transaction
from django.utils import timezone
from psycopg2.extras import NumericRange

from billing.services import hold_release, reservation_book
from core.errors import InvalidTransition, SuanliError
from marketplace.matching import market as mk
from marketplace.matching.engine import explain, firm_priority, match_round
from marketplace.models import (
    JOB_LIVE,
    ORDER_TRANSITIONS,
    SPAN_DEVICE_STRIDE,
    Allocation,
    AllocationSlot,
    Job,
    JobStatus,
    Offer,
    Order,
    OrderStatus,
    SpotPrice,
    StopReason,
    Term,
)
from marketplace.services.jobs import job_stop_request, preemption_notice
from marketplace.services.orders import order_transition
from marketplace.services.work import node_nudge
from providers.models import Device, DeviceHealth, Node, NodeStatus

log = logging.getLogger(__name__)

MATCHING_LOCK = 0x5A4E_0001
SPOT_LOCK = 0x5A4E_0002
# A device is free for new on-demand or spot work only if nothing is booked on it this soon
# (spot may use reserved devices until 2 minutes before their start).
RESERVATION_GUARD = timedelta(minutes=2)
# Reserved orders are booked against their whole window as soon as they are placed.
RESERVED_HORIZON = timedelta(days=366)
# Placements that preempt nobody commit this many orders per transaction (see _commit_many).
COMMIT_CHUNK = 100


@contextmanager
def advisory_lock(key: int) -> Iterator[bool]:
    """Session-level PostgreSQL advisory lock; yields whether this process got it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        got = bool(cursor.fetchone()[0])
    try:
        yield got
    finally:
        if got:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [key])


def epoch(moment: datetime) -> int:
    return int(moment.timestamp())


# A span's upper bound (relative to its device's base) for "until released": on-demand and spot
# slots with no reservation after them. Not a time: 2^40 s is some 35,000 years away.
OPEN_END = SPAN_DEVICE_STRIDE - 1


def span_for(device_id: int, start: datetime, end: datetime | None) -> NumericRange:
    base = device_id * SPAN_DEVICE_STRIDE
    upper = base + (epoch(end) if end is not None else OPEN_END)
    return NumericRange(base + epoch(start), upper, "[)")


@dataclass
class LoadedMarket:
    nodes: dict[int, mk.Node]
    runtimes: dict[int, set[str]]
    device_node: dict[int, int]
    device_index: dict[int, int]
    # (device id) -> [(start epoch, end epoch)] of live slots, for freedom checks over any window.
    booked: dict[int, list[tuple[int, int]]] = field(default_factory=dict)

    def free_during(
        self, start: datetime, end: datetime | None, runtime: str | None
    ) -> dict[int, frozenset[int]]:
        """Devices with no live slot in ``[start, end)`` per node (offering ``runtime``, if given)."""
        lo = epoch(start)
        hi = epoch(end) if end is not None else OPEN_END
        free: dict[int, set[int]] = defaultdict(set)
        for node in self.nodes.values():
            if runtime is not None and runtime not in self.runtimes[node.id]:
                continue
            free[node.id] = set()  # a full node still matters: its spot jobs may be preempted
            for device in node.devices:
                if all(b_hi <= lo or b_lo >= hi for b_lo, b_hi in self.booked.get(device.id, ())):
                    free[node.id].add(device.id)
        return {node_id: frozenset(ids) for node_id, ids in free.items()}

    def next_booking_after(self, device_id: int, moment: datetime) -> datetime | None:
        """When the next booking of the device begins after ``moment`` (whole seconds, like spans).

        A booking that began at or before ``moment`` is the device's current one: free devices
        have none, and a preempted job's is cut short to ``moment``.
        """
        starts = [b_lo for b_lo, _ in self.booked.get(device_id, ()) if b_lo > epoch(moment)]
        return datetime.fromtimestamp(min(starts), UTC) if starts else None


def market_load() -> LoadedMarket:
    """Listed offers on online nodes, their healthy devices, and every live slot."""
    offers = (
        Offer.objects.filter(listed=True, node__status=NodeStatus.ONLINE)
        .select_related("node", "accelerator")
        .order_by("node_id")
    )
    nodes: dict[int, mk.Node] = {}
    runtimes: dict[int, set[str]] = {}
    device_node: dict[int, int] = {}
    device_index: dict[int, int] = {}
    by_node: dict[int, list[mk.Device]] = defaultdict(list)
    offer_by_node = {offer.node_id: offer for offer in offers}
    devices = (
        Device.objects.filter(node_id__in=list(offer_by_node), health=DeviceHealth.OK)
        .select_related("accelerator")
        .order_by("node_id", "index")
    )
    for device in devices:
        by_node[device.node_id].append(
            mk.Device(device.pk, device.index, device.accelerator_id, device.accelerator.kind,
                      int(device.memory_mib or device.accelerator.memory_gib * 1024))
        )  # fmt: skip
        device_node[device.pk] = device.node_id
        device_index[device.pk] = device.index
    for node_id, offer in offer_by_node.items():
        node = offer.node
        software = {str(k): str(v) for k, v in (node.software or {}).items()}
        runtimes[node_id] = set(software.get("runtimes", "docker").split(","))
        nodes[node_id] = mk.Node(
            id=node_id,
            provider_id=node.provider_id,
            region=node.region,
            cluster=node.cluster or f"node-{node_id}",
            reliability=float(offer.reliability),
            software=software,
            devices=tuple(by_node.get(node_id, ())),
            offer=mk.Offer(
                offer.on_demand_price_micros,
                offer.reserved_price_micros,
                offer.spot_floor_micros,
                min_rental=timedelta(minutes=offer.min_rental_minutes),
                max_rental=timedelta(hours=offer.max_rental_hours),
            ),
            runtimes=frozenset(runtimes[node_id]),
            verified=node.verified_at is not None,
        )
    booked: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for device_id, span in AllocationSlot.objects.filter(live=True).values_list("device_id", "span"):
        if span.isempty:
            continue  # books nothing (and _commit never writes one)
        base = device_id * SPAN_DEVICE_STRIDE
        booked[device_id].append((span.lower - base, span.upper - base))
    return LoadedMarket(nodes, runtimes, device_node, device_index, dict(booked))


def domain_order(order: Order) -> mk.Order:
    return mk.Order(
        id=order.pk,
        term=mk.Term(order.term),
        requirements=mk.Requirements(
            model_ids=frozenset(order.accelerator_ids),
            kind=order.kind or None,
            min_memory_mib=order.min_memory_mib,
            devices_per_node=order.devices_per_node,
            node_count=order.node_count,
            region=order.region or None,
            software=order.software_spec,
            min_reliability=float(order.min_reliability),
            runtime=order.runtime,
            # Callers load orders with select_related("offer"): no query per order.
            node_ids=frozenset({order.offer.node_id}) if order.offer is not None else frozenset(),
        ),
        limit_micros=order.price_limit_micros,
        created_at=order.created_at,
        window_start=order.window_start,
        window_end=order.window_end,
    )


def running_spot_load() -> list[mk.RunningSpot]:
    jobs = (
        Job.objects.filter(status__in=JOB_LIVE, order__term=Term.SPOT, stop_requested_at__isnull=True)
        .select_related("order", "allocation")
        .prefetch_related("allocation__slots")
        .order_by("pk")
    )
    running = []
    for job in jobs:
        if job.allocation is None or job.order is None or job.order_id is None:
            continue
        device_ids = tuple(sorted(slot.device_id for slot in job.allocation.slots.all() if slot.live))
        running.append(
            mk.RunningSpot(
                job_id=job.pk,
                order_id=job.order_id,
                bid_micros=job.order.price_limit_micros,
                started_at=job.started_at or job.assigned_at or job.created_at,
                slots=(mk.Slot(job.node_id, device_ids),),
            )
        )
    return running


@dataclass
class RoundReport:
    placed: list[int] = field(default_factory=list)
    conflicts: list[int] = field(default_factory=list)
    preempted: list[int] = field(default_factory=list)
    unplaced: dict[int, tuple[mk.Reason, ...]] = field(default_factory=dict)
    skipped: bool = False


def _policy() -> mk.RoundPolicy:
    # The engine dates preemption deadlines (and so the preempting allocation's start) with the
    # same notice job_stop_request gives the agent.
    return mk.RoundPolicy(
        preempt_notice=preemption_notice(),
        firm_age_boost_bps_per_hour=settings.SUANLI_FIRM_AGE_BOOST_BPS_PER_HOUR,
    )


def _restrict(loaded: LoadedMarket, free: dict[int, frozenset[int]], now: datetime) -> mk.Market:
    return mk.Market(
        nodes=tuple(loaded.nodes[n] for n in sorted(free) if n in loaded.nodes), free=free, now=now
    )


def matching_run(*, now: datetime | None = None) -> RoundReport:
    """Place open reserved and on-demand orders (see module docstring). Safe to run twice."""
    report = RoundReport()
    with advisory_lock(MATCHING_LOCK) as got:
        if not got:
            report.skipped = True
            return report
        now = now or timezone.now()
        orders = list(
            Order.objects.filter(status=OrderStatus.OPEN, term__in=[Term.ON_DEMAND, Term.RESERVED])
            .select_related("offer")
            .order_by("pk")
        )
        if not orders:
            return report
        loaded = market_load()
        running_spot = running_spot_load()
        policy = _policy()
        # Price-time priority over both firm terms (engine.firm_priority); the runs of consecutive
        # orders of one term are decided and committed in turn, so a run sees what every order
        # ranked above it took.
        ranked = sorted(orders, key=lambda o: firm_priority(domain_order(o), now, policy))
        taken: set[int] = set()  # devices committed by this run
        evicted: set[int] = set()  # spot jobs this run stopped
        for term, run in groupby(ranked, key=lambda o: o.term):
            if term == Term.RESERVED:
                taken |= _reserved_run(list(run), loaded, taken, now, report)
                continue
            # On-demand orders all want devices from now on: one in-memory round decides them.
            on_demand = list(run)
            free = loaded.free_during(now, now + RESERVATION_GUARD, None)
            spot = [job for job in running_spot if job.job_id not in evicted]
            result = _decide(loaded, free, taken, now, on_demand, spot, horizon=timedelta(0))
            report.unplaced.update(result.unplaced)
            placed = _commit_round(result, {o.pk: o for o in on_demand}, loaded, now, report)
            evicted |= {p.job_id for p in result.preempt}
            taken |= {d for p in result.placements if p.order_id in placed for d in p.device_ids}
    return report


def _reserved_run(
    orders: Sequence[Order], loaded: LoadedMarket, taken: set[int], now: datetime, report: RoundReport
) -> set[int]:
    """Decide reserved orders one at a time (each sees the devices free over its own window), then
    commit them together; returns the devices of those committed."""
    decided: list[tuple[Order, mk.Placement]] = []
    pending: set[int] = set()
    for order in orders:
        assert order.window_start is not None and order.window_end is not None
        horizon = max(order.window_start - now, timedelta(0)) + timedelta(seconds=1)
        free = loaded.free_during(max(order.window_start, now), order.window_end, order.runtime)
        result = _decide(loaded, free, taken | pending, now, [order], (), horizon=horizon)
        if not result.placements:
            report.unplaced[order.pk] = result.unplaced.get(order.pk, ())
            continue
        decided.append((order, result.placements[0]))
        pending.update(result.placements[0].device_ids)
    placed, conflicts, _ = _commit_many(decided, loaded, now, {})
    report.placed = sorted([*report.placed, *placed])
    report.conflicts += conflicts
    done = set(placed)
    return {d for order, placement in decided if order.pk in done for d in placement.device_ids}


def _decide(
    loaded: LoadedMarket,
    free: dict[int, frozenset[int]],
    taken: set[int],
    now: datetime,
    orders: Sequence[Order],
    running_spot: Sequence[mk.RunningSpot],
    *,
    horizon: timedelta,
) -> mk.RoundResult:
    """The in-memory round over ``free`` minus the devices this run already committed."""
    free = {node_id: ids - taken for node_id, ids in free.items()}
    market = mk.Market(
        nodes=tuple(loaded.nodes[n] for n in sorted(free)), free=free, now=now, horizon=horizon
    )
    return match_round(
        market=market,
        orders=[domain_order(order) for order in orders],
        running_spot=running_spot,
        policy=_policy(),
    )


def _commit_round(
    result: mk.RoundResult,
    orders: dict[int, Order],
    loaded: LoadedMarket,
    now: datetime,
    report: RoundReport,
) -> set[int]:
    """Commit a round's new placements in chunks (``_commit_many``); the ids of those committed.

    Spot jobs the round evicted but no committed placement took over are stopped all the same
    (their notice is already part of the round's decision).
    """
    preempt = {p.job_id: p for p in result.preempt}
    items: list[tuple[Order, mk.Placement]] = []
    own: dict[int, dict[int, mk.Preemption]] = {}
    for placement in result.placements:
        order = orders.get(placement.order_id)
        if placement.job_id is not None or order is None:
            continue
        own[order.pk] = {job_id: preempt.pop(job_id) for job_id in placement.preempts if job_id in preempt}
        items.append((order, placement))
    placed, conflicts, preempted = _commit_many(items, loaded, now, own)
    report.placed = sorted([*report.placed, *placed])
    report.conflicts += conflicts
    report.preempted += preempted
    report.preempted += _stop_preempted(preempt)
    return set(placed)


def _stop_preempted(notices: dict[int, mk.Preemption]) -> list[int]:
    """Stop the round's preempted spot jobs with notice (those not ended since); their ids."""
    stopped = []
    for job_id, job in sorted(Job.objects.in_bulk(list(notices)).items()):
        if job.ended:
            continue
        Job.objects.filter(pk=job_id).update(preemption_reason=notices[job_id].reason.value)
        job_stop_request(job=job, reason=StopReason.PREEMPTION, notice=preemption_notice())
        stopped.append(job_id)
    return stopped


def placement_commit(
    *,
    order: Order,
    placement: mk.Placement,
    loaded: LoadedMarket,
    now: datetime,
    preempt: dict[int, mk.Preemption] | None = None,
) -> bool:
    """Commit one engine placement of ``order`` in its own transaction.

    Contract: True when the allocation(s), slots and job(s) are written and the order is
    ``allocated``; False, with nothing written, on a slot conflict, a refusal from billing or
    an order no longer open. ``preempt`` are the spot jobs the placement evicts (stopped with
    notice after commit).
    """
    return _commit(order, placement, loaded, now, preempt or {})


def placements_commit(
    *,
    items: Sequence[tuple[Order, mk.Placement]],
    loaded: LoadedMarket,
    now: datetime,
    preempts: Mapping[int, dict[int, mk.Preemption]] | None = None,
) -> tuple[list[int], list[int]]:
    """Commit a round's placements (what the rounds do): (placed, conflicts) order ids.

    ``COMMIT_CHUNK`` orders per transaction, each order all or nothing; see ``_commit_many``.
    ``preempts`` maps an order id to the spot jobs its placement evicts (stopped with notice after
    its chunk commits); reserved placements book their escrow inside their chunk.
    """
    placed, conflicts, _ = _commit_many(items, loaded, now, preempts or {})
    return placed, conflicts


class _NoSlot(Exception):
    """A placement whose slot would be empty: rolled back like a conflict."""


def _starts_at(order: Order, now: datetime, preempt: Mapping[int, mk.Preemption]) -> datetime:
    """When a placement's slots begin: its window (reserved), else now; after any preemption notice."""
    starts_at = max(order.window_start or now, now)
    if preempt:
        # The preempted jobs keep their devices for the notice; the new slots start after it.
        starts_at = max(starts_at, max(p.deadline for p in preempt.values()))
    return starts_at


def _commit(
    order: Order,
    placement: mk.Placement,
    loaded: LoadedMarket,
    now: datetime,
    preempt: dict[int, mk.Preemption],
) -> bool:
    """Commit one placement in one transaction; False (and nothing written) on any conflict."""
    starts_at = _starts_at(order, now, preempt)
    try:
        rows = _rows(order, placement, loaded, now, starts_at)
        with transaction.atomic():
            locked = (
                Order.objects.select_for_update(no_key=True)
                .filter(pk=order.pk, status=OrderStatus.OPEN)
                .first()
            )
            if locked is None:
                return False
            _lock_nodes(rows.node_ids)
            if preempt:
                _shrink_slots(list(preempt), until=starts_at)
            rows.order = locked
            _write([rows])
            if locked.term == Term.RESERVED:
                _book_reservation(locked, placement, rows.jobs)
            order_transition(
                order=locked, to=OrderStatus.ALLOCATED, matched_at=now, status_reason="", status_params={}
            )
            node_nudge(node_ids=rows.node_ids)
    except IntegrityError as exc:
        log.warning("matching.conflict order_id=%s error=%s", order.pk, exc)
        return False
    except OperationalError as exc:
        if not _retryable(exc):
            raise
        # PostgreSQL chose this commit as a deadlock's (or serialisation failure's) victim: rolled
        # back whole, like any conflict, and retried next round.
        log.warning("matching.deadlock order_id=%s error=%s", order.pk, exc)
        return False
    except _NoSlot as exc:
        log.warning("matching.no_slot order_id=%s error=%s", order.pk, exc)
        return False
    except SuanliError as exc:
        # A refusal from billing (a reserved window with under a minute left, a wallet that no
        # longer covers the booking) rolls back this order alone: one order must never stop the
        # round for every order after it.
        log.warning("matching.refused order_id=%s error=%s", order.pk, exc)
        return False
    _stop_preempted(preempt)
    log.info(
        "order.matched order_id=%s nodes=%s price=%s", order.pk, rows.node_ids, placement.unit_price_micros
    )
    return True


def _commit_many(
    items: Sequence[tuple[Order, mk.Placement]],
    loaded: LoadedMarket,
    now: datetime,
    preempts: Mapping[int, dict[int, mk.Preemption]],
) -> tuple[list[int], list[int], list[int]]:
    """Commit placements ``COMMIT_CHUNK`` orders per transaction: (placed, conflicts, preempted).

    Each order is still all or nothing: a chunk that meets any conflict (a slot the exclusion
    constraint refuses, a node or order that changed under it, a refusal from billing when a
    reserved booking moves to escrow, a deadlock) is rolled back whole and its orders are committed
    again one transaction each, so a conflict costs that one order alone. Placements that preempt
    spot jobs (``preempts[order id]``) shrink those jobs' slots in the chunk and stop them with
    notice once it has committed.
    """
    placed: list[int] = []
    conflicts: list[int] = []
    preempted: list[int] = []
    ready: list[_Rows] = []
    for order, placement in items:
        own = preempts.get(order.pk) or {}
        try:
            ready.append(_rows(order, placement, loaded, now, _starts_at(order, now, own), preempt=own))
        except _NoSlot as exc:
            log.warning("matching.no_slot order_id=%s error=%s", order.pk, exc)
            conflicts.append(order.pk)
    for start in range(0, len(ready), COMMIT_CHUNK):
        chunk = ready[start : start + COMMIT_CHUNK]
        try:
            done, gone = _commit_chunk(chunk, loaded, now)
        except (IntegrityError, OperationalError, SuanliError, _Changed) as exc:
            if isinstance(exc, OperationalError) and not _retryable(exc):
                raise
            log.warning("matching.chunk_conflict orders=%s error=%s", len(chunk), exc)
            for rows in chunk:
                ok = _commit(rows.order, rows.placement, loaded, now, rows.preempt)
                (placed if ok else conflicts).append(rows.order.pk)
                if ok:
                    preempted += list(rows.preempt)
            continue
        placed += done
        conflicts += gone
        stopping = {
            job_id: p for rows in chunk if rows.order.pk in done for job_id, p in rows.preempt.items()
        }
        if stopping:
            preempted += _stop_preempted(stopping)
    return placed, conflicts, preempted


def _retryable(exc: OperationalError) -> bool:
    """A deadlock or serialisation failure: the transaction was rolled back and may run again."""
    return isinstance(exc.__cause__, (psycopg2.errors.DeadlockDetected, psycopg2.errors.SerializationFailure))


class _Changed(Exception):
    """An order of a chunk changed between the lock and the update: retry the chunk per order."""


def _commit_chunk(chunk: Sequence[_Rows], loaded: LoadedMarket, now: datetime) -> tuple[list[int], list[int]]:
    """One transaction for a chunk of placements (see ``_commit_many``)."""
    with transaction.atomic():
        ids = sorted(rows.order.pk for rows in chunk)
        still_open = set(
            Order.objects.select_for_update(no_key=True)
            .filter(pk__in=ids, status=OrderStatus.OPEN)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        live = [rows for rows in chunk if rows.order.pk in still_open]
        node_ids = sorted({node_id for rows in live for node_id in rows.node_ids})
        _lock_nodes(node_ids)
        # Preempted jobs keep their devices until their notice ends: cut their slots there first.
        until: dict[datetime, list[int]] = defaultdict(list)
        for rows in live:
            if rows.preempt:
                until[rows.starts_at] += list(rows.preempt)
        for moment, job_ids in sorted(until.items()):
            _shrink_slots(sorted(job_ids), until=moment)
        _write(live)
        # Escrow bookings lock the buyers' accounts: in buyer order, like every other booking.
        reserved = sorted(
            (rows for rows in live if rows.order.term == Term.RESERVED),
            key=lambda r: (r.order.buyer_id, r.order.pk),
        )
        buyers = get_user_model().objects.in_bulk(sorted({rows.order.buyer_id for rows in reserved}))
        for rows in reserved:
            rows.order.buyer = buyers[rows.order.buyer_id]  # one query for the chunk, not one each
            provider_of = {n: loaded.nodes[n].provider_id for n in rows.node_ids}
            _book_reservation(rows.order, rows.placement, rows.jobs, provider_of)
        assert OrderStatus.ALLOCATED in ORDER_TRANSITIONS[OrderStatus.OPEN]
        moved = Order.objects.filter(pk__in=sorted(still_open), status=OrderStatus.OPEN).update(
            status=OrderStatus.ALLOCATED, matched_at=now, status_reason="", status_params={}, updated_at=now
        )
        if moved != len(still_open):
            raise _Changed(f"{len(still_open) - moved} order(s) moved since they were locked")
        node_nudge(node_ids=node_ids)
    for rows in live:
        rows.order.status = OrderStatus.ALLOCATED
        log.info("order.matched order_id=%s nodes=%s", rows.order.pk, rows.node_ids)
    return [rows.order.pk for rows in live], sorted(set(ids) - still_open)


@dataclass
class _Rows:
    """The rows one placement writes: an allocation, its slots and a job per node."""

    order: Order
    node_ids: list[int]
    allocations: list[Allocation]
    slots: list[AllocationSlot]
    jobs: list[Job]
    placement: mk.Placement
    starts_at: datetime
    preempt: dict[int, mk.Preemption] = field(default_factory=dict)


def _rows(
    order: Order,
    placement: mk.Placement,
    loaded: LoadedMarket,
    now: datetime,
    starts_at: datetime,
    *,
    preempt: dict[int, mk.Preemption] | None = None,
) -> _Rows:
    """Build (not save) a placement's rows; ``_NoSlot`` if a device is booked before it begins.

    A reserved allocation ends with its window. An on-demand or spot one ends at the offer's
    maximum rental length after it starts (the shortest of a gang's nodes), and is stopped with
    notice then (``provisioning.jobs_stop_at_allocation_end``); its slots end sooner if a booking
    on their devices begins first.
    """
    ends_at = order.window_end
    if ends_at is None:
        longest = [
            max_rental
            for slot in placement.slots
            if (max_rental := loaded.nodes[slot.node_id].offer.max_rental) is not None
        ]
        # Whole seconds, like the slots' spans, so the job is killed when its slots end.
        ends_at = (starts_at + min(longest)).replace(microsecond=0) if longest else None
    # Jobs start when their devices are theirs: reserved at the window, after a preemption
    # notice, else now.
    deferred = starts_at > now
    rows = _Rows(
        order,
        sorted(slot.node_id for slot in placement.slots),
        [],
        [],
        [],
        placement,
        starts_at,
        dict(preempt or {}),
    )
    for slot in placement.slots:
        allocation = Allocation(
            order=order,
            node_id=slot.node_id,
            term=order.term,
            unit_price_micros=placement.unit_price_micros,
            starts_at=starts_at,
            ends_at=ends_at,
        )
        rows.allocations.append(allocation)
        for device_id in slot.device_ids:
            end = order.window_end or min(
                (at for at in (ends_at, loaded.next_booking_after(device_id, starts_at)) if at is not None),
                default=None,
            )
            if end is not None and epoch(end) <= epoch(starts_at):
                # Booked again before this slot could begin (spans are whole seconds): nothing
                # to allocate; the next round decides afresh.
                raise _NoSlot(f"device {device_id} is booked from {end.isoformat()}")
            rows.slots.append(
                AllocationSlot(
                    allocation=allocation, device_id=device_id, span=span_for(device_id, starts_at, end)
                )
            )
        rows.jobs.append(
            Job(
                node_id=slot.node_id,
                order=order,
                allocation=allocation,
                buyer_id=order.buyer_id,
                device_indexes=sorted(loaded.device_index[d] for d in slot.device_ids),
                runtime=order.runtime,
                image=order.image,
                command=order.command,
                env=order.env,
                ports=order.ports,
                status=JobStatus.QUEUED if deferred else JobStatus.ASSIGNED,
                assigned_at=None if deferred else now,
            )
        )
    return rows


def _write(batch: Sequence[_Rows]) -> None:
    """Insert the allocations, then their slots (under the exclusion constraint), then the jobs."""
    for rows in batch:
        for allocation in rows.allocations:
            allocation.order = rows.order
        for job in rows.jobs:
            job.order = rows.order
    Allocation.objects.bulk_create([a for rows in batch for a in rows.allocations])
    # Slots and jobs were built with their then-unsaved allocation; bulk_create takes its new id.
    AllocationSlot.objects.bulk_create([slot for rows in batch for slot in rows.slots])
    Job.objects.bulk_create([job for rows in batch for job in rows.jobs])


def _lock_nodes(node_ids: Sequence[int]) -> None:
    """Lock the nodes' rows in id order (every placement path takes them in this order).

    ``FOR NO KEY UPDATE`` (as for the orders): it serialises placements with each other and with
    every ``FOR UPDATE`` of the row, but not with other transactions' foreign-key checks on it (a
    job event inserting a row that references the node): a plain ``FOR UPDATE`` blocked those
    checks at their commit while they held the buyer's account rows this commit was waiting for.
    """
    list(
        Node.objects.select_for_update(no_key=True)
        .filter(pk__in=sorted(node_ids))
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def _shrink_slots(job_ids: Sequence[int], *, until: datetime) -> None:
    """End the live slots of preempted jobs at ``until`` (their notice deadline)."""
    # Only the slot rows: locking the joined jobs too would take them before their orders.
    for slot in AllocationSlot.objects.select_for_update(of=("self",)).filter(
        allocation__jobs__pk__in=list(job_ids), live=True
    ):
        if slot.span.isempty:
            continue
        base = slot.device_id * SPAN_DEVICE_STRIDE
        upper = min(slot.span.upper, base + epoch(until))
        slot.span = NumericRange(slot.span.lower, max(upper, slot.span.lower + 1), "[)")
        slot.save(update_fields=["span"])


def _book_reservation(
    order: Order, placement: mk.Placement, jobs: list[Job], provider_of: Mapping[int, int] | None = None
) -> None:
    """Reserved: release the worst-case hold and move the real price into escrow.

    ``provider_of`` maps the jobs' nodes to their providers (read from the nodes when not given).
    """
    from billing.models import Hold, HoldStatus

    assert order.window_start is not None and order.window_end is not None
    hold = Hold.objects.filter(pk=order.hold_id).first() if order.hold_id is not None else None
    if hold is not None and hold.status == HoldStatus.OPEN:
        hold_release(hold=hold)
    if provider_of is None:
        provider_of = dict(
            Node.objects.filter(pk__in=[j.node_id for j in jobs]).values_list("pk", "provider_id")
        )
    starts_at = max(order.window_start, timezone.now())
    reservations = [
        reservation_book(
            buyer=order.buyer,
            provider_id=provider_of[job.node_id],
            device_count=len(job.device_indexes),
            rate_micros=placement.unit_price_micros,
            starts_at=starts_at,
            ends_at=order.window_end,
            idempotency_key=f"reservation:job:{job.pk}",
            job_id=job.pk,
        )
        for job in jobs
    ]
    order.reservation_id = reservations[0].pk
    order.save(update_fields=["reservation_id"])
    for job, reservation in zip(jobs, reservations, strict=True):
        Job.objects.filter(pk=job.pk).update(lease_id=reservation.lease_id)


# --- Spot --------------------------------------------------------------------------------------


def spot_round(*, now: datetime | None = None) -> RoundReport:
    """Clear every spot pool at one price (see module docstring). Safe to run twice."""
    report = RoundReport()
    with advisory_lock(SPOT_LOCK) as got:
        if not got:
            report.skipped = True
            return report
        now = (now or timezone.now()).replace(microsecond=0)
        orders = list(
            Order.objects.filter(status=OrderStatus.OPEN, term=Term.SPOT)
            .select_related("offer")
            .order_by("pk")
        )
        running = running_spot_load()
        if not orders and not running:
            return report
        loaded = market_load()
        # One clearing per pool for every bid and incumbent, whatever their runtimes: the engine
        # keeps each order to nodes offering its runtime (one price per pool per round).
        free = loaded.free_during(now, now + RESERVATION_GUARD, None)
        market = mk.Market(nodes=tuple(loaded.nodes[n] for n in sorted(free)), free=free, now=now)
        result = match_round(
            market=market,
            orders=[domain_order(o) for o in orders],
            running_spot=running,
            spot_prices=_previous_prices(),
            policy=_policy(),
        )
        _record_prices(result, now)
        for placement in result.placements:
            if placement.job_id is not None:
                _rerate(placement.job_id, placement.unit_price_micros, now)
        _commit_round(result, {o.pk: o for o in orders}, loaded, now, report)
        report.unplaced.update(result.unplaced)
    return report


def _previous_prices() -> dict[mk.PoolKey, int]:
    prices: dict[mk.PoolKey, int] = {}
    for accelerator_id, region, price in (
        SpotPrice.objects.order_by("accelerator_id", "region", "-round_at")
        .distinct("accelerator_id", "region")
        .values_list("accelerator_id", "region", "price_micros")
    ):
        prices[mk.PoolKey(accelerator_id, region)] = price
    return prices


def _record_prices(result: mk.RoundResult, now: datetime) -> None:
    rows = [
        SpotPrice(
            accelerator_id=pool.model_id,
            region=pool.region,
            round_at=now,
            price_micros=clearing.price_micros,
            winners=len(clearing.winners),
            losers=len(clearing.losers),
        )
        for pool, clearing in result.clearing.items()
    ]
    SpotPrice.objects.bulk_create(rows, ignore_conflicts=True)


def _rerate(job_id: int, price_micros: int, now: datetime) -> None:
    """A running spot job that keeps its devices pays this round's clearing price from now on."""
    from billing.models import Lease
    from billing.services import lease_set_rate

    job = Job.objects.filter(pk=job_id).select_related("allocation").first()
    if job is None or job.allocation is None:
        return
    if job.allocation.unit_price_micros != price_micros:
        Allocation.objects.filter(pk=job.allocation.pk).update(unit_price_micros=price_micros)
    lease = Lease.objects.filter(pk=job.lease_id).first() if job.lease_id else None
    if lease is not None and lease.is_live and lease.rate_micros != price_micros:
        # The round's clock is whole seconds; a lease opened since then changes rate from its start.
        at = max(now, lease.segment_started_at or now)
        try:
            lease_set_rate(lease=lease, rate_micros=price_micros, at=at)
        except InvalidTransition:
            pass  # the job ended (its lease closed) since the round loaded it: nothing to re-rate


def order_explain(*, order: Order) -> list[mk.Reason]:
    """Why an open order is not matched now (empty: it can be placed at the next round)."""
    if order.status != OrderStatus.OPEN:
        return []
    now = timezone.now()
    loaded = market_load()
    if order.term == Term.RESERVED:
        assert order.window_start is not None
        start, end = max(order.window_start, now), order.window_end
        horizon = max(order.window_start - now, timedelta(0)) + timedelta(seconds=1)
    else:
        start, end, horizon = now, now + RESERVATION_GUARD, timedelta(0)
    free = loaded.free_during(start, end, order.runtime)
    busy_until: dict[int, datetime] = {}
    for device_id, spans in loaded.booked.items():
        # A slot held until released frees at no known time: the device is left out.
        current = [hi for lo, hi in spans if lo <= epoch(now) < hi < OPEN_END]
        if current:
            busy_until[device_id] = datetime.fromtimestamp(min(current), UTC)
    nodes = tuple(loaded.nodes[n] for n in sorted(loaded.nodes) if order.runtime in loaded.runtimes[n])
    market = mk.Market(nodes=nodes, free=free, now=now, horizon=horizon, busy_until=busy_until)
    return explain(domain_order(order), market, running_spot=running_spot_load())
