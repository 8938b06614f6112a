"""Buyer API for spend controls and outgoing webhooks (issue 13, item 3).

``GET/PATCH /api/v1/spend-controls``; ``GET/POST /api/v1/webhooks``, ``GET/DELETE
/api/v1/webhooks/{id}``, ``GET /api/v1/webhooks/{id}/deliveries`` (the delivery log).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.services.spend import (
    MAX_LIMIT_MICROS,
    month_start,
    spend_controls_get,
    spend_controls_set,
    spend_figures,
)
from core.api import MoneyField
from core.auth import HasScope
from core.idempotency import idempotency_parameter, idempotent
from core.money import format_amount
from core.schema import error_response
from marketplace.models import WebhookDelivery, WebhookEndpoint, WebhookEventType
from marketplace.services.webhooks import (
    MAX_URL_LENGTH,
    webhook_endpoint_create,
    webhook_endpoint_delete,
    webhook_endpoint_get,
)

# --- Spend controls ----------------------------------------------------------------------------


class SpendControlsInSerializer(serializers.Serializer):
    monthly_cap = MoneyField(
        required=False, allow_null=True, min_micros=0, max_micros=MAX_LIMIT_MICROS, help_text="null: no cap."
    )
    low_balance_threshold = MoneyField(
        required=False,
        allow_null=True,
        min_micros=0,
        max_micros=MAX_LIMIT_MICROS,
        help_text="E-mail when the available balance falls below it; null: no e-mail.",
    )


class SpendControlsSerializer(serializers.Serializer):
    monthly_cap = serializers.CharField(allow_null=True)
    low_balance_threshold = serializers.CharField(allow_null=True)
    currency = serializers.CharField()
    month_start = serializers.DateTimeField()
    spent_this_month = serializers.CharField(
        help_text="Charges posted this month (UTC) + open holds and escrow."
    )
    charged_this_month = serializers.CharField()
    committed = serializers.CharField(help_text="Open holds and unspent escrow of open orders.")


def _user_id(request: Request) -> int:
    assert request.user.pk is not None  # IsAuthenticated
    return int(request.user.pk)


def _controls_body(user_id: int) -> dict[str, Any]:
    control = spend_controls_get(user_id=user_id)
    figures = spend_figures(user_id=user_id)

    def money(value: int | None) -> str | None:
        return None if value is None else format_amount(value)

    return {
        "monthly_cap": money(control.monthly_cap_micros),
        "low_balance_threshold": money(control.low_balance_threshold_micros),
        "currency": figures.currency or settings.SUANLI_CURRENCY,
        "month_start": month_start(),
        "spent_this_month": format_amount(figures.spent_micros),
        "charged_this_month": format_amount(figures.charged_micros),
        "committed": format_amount(figures.committed_micros),
    }


class SpendControlsView(APIView):
    """The buyer's monthly spend cap and low-balance threshold, with this month's figures."""

    permission_classes = [IsAuthenticated, HasScope]

    @property
    def required_scope(self) -> str:
        return "trade" if self.request.method == "PATCH" else "read"

    @extend_schema(responses=SpendControlsSerializer)
    def get(self, request: Request) -> Response:
        body = _controls_body(_user_id(request))
        return Response(SpendControlsSerializer(body).data)

    @extend_schema(
        request=SpendControlsInSerializer,
        responses={200: SpendControlsSerializer, 400: error_response("An amount is invalid.")},
        description="Set either limit (a decimal string) or clear it (null); a limit not sent is kept. "
        "Orders that would take spent_this_month past the cap are refused with 402 spend_cap_exceeded.",
    )
    def patch(self, request: Request) -> Response:
        data = SpendControlsInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        changes = {
            f"{name}_micros": data.validated_data[name]
            for name in ("monthly_cap", "low_balance_threshold")
            if name in data.validated_data
        }
        spend_controls_set(user_id=_user_id(request), **changes)
        return Response(SpendControlsSerializer(_controls_body(_user_id(request))).data)


# --- Webhooks ----------------------------------------------------------------------------------


class WebhookInSerializer(serializers.Serializer):
    url = serializers.CharField(max_length=MAX_URL_LENGTH, help_text="http(s) URL that receives the events.")
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=WebhookEventType.values),
        required=False,
        max_length=len(WebhookEventType.values),
        help_text="Event types to receive; omitted or empty: all.",
    )


class WebhookEndpointSerializer(serializers.ModelSerializer):
    secret_hint = serializers.SerializerMethodField(
        help_text="The secret's first characters (it is shown once)."
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["id", "url", "events", "secret_hint", "created_at"]

    def get_secret_hint(self, endpoint: WebhookEndpoint) -> str:
        return endpoint.secret[:10] + "..."


class WebhookEndpointCreatedSerializer(WebhookEndpointSerializer):
    secret = serializers.CharField(help_text="Signing secret: shown only in this answer; store it now.")

    class Meta(WebhookEndpointSerializer.Meta):
        fields = [*WebhookEndpointSerializer.Meta.fields, "secret"]


class WebhookDeliverySerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookDelivery
        fields = [
            "id", "event_id", "event_type", "status", "attempts", "last_status_code", "last_error",
            "next_attempt_at", "created_at", "delivered_at", "body",
        ]  # fmt: skip


class WebhookListCreateView(generics.ListAPIView):
    """The buyer's webhook endpoints, and registering one."""

    permission_classes = [IsAuthenticated, HasScope]
    serializer_class = WebhookEndpointSerializer

    @property
    def required_scope(self) -> str:
        return "trade" if self.request.method == "POST" else "read"

    def get_queryset(self) -> QuerySet[WebhookEndpoint]:
        return WebhookEndpoint.objects.filter(buyer_id=self.request.user.pk, active=True).order_by("-id")

    @extend_schema(
        request=WebhookInSerializer,
        responses={
            201: WebhookEndpointCreatedSerializer,
            400: error_response("The URL or an event is invalid."),
        },
        parameters=[idempotency_parameter(required=True)],
        description="Register a URL; the answer carries the signing secret, shown only once. Deliveries are "
        "signed with the Suanli-Signature header (see the API guide).",
    )
    @idempotent(required=True)
    def post(self, request: Request) -> Response:
        data = WebhookInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        endpoint = webhook_endpoint_create(
            buyer=request.user,  # type: ignore[arg-type]
            url=data.validated_data["url"],
            events=data.validated_data.get("events") or [],
        )
        return Response(WebhookEndpointCreatedSerializer(endpoint).data, status=status.HTTP_201_CREATED)


