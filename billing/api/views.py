"""Buyer and provider money endpoints: thin views over billing selectors and services."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import selectors, services
from billing.api.serializers import (
    CheckoutUrlSerializer,
    EarningsListSerializer,
    EarningsSerializer,
    PayoutAccountSerializer,
    PayoutSerializer,
    StatementSerializer,
    TopUpCreateSerializer,
    TopUpSerializer,
    UsageSerializer,
    WalletSerializer,
)
from billing.models import Statement, StatementKind
from core.auth import HasScope
from core.errors import Forbidden


class WalletView(APIView):
    permission_classes = [IsAuthenticated, HasScope]
    required_scope = "read"

    @extend_schema(responses=WalletSerializer)
    def get(self, request: Request) -> Response:
        return Response(WalletSerializer(selectors.wallet_get(user=request.user)).data)


class TopUpCreateView(APIView):
    permission_classes = [IsAuthenticated, HasScope]
    required_scope = "trade"

    @extend_schema(request=TopUpCreateSerializer, responses={201: TopUpSerializer})
    def post(self, request: Request) -> Response:
        body = TopUpCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        top_up = services.topup_create(
            buyer=request.user,
            amount_micros=body.validated_data["amount"],
            client_key=request.headers.get("Idempotency-Key") or None,
        )
        return Response(TopUpSerializer(top_up).data, status=status.HTTP_201_CREATED)


class UsageListView(generics.ListAPIView):
    permission_classes = [IsAuthenticated, HasScope]
    required_scope = "read"
    serializer_class = UsageSerializer

    def get_queryset(self) -> Any:
        return selectors.leases_for_buyer(user=self.request.user)

    def get_serializer_context(self) -> dict[str, Any]:
        context = dict(super().get_serializer_context())
        page = getattr(self, "_page_jobs", None)
        context["aggregates"] = selectors.usage_aggregates(job_ids=page or [])
        return context

    def paginate_queryset(self, queryset: Any) -> Any:
        page = super().paginate_queryset(queryset)
        self._page_jobs = [lease.job_id for lease in (page or []) if lease.job_id is not None]
        return page


class InvoiceListView(generics.ListAPIView):
    permission_classes = [IsAuthenticated, HasScope]
    required_scope = "read"
    serializer_class = StatementSerializer

    def get_queryset(self) -> Any:
        return selectors.invoices_for(user=self.request.user)


class InvoiceDetailView(generics.RetrieveAPIView):
    permission_classes = [IsAuthenticated, HasScope]
    required_scope = "read"
    serializer_class = StatementSerializer

    def get_queryset(self) -> Any:
        return selectors.invoices_for(user=self.request.user)


class EarningsView(APIView):
    permission_classes = [IsAuthenticated, HasScope]
    required_scope = "provider"

    @extend_schema(responses=EarningsListSerializer)
    def get(self, request: Request) -> Response:
        rows = []
        for provider_id in selectors.provider_ids_for(request.user):
            row = selectors.provider_earnings(provider_id=provider_id)
            row["statements"] = Statement.objects.filter(
                kind=StatementKind.PROVIDER_EARNINGS, provider_id=provider_id
            )[:24]
            rows.append(row)
        return Response({"results": EarningsSerializer(rows, many=True).data})


class PayoutListView(generics.ListAPIView):
    permission_classes = [IsAuthenticated, HasScope]
    required_scope = "provider"
    serializer_class = PayoutSerializer

    def get_queryset(self) -> Any:
        return selectors.payouts_for(user=self.request.user)


class PayoutAccountView(APIView):
    """Start (or resume) Stripe Connect Express onboarding; returns the account link URL."""

    permission_classes = [IsAuthenticated, HasScope]
    required_scope = "provider"

    @extend_schema(request=PayoutAccountSerializer, responses={201: CheckoutUrlSerializer})
    def post(self, request: Request) -> Response:
        body = PayoutAccountSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        provider_id = body.validated_data["provider_id"]
        if provider_id not in selectors.provider_ids_for(request.user):
            raise Forbidden("You are not a member of this provider.")
        url = services.payout_account_onboard(
            provider_id=provider_id,
            refresh_url=f"{settings.SITE_URL}/provider/payouts?refresh=1",
            return_url=f"{settings.SITE_URL}/provider/payouts",
        )
        return Response({"url": url}, status=status.HTTP_201_CREATED)
