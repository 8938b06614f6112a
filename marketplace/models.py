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
    # Denormalised from the node's devices (homogeneous per node) so the offer list filters and
    # sorts in one indexed query however many offers there are.
    accelerator = models.ForeignKey("providers.AcceleratorModel", on_delete=models.PROTECT, related_name="+")
    device_count = models.PositiveSmallIntegerField(default=0)
    region = models.CharField(max_length=32, db_index=True, default="")
    # Heartbeat coverage x job success over 30 days; new nodes start at 0.6.
    reliability = models.DecimalField(max_digits=4, decimal_places=3, default=Decimal("0.600"))
    on_demand_price_micros = models.BigIntegerField()
    reserved_price_micros = models.BigIntegerField()
    spot_floor_micros = models.BigIntegerField()
    listed = models.BooleanField(default=False)
    min_rental_minutes = models.PositiveIntegerField(default=1)
    max_rental_hours = models.PositiveIntegerField(default=24 * 30)
    # Persistent volumes on this node, per GiB-hour (micro-units); 0: the node offers none.
    volume_price_micros = models.BigIntegerField(default=0)

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


class FreeDeviceCount(models.Model):
    """A node's free devices (healthy devices minus live slots holding one at that second), the
    same figure ``offers_list`` would compute, for every second in ``[valid_from, valid_until)``.

    Written only by ``offer_free_devices_refresh`` (never by the services that write slots, so
    none of their transactions waits on it). Times are epoch seconds, the slot spans' unit; the
    window ends at the next slot start or end on the node, so a reserved window that opens or
    closes without a write ages the row out instead of making it wrong. A row is trusted only
    while its node has no ``FreeDeviceChange`` row either (see ``marketplace.selectors``).
    """

    node = models.OneToOneField(
        "providers.Node", primary_key=True, on_delete=models.CASCADE, related_name="free_device_count"
    )
    devices = models.IntegerField()
    valid_from = models.BigIntegerField()
    valid_until = models.BigIntegerField()

    def __str__(self) -> str:
        return f"{self.devices} free on node {self.node_id} in [{self.valid_from}, {self.valid_until})"


class FreeDeviceChange(models.Model):
    """A node whose free-device count may have changed since it was stored: written by
    PostgreSQL statement triggers on slot and device writes (migration 0006), in the writer's
    own transaction, so it becomes visible exactly when the write does; deleted by the refresh
    that recounts the node. Insert-only for writers: it takes no lock anyone else waits on."""

    node_id = models.BigIntegerField(db_index=True)

    def __str__(self) -> str:
        return f"node {self.node_id} changed"


class OfferCard(models.Model):
    """An offer's API representation (``OfferSerializer``'s JSON) as stored text fragments, around
    the parts that change without a write to the offer or that the request chooses: the free
    devices, the currency, the term's price per PFLOP-hour (all three terms are stored), the
    carbon figure (the grid intensities are settings) and ``updated_at`` (formatted in the
    request's time zone). The offer search (``marketplace.selectors.offer_search_page``) joins
    a page's cards instead of formatting some forty fields per offer per request.

    Written only by PostgreSQL statement triggers (migration 0012), in the writer's transaction:
    every insert or update of an offer, and every update of a node, provider or accelerator model
    that changes what the card shows. Never written by the services, so no call site can be
    forgotten; tests/marketplace/test_offer_search_fast_path.py compares the search with the
    ORM path after random writes to each of those tables.
    """

    offer = models.OneToOneField(Offer, primary_key=True, on_delete=models.CASCADE, related_name="card")
    # JSON text from ``{"id":`` up to the node's ``"software":`` (the node's software, a jsonb,
    # is rendered by Python: ``software``), then up to ``"free_devices":``, then up to ``"currency":``.
    head = models.TextField()
    software = models.TextField()
    mid = models.TextField()
    body = models.TextField()
    # ``"1.23"`` or ``null`` per term: the term price per dense FP16 PFLOP-hour.
    pflop_on_demand = models.TextField()
    pflop_reserved = models.TextField()
    pflop_spot = models.TextField()
    # Watts per device at the wall (measured power, else the TDP, times the PUE) and the offer's
    # region: the carbon figure is this times the region's grid intensity. The column is an
    # unconstrained numeric (migration 0012): the product keeps its scale, as the ORM's does,
    # so a carbon cursor reads the same digits either way.
    power_pue = models.DecimalField(max_digits=30, decimal_places=6)
    region = models.CharField(max_length=32)
    # What the carbon sort walks in order (``marketplace.selectors.offer_carbon_indexes``) and
    # filters on before reading the offer: the offer's own values.
    listed = models.BooleanField()
    accelerator_id = models.BigIntegerField()
    on_demand_price_micros = models.BigIntegerField()
    reserved_price_micros = models.BigIntegerField()
    spot_floor_micros = models.BigIntegerField()
    # From ``"tops_per_watt":`` up to the value of ``"updated_at"``.
    tail = models.TextField()
    updated_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"card of offer {self.offer_id}"


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


