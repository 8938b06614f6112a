"""The nouns the matching engine reads and writes: plain, immutable values, no Django.

The Celery layer loads open orders, nodes, offers and free devices from PostgreSQL, builds these
values, calls ``match_round`` / ``clear_pool`` / ``explain`` and commits the decisions. Money is
integer micro-units per device-hour, as everywhere else (``core.money``); reliability is a score in
[0, 1], not money, so it may be a float.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import NamedTuple


class Term(StrEnum):
    ON_DEMAND = "on_demand"
    RESERVED = "reserved"
    SPOT = "spot"


class PoolKey(NamedTuple):
    """A spot pool: one accelerator model in one region, cleared at one price per round."""

    model_id: int
    region: str


@dataclass(frozen=True, slots=True)
class Device:
    id: int
    index: int
    model_id: int
    kind: str
    memory_mib: int


@dataclass(frozen=True, slots=True)
class Offer:
    """A node's asks, per device-hour. For on-demand and reserved the ask *is* the provider floor."""

    on_demand_micros: int
    reserved_micros: int
    spot_floor_micros: int
    listed: bool = True
    # The rental lengths the provider accepts. A reserved window outside them is not placed on the
    # node; an on-demand or spot allocation ends (with notice) at ``max_rental`` after it starts.
    min_rental: timedelta = timedelta(0)
    max_rental: timedelta | None = None

    def admits(self, rental: timedelta) -> bool:
        """Whether a booking of this length fits the offer's minimum and maximum rental."""
        return self.min_rental <= rental and (self.max_rental is None or rental <= self.max_rental)

    def floor_for(self, term: Term) -> int:
        if term is Term.ON_DEMAND:
            return self.on_demand_micros
        if term is Term.RESERVED:
            return self.reserved_micros
        return self.spot_floor_micros


@dataclass(frozen=True, slots=True)
class Node:
    id: int
    provider_id: int
    region: str
    cluster: str
    reliability: float
    software: Mapping[str, str]
    devices: tuple[Device, ...]
    offer: Offer
    # The job runtimes the node's agent offers ("docker", "process"); empty: any.
    runtimes: frozenset[str] = frozenset()
    # The exchange's verification of the node's hardware passed: wins ties after price and fit.
    verified: bool = False


@dataclass(frozen=True, slots=True)
class Requirements:
    """What an order needs. Empty ``model_ids`` and no ``kind`` means any accelerator.

    ``software`` is a comma-separated spec such as ``"cuda>=12.1"`` or ``"cann>=8.0, driver>=23"``.
    ``same_cluster`` only matters for gangs, and gangs always get it.
    """

    model_ids: frozenset[int] = frozenset()
    kind: str | None = None
    min_memory_mib: int = 0
    devices_per_node: int = 1
    node_count: int = 1
    region: str | None = None
    same_cluster: bool = True
    software: str = ""
    min_reliability: float = 0.0
    # The job's runtime; only nodes offering it qualify (None: any node).
    runtime: str | None = None
    # An order for a specific offer may only land on that offer's node (empty: any node).
    node_ids: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if self.devices_per_node < 1 or self.node_count < 1:
            raise ValueError("an order needs at least one device on at least one node")
        if not 0.0 <= self.min_reliability <= 1.0:
            raise ValueError("min_reliability is a score in [0, 1]")

    @property
    def is_gang(self) -> bool:
        return self.node_count > 1

    @property
    def device_count(self) -> int:
        return self.devices_per_node * self.node_count


@dataclass(frozen=True, slots=True)
class Order:
    """An open order. ``limit_micros`` is the spot bid, or the cap for on-demand and reserved."""

    id: int
    term: Term
    requirements: Requirements
    limit_micros: int
    created_at: datetime
    window_start: datetime | None = None
    window_end: datetime | None = None


@dataclass(frozen=True, slots=True)
class Market:
    """Capacity as the caller sees it at ``now``.

    ``free`` maps node id to the ids of its devices with no live allocation (the caller computes it;
    devices of running spot jobs are *not* free). ``busy_until`` maps a busy device id to the end of
    its current allocation, when known; it only feeds the "when does capacity free up" answer.
    Reserved orders whose window starts before ``now + horizon`` are placed this round.
    """

    nodes: tuple[Node, ...]
    free: Mapping[int, frozenset[int]]
    now: datetime
    horizon: timedelta = timedelta(0)
    busy_until: Mapping[int, datetime] = field(default_factory=dict)


