"""Builders for matching inputs, with numbers small enough to check by hand."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from marketplace.matching import (
    Device,
    Market,
    Node,
    Offer,
    Order,
    Requirements,
    RunningSpot,
    Slot,
    Term,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
H100, A100, ASCEND_910B = 1, 2, 3
KIND = {H100: "gpu", A100: "gpu", ASCEND_910B: "npu"}
UNIT = 1_000_000  # one currency unit in micro-units


def device_ids(node_id: int, count: int) -> tuple[int, ...]:
    """Device ids are node id x 100 + index: node 2's devices are 200, 201, ..."""
    return tuple(node_id * 100 + index for index in range(count))


def make_node(
    node_id: int,
    *,
    model: int = H100,
    devices: int = 8,
    memory_mib: int = 81_920,
    region: str = "cn-north-1",
    cluster: str = "a",
    reliability: float = 0.99,
    software: Mapping[str, str] | None = None,
    on_demand: int = 2 * UNIT,
    reserved: int | None = None,
    floor: int | None = None,
    listed: bool = True,
    verified: bool = False,
    min_rental: timedelta = timedelta(0),
    max_rental: timedelta | None = None,
) -> Node:
    offer = Offer(
        on_demand_micros=on_demand,
        reserved_micros=reserved if reserved is not None else on_demand * 8 // 10,
        spot_floor_micros=floor if floor is not None else on_demand // 2,
        listed=listed,
        min_rental=min_rental,
        max_rental=max_rental,
    )
    return Node(
        id=node_id,
        provider_id=node_id,
        region=region,
        cluster=cluster,
        reliability=reliability,
        software=dict(software) if software is not None else {"cuda": "12.4"},
        devices=tuple(
            Device(device_id, index, model, KIND[model], memory_mib)
            for index, device_id in enumerate(device_ids(node_id, devices))
        ),
        offer=offer,
        verified=verified,
    )


def make_market(
    nodes: Sequence[Node],
    *,
    free: Mapping[int, Iterable[int]] | None = None,
    busy_until: Mapping[int, datetime] | None = None,
    now: datetime = NOW,
    horizon: timedelta = timedelta(minutes=5),
) -> Market:
    """All devices free unless ``free`` says otherwise for a node."""
    free = free or {}
    return Market(
        nodes=tuple(nodes),
        free={
            node.id: frozenset(free[node.id]) if node.id in free else frozenset(d.id for d in node.devices)
            for node in nodes
        },
        now=now,
        horizon=horizon,
        busy_until=dict(busy_until or {}),
    )


def make_order(
    order_id: int,
    *,
    term: Term = Term.ON_DEMAND,
    limit: int = 3 * UNIT,
    devices: int = 1,
    nodes: int = 1,
    models: Iterable[int] = (H100,),
    kind: str | None = None,
    region: str | None = None,
    software: str = "",
    min_reliability: float = 0.0,
    min_memory_mib: int = 0,
    age: timedelta = timedelta(minutes=1),
    window_start: datetime | None = None,
    window_end: datetime | None = None,
) -> Order:
    return Order(
        id=order_id,
        term=term,
        requirements=Requirements(
            model_ids=frozenset(models),
            kind=kind,
            min_memory_mib=min_memory_mib,
            devices_per_node=devices,
            node_count=nodes,
            region=region,
            software=software,
            min_reliability=min_reliability,
        ),
        limit_micros=limit,
        created_at=NOW - age,
        window_start=window_start,
        window_end=window_end,
    )


def make_job(job_id: int, node_id: int, devices: Iterable[int], *, bid: int, age: timedelta) -> RunningSpot:
    return RunningSpot(
        job_id=job_id,
        order_id=10_000 + job_id,
        bid_micros=bid,
        started_at=NOW - age,
        slots=(Slot(node_id, tuple(devices)),),
    )
