"""Buyer and provider money endpoints: thin views over billing selectors and services."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.utils.translation import gettext as _
from drf_spectacular.utils import OpenApiParameter, extend_schema
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
from billing.models import LeaseKind, LeaseStatus, PayoutStatus, Statement, StatementKind, StatementStatus
from core.api import query_choice
from core.auth import HasScope
from core.errors import Forbidden, ValidationFailed
from core.idempotency import idempotency_parameter, idempotent
from core.schema import error_response


class WalletView(APIView):
    permission_classes = [IsAuthenticated, HasScope]
    required_scope = "read"

    @extend_schema(responses=WalletSerializer)
    def get(self, request: Request) -> Response:
        return Response(WalletSerializer(selectors.wallet_get(user=request.user)).data)


class TopUpCreateView(APIView):
    permission_classes = [IsAuthenticated, HasScope]
    required_scope = "trade"

    @extend_schema(
        request=TopUpCreateSerializer,
        responses={
            201: TopUpSerializer,
            200: TopUpSerializer,
            409: error_response("The Idempotency-Key was used for another request, or is in progress."),
            502: error_response("Stripe could not be reached; retry with the same Idempotency-Key."),
        },
        parameters=[idempotency_parameter()],
        description=(
            "Start a Stripe Checkout top-up; open checkout_url to pay. The wallet is credited when "
            "Stripe confirms the payment. A retry with the same Idempotency-Key and body answers 200 "
            "with the same top-up."
        ),
    )
    @idempotent()
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
        leases = selectors.leases_for_buyer(user=self.request.user)
        lease_status = query_choice(self.request, "status", LeaseStatus.values)
        if lease_status:
            leases = leases.filter(status=lease_status)
        kind = query_choice(self.request, "kind", LeaseKind.values)
        if kind:
            leases = leases.filter(kind=kind)
        job = self.request.query_params.get("job")
        if job:
            if not job.isdigit() or len(job) > 18:
                raise ValidationFailed(
                    _("%(name)s must be a job id.") % {"name": "job"}, fields={"job": _("A job id.")}
                )
            leases = leases.filter(job_id=int(job))
        return leases

    @extend_schema(
        parameters=[
            OpenApiParameter("status", str, enum=LeaseStatus.values),
            OpenApiParameter("kind", str, enum=LeaseKind.values),
            OpenApiParameter("job", int, description="Only the lease of this job"),
        ],
        description="Priced time (one lease per job): rate, what was charged so far, and what is owed.",
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

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
        invoices = selectors.invoices_for(user=self.request.user)
        invoice_status = query_choice(self.request, "status", StatementStatus.values)
        if invoice_status:
            invoices = invoices.filter(status=invoice_status)
        return invoices

    @extend_schema(parameters=[OpenApiParameter("status", str, enum=StatementStatus.values)])
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


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
        payouts = selectors.payouts_for(user=self.request.user)
        payout_status = query_choice(self.request, "status", PayoutStatus.values)
        if payout_status:
            payouts = payouts.filter(status=payout_status)
        return payouts

    @extend_schema(parameters=[OpenApiParameter("status", str, enum=PayoutStatus.values)])
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class PayoutAccountView(APIView):
    """Start (or resume) Stripe Connect Express onboarding; returns the account link URL."""

    permission_classes = [IsAuthenticated, HasScope]
    required_scope = "provider"

    @extend_schema(
        request=PayoutAccountSerializer,
        responses={
            201: CheckoutUrlSerializer,
            502: error_response("Stripe could not be reached, or refused the request."),
        },
    )
    def post(self, request: Request) -> Response:
        body = PayoutAccountSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        provider_id = body.validated_data["provider_id"]
        if provider_id not in selectors.provider_ids_for(request.user):
            raise Forbidden(_("You are not a member of this provider."))
        url = services.payout_account_onboard(
            provider_id=provider_id,
            refresh_url=f"{settings.SITE_URL}/provider/payouts?refresh=1",
            return_url=f"{settings.SITE_URL}/provider/payouts",
        )
        return Response({"url": url}, status=status.HTTP_201_CREATED)