# The one state machine of an order. ``allocated -> open`` and ``running -> open`` re-queue an
# order whose node was lost (restart_on_failure) or whose assignment was never acknowledged.
ORDER_TRANSITIONS: dict[str, frozenset[str]] = {
    OrderStatus.OPEN: frozenset({OrderStatus.ALLOCATED, OrderStatus.CANCELLED, OrderStatus.FAILED}),
    OrderStatus.ALLOCATED: frozenset(
        {OrderStatus.RUNNING, OrderStatus.OPEN, OrderStatus.ENDED, OrderStatus.CANCELLED, OrderStatus.FAILED}
    ),
    OrderStatus.RUNNING: frozenset({OrderStatus.ENDED, OrderStatus.OPEN, OrderStatus.FAILED}),
    OrderStatus.ENDED: frozenset(),
    OrderStatus.CANCELLED: frozenset(),
    OrderStatus.FAILED: frozenset(),
}


class OrderReason(models.TextChoices):
    """Why an order is in its status: the stable code kept in ``Order.status_reason``.

    Details a reason needs (the exit code, the agent's failure message, why a spot job was
    preempted) are in ``Order.status_params``. The words, in each language, are in
    ``marketplace.reasons``; the English of each code is also what the API returns as
    ``status_reason``.
    """

    CANCELLED_BY_BUYER = "cancelled_by_buyer", "Cancelled by the buyer"
    STOPPING_FOR_BUYER = "stopping_for_buyer", "Stopping at the buyer's request"
    RESERVED_WINDOW_PASSED = "reserved_window_passed", "No capacity before the reserved window passed"
    REQUEUED_NO_ACK = "requeued_no_ack", "Re-queued: the node did not respond"
    REQUEUED_NODE_LOST = "requeued_node_lost", "Re-queued: the node was lost"
    RESTART_UNFUNDED = "restart_unfunded", "The wallet cannot cover a restart"
    RETRY_UNFUNDED = "retry_unfunded", "The wallet cannot cover a retry"
    JOB_EXITED = "job_exited", "The job exited"
    JOB_FAILED = "job_failed", "The job failed"
    JOB_STOPPED = "job_stopped", "The job was stopped"
    JOB_PREEMPTED = "job_preempted", "The job was preempted"
    NODE_LOST = "node_lost", "The node went offline"


class Runtime(models.TextChoices):
    DOCKER = "docker", "Docker"
    PROCESS = "process", "Process"


class Order(TimeStampedModel):
    buyer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="orders")
    term = models.CharField(max_length=10, choices=Term.choices)
    status = models.CharField(
        max_length=10, choices=OrderStatus.choices, default=OrderStatus.OPEN, db_index=True
    )
    # An ``OrderReason`` code ("" for none) and its details, e.g. ``{"exit_code": 0}``.
    status_reason = models.CharField(max_length=200, blank=True)
    status_params = models.JSONField(default=dict, blank=True)
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
    # Persistent volumes the job mounts: ``[{"id": volume id, "name": "data"}]`` (resolved and
    # bound to the volume's node when the order is placed; see ``marketplace.services.volumes``).
    volumes = models.JSONField(default=list, blank=True)
    idempotency_key = models.CharField(max_length=128)
    # SHA-256 of the canonical request: the same key with a different body is a conflict.
    request_hash = models.CharField(max_length=64, default="")
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