class Slot(NamedTuple):
    node_id: int
    device_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RunningSpot:
    """A spot job holding devices now. Its devices are not in ``Market.free``."""

    job_id: int
    order_id: int
    bid_micros: int
    started_at: datetime
    slots: tuple[Slot, ...]


@dataclass(frozen=True, slots=True)
class Placement:
    """A decision to allocate. Every device of the placement is billed ``unit_price_micros``.

    ``preempts`` lists spot jobs that must exit (after their notice) before the devices are usable.
    ``job_id`` is set when a running spot job keeps its devices at this round's clearing price.
    """

    order_id: int
    slots: tuple[Slot, ...]
    unit_price_micros: int
    term: Term
    preempts: tuple[int, ...] = ()
    job_id: int | None = None

    @property
    def device_ids(self) -> tuple[int, ...]:
        return tuple(device_id for slot in self.slots for device_id in slot.device_ids)


class PreemptReason(StrEnum):
    HIGHER_TIER = "higher_tier"  # on-demand or reserved needs the devices
    OUTBID = "outbid"  # a higher spot bid took the devices
    PRICE_ABOVE_BID = "price_above_bid"  # the clearing price (or the node's floor) rose above the bid


class Preemption(NamedTuple):
    """Stop a spot job: SIGTERM now, SIGKILL at ``deadline`` (the 120 s notice)."""

    job_id: int
    reason: PreemptReason
    deadline: datetime


class ReasonCode(StrEnum):
    """Why an order is not matched, from the earliest requirement to the last hurdle."""

    SOFTWARE_SPEC_INVALID = "software_spec_invalid"
    WINDOW_NOT_STARTED = "window_not_started"
    WINDOW_ENDED = "window_ended"
    NO_NODE_OF_MODEL_IN_REGION = "no_node_of_model_in_region"
    MEMORY_BELOW_MIN = "memory_below_min"
    SOFTWARE_UNSATISFIED = "software_unsatisfied"
    RELIABILITY_BELOW_MIN = "reliability_below_min"
    WINDOW_SHORTER_THAN_MIN_RENTAL = "window_shorter_than_min_rental"
    WINDOW_LONGER_THAN_MAX_RENTAL = "window_longer_than_max_rental"
    NODE_TOO_SMALL = "node_too_small"
    PRICE_LIMIT_BELOW_FLOOR = "price_limit_below_floor"
    NO_CLUSTER_FITS_GANG = "no_cluster_fits_gang"
    CAPACITY_BUSY = "capacity_busy"
    OUTBID = "outbid"


@dataclass(frozen=True, slots=True)
class Reason:
    """One machine-readable answer to "why is my order not matched".

    ``nodes`` counts the nodes (of a matching model and region) that failed at this step.
    ``lowest_floor_micros`` comes with ``price_limit_below_floor``; ``frees_at`` with
    ``capacity_busy`` when the caller supplied busy-until times; ``clearing_price_micros`` with
    ``outbid``.
    """

    code: ReasonCode
    nodes: int = 0
    lowest_floor_micros: int | None = None
    frees_at: datetime | None = None
    clearing_price_micros: int | None = None


@dataclass(frozen=True, slots=True)
class ClearingResult:
    """One spot pool's round: one price, paid by every winner (incumbents that keep their devices too).

    ``losers`` are order ids; an order open to several pools (several models, or any region) is
    cleared in them cheapest first and may lose in one pool and win in the next.
    """

    pool: PoolKey
    price_micros: int
    winners: tuple[Placement, ...]
    losers: tuple[int, ...]
    preempt: tuple[Preemption, ...]


@dataclass(frozen=True, slots=True)
class RoundPolicy:
    """Knobs of a matching round; the defaults are DESIGN.md's."""

    # Spot ranking: a bid's rank rises by up to ``age_boost_cap_bps`` of itself, linearly over
    # ``age_boost_ramp``. It never lifts an order out of its tier.
    age_boost_ramp: timedelta = timedelta(minutes=30)
    age_boost_cap_bps: int = 500
    spot_max_move_bps: int = 2_000
    # Firm ranking (price-time priority): a limit's rank rises by this many bps of itself per hour
    # the order has waited, without a cap, so no order waits forever behind higher limits.
    firm_age_boost_bps_per_hour: int = 500
    preempt_notice: timedelta = timedelta(seconds=120)
    spot_min_run: timedelta = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class RoundResult:
    placements: tuple[Placement, ...]
    unplaced: Mapping[int, tuple[Reason, ...]]
    clearing: Mapping[PoolKey, ClearingResult]
    preempt: tuple[Preemption, ...]
