"""Marketplace reads."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, timedelta
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
    OrderBy,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
    Window,
)
from django.db.models.functions import Coalesce, RowNumber, TruncDate
from django.utils import timezone
from django.utils.translation import gettext as _

from billing.selectors import UsagePoint, usage_series
from core.errors import NotFound
from marketplace.models import (
    SPAN_DEVICE_STRIDE,
    AllocationSlot,
    Job,
    JobLogChunk,
    JobStatus,
    Offer,
    Order,
    SpotPrice,
)
from providers.models import Device, DeviceHealth, Node, NodeStatus

LOG_READ_MAX_BYTES = 1024 * 1024


def job_get_for_buyer(*, user: AbstractBaseUser | AnonymousUser, job_id: int) -> Job:
    """The user's own job; anyone else's (or none) is ``NotFound``."""
    job = Job.objects.filter(pk=job_id, buyer_id=user.pk).first() if user.pk is not None else None
    if job is None:
        raise NotFound(_("No such job."))
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
    orderings: dict[str, tuple[str | OrderBy, ...]] = {
        "price": ("term_price_micros", "id"),
        "price_per_pflop": (F("price_per_pflop_micros").asc(nulls_last=True), "id"),
        "reliability": ("-reliability", "term_price_micros", "id"),
        "carbon": ("kg_co2e_per_device_hour", "term_price_micros", "id"),
    }
    return qs.order_by(*orderings[filters.sort if filters.sort in OFFER_SORTS else "price"])


def offer_get_listed(*, offer_id: int) -> Offer:
    offer = offers_list(filters=OfferFilters()).filter(pk=offer_id).first()
    if offer is None:
        raise NotFound(_("No such offer, or it has no free capacity now."))
    return offer


# --- Portal reads ------------------------------------------------------------------------------


def offer_get_public(*, offer_id: int) -> Offer:
    """A listed offer for its detail page, with ``free_devices`` and the other ``offers_list``
    annotations when it has free capacity now, else ``free_devices = 0`` (still shown: a full node
    is worth knowing about). ``NotFound`` when it is not listed."""
    offer = offers_list(filters=OfferFilters()).filter(pk=offer_id).first()
    if offer is not None:
        return offer
    offer = (
        Offer.objects.filter(pk=offer_id, listed=True)
        .select_related("node", "node__provider", "accelerator")
        .annotate(free_devices=Value(0, output_field=IntegerField()))
        .first()
    )
    if offer is None:
        raise NotFound(_("No such offer."))
    return offer


def spot_price_history(*, accelerator_id: int, region: str, limit: int = 120) -> list[SpotPrice]:
    """The pool's last ``limit`` clearing prices, oldest first."""
    rows = list(
        SpotPrice.objects.filter(accelerator_id=accelerator_id, region=region).order_by("-round_at")[:limit]
    )
    rows.reverse()
    return rows


def spot_prices_recent(
    *, pools: list[tuple[int, str]], per_pool: int = 5
) -> dict[tuple[int, str], list[int]]:
    """The last ``per_pool`` clearing prices (newest first) of each (accelerator, region) pool, in
    one query however many pools."""
    if not pools:
        return {}
    condition = Q()
    for accelerator_id, region in set(pools):
        condition |= Q(accelerator_id=accelerator_id, region=region)
    ranked = (
        SpotPrice.objects.filter(condition)
        .annotate(
            rank=Window(
                RowNumber(), partition_by=[F("accelerator_id"), F("region")], order_by=F("round_at").desc()
            )
        )
        .filter(rank__lte=per_pool)
        .order_by("accelerator_id", "region", "-round_at")
        .values_list("accelerator_id", "region", "price_micros")
    )
    out: dict[tuple[int, str], list[int]] = {pool: [] for pool in pools}
    for accelerator_id, region, price in ranked:
        out.setdefault((accelerator_id, region), []).append(price)
    return out


@dataclass(frozen=True)
class DayOutcomes:
    day: date
    succeeded: int
    failed: int