# --- Jobs ------------------------------------------------------------------------------------
# What an agent executes. Minimal for the agent protocol; orders and allocations link to it with
# the matcher.


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    ASSIGNED = "assigned", "Assigned"
    STARTING = "starting", "Starting"
    RUNNING = "running", "Running"
    EXITED = "exited", "Exited"
    FAILED = "failed", "Failed"
    STOPPED = "stopped", "Stopped"
    PREEMPTED = "preempted", "Preempted"
    LOST = "lost", "Lost"


JOB_ENDED = frozenset(
    {JobStatus.EXITED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.PREEMPTED, JobStatus.LOST}
)
# On a node: the agent has been told about it, or may be told about it on its next poll.
JOB_LIVE = frozenset({JobStatus.ASSIGNED, JobStatus.STARTING, JobStatus.RUNNING})

# The one state machine of a job. ``lost``: the node went offline under it.
TRANSITIONS: dict[str, frozenset[str]] = {
    JobStatus.QUEUED: frozenset({JobStatus.ASSIGNED, JobStatus.STOPPED, JobStatus.FAILED}),
    JobStatus.ASSIGNED: frozenset({JobStatus.STARTING, JobStatus.RUNNING, *JOB_ENDED}),
    JobStatus.STARTING: frozenset({JobStatus.RUNNING, *JOB_ENDED}),
    JobStatus.RUNNING: frozenset(JOB_ENDED),
    **{status: frozenset() for status in JOB_ENDED},
}


class StopReason(models.TextChoices):
    BUYER = "buyer", "Stopped by the buyer"
    PREEMPTION = "preemption", "Preempted"
    FUNDS = "funds", "Wallet cannot cover the next interval"
    OPERATOR = "operator", "Stopped by an operator"
    NODE_LOST = "node_lost", "The node went offline"
    # A reserved window closing, or an on-demand/spot job reaching the offer's maximum rental.
    RENTAL_END = "rental_end", "The rental period ended"


class Job(TimeStampedModel):
    """What one agent executes on some devices of its node."""

    node = models.ForeignKey("providers.Node", on_delete=models.PROTECT, related_name="jobs")
    order = models.ForeignKey(Order, on_delete=models.PROTECT, null=True, blank=True, related_name="jobs")
    allocation = models.ForeignKey(
        Allocation, on_delete=models.PROTECT, null=True, blank=True, related_name="jobs"
    )
    # The billing lease that meters this job (a plain id: billing knows nothing of jobs).
    lease_id = models.BigIntegerField(null=True, blank=True)
    # Spot: the clearing price the job pays now; preemption notices name why.
    preemption_reason = models.CharField(max_length=32, blank=True)
    buyer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="jobs"
    )
    device_indexes = ArrayField(models.PositiveSmallIntegerField(), default=list)
    runtime = models.CharField(max_length=8, choices=Runtime.choices, default=Runtime.DOCKER)
    image = models.CharField(max_length=255, blank=True)
    command = models.JSONField(default=list, blank=True)
    env = models.JSONField(default=dict, blank=True)
    ports = models.JSONField(default=list, blank=True)
    memory_mib = models.PositiveBigIntegerField(null=True, blank=True)
    cpus = models.PositiveIntegerField(null=True, blank=True)

    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.QUEUED)
    exit_code = models.IntegerField(null=True, blank=True)
    published_ports = models.JSONField(default=dict, blank=True)
    message = models.TextField(blank=True)
    last_event_seq = models.BigIntegerField(default=0)

    assigned_at = models.DateTimeField(null=True, blank=True)
    accepted_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    stop_requested_at = models.DateTimeField(null=True, blank=True)
    stop_deadline = models.DateTimeField(null=True, blank=True)
    stop_reason = models.CharField(max_length=16, choices=StopReason.choices, blank=True)

    # Byte offsets of the job's UTF-8 log: everything before ``log_start`` was dropped to keep
    # at most LOG_MAX_BYTES per job; ``log_size`` is the next offset the agent must send.
    log_size = models.BigIntegerField(default=0)
    log_start = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["node", "status"], name="job_node_status")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(log_start__gte=0) & models.Q(log_size__gte=models.F("log_start")),
                name="job_log_offsets_ordered",
            ),
        ]

    def __str__(self) -> str:
        return f"job {self.pk} ({self.status})"

    @property
    def ended(self) -> bool:
        return self.status in JOB_ENDED


