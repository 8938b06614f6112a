from __future__ import annotations

from typing import Any, cast

from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from core.api import query_choice
from core.auth import HasScope
from core.idempotency import idempotency_parameter, idempotent
from core.schema import error_response
from providers.api.serializers import (
    AcceleratorSerializer,
    HeartbeatInSerializer,
    JoinTokenInSerializer,
    NodeSerializer,
    RegisterInSerializer,
    parse_heartbeat,
)
from providers.auth import IsNodeAgent, NodeCredentialAuthentication, request_node
from providers.models import AcceleratorModel, Node, NodeStatus
from providers.selectors import nodes_for_member, provider_for_member
from providers.services import (
    heartbeat_record,
    inventory_from_json,
    join_token_create,
    node_register,
)


class AcceleratorListView(generics.ListAPIView):
    """The hardware catalog: public, small, unpaginated."""

    permission_classes = [AllowAny]
    serializer_class = AcceleratorSerializer
    pagination_class = None
    queryset = AcceleratorModel.objects.order_by("vendor", "model")


# --- Provider API ------------------------------------------------------------------------------


JOIN_TOKEN_OUT = inline_serializer(
    "JoinTokenOut",
    {
        "id": serializers.IntegerField(),
        "provider": serializers.IntegerField(),
        "token": serializers.CharField(),
        "install_command": serializers.CharField(),
        "region": serializers.CharField(),
        "cluster": serializers.CharField(),
        "expires_at": serializers.DateTimeField(),
    },
)


class JoinTokenCreateView(APIView):
    """Issue a one-time join token and the one-line install command for a node."""

    permission_classes = [IsAuthenticated, HasScope]
    required_scope = "provider"

    @extend_schema(
        request=JoinTokenInSerializer,
        responses={
            201: JOIN_TOKEN_OUT,
            200: JOIN_TOKEN_OUT,
        },
        parameters=[idempotency_parameter()],
        description=(
            "201 with the token and its install command (shown once); a retry with the same "
            "Idempotency-Key and body answers 200 with the same token."
        ),
    )
    @idempotent()
    def post(self, request: Request) -> Response:
        body = JoinTokenInSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        provider = provider_for_member(
            user=cast(User, request.user), provider_id=body.validated_data.get("provider")
        )
        issued = join_token_create(
            provider=provider,
            created_by=cast(User, request.user),
            region=body.validated_data["region"],
            cluster=body.validated_data["cluster"],
        )
        join_token = issued.join_token
        return Response(
            {
                "id": join_token.pk,
                "provider": provider.pk,
                "token": issued.token,
                "install_command": issued.install_command,
                "region": join_token.region,
                "cluster": join_token.cluster,
                "expires_at": serializers.DateTimeField().to_representation(join_token.expires_at),
            },
            status=status.HTTP_201_CREATED,
        )


class NodeListView(generics.ListAPIView):
    """The nodes of every provider the user is a member of."""

    permission_classes = [IsAuthenticated, HasScope]
    required_scope = "provider"
    serializer_class = NodeSerializer

    def get_queryset(self) -> QuerySet[Node]:
        nodes = nodes_for_member(user=cast(User, self.request.user))
        node_status = query_choice(self.request, "status", NodeStatus.values)
        if node_status:
            nodes = nodes.filter(status=node_status)
        region = self.request.query_params.get("region")
        if region:
            nodes = nodes.filter(region=region)
        return nodes

    @extend_schema(
        parameters=[OpenApiParameter("status", str, enum=NodeStatus.values), OpenApiParameter("region", str)]
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


# --- Agent API (/api/agent/v1/) ----------------------------------------------------------------


class AgentPingView(APIView):
    """A trivial JSON endpoint: connectivity checks and the heartbeat benchmark's baseline."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    # Probed by agents and load balancers, and the benchmarks' floor: never throttled.
    throttle_classes: list[Any] = []

    @extend_schema(
        responses=inline_serializer(
            "AgentPingOut", {"ok": serializers.BooleanField(), "server_time": serializers.DateTimeField()}
        )
    )
    def get(self, request: Request) -> Response:
        return Response({"ok": True, "server_time": timezone.now()})


class AgentRegisterView(APIView):
    """A join token turns the calling agent into a pending node; the credential is shown once."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    # Per client IP (the Redis cache): bounds join-token guessing.
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "agent_register"

    @extend_schema(
        request=RegisterInSerializer,
        responses={
            201: inline_serializer(
                "AgentRegisterOut",
                {
                    "node_id": serializers.IntegerField(),
                    "credential": serializers.CharField(),
                    "heartbeat_interval": serializers.IntegerField(),
                },
            ),
            409: error_response("The provider already has a node of this name."),
            410: error_response("The join token was already used, or has expired."),
        },
    )
    def post(self, request: Request) -> Response:
        body = RegisterInSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        registered = node_register(
            token=data["token"],
            name=data["name"],
            agent_version=data["agent_version"],
            inventory=inventory_from_json(data["inventory"]),
        )
        return Response(
            {
                "node_id": registered.node.pk,
                "credential": registered.credential,
                "heartbeat_interval": registered.heartbeat_interval,
            },
            status=status.HTTP_201_CREATED,
        )


class AgentHeartbeatView(APIView):
    """Liveness and device health; lands in Redis only (see ``heartbeat_record``)."""

    authentication_classes = [NodeCredentialAuthentication]
    permission_classes = [IsNodeAgent]
    # Agents are bounded by their protocol (one heartbeat per 10 s), not by the API rate limits.
    throttle_classes: list[Any] = []

    @extend_schema(
        request=HeartbeatInSerializer,
        responses=inline_serializer(
            "AgentHeartbeatOut",
            {"node_status": serializers.CharField(), "server_time": serializers.DateTimeField()},
        ),
    )
    def post(self, request: Request) -> Response:
        node = request_node(request)
        heartbeat_record(node=node, payload=parse_heartbeat(request.data))
        return Response({"node_status": node.status, "server_time": timezone.now()})
