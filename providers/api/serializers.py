from __future__ import annotations

from decimal import Decimal

from rest_framework import serializers

from providers.api.fields import StrictCharField, StrictIntegerField, StrictNumberField, StringMapField
from providers.models import AcceleratorModel, Device, Node
from providers.services import AGENT_VENDORS, MAX_DEVICES_PER_NODE


class AcceleratorSerializer(serializers.ModelSerializer):
    class Meta:
        model = AcceleratorModel
        fields = [
            "id", "vendor", "family", "model", "kind", "memory_gib", "fp16_tflops", "int8_tops",
            "memory_bandwidth_gbps", "tdp_watts", "interconnect", "software_stack", "source",
        ]  # fmt: skip


# --- Agent protocol ----------------------------------------------------------------------------


class HostInSerializer(serializers.Serializer):
    cpu_model = StrictCharField(max_length=128, allow_blank=True)
    cpu_cores = StrictIntegerField(min_value=0, max_value=1_000_000)
    memory_mib = StrictIntegerField(min_value=0, max_value=2**53)
    disk_gib = StrictIntegerField(min_value=0, max_value=2**31 - 1)
    nics = serializers.ListField(child=serializers.DictField(), required=False, max_length=64)


class DeviceInSerializer(serializers.Serializer):
    vendor = serializers.ChoiceField(choices=AGENT_VENDORS)
    model = StrictCharField(max_length=128)
    index = StrictIntegerField(min_value=0, max_value=32767)
    uuid = StrictCharField(max_length=128)
    # The agent sends null where its tool prints none (CPU devices have no PCI bus id; some
    # tools report no memory).
    bus_id = StrictCharField(max_length=64, allow_blank=True, allow_null=True, required=False)
    memory_mib = StrictIntegerField(min_value=0, max_value=2**53, allow_null=True, required=False)


class InventoryInSerializer(serializers.Serializer):
    host = HostInSerializer()
    devices = serializers.ListField(child=DeviceInSerializer(), max_length=MAX_DEVICES_PER_NODE)
    software = StringMapField(required=False)


class RegisterInSerializer(serializers.Serializer):
    token = StrictCharField(max_length=256)
    name = StrictCharField(max_length=128)
    agent_version = StrictCharField(max_length=32, allow_blank=True)
    inventory = InventoryInSerializer()


class DeviceReadingInSerializer(serializers.Serializer):
    index = StrictIntegerField(min_value=0, max_value=32767)
    uuid = StrictCharField(max_length=128, allow_blank=True, required=False, default="")
    health = serializers.ChoiceField(choices=["ok", "degraded", "failed"])
    utilization_pct = StrictNumberField(
        min_value=Decimal(0), max_value=Decimal(100), allow_null=True, required=False, default=None
    )
    memory_used_mib = StrictIntegerField(min_value=0, allow_null=True, required=False, default=None)
    power_w = StrictNumberField(
        min_value=Decimal(0), max_value=Decimal(100_000), allow_null=True, required=False, default=None
    )
    temperature_c = StrictNumberField(
        min_value=Decimal(-100), max_value=Decimal(300), allow_null=True, required=False, default=None
    )


class HeartbeatInSerializer(serializers.Serializer):
    agent_version = StrictCharField(max_length=32, allow_blank=True, required=False, default="")
    running_jobs = serializers.ListField(child=StrictIntegerField(min_value=1), max_length=1024, default=list)
    devices = serializers.ListField(
        child=DeviceReadingInSerializer(), max_length=MAX_DEVICES_PER_NODE, default=list
    )


# --- Provider API ------------------------------------------------------------------------------


class JoinTokenInSerializer(serializers.Serializer):
    provider = serializers.IntegerField(required=False, allow_null=True)
    region = serializers.CharField(max_length=32, allow_blank=True, required=False, default="")
    cluster = serializers.CharField(max_length=64, allow_blank=True, required=False, default="")


class DeviceSerializer(serializers.ModelSerializer):
    accelerator = serializers.CharField(source="accelerator.model")
    vendor = serializers.CharField(source="accelerator.vendor")
    kind = serializers.CharField(source="accelerator.kind")

    class Meta:
        model = Device
        fields = ["index", "uuid", "bus_id", "accelerator", "vendor", "kind", "memory_mib", "health"]


class NodeSerializer(serializers.ModelSerializer):
    devices = DeviceSerializer(many=True)

    class Meta:
        model = Node
        fields = [
            "id", "provider", "name", "region", "cluster", "status", "agent_version", "cpu_model",
            "cpu_cores", "memory_mib", "disk_gib", "network", "software", "pue", "verified_at",
            "last_heartbeat_at", "created_at", "devices",
        ]  # fmt: skip