class JobLogChunk(models.Model):
    """One appended piece of a job's log: bytes ``[offset, end_offset)``."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="log_chunks")
    offset = models.BigIntegerField()
    end_offset = models.BigIntegerField()
    data = models.BinaryField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "offset"], name="job_log_chunk_offset_unique"),
            models.CheckConstraint(
                condition=models.Q(end_offset__gt=models.F("offset")), name="job_log_chunk_not_empty"
            ),
        ]
        indexes = [models.Index(fields=["job", "end_offset"], name="job_log_chunk_end")]

    def __str__(self) -> str:
        return f"job {self.job_id} log [{self.offset}, {self.end_offset})"


# --- Persistent volumes -------------------------------------------------------------------------


class VolumeStatus(models.TextChoices):
    READY = "ready", "Ready"
    DELETED = "deleted", "Deleted"


class Volume(TimeStampedModel):
    """A buyer's named disk space on one node, billed per GiB-hour until it is deleted.

    It outlives the jobs that mount it (at ``/volumes/<name>`` inside the job); its agent keeps it
    under its own state directory. Billing is a ``Lease`` of kind ``volume`` whose "device
    count" is the size in GiB (``lease_id``, a plain id).
    """

    buyer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="volumes")
    node = models.ForeignKey("providers.Node", on_delete=models.PROTECT, related_name="volumes")
    name = models.CharField(max_length=63)
    size_gib = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    price_micros = models.BigIntegerField()  # per GiB-hour, fixed at creation
    status = models.CharField(max_length=10, choices=VolumeStatus.choices, default=VolumeStatus.READY)
    lease_id = models.BigIntegerField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    # Since when the buyer's wallet cannot cover its storage; after the grace it is deleted.
    unpaid_since = models.DateTimeField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=128)
    request_hash = models.CharField(max_length=64, default="")

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["node", "status"], name="volume_node_status")]
        constraints = [
            models.UniqueConstraint(fields=["buyer", "idempotency_key"], name="volume_idempotency_unique"),
            # A job names its volumes by name: one live volume of a name per buyer.
            models.UniqueConstraint(
                fields=["buyer", "name"], condition=Q(status="ready"), name="volume_live_name_unique"
            ),
            models.CheckConstraint(condition=Q(size_gib__gte=1), name="volume_size_positive"),
            models.CheckConstraint(condition=Q(price_micros__gte=0), name="volume_price_nonnegative"),
        ]

    def __str__(self) -> str:
        return f"volume {self.pk} {self.name!r} on node {self.node_id} ({self.status})"


# --- Outgoing webhooks (issue 13) ----------------------------------------------------------------


class WebhookEventType(models.TextChoices):
    JOB_STARTED = "job.started", "Job started"
    JOB_ENDED = "job.ended", "Job ended"
    JOB_PREEMPTED = "job.preempted", "Job preempted (notice given)"
    JOB_STOPPED_FOR_FUNDS = "job.stopped_for_funds", "Job stopped for funds (notice given)"


class WebhookEndpoint(models.Model):
    """A buyer's URL that receives signed job events. The signing secret is shown once, at
    creation; it is stored because every delivery is signed with it."""

    buyer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_endpoints"
    )
    url = models.URLField(max_length=500)
    secret = models.CharField(max_length=80)
    # Subscribed event types; empty: all of them.
    events = ArrayField(models.CharField(max_length=32), default=list, blank=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"webhook {self.pk} -> {self.url}"


class WebhookDeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed"


class WebhookDelivery(models.Model):
    """One event for one endpoint, and the log of its attempts (the buyer sees it)."""

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event_id = models.CharField(max_length=40)
    event_type = models.CharField(max_length=32, choices=WebhookEventType.choices)
    # What makes the event unique (``job.started:42``): emitting it again adds nothing.
    dedupe_key = models.CharField(max_length=120)
    body = models.TextField()
    status = models.CharField(
        max_length=10, choices=WebhookDeliveryStatus.choices, default=WebhookDeliveryStatus.PENDING
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    last_status_code = models.IntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["endpoint", "dedupe_key"], name="webhook_delivery_once"),
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="webhook_delivery_due")]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id} -> endpoint {self.endpoint_id} ({self.status})"
