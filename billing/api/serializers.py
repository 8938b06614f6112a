from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from billing.models import Lease, Payout, Statement, TopUp
from billing.selectors import UsageAggregate
from core.api import MoneyField as CoreMoneyField


@extend_schema_field(OpenApiTypes.STR)
class MoneyField(CoreMoneyField):
    """A decimal string on the wire (``"12.50"``); documented as a string in the schema."""


class WalletSerializer(serializers.Serializer):
    currency = serializers.CharField()
    balance = MoneyField(source="balance_micros")
    held = MoneyField(source="held_micros")
    available = MoneyField(source="available_micros")
    reserved = MoneyField(source="reserved_micros")
    credit_line = MoneyField(source="credit_limit_micros")


class TopUpCreateSerializer(serializers.Serializer):
    # Stripe Checkout takes at most 8 digits of minor units: 999,999.99 in a two-decimal currency.
    amount = MoneyField(min_micros=1, max_micros=999_999_990_000)


class TopUpSerializer(serializers.ModelSerializer):
    amount = MoneyField(source="amount_micros")

    class Meta:
        model = TopUp
        fields = ["id", "amount", "currency", "status", "checkout_url", "created_at", "completed_at"]


class UsageSerializer(serializers.ModelSerializer):
    rate = MoneyField(source="rate_micros")
    charged = MoneyField(source="charged_micros")
    owed = serializers.SerializerMethodField()
    avg_utilization_pct = serializers.SerializerMethodField()
    energy_kwh = serializers.SerializerMethodField()

    class Meta:
        model = Lease
        fields = [
            "id",
            "job_id",
            "provider_id",
            "kind",
            "status",
            "currency",
            "device_count",
            "rate",
            "started_at",
            "ends_at",
            "billed_through",
            "charged",
            "owed",
            "avg_utilization_pct",
            "energy_kwh",
        ]

    def _aggregate(self, lease: Lease) -> UsageAggregate | None:
        aggregates: dict[int, UsageAggregate] = self.context.get("aggregates", {})
        return aggregates.get(lease.job_id) if lease.job_id is not None else None

    @extend_schema_field(OpenApiTypes.STR)
    def get_owed(self, lease: Lease) -> str:
        from django.utils import timezone

        from billing.services.leases import lease_owed_micros
        from core.money import format_amount

        until = lease.billed_through or timezone.now()
        return format_amount(max(0, lease_owed_micros(lease, until)))

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_avg_utilization_pct(self, lease: Lease) -> str | None:
        agg = self._aggregate(lease)
        return None if agg is None or agg.avg_utilization_pct is None else str(agg.avg_utilization_pct)

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_energy_kwh(self, lease: Lease) -> str | None:
        agg = self._aggregate(lease)
        return None if agg is None or agg.energy_kwh is None else str(agg.energy_kwh)


class StatementSerializer(serializers.ModelSerializer):
    total = MoneyField(source="total_micros")
    period = serializers.SerializerMethodField()
    downloads = serializers.SerializerMethodField()

    class Meta:
        model = Statement
        fields = [
            "id",
            "kind",
            "number",
            "status",
            "currency",
            "period",
            "total",
            "lines",
            "finalized_at",
            "downloads",
        ]

    @extend_schema_field(OpenApiTypes.STR)
    def get_period(self, statement: Statement) -> str:
        return f"{statement.period_start:%Y-%m}"

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_downloads(self, statement: Statement) -> dict[str, str]:
        return {
            "html": f"/billing/statements/{statement.pk}.html",
            "csv": f"/billing/statements/{statement.pk}.csv",
        }


class EarningsSerializer(serializers.Serializer):
    provider_id = serializers.IntegerField()
    currency = serializers.CharField()
    payable = MoneyField(source="payable_micros")
    in_transit = MoneyField(source="in_transit_micros")
    paid_out = MoneyField(source="paid_out_micros")
    statements = serializers.SerializerMethodField()

    @extend_schema_field(StatementSerializer(many=True))
    def get_statements(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        return StatementSerializer(row["statements"], many=True).data  # type: ignore[return-value]


class PayoutSerializer(serializers.ModelSerializer):
    amount = MoneyField(source="amount_micros")

    class Meta:
        model = Payout
        fields = [
            "id",
            "provider_id",
            "currency",
            "amount",
            "status",
            "stripe_transfer_id",
            "failure_reason",
            "created_at",
        ]


class PayoutAccountSerializer(serializers.Serializer):
    provider_id = serializers.IntegerField()


class EarningsListSerializer(serializers.Serializer):
    results = EarningsSerializer(many=True)


class CheckoutUrlSerializer(serializers.Serializer):
    url = serializers.URLField()
