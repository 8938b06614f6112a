from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.utils.translation import gettext as _
from rest_framework import serializers

from core.errors import ValidationFailed
from providers.api.fields import StrictCharField, StrictIntegerField, StrictNumberField, StringMapField
from providers.models import AcceleratorModel, Device, Node
from providers.services import (
    AGENT_VENDORS,
    MAX_DEVICES_PER_NODE,
    PUBLIC_ADDRESS_MAX,
    DeviceReading,
    HeartbeatIn,
    public_address_problem,
)


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
    # Where buyers reach the node's jobs; the agent's --public-address or its outbound address.
    public_address = StrictCharField(max_length=PUBLIC_ADDRESS_MAX, required=False, allow_blank=True)

    def validate_public_address(self, value: str) -> str:
        if value and (problem := public_address_problem(value)) is not None:
            raise serializers.ValidationError(problem)
        return value


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
    public_address = StrictCharField(max_length=PUBLIC_ADDRESS_MAX, required=False, allow_blank=True)


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
            "cpu_cores", "memory_mib", "disk_gib", "network", "software", "pue", "verification", "verified_at",
            "reliability", "last_heartbeat_at", "created_at", "devices", "public_address",
        ]  # fmt: skip


# The heartbeat is the hottest request of the exchange (every node, every 10 s). Nested DRF
# serializers cost ~3 ms of CPU for an 8-device body, several times the rest of the request, so
# it is parsed by hand with exactly the rules of HeartbeatInSerializer (which documents it).
_HEALTH = frozenset({"ok", "degraded", "failed"})
_NUMBER_BOUNDS = {"utilization_pct": (0, 100), "power_w": (0, 100_000), "temperature_c": (-100, 300)}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad_text(value: str) -> str | None:
    """Why ``value`` cannot be stored, or None: the rules of DRF's ``CharField``.

    A NUL byte cannot go into PostgreSQL text and a lone surrogate cannot be encoded as UTF-8 for
    Redis; either one stored would make every later heartbeat flush fail.
    """
    if "\x00" in value:
        return _("Null characters are not allowed.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return _("Surrogate characters are not allowed.")
    return None


def parse_heartbeat(data: object) -> HeartbeatIn:
    """Validate a heartbeat body; raises ``ValidationFailed`` with dotted field paths."""
    errors: dict[str, str] = {}
    if not isinstance(data, dict):
        raise ValidationFailed(
            "A JSON object is required.", fields={"non_field_errors": "A JSON object is required."}
        )
    agent_version = data.get("agent_version", "")
    if not isinstance(agent_version, str) or len(agent_version) > 32:
        errors["agent_version"] = "A string of at most 32 characters."
    elif (problem := _bad_text(agent_version)) is not None:
        errors["agent_version"] = problem
    running = data.get("running_jobs", [])
    if (
        not isinstance(running, list)
        or len(running) > 1024
        or not all(_is_int(j) and j >= 1 for j in running)
    ):
        errors["running_jobs"] = "A list of at most 1024 job ids."
    devices_in = data.get("devices", [])
    devices: list[DeviceReading] = []
    if not isinstance(devices_in, list) or len(devices_in) > MAX_DEVICES_PER_NODE:
        errors["devices"] = f"A list of at most {MAX_DEVICES_PER_NODE} devices."
        devices_in = []
    for position, device in enumerate(devices_in):
        prefix = f"devices.{position}"
        if not isinstance(device, dict):
            errors[prefix] = "A JSON object is required."
            continue
        index: Any = device.get("index")
        uuid: Any = device.get("uuid", "")
        health: Any = device.get("health")
        if not _is_int(index) or not 0 <= index <= 32767:
            errors[f"{prefix}.index"] = "An integer from 0 to 32767."
        if not isinstance(uuid, str) or len(uuid) > 128:
            errors[f"{prefix}.uuid"] = "A string of at most 128 characters."
        elif (problem := _bad_text(uuid)) is not None:
            errors[f"{prefix}.uuid"] = problem
        # A list or object here is unhashable: check the type before the set lookup.
        if not isinstance(health, str) or health not in _HEALTH:
            errors[f"{prefix}.health"] = "One of ok, degraded, failed."
        numbers: dict[str, float | None] = {}
        for name, (low, high) in _NUMBER_BOUNDS.items():
            value = device.get(name)
            if value is None:
                numbers[name] = None
            elif isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                errors[f"{prefix}.{name}"] = f"A number from {low} to {high}, or null."
            else:
                numbers[name] = float(value)
        memory = device.get("memory_used_mib")
        if memory is not None and (not _is_int(memory) or memory < 0):
            errors[f"{prefix}.memory_used_mib"] = "A non-negative integer, or null."
        if not errors:
            devices.append(
                DeviceReading(
                    index=index,
                    uuid=uuid,
                    health=health,
                    utilization_pct=numbers["utilization_pct"],
                    memory_used_mib=memory,
                    power_w=numbers["power_w"],
                    temperature_c=numbers["temperature_c"],
                )
            )
    public_address = data.get("public_address", "")
    if public_address != "" and (problem := public_address_problem(public_address)) is not None:
        errors["public_address"] = problem
    if errors:
        first = next(iter(errors.items()))
        raise ValidationFailed(f"{first[0]}: {first[1]}", fields=errors)
    return HeartbeatIn(
        agent_version=agent_version,
        running_jobs=list(running),
        devices=devices,
        public_address=public_address,
    )