def node_job_outcomes(*, node_id: int, days: int = 30) -> list[DayOutcomes]:
    """Jobs that ended on the node per UTC day over the last ``days`` days (every day present):
    exited or stopped count as succeeded, failed or lost as failed (the reliability score's job
    term; preempted jobs count for neither). One query."""
    today = timezone.now().astimezone(UTC).date()
    first = today - timedelta(days=days - 1)
    rows = (
        Job.objects.filter(node_id=node_id, ended_at__date__gte=first)
        .annotate(day=TruncDate("ended_at", tzinfo=UTC))
        .values("day")
        .annotate(
            ok=Count("id", filter=Q(status__in=[JobStatus.EXITED, JobStatus.STOPPED])),
            bad=Count("id", filter=Q(status__in=[JobStatus.FAILED, JobStatus.LOST])),
        )
        .values_list("day", "ok", "bad")
    )
    by_day = {day: (ok, bad) for day, ok, bad in rows}
    return [
        DayOutcomes(day=d, succeeded=by_day.get(d, (0, 0))[0], failed=by_day.get(d, (0, 0))[1])
        for d in (first + timedelta(days=i) for i in range(days))
    ]


def orders_for_buyer(*, user: AbstractBaseUser | AnonymousUser) -> QuerySet[Order]:
    """The user's orders, newest first, with their jobs (one extra query per page)."""
    return (
        Order.objects.filter(buyer_id=user.pk)
        .select_related("offer__node", "offer__accelerator")
        .prefetch_related(Prefetch("jobs", queryset=Job.objects.select_related("node").order_by("id")))
        .order_by("-id")
    )


def order_get_for_buyer_page(*, user: AbstractBaseUser | AnonymousUser, order_id: int) -> Order:
    """One of the user's orders with its jobs and allocations; ``NotFound`` for anyone else's."""
    order = (
        orders_for_buyer(user=user).prefetch_related("allocations__node").filter(pk=order_id).first()
        if user.pk is not None
        else None
    )
    if order is None:
        raise NotFound(_("No such order."))
    return order


def job_get_for_buyer_page(*, user: AbstractBaseUser | AnonymousUser, job_id: int) -> Job:
    """One of the user's jobs with its node and order; ``NotFound`` for anyone else's."""
    job = (
        Job.objects.select_related("node", "order", "node__provider")
        .filter(pk=job_id, buyer_id=user.pk)
        .first()
        if user.pk is not None
        else None
    )
    if job is None:
        raise NotFound(_("No such job."))
    return job


def log_tail_offset(*, job: Job, max_bytes: int = 64 * 1024) -> int:
    """Where to start reading so a page shows at most the last ``max_bytes`` of the log."""
    return max(job.log_start, job.log_size - max_bytes)


def nodes_with_offers_for_member(*, user: AbstractBaseUser | AnonymousUser) -> QuerySet[Node]:
    """The nodes of every provider the user belongs to, with their offer, devices and provider
    (three queries however many nodes)."""
    return (
        Node.objects.filter(provider__memberships__user_id=user.pk or 0)
        .select_related("provider", "offer", "offer__accelerator")
        .prefetch_related(Prefetch("devices", queryset=Device.objects.select_related("accelerator")))
        .annotate(device_total=Count("devices", distinct=True))
        .order_by("provider__name", "name", "id")
    )


def node_get_for_member_page(*, user: AbstractBaseUser | AnonymousUser, node_id: int) -> Node:
    node = nodes_with_offers_for_member(user=user).filter(pk=node_id).first() if user.pk is not None else None
    if node is None:
        raise NotFound(_("No such node."))
    return node


def node_usage(*, node: Node, hours: int = 24, bucket_seconds: int = 600) -> list[UsagePoint]:
    """Utilisation, power and device-hours of the node's jobs over the last ``hours`` hours, from
    the agents' usage samples (two queries)."""
    since = timezone.now() - timedelta(hours=hours)
    job_ids = list(
        Job.objects.filter(node=node, started_at__isnull=False)
        .filter(Q(ended_at__isnull=True) | Q(ended_at__gte=since))
        .values_list("pk", flat=True)[:1000]
    )
    return usage_series(job_ids=job_ids, since=since, bucket_seconds=bucket_seconds)
