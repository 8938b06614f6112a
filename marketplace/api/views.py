from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.utils import timezone
from django.utils.translation import gettext as _
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.services import UsageSampleIn
from core.auth import HasScope
from core.errors import ValidationFailed
from core.schema import error_response
from marketplace.api.serializers import (
    JobEventInSerializer,
    JobLogInSerializer,
    JobSerializer,
    UsageInSerializer,
    WorkInSerializer,
)
from marketplace.selectors import LOG_READ_MAX_BYTES, job_get_for_buyer, job_log_read
from marketplace.services import JobEventIn, agent_usage_record, job_event_record, job_log_append, work_poll
from marketplace.services.work import MAX_WAIT_S
from providers.auth import IsNodeAgent, NodeCredentialAuthentication, request_node


def _int_param(request: Request, name: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationFailed(
            _("%(name)s must be a whole number.") % {"name": name}, fields={name: _("A whole number.")}
        ) from None
    return max(minimum, min(value, maximum))


# --- Agent API (/api/agent/v1/) ----------------------------------------------------------------


class AgentView(APIView):
    authentication_classes = [NodeCredentialAuthentication]
    permission_classes = [IsNodeAgent]
    # Agents are bounded by their protocol (long-poll, batched samples), not by API rate limits.
    throttle_classes: list[Any] = []


class AgentWorkView(AgentView):
    """Long-poll: ``?wait=`` seconds (at most 30) for jobs to start and stops to carry out."""

    @extend_schema(
        request=WorkInSerializer,
        parameters=[OpenApiParameter("wait", int, description="Seconds to hold the request (0-30).")],
        responses=inline_serializer(
            "AgentWorkOut",
            {
                "jobs": serializers.ListField(child=serializers.DictField()),
                "stop": serializers.ListField(child=serializers.DictField()),
                "delete_volumes": serializers.ListField(child=serializers.IntegerField()),
            },
        ),
    )
    def post(self, request: Request) -> Response:
        node = request_node(request)
        wait = _int_param(request, "wait", 0, minimum=0, maximum=MAX_WAIT_S)
        body = WorkInSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        offer = work_poll(
            node=node,
            running=body.validated_data.get("running"),
            wait_s=wait,
            volumes=body.validated_data.get("volumes"),
        )
        return Response(offer.as_json())


class AgentJobEventView(AgentView):
    @extend_schema(
        request=JobEventInSerializer,
        responses=inline_serializer("AgentJobEventOut", {"job_status": serializers.CharField()}),
    )
    def post(self, request: Request, job_id: int) -> Response:
        node = request_node(request)
        body = JobEventInSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        job = job_event_record(
            node=node,
            job_id=job_id,
            event=JobEventIn(
                seq=data["seq"],
                state=data["state"],
                at=data["at"] or timezone.now(),
                exit_code=data["exit_code"],
                ports=data["ports"],
                message=data["message"],
            ),
        )
        return Response({"job_status": job.status})


class AgentJobLogView(AgentView):
    @extend_schema(
        request=JobLogInSerializer,
        responses={
            200: inline_serializer("AgentJobLogOut", {"next_offset": serializers.IntegerField()}),
            409: error_response("The chunk starts past the end of the log (a gap); resend from next_offset."),
            413: error_response("The chunk is larger than 64 KiB of UTF-8."),
        },
    )
    def post(self, request: Request, job_id: int) -> Response:
        node = request_node(request)
        body = JobLogInSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        next_offset = job_log_append(
            node=node, job_id=job_id, offset=body.validated_data["offset"], data=body.validated_data["data"]
        )
        return Response({"next_offset": next_offset})


class AgentUsageView(AgentView):
    @extend_schema(
        request=UsageInSerializer,
        responses={
            200: inline_serializer(
                "AgentUsageOut",
                {"accepted": serializers.IntegerField(), "duplicates": serializers.IntegerField()},
            ),
            404: error_response("A sample names a job that is not this node's; nothing was stored."),
        },
    )
    def post(self, request: Request) -> Response:
        node = request_node(request)
        body = UsageInSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        samples = [
            UsageSampleIn(
                job_id=s["job_id"],
                seq=s["seq"],
                window_start=s["window_start"],
                window_end=s["window_end"],
                device_count=s["device_count"],
                utilization_pct=_quantize(s["utilization_pct"], "0.01"),
                memory_used_mib=s["memory_used_mib"],
                power_w=_quantize(s["power_w"], "0.1"),
            )
            for s in body.validated_data["samples"]
        ]
        result = agent_usage_record(node=node, samples=samples)
        return Response({"accepted": result.accepted, "duplicates": result.duplicates})


def _quantize(value: Decimal | None, step: str) -> Decimal | None:
    return None if value is None else value.quantize(Decimal(step))


# --- Buyer API (/api/v1/) ----------------------------------------------------------------------


class JobDetailView(APIView):
    permission_classes = [IsAuthenticated, HasScope]
    required_scope = "read"

    @extend_schema(responses=JobSerializer)
    def get(self, request: Request, job_id: int) -> Response:
        return Response(JobSerializer(job_get_for_buyer(user=request.user, job_id=job_id)).data)


class JobLogsView(APIView):
    """``?offset=`` (bytes) and ``?limit=`` (bytes, at most 1 MiB): a slice of the job's log."""

    permission_classes = [IsAuthenticated, HasScope]
    required_scope = "read"

    @extend_schema(
        parameters=[OpenApiParameter("offset", int), OpenApiParameter("limit", int)],
        responses=inline_serializer(
            "JobLogsOut",
            {
                "offset": serializers.IntegerField(),
                "next_offset": serializers.IntegerField(),
                "data": serializers.CharField(),
                "log_size": serializers.IntegerField(),
                "log_start": serializers.IntegerField(),
                "job_status": serializers.CharField(),
                "complete": serializers.BooleanField(),
            },
        ),
    )
    def get(self, request: Request, job_id: int) -> Response:
        job = job_get_for_buyer(user=request.user, job_id=job_id)
        offset = _int_param(request, "offset", 0, minimum=0, maximum=2**62)
        limit = _int_param(request, "limit", LOG_READ_MAX_BYTES, minimum=1, maximum=LOG_READ_MAX_BYTES)
        piece = job_log_read(job=job, offset=offset, limit=limit)
        return Response(
            {
                "offset": piece.offset,
                "next_offset": piece.next_offset,
                "data": piece.data,
                "log_size": piece.log_size,
                "log_start": piece.log_start,
                "job_status": job.status,
                # No more will come: the job ended and everything received has been read.
                "complete": job.ended and piece.next_offset >= piece.log_size,
            }
        )
