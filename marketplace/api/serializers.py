from __future__ import annotations

from decimal import Decimal
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from marketplace.models import Job, Runtime
from marketplace.services.job_spec import SSH_KEY_ENV
from marketplace.services.jobs import AGENT_STATES
from marketplace.services.usage import USAGE_BATCH_MAX
from providers.api.fields import StrictCharField, StrictIntegerField, StrictNumberField

# --- Agent protocol ----------------------------------------------------------------------------

# The largest value a PostgreSQL bigint holds: every integer bound for one is capped here, so an
# absurd number is a field error (400), never a DataError (500).
BIGINT_MAX = 2**63 - 1


class WorkInSerializer(serializers.Serializer):
    # Absent (an agent that does not say what it runs): nothing is reconciled against it.
    running = serializers.ListField(
        child=StrictIntegerField(min_value=1, max_value=BIGINT_MAX), max_length=1024, required=False
    )
    # The persistent volumes the agent holds data for; the reply names those to remove.
    volumes = serializers.ListField(
        child=StrictIntegerField(min_value=1, max_value=BIGINT_MAX), max_length=1024, required=False
    )


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
    # The service also refuses a seq far past the job's last one (EVENT_SEQ_MAX_GAP).
    seq = StrictIntegerField(min_value=1, max_value=BIGINT_MAX)
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
    offset = StrictIntegerField(min_value=0, max_value=BIGINT_MAX)
    # The byte limit (64 KiB of UTF-8) is the service's, answered with 413.
    data = StrictCharField(allow_blank=True, trim_whitespace=False)  # type: ignore[assignment]


class UsageSampleInSerializer(serializers.Serializer):
    job_id = StrictIntegerField(min_value=1, max_value=BIGINT_MAX)
    seq = StrictIntegerField(min_value=0, max_value=BIGINT_MAX)
    window_start = serializers.DateTimeField()
    window_end = serializers.DateTimeField()
    device_count = StrictIntegerField(min_value=0, max_value=4096)
    utilization_pct = StrictNumberField(
        min_value=Decimal(0), max_value=Decimal(100), allow_null=True, default=None
    )
    memory_used_mib = StrictIntegerField(min_value=0, max_value=BIGINT_MAX, allow_null=True, default=None)
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


def _host_port(host: str, port: int) -> str:
    # An IPv6 literal needs brackets before the port, as in a URL.
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _published(job: Job) -> dict[str, Any]:
    # Agents report {"8000/tcp": 32768}; the event API also takes a list, which maps nothing.
    return job.published_ports if isinstance(job.published_ports, dict) else {}


def job_endpoints(job: Job) -> list[dict[str, Any]]:
    """Each published port of the job as the buyer reaches it: ``host:port`` on the node's public
    address (``address`` is null while the node has reported none)."""
    host = job.node.public_address
    out = []
    for key, host_port in sorted(_published(job).items()):
        port, _slash, protocol = str(key).partition("/")
        if not port.isdigit() or isinstance(host_port, bool) or not isinstance(host_port, int):
            continue  # the agent's report is kept as sent; only well-formed entries are shown
        out.append(
            {
                "port": int(port),
                "protocol": protocol or "tcp",
                "host_port": host_port,
                "address": _host_port(host, host_port) if host else None,
            }
        )
    return out


def job_ssh(job: Job) -> dict[str, Any] | None:
    """How to reach a job launched in SSH mode (None for other jobs): host, port, user and the
    ``ssh`` command line; port and command are null until the agent has published the port."""
    if SSH_KEY_ENV not in (job.env or {}):
        return None
    host = job.node.public_address or None
    port = _published(job).get("22/tcp")
    if isinstance(port, bool) or not isinstance(port, int):
        port = None
    # A container's sshd runs as root; the process runtime's job runs as the agent's own user.
    if job.runtime == Runtime.DOCKER:
        user = "root"
    else:
        user = str((job.node.software or {}).get("process_user") or "")
    target = f"{user}@{host}" if user and host else host
    command = f"ssh -p {port} {target}" if host and port else None
    return {"host": host, "port": port, "user": user or None, "command": command}


class EndpointSerializer(serializers.Serializer):
    port = serializers.IntegerField(help_text="The port inside the job.")
    protocol = serializers.CharField()
    host_port = serializers.IntegerField(help_text="The port on the node it is published on.")
    address = serializers.CharField(allow_null=True, help_text="host:port to connect to.")


class SshSerializer(serializers.Serializer):
    host = serializers.CharField(allow_null=True)
    port = serializers.IntegerField(allow_null=True)
    user = serializers.CharField(allow_null=True)
    command = serializers.CharField(allow_null=True, help_text="e.g. ssh -p 32768 root@203.0.113.7")


class JobReachMixin(serializers.Serializer):
    """The node's public address, the job's published ports as ``host:port`` and its SSH line."""

    public_address = serializers.SerializerMethodField()
    endpoints = serializers.SerializerMethodField()
    ssh = serializers.SerializerMethodField()

    def get_public_address(self, job: Job) -> str | None:
        return job.node.public_address or None

    @extend_schema_field(EndpointSerializer(many=True))
    def get_endpoints(self, job: Job) -> list[dict[str, Any]]:
        return job_endpoints(job)

    @extend_schema_field(SshSerializer(allow_null=True))
    def get_ssh(self, job: Job) -> dict[str, Any] | None:
        return job_ssh(job)


class JobSerializer(JobReachMixin, serializers.ModelSerializer):
    class Meta:
        model = Job
        fields = [
            "id", "status", "node", "device_indexes", "runtime", "image", "command", "env", "ports",
            "memory_mib", "cpus", "published_ports", "exit_code", "message", "assigned_at",
            "accepted_at", "started_at", "ended_at", "stop_requested_at", "stop_deadline",
            "stop_reason", "log_size", "created_at", "updated_at", "public_address", "endpoints", "ssh",
        ]  # fmt: skip