class WebhookDetailView(APIView):
    """One endpoint; DELETE stops deliveries to it."""

    permission_classes = [IsAuthenticated, HasScope]

    @property
    def required_scope(self) -> str:
        return "trade" if self.request.method == "DELETE" else "read"

    @extend_schema(responses=WebhookEndpointSerializer)
    def get(self, request: Request, webhook_id: int) -> Response:
        endpoint = webhook_endpoint_get(buyer=request.user, endpoint_id=webhook_id)  # type: ignore[arg-type]
        return Response(WebhookEndpointSerializer(endpoint).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, webhook_id: int) -> Response:
        webhook_endpoint_delete(buyer=request.user, endpoint_id=webhook_id)  # type: ignore[arg-type]
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookDeliveryListView(generics.ListAPIView):
    """The endpoint's delivery log, newest first: each event, its attempts and the last answer."""

    permission_classes = [IsAuthenticated, HasScope]
    required_scope = "read"
    serializer_class = WebhookDeliverySerializer

    def get_queryset(self) -> QuerySet[WebhookDelivery]:
        endpoint = webhook_endpoint_get(
            buyer=self.request.user,  # type: ignore[arg-type]
            endpoint_id=self.kwargs["webhook_id"],
        )
        return WebhookDelivery.objects.filter(endpoint=endpoint).order_by("-id")
