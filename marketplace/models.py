"""Offers, orders, allocations and spot prices (jobs are below)."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.contrib.postgres.constraints import ExclusionConstraint
from django.contrib.postgres.fields import ArrayField, BigIntegerRangeField, RangeOperators
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from core.models import TimeStampedModel

# 10,000 per device-hour: anything above is a typo, not a price.
MAX_PRICE_MICROS = 10_000 * 1_000_000


class Offer(TimeStampedModel):
    """A node's prices per device-hour (integer micro-units) and listing terms."""

    node = models.OneToOneField("providers.Node", on_delete=models.CASCADE, related_name="offer")
    on_demand_price_micros = models.BigIntegerField()
    reserved_price_micros = models.BigIntegerField()
    spot_floor_micros = models.BigIntegerField()
    listed = models.BooleanField(default=False)
    min_rental_minutes = models.PositiveIntegerField(default=1)
    max_rental_hours = models.PositiveIntegerField(default=24 * 30)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(on_demand_price_micros__gte=0, on_demand_price_micros__lte=MAX_PRICE_MICROS)
                & Q(reserved_price_micros__gte=0, reserved_price_micros__lte=MAX_PRICE_MICROS)
                & Q(spot_floor_micros__gte=0, spot_floor_micros__lte=MAX_PRICE_MICROS),
                name="offer_prices_in_range",
            ),
        ]

    def __str__(self) -> str:
        return f"offer for node {self.node_id}"


class Term(models.TextChoices):
    ON_DEMAND = "on_demand", "On-demand"
    RESERVED = "reserved", "Reserved"
    SPOT = "spot", "Spot"


class OrderStatus(models.TextChoices):
    OPEN = "open", "Waiting for capacity"
    ALLOCATED = "allocated", "Allocated"
    RUNNING = "running", "Running"
    ENDED = "ended", "Ended"
    CANCELLED = "cancelled", "Cancelled"
    FAILED = "failed", "Failed"


class Runtime(models.TextChoices):
    DOCKER = "docker", "Docker"
    PROCESS = "process", "Process"


class Order(TimeStampedModel):
    buyer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="orders")
    term = models.CharField(max_length=10, choices=Term.choices)
    status = models.CharField(
        max_length=10, choices=OrderStatus.choices, default=OrderStatus.OPEN, db_index=True
    )
    status_reason = models.CharField(max_length=200, blank=True)
    # Requirements.
    offer = models.ForeignKey(Offer, null=True, blank=True, on_delete=models.SET_NULL, related_name="orders")
    accelerator_ids = ArrayField(models.BigIntegerField(), default=list, blank=True)
    kind = models.CharField(max_length=8, blank=True)
    min_memory_mib = models.PositiveBigIntegerField(default=0)
    devices_per_node = models.PositiveSmallIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(64)]
    )
    node_count = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(64)]
    )
    region = models.CharField(max_length=32, blank=True)
    software_spec = models.CharField(max_length=200, blank=True)
    min_reliability = models.DecimalField(max_digits=4, decimal_places=3, default=Decimal("0"))
    # Spot: the bid. On-demand and reserved: a cap on the unit price.
    price_limit_micros = models.BigIntegerField()
    window_start = models.DateTimeField(null=True, blank=True)
    window_end = models.DateTimeField(null=True, blank=True)
    # Job spec.
    image = models.CharField(max_length=255)
    command = models.JSONField(default=list)
    env = models.JSONField(default=dict)
    ports = models.JSONField(default=list)
    runtime = models.CharField(max_length=8, choices=Runtime.choices, default=Runtime.DOCKER)
    restart_on_failure = models.BooleanField(default=False)
    idempotency_key = models.CharField(max_length=128)
    # Billing references (plain ids: billing knows nothing of orders).
    hold_id = models.BigIntegerField(null=True, blank=True)
    reservation_id = models.BigIntegerField(null=True, blank=True)
    matched_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["buyer", "idempotency_key"], name="order_idempotency_unique"),
            models.CheckConstraint(condition=Q(price_limit_micros__gte=0), name="order_price_limit_positive"),
            models.CheckConstraint(
                condition=~Q(term="reserved") | Q(window_start__isnull=False, window_end__isnull=False),
                name="reserved_order_has_window",
            ),
            models.CheckConstraint(
                condition=Q(window_end__isnull=True) | Q(window_end__gt=models.F("window_start")),
                name="order_window_ordered",
            ),
        ]

    def __str__(self) -> str:
        return f"order {self.pk} ({self.term}, {self.status})"


# A slot's span packs (device, time) into one int8 range so that a plain GiST exclusion constraint
# (no btree_gist extension, which the embedded PostgreSQL lacks) forbids overlaps per device:
# span = [device_id * 2^40 + start_epoch_s, device_id * 2^40 + end_epoch_s). 2^40 s is ~34,000 years,
# so a device's spans never reach the next device's.
SPAN_DEVICE_STRIDE = 1 << 40


class AllocationStatus(models.TextChoices):
    LIVE = "live", "Live"
    RELEASED = "released", "Released"


class Allocation(TimeStampedModel):
    """Order x node x devices for a time range; one slot row per device enforces exclusivity."""

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="allocations")
    node = models.ForeignKey("providers.Node", on_delete=models.PROTECT, related_name="allocations")
    term = models.CharField(max_length=10, choices=Term.choices)
    unit_price_micros = models.BigIntegerField()
    starts_at = models.DateTimeField()
    # None: open-ended (on-demand / spot), bounded by the next reservation on its devices.
    ends_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=AllocationStatus.choices, default=AllocationStatus.LIVE)
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["node", "status"])]

    def __str__(self) -> str:
        return f"allocation {self.pk} of order {self.order_id}"


class AllocationSlot(models.Model):
    allocation = models.ForeignKey(Allocation, on_delete=models.CASCADE, related_name="slots")
    device = models.ForeignKey("providers.Device", on_delete=models.PROTECT, related_name="slots")
    span = BigIntegerRangeField()
    live = models.BooleanField(default=True)

    class Meta:
        constraints = [
            ExclusionConstraint(
                name="slot_no_overlap_per_device",
                expressions=[("span", RangeOperators.OVERLAPS)],
                condition=Q(live=True),
            ),
        ]
        indexes = [models.Index(fields=["device", "live"])]

    def __str__(self) -> str:
        return f"slot {self.pk} of allocation {self.allocation_id}"


class SpotPrice(models.Model):
    """One clearing price per pool (accelerator model x region) per round."""

    accelerator = models.ForeignKey("providers.AcceleratorModel", on_delete=models.PROTECT, related_name="+")
    region = models.CharField(max_length=32)
    round_at = models.DateTimeField()
    price_micros = models.BigIntegerField()
    winners = models.PositiveIntegerField(default=0)
    losers = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-round_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["accelerator", "region", "round_at"], name="spot_price_one_per_round"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.accelerator_id}/{self.region} @ {self.round_at:%Y-%m-%d %H:%M:%S}: {self.price_micros}"
