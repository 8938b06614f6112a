from __future__ import annotations

from decimal import Decimal
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from marketplace.models import Job
from marketplace.services.jobs import AGENT_STATES
from marketplace.services.usage import USAGE_BATCH_MAX
from providers.api.fields import StrictCharField, StrictIntegerField, StrictNumberField

# --- Agent protocol ----------------------------------------------------------------------------


class WorkInSerializer(serializers.Serializer):
    running = serializers.ListField(child=StrictIntegerField(min_value=1), max_length=1024, default=list)


@extend_schema_field(OpenApiTypes.OBJECT)
class PortsField(serializers.Field):
    """Published ports as the agent reports them: ``{"8000/tcp": 8000}`` (or a list)."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict | list):
            raise serializers.ValidationError("An object or a list is required.")
        if len(data) > 256:
            raise serializers.ValidationError("At most 256 ports.")
        return data

    def to_representation(self, value: Any) -> Any:
        return value


class JobEventInSerializer(serializers.Serializer):
    seq = StrictIntegerField(min_value=1)
    state = serializers.ChoiceField(choices=AGENT_STATES)
    at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    exit_code = StrictIntegerField(
        required=False, allow_null=True, default=None, min_value=-(2**31), max_value=2**31 - 1
    )
    ports = PortsField(required=False, allow_null=True, default=None)
    message = StrictCharField(
        required=False, allow_blank=True, default="", max_length=10_000, trim_whitespace=False
    )


class JobLogInSerializer(serializers.Serializer):
    offset = StrictIntegerField(min_value=0)
    # The byte limit (64 KiB of UTF-8) is the service's, answered with 413.
    data = StrictCharField(allow_blank=True, trim_whitespace=False)  # type: ignore[assignment]


class UsageSampleInSerializer(serializers.Serializer):
    job_id = StrictIntegerField(min_value=1)
    seq = StrictIntegerField(min_value=0)
    window_start = serializers.DateTimeField()
    window_end = serializers.DateTimeField()
    device_count = StrictIntegerField(min_value=0, max_value=4096)
    utilization_pct = StrictNumberField(
        min_value=Decimal(0), max_value=Decimal(100), allow_null=True, default=None
    )
    memory_used_mib = StrictIntegerField(min_value=0, allow_null=True, default=None)
    power_w = StrictNumberField(
        min_value=Decimal(0), max_value=Decimal(1_000_000), allow_null=True, default=None
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["window_end"] < attrs["window_start"]:
            raise serializers.ValidationError({"window_end": "Must not be before window_start."})
        return attrs


class UsageInSerializer(serializers.Serializer):
    samples = serializers.ListField(child=UsageSampleInSerializer(), max_length=USAGE_BATCH_MAX)


# --- Buyer API ---------------------------------------------------------------------------------


class JobSerializer(serializers.ModelSerializer):
    class Meta:
        model = Job
        fields = [
            "id", "status", "node", "device_indexes", "runtime", "image", "command", "env", "ports",
            "memory_mib", "cpus", "published_ports", "exit_code", "message", "assigned_at",
            "accepted_at", "started_at", "ended_at", "stop_requested_at", "stop_deadline",
            "stop_reason", "log_size", "created_at", "updated_at",
        ]  # fmt: skip
