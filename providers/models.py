"""Hardware catalog, providers, nodes, devices and join tokens."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

from core.models import TimeStampedModel


class Vendor(models.TextChoices):
    # Translated: Chinese readers know several of these vendors by their Chinese names.
    NVIDIA = "nvidia", _("NVIDIA")
    AMD = "amd", _("AMD")
    HUAWEI = "huawei", _("Huawei")
    CAMBRICON = "cambricon", _("Cambricon")
    HYGON = "hygon", _("Hygon")
    INTEL = "intel", _("Intel")
    ALIBABA = "alibaba", _("Alibaba")
    XILINX = "xilinx", _("Xilinx")
    GENERIC = "generic", _("Generic")


class DeviceKind(models.TextChoices):
    GPU = "gpu", "GPU"
    NPU = "npu", "NPU"
    MLU = "mlu", "MLU"
    DCU = "dcu", "DCU"
    GAUDI = "gaudi", "Gaudi"
    FPGA = "fpga", "FPGA"
    CPU = "cpu", "CPU"


class AcceleratorModel(models.Model):
    """One row of the hardware catalog, with real spec-sheet figures and their source."""

    vendor = models.CharField(max_length=16, choices=Vendor.choices)
    family = models.CharField(max_length=64)
    model = models.CharField(max_length=64, unique=True)
    kind = models.CharField(max_length=8, choices=DeviceKind.choices)
    memory_gib = models.PositiveIntegerField()
    fp16_tflops = models.DecimalField(
        max_digits=9, decimal_places=2, help_text="Dense FP16/BF16 tensor TFLOPS (no sparsity)."
    )
    int8_tops = models.DecimalField(max_digits=9, decimal_places=2, help_text="Dense INT8 TOPS.")
    memory_bandwidth_gbps = models.PositiveIntegerField()
    tdp_watts = models.PositiveIntegerField()
    interconnect = models.CharField(max_length=128, blank=True)
    software_stack = models.CharField(max_length=16)
    # Marketing names vendor tools print for this device (nvidia-smi, npu-smi, cnmon, hy-smi ...),
    # used to map an agent's discovered devices onto the catalog.
    match_names = ArrayField(models.CharField(max_length=64), default=list)
    source = models.TextField(help_text="Where the figures come from (datasheet URL and note).")

    class Meta:
        ordering = ["vendor", "model"]
        constraints = [
            models.CheckConstraint(condition=~models.Q(source=""), name="accelerator_source_required"),
        ]

    def __str__(self) -> str:
        return f"{self.get_vendor_display()} {self.model}"


class Provider(TimeStampedModel):
    """An organisation that sells capacity. Users join it through memberships."""

    name = models.CharField(max_length=128)
    slug = models.SlugField(max_length=64, unique=True)
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="ProviderMembership", related_name="providers"
    )
    stripe_account_id = models.CharField(max_length=64, blank=True)
    payouts_enabled = models.BooleanField(default=False)
    # None: the exchange-wide default threshold applies.
    payout_threshold_micros = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ProviderMembership(TimeStampedModel):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        MEMBER = "member", "Member"

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="provider_memberships"
    )
    role = models.CharField(max_length=8, choices=Role.choices, default=Role.MEMBER)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["provider", "user"], name="membership_unique")]


class NodeStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    ONLINE = "online", "Online"
    SUSPECT = "suspect", "Suspect"
    OFFLINE = "offline", "Offline"
    DRAINING = "draining", "Draining"
    RETIRED = "retired", "Retired"


# The PUE a provider may declare: 1.00 is a perfect data centre; above 3.00 is a typo, not a site.
PUE_MIN = Decimal("1.00")
PUE_MAX = Decimal("3.00")


class Node(TimeStampedModel):
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="nodes")
    name = models.CharField(max_length=128)
    region = models.CharField(max_length=32, db_index=True)
    # Fabric domain: a multi-node (gang) order lands inside one cluster.
    cluster = models.CharField(max_length=64, blank=True)
    # Where buyers reach the node's jobs (an IP or DNS name): reported by the agent at
    # registration and in heartbeats (``--public-address``, else its primary outbound address).
    public_address = models.CharField(max_length=253, blank=True)
    status = models.CharField(
        max_length=10, choices=NodeStatus.choices, default=NodeStatus.PENDING, db_index=True
    )
    agent_version = models.CharField(max_length=32, blank=True)
    credential_prefix = models.CharField(max_length=16, unique=True, null=True, blank=True)
    credential_hash = models.CharField(max_length=64, blank=True)
    cpu_model = models.CharField(max_length=128, blank=True)
    cpu_cores = models.PositiveIntegerField(default=0)
    memory_mib = models.PositiveBigIntegerField(default=0)
    disk_gib = models.PositiveIntegerField(default=0)
    network = models.JSONField(default=list, blank=True)
    software = models.JSONField(default=dict, blank=True)
    pue = models.DecimalField(
        max_digits=4,
        decimal_places=2,
        default=Decimal("1.40"),
        validators=[MinValueValidator(PUE_MIN), MaxValueValidator(PUE_MAX)],
        help_text="Declared power usage effectiveness of the data centre.",
    )
    # Mean power of one of the node's devices while in use (utilisation at least
    # ``MEASURED_POWER_MIN_UTILIZATION_PCT``), from the agents' heartbeats: a time-weighted moving
    # average kept by ``heartbeats_flush``. None until a busy device has reported its power; the
    # offer's carbon estimate and TOPS/W use it instead of the catalog TDP when set.
    measured_power_w = models.DecimalField(
        max_digits=7,
        decimal_places=1,
        null=True,
        blank=True,
        help_text="Measured mean power of one device under load, W (None: not measured yet).",
    )
    # What the agent reported, checked against the catalog at registration (providers.verification);
    # ``verified_at`` is when every check passed (None: not verified, or a check failed).
    verification = models.JSONField(default=dict, blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)
    # Heartbeat coverage x job success over 30 days, refreshed by the marketplace (which also copies
    # it to the node's offer); a new node starts at 0.6.
    reliability = models.DecimalField(max_digits=4, decimal_places=3, default=Decimal("0.600"))
    last_heartbeat_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "name"], name="node_name_unique_per_provider")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.region})"


class DeviceHealth(models.TextChoices):
    OK = "ok", "OK"
    DEGRADED = "degraded", "Degraded"
    FAILED = "failed", "Failed"


class Device(models.Model):
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="devices")
    accelerator = models.ForeignKey(AcceleratorModel, on_delete=models.PROTECT, related_name="devices")
    index = models.PositiveSmallIntegerField()
    uuid = models.CharField(max_length=128)
    bus_id = models.CharField(max_length=64, blank=True)
    memory_mib = models.PositiveBigIntegerField(default=0)
    health = models.CharField(max_length=10, choices=DeviceHealth.choices, default=DeviceHealth.OK)

    class Meta:
        ordering = ["node_id", "index"]
        constraints = [
            models.UniqueConstraint(fields=["node", "index"], name="device_index_unique_per_node"),
            models.UniqueConstraint(fields=["node", "uuid"], name="device_uuid_unique_per_node"),
        ]

    def __str__(self) -> str:
        return f"{self.node.name}#{self.index}"


class JoinToken(TimeStampedModel):
    """One-time, expiring, hashed: turns an agent into a node of one provider."""

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="join_tokens")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    prefix = models.CharField(max_length=16, unique=True)
    token_hash = models.CharField(max_length=64)
    region = models.CharField(max_length=32, blank=True)
    cluster = models.CharField(max_length=64, blank=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    node = models.OneToOneField(
        Node, on_delete=models.SET_NULL, null=True, blank=True, related_name="join_token"
    )

    class Meta:
        ordering = ["-id"]
