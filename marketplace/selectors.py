"""Marketplace reads."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import (
    BigIntegerField,
    Case,
    Count,
    DecimalField,
    ExpressionWrapper,
    F,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Coalesce
from django.utils import timezone

from core.errors import NotFound
from marketplace.models import SPAN_DEVICE_STRIDE, AllocationSlot, Job, JobLogChunk, Offer
from providers.models import Device, DeviceHealth, NodeStatus

LOG_READ_MAX_BYTES = 1024 * 1024


def job_get_for_buyer(*, user: AbstractBaseUser | AnonymousUser, job_id: int) -> Job:
    """The user's own job; anyone else's (or none) is ``NotFound``."""
    job = Job.objects.filter(pk=job_id, buyer_id=user.pk).first() if user.pk is not None else None
    if job is None:
        raise NotFound("No such job.")
    return job


@dataclass(frozen=True)
class LogSlice:
    offset: int  # where ``data`` starts (later than asked when older bytes were dropped)
    next_offset: int
    data: str
    log_size: int
    log_start: int


def job_log_read(*, job: Job, offset: int, limit: int = LOG_READ_MAX_BYTES) -> LogSlice:
    """Up to ``limit`` bytes of the log from ``offset`` (a cheap indexed range read)."""
    limit = max(1, min(limit, LOG_READ_MAX_BYTES))
    start = max(offset, job.log_start, 0)
    if start >= job.log_size:
        return LogSlice(offset=min(start, job.log_size), next_offset=min(start, job.log_size), data="",
                        log_size=job.log_size, log_start=job.log_start)  # fmt: skip
    pieces: list[bytes] = []
    taken = 0
    chunks = JobLogChunk.objects.filter(job=job, end_offset__gt=start, offset__lt=start + limit).order_by(
        "offset"
    )
    for chunk_offset, chunk_data in chunks.values_list("offset", "data").iterator(chunk_size=64):
        piece = bytes(chunk_data)[max(0, start - chunk_offset) :]
        piece = piece[: limit - taken]
        pieces.append(piece)
        taken += len(piece)
        if taken >= limit:
            break
    raw = b"".join(pieces)
    return LogSlice(
        offset=start,
        next_offset=start + len(raw),
        # A slice may start or end inside a multi-byte character; show it, do not fail.
        data=raw.decode("utf-8", "replace"),
        log_size=job.log_size,
        log_start=job.log_start,
    )


# --- Offers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OfferFilters:
    kind: str | None = None
    vendor: str | None = None
    model: str | None = None
    min_memory_gib: int | None = None
    region: str | None = None
    term: str = "on_demand"
    max_price_micros: int | None = None
    min_reliability: Decimal | None = None
    devices: int | None = None
    sort: str = "price"


TERM_PRICE_FIELD = {
    "on_demand": "on_demand_price_micros",
    "reserved": "reserved_price_micros",
    "spot": "spot_floor_micros",
}
OFFER_SORTS = ("price", "price_per_pflop", "reliability", "carbon")


def epoch_now() -> int:
    return int(timezone.now().timestamp())


def busy_devices_subquery(now_epoch: int) -> Subquery:
    """Devices of the offer's node held by a live slot at ``now_epoch``."""
    busy = (
        AllocationSlot.objects.filter(live=True, device__node_id=OuterRef("node_id"))
        .filter(
            span__contains=ExpressionWrapper(
                F("device_id") * SPAN_DEVICE_STRIDE + now_epoch, output_field=BigIntegerField()
            )
        )
        .order_by()
        .values("device__node_id")
        .annotate(n=Count("id"))
        .values("n")
    )
    return Subquery(busy, output_field=IntegerField())


def grid_intensity_expression() -> Case:
    table = settings.SUANLI_GRID_INTENSITY
    return Case(
        *[When(region=region, then=Value(Decimal(str(value)))) for region, value in table.items()],
        default=Value(Decimal(str(table.get("default", 0.48)))),
        output_field=DecimalField(max_digits=8, decimal_places=4),
    )


def offers_list(*, filters: OfferFilters) -> QuerySet[Offer]:
    """Listed offers on online nodes with at least one free device, filtered and sorted.

    Annotates ``free_devices``, ``term_price_micros``, ``price_per_pflop_micros`` (the term price
    per dense FP16 PFLOP-hour) and ``kg_co2e_per_device_hour`` (TDP x PUE x grid intensity).
    """
    price_field = TERM_PRICE_FIELD.get(filters.term, "on_demand_price_micros")
    # Correlated subqueries, not a join + GROUP BY: the planner can then walk offers in the sort
    # order and stop at the page, instead of sorting every offer x device row first.
    healthy = Subquery(
        Device.objects.filter(node_id=OuterRef("node_id"), health=DeviceHealth.OK)
        .order_by()
        .values("node_id")
        .annotate(n=Count("id"))
        .values("n"),
        output_field=IntegerField(),
    )
    qs = (
        Offer.objects.filter(listed=True, node__status=NodeStatus.ONLINE)
        .select_related("node", "node__provider", "accelerator")
        .annotate(
            term_price_micros=F(price_field),
            healthy_devices=Coalesce(healthy, 0),
            busy_devices=Coalesce(busy_devices_subquery(epoch_now()), 0),
        )
        .annotate(free_devices=F("healthy_devices") - F("busy_devices"))
        .annotate(
            price_per_pflop_micros=Case(
                When(
                    accelerator__fp16_tflops__gt=0,
                    then=F(price_field) * Value(Decimal(1000)) / F("accelerator__fp16_tflops"),
                ),
                default=None,
                output_field=DecimalField(max_digits=30, decimal_places=4),
            ),
            kg_co2e_per_device_hour=ExpressionWrapper(
                F("accelerator__tdp_watts")
                * F("node__pue")
                * grid_intensity_expression()
                / Value(Decimal(1000)),
                output_field=DecimalField(max_digits=12, decimal_places=4),
            ),
        )
        .filter(free_devices__gt=0)
    )
    if filters.kind:
        qs = qs.filter(accelerator__kind=filters.kind)
    if filters.vendor:
        qs = qs.filter(accelerator__vendor=filters.vendor)
    if filters.model:
        qs = qs.filter(
            Q(accelerator__model__iexact=filters.model)
            | Q(accelerator__match_names__contains=[filters.model])
        )
    if filters.min_memory_gib:
        qs = qs.filter(accelerator__memory_gib__gte=filters.min_memory_gib)
    if filters.region:
        qs = qs.filter(region=filters.region)
    if filters.max_price_micros is not None:
        qs = qs.filter(**{f"{price_field}__lte": filters.max_price_micros})
    if filters.min_reliability is not None:
        qs = qs.filter(reliability__gte=filters.min_reliability)
    if filters.devices:
        qs = qs.filter(free_devices__gte=filters.devices)
    ordering = {
        "price": ("term_price_micros", "id"),
        "price_per_pflop": (F("price_per_pflop_micros").asc(nulls_last=True), "id"),
        "reliability": ("-reliability", "term_price_micros", "id"),
        "carbon": ("kg_co2e_per_device_hour", "term_price_micros", "id"),
    }[filters.sort if filters.sort in OFFER_SORTS else "price"]
    return qs.order_by(*ordering)


def offer_get_listed(*, offer_id: int) -> Offer:
    offer = offers_list(filters=OfferFilters()).filter(pk=offer_id).first()
    if offer is None:
        raise NotFound("No such offer, or it has no free capacity now.")
    return offer
