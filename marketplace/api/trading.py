"""Buyer and provider trading API: offers, orders, job stops, spot prices, node pricing."""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import transaction
from django.db.models import DecimalField, F, Q, QuerySet, Value
from django.db.models.functions import Coalesce
from django.http import HttpResponse, HttpResponseBase
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import (
    CurrencyField,
    KeysetPagination,
    MoneyField,
    query_choice,
    query_datetime,
    query_page_size,
)
from core.auth import HasScope
from core.errors import ValidationFailed
from core.idempotency import idempotency_parameter, idempotent
from core.money import MoneyFormatError, format_amount, parse_amount
from core.schema import error_response
from core.services import buyer_ssh_key_get
from marketplace.api.serializers import JobReachMixin
from marketplace.labels import order_reason_english
from marketplace.matching.market import Reason
from marketplace.models import (
    MAX_PRICE_MICROS,
    Job,
    Offer,
    Order,
    OrderReason,
    OrderStatus,
    SpotPrice,
    Term,
)
from marketplace.selectors import (
    OFFER_SORTS,
    TERM_PRICE_FIELD,
    OfferFilters,
    job_get_for_buyer,
    offer_search_cursor,
    offer_search_page,
    offers_list,
)
from marketplace.services.job_spec import job_spec_parse
from marketplace.services.matching import order_explain
from marketplace.services.offers import OfferChange, offer_update
from marketplace.services.orders import (
    OrderRequest,
    order_cancel,
    order_get_for_buyer,
    order_job_stop,
    order_place,
)
from providers.api.serializers import NodeSerializer
from providers.models import PUE_MAX, PUE_MIN, DeviceKind, Vendor
from providers.selectors import node_get_for_member
from providers.services import node_pue_set

# --- Offers ------------------------------------------------------------------------------------


# The fields ModelSerializer builds for these model fields, for OfferSerializer.to_representation.
_RELIABILITY = serializers.DecimalField(max_digits=4, decimal_places=3)
_DATETIME = serializers.DateTimeField()


class OfferSerializer(serializers.ModelSerializer):
    node = serializers.SerializerMethodField()
    accelerator = serializers.SerializerMethodField()
    on_demand_price = MoneyField(source="on_demand_price_micros")
    reserved_price = MoneyField(source="reserved_price_micros")
    spot_floor = MoneyField(source="spot_floor_micros")
    volume_price = MoneyField(
        source="volume_price_micros", help_text="Persistent volumes, per GiB-hour; 0: the node offers none."
    )
    currency = serializers.SerializerMethodField()
    free_devices = serializers.IntegerField()
    price_per_pflop_hour = serializers.SerializerMethodField()
    kg_co2e_per_device_hour = serializers.SerializerMethodField()
    tops_per_watt = serializers.SerializerMethodField(
        help_text="Dense INT8 TOPS per watt: of the node's measured power under load when known "
        "(node.measured_power_w), else of the catalog TDP; null without an INT8 figure."
    )

    class Meta:
        model = Offer
        fields = [
            "id", "node", "accelerator", "device_count", "free_devices", "region", "on_demand_price",
            "reserved_price", "spot_floor", "volume_price", "currency", "price_per_pflop_hour", "kg_co2e_per_device_hour",
            "tops_per_watt", "reliability", "min_rental_minutes", "max_rental_hours", "updated_at",
        ]  # fmt: skip

    def get_node(self, offer: Offer) -> dict[str, Any]:
        node = offer.node
        return {
            "id": node.pk, "name": node.name, "provider": node.provider.name, "region": node.region,
            "cluster": node.cluster, "software": node.software, "pue": str(node.pue),
            "measured_power_w": None if node.measured_power_w is None else str(node.measured_power_w),
            "verified": node.verified_at is not None,
        }  # fmt: skip

    def get_accelerator(self, offer: Offer) -> dict[str, Any]:
        a = offer.accelerator
        return {
            "id": a.pk, "vendor": a.vendor, "model": a.model, "kind": a.kind, "memory_gib": a.memory_gib,
            "fp16_tflops": str(a.fp16_tflops), "int8_tops": str(a.int8_tops), "tdp_watts": a.tdp_watts,
        }  # fmt: skip

    def get_currency(self, offer: Offer) -> str:
        from django.conf import settings

        return str(settings.SUANLI_CURRENCY)

    def get_price_per_pflop_hour(self, offer: Offer) -> str | None:
        value = getattr(offer, "price_per_pflop_micros", None)
        return None if value is None else format_amount(int(Decimal(value)))

    def get_kg_co2e_per_device_hour(self, offer: Offer) -> str | None:
        value = getattr(offer, "kg_co2e_per_device_hour", None)
        return None if value is None else f"{Decimal(value):.3f}"

    def get_tops_per_watt(self, offer: Offer) -> str | None:
        value = getattr(offer, "tops_per_watt", None)
        return None if value is None else f"{Decimal(value):.2f}"

    def to_representation(self, instance: Offer) -> dict[str, Any]:
        # The same object the declared fields produce (tests compare both), built directly: the
        # generic field-by-field walk was a third of the offer list's time per page.
        return {
            "id": instance.pk,
            "node": self.get_node(instance),
            "accelerator": self.get_accelerator(instance),
            "device_count": instance.device_count,
            "free_devices": int(instance.free_devices),  # type: ignore[attr-defined]
            "region": instance.region,
            "on_demand_price": format_amount(instance.on_demand_price_micros),
            "reserved_price": format_amount(instance.reserved_price_micros),
            "spot_floor": format_amount(instance.spot_floor_micros),
            "volume_price": format_amount(instance.volume_price_micros),
            "currency": self.get_currency(instance),
            "price_per_pflop_hour": self.get_price_per_pflop_hour(instance),
            "kg_co2e_per_device_hour": self.get_kg_co2e_per_device_hour(instance),
            "tops_per_watt": self.get_tops_per_watt(instance),
            "reliability": _RELIABILITY.to_representation(instance.reliability),
            "min_rental_minutes": instance.min_rental_minutes,
            "max_rental_hours": instance.max_rental_hours,
            "updated_at": _DATETIME.to_representation(instance.updated_at),
        }


def _choice(request: Request, name: str, choices: list[str] | tuple[str, ...]) -> str | None:
    value = request.query_params.get(name)
    if value in (None, ""):
        return None
    if value not in choices:
        raise ValidationFailed(
            _("%(name)s: choose one of %(choices)s.") % {"name": name, "choices": ", ".join(choices)},
            fields={name: _("Invalid choice.")},
        )
    return value


def _positive_int(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except ValueError:
        raise ValidationFailed(
            _("%(name)s must be a whole number.") % {"name": name}, fields={name: _("A whole number.")}
        ) from None
    if number < 1 or number > 100_000:
        raise ValidationFailed(
            _("%(name)s is out of range.") % {"name": name},
            fields={name: _("Between 1 and %(max)s.") % {"max": 100_000}},
        )
    return number


def model_filter(model: str, prefix: str) -> Q:
    """An accelerator by catalog model, by the name vendor tools print, or by model prefix
    (``H100`` finds "H100 SXM 80GB" and "H100 PCIe 80GB"), case-insensitively."""
    return (
        Q(**{f"{prefix}model__iexact": model})
        | Q(**{f"{prefix}match_names__contains": [model]})
        | Q(**{f"{prefix}model__istartswith": model})
    )


def _boolean(request: Request, name: str) -> bool | None:
    value = request.query_params.get(name)
    if value in (None, ""):
        return None
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise ValidationFailed(
        _("%(name)s must be true or false.") % {"name": name}, fields={name: _("true or false.")}
    )


def offer_filters_from(request: Request) -> OfferFilters:
    max_price = request.query_params.get("max_price")
    max_micros = None
    if max_price not in (None, ""):
        try:
            max_micros = parse_amount(max_price)
        except MoneyFormatError:
            raise ValidationFailed(
                _("%(name)s must be an amount like 2.50.") % {"name": "max_price"},
                fields={"max_price": _("An amount like 2.50.")},
            ) from None
    min_rel = request.query_params.get("min_reliability")
    min_reliability = None
    if min_rel not in (None, ""):
        try:
            min_reliability = Decimal(min_rel)
        except InvalidOperation:
            min_reliability = Decimal(-1)
        if not Decimal(0) <= min_reliability <= Decimal(1):
            raise ValidationFailed(
                "min_reliability is a score between 0 and 1.", fields={"min_reliability": "Between 0 and 1."}
            )
    return OfferFilters(
        kind=_choice(request, "kind", DeviceKind.values),
        vendor=_choice(request, "vendor", Vendor.values),
        # Matched below (model_filter): a catalog model, a vendor tool's name, or a prefix ("H100").
        model=None,
        min_memory_gib=_positive_int(request, "min_memory_gib"),
        region=request.query_params.get("region") or None,
        term=_choice(request, "term", tuple(TERM_PRICE_FIELD)) or "on_demand",
        max_price_micros=max_micros,
        min_reliability=min_reliability,
        devices=_positive_int(request, "devices"),
        verified=_boolean(request, "verified"),
        sort=_choice(request, "sort", OFFER_SORTS) or "price",
    )


OFFER_PARAMETERS = [
    OpenApiParameter("kind", str, enum=DeviceKind.values),
    OpenApiParameter("vendor", str, enum=Vendor.values),
    OpenApiParameter(
        "model", str, description="Catalog model, the name vendor tools print, or a prefix (H100)"
    ),
    OpenApiParameter("min_memory_gib", int),
    OpenApiParameter("region", str),
    OpenApiParameter(
        "term", str, enum=list(TERM_PRICE_FIELD), description="Which price to filter and sort by"
    ),
    OpenApiParameter("max_price", str, description="Per device-hour, e.g. 2.50"),
    OpenApiParameter("min_reliability", str, description="0 to 1"),
    OpenApiParameter("devices", int, description="At least this many free devices on the node"),
    OpenApiParameter(
        "verified",
        bool,
        description="true: only nodes whose hardware passed verification against the catalog; "
        "false: only nodes that did not (yet)",
    ),
    OpenApiParameter("sort", str, enum=list(OFFER_SORTS)),
]


# A price per PFLOP-hour sorts after every real one when the model has no FP16 figure.
_NO_PFLOP_PRICE = Value(Decimal("1e20"), output_field=DecimalField(max_digits=30, decimal_places=4))

# The keyset (see core.api.KeysetPagination) of each sort: the selector's ordering, spelled as
# non-null columns so that a cursor can hold the last row's values.
OFFER_KEYSETS: dict[str, list[tuple[str, bool]]] = {
    "price": [("term_price_micros", False), ("id", False)],
    "price_per_pflop": [("pflop_sort", False), ("id", False)],
    "reliability": [("reliability", True), ("term_price_micros", False), ("id", False)],
    "carbon": [("kg_co2e_per_device_hour", False), ("term_price_micros", False), ("id", False)],
}


OFFER_LIST_COLUMNS = (
    "id", "node_id", "accelerator_id", "device_count", "region", "on_demand_price_micros",
    "reserved_price_micros", "spot_floor_micros", "reliability", "min_rental_minutes", "max_rental_hours",
    "updated_at", "node__id", "node__name", "node__provider_id", "node__region", "node__cluster",
    "node__software", "node__pue", "node__verified_at", "node__provider__id", "node__provider__name",
    "accelerator__id", "accelerator__vendor", "accelerator__model", "accelerator__kind",
    "accelerator__memory_gib", "accelerator__fp16_tflops", "accelerator__tdp_watts",
    "node__measured_power_w", "accelerator__int8_tops", "volume_price_micros",
)  # fmt: skip


class OfferListView(generics.ListAPIView):
    """Listed capacity that one order can get now (free devices per node), filtered and sorted."""

    permission_classes = [AllowAny]
    serializer_class = OfferSerializer
    pagination_class = KeysetPagination

    def get_queryset(self) -> QuerySet[Offer]:
        self.filters = offer_filters_from(self.request)
        offers = (
            offers_list(filters=self.filters)
            .annotate(pflop_sort=Coalesce(F("price_per_pflop_micros"), _NO_PFLOP_PRICE))
            # Only what OfferSerializer reads: a node's verification report and credential hash
            # are not worth fetching 50 times a page.
            .only(*OFFER_LIST_COLUMNS)
        )
        model = self.request.query_params.get("model")
        return offers.filter(model_filter(model, "accelerator__")) if model else offers

    def get_keyset(self) -> list[tuple[str, bool]]:
        return OFFER_KEYSETS[self.filters.sort if self.filters.sort in OFFER_KEYSETS else "price"]

    # True: each page is one hand-written query that returns its JSON (offer_search_page); False:
    # the queryset and serializer above, the reference the tests compare it with byte for byte
    # (and what the schema is generated from). ``as_view(search_sql=False)`` selects it.
    search_sql = True

    # The fast path's body is JSON already: a plain HttpResponse, not a Response to render.
    @extend_schema(parameters=OFFER_PARAMETERS)
    def get(self, request: Request, *args: Any, **kwargs: Any) -> HttpResponseBase:  # type: ignore[override]
        if not self.search_sql:
            return super().get(request, *args, **kwargs)
        self.filters = offer_filters_from(request)
        paginator = self.paginator
        assert isinstance(paginator, KeysetPagination)
        limit = query_page_size(
            request,
            paginator.page_size_query_param,
            default=paginator.page_size,
            maximum=paginator.max_page_size,
        )
        raw = request.query_params.get(paginator.cursor_query_param)
        after = None
        if raw:
            values = KeysetPagination._decode(raw, len(self.get_keyset()))
            after = offer_search_cursor(sort=self.filters.sort, values=values)
        page = offer_search_page(
            filters=self.filters, model=request.query_params.get("model") or None, after=after, limit=limit
        )
        paginator.request, paginator.next_values = request, page.next_values
        link = paginator.get_next_link()
        # What KeysetPagination.get_paginated_response and DRF's compact JSON renderer write.
        body = (
            f'{{"next":{json.dumps(link, ensure_ascii=False)},"previous":null,"results":['
            f"{','.join(page.offers_json)}]}}"
        )
        body = body.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
        return HttpResponse(body.encode(), content_type="application/json")


# --- Orders ------------------------------------------------------------------------------------


class JobSpecSerializer(serializers.Serializer):
    image = serializers.CharField(required=False, allow_blank=True)
    command = serializers.ListField(child=serializers.CharField(allow_blank=True), required=False)
    env = serializers.DictField(child=serializers.CharField(allow_blank=True), required=False)
    ports = serializers.ListField(child=serializers.IntegerField(), required=False)
    runtime = serializers.ChoiceField(choices=["docker", "process"], required=False)


class ZonedDateTimeField(serializers.DateTimeField):
    """An ISO 8601 time with its zone (``Z`` or ``+08:00``); a time without one is refused, never
    read as UTC (a buyer in Shanghai would book the wrong eight hours)."""

    default_error_messages = {
        "naive": gettext_lazy("Give a time zone, like 2026-03-02T09:00:00Z or 2026-03-02T17:00:00+08:00.")
    }

    def enforce_timezone(self, value: Any) -> Any:
        if timezone.is_naive(value):
            self.fail("naive")
        return super().enforce_timezone(value)


class OrderInSerializer(serializers.Serializer):
    term = serializers.ChoiceField(choices=Term.choices)
    offer = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    accelerators = serializers.ListField(
        child=serializers.IntegerField(min_value=1), required=False, max_length=32
    )
    kind = serializers.ChoiceField(choices=DeviceKind.values, required=False, allow_blank=True)
    min_memory_gib = serializers.IntegerField(required=False, min_value=0, max_value=4096)
    devices_per_node = serializers.IntegerField(min_value=1, max_value=64)
    node_count = serializers.IntegerField(required=False, min_value=1, max_value=16)
    region = serializers.CharField(required=False, allow_blank=True, max_length=32)
    software = serializers.CharField(required=False, allow_blank=True, max_length=200)
    min_reliability = serializers.DecimalField(
        required=False, max_digits=4, decimal_places=3, min_value=Decimal(0), max_value=Decimal(1)
    )
    price_limit = MoneyField(min_micros=1, max_micros=MAX_PRICE_MICROS)
    window_start = ZonedDateTimeField(required=False, allow_null=True)
    window_end = ZonedDateTimeField(required=False, allow_null=True)
    restart_on_failure = serializers.BooleanField(required=False, default=False)
    job = serializers.JSONField()


class AllocationOutSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    node = serializers.IntegerField(source="node_id")
    unit_price = MoneyField(source="unit_price_micros")
    currency = CurrencyField()
    starts_at = serializers.DateTimeField()
    ends_at = serializers.DateTimeField(allow_null=True)
    status = serializers.CharField()


class OrderJobSerializer(JobReachMixin):
    id = serializers.IntegerField()
    node = serializers.IntegerField(source="node_id")
    status = serializers.CharField()
    device_indexes = serializers.ListField(child=serializers.IntegerField())
    started_at = serializers.DateTimeField(allow_null=True)
    ended_at = serializers.DateTimeField(allow_null=True)
    exit_code = serializers.IntegerField(allow_null=True)
    stop_reason = serializers.CharField()
    preemption_reason = serializers.CharField()
    stop_deadline = serializers.DateTimeField(allow_null=True)
    updated_at = serializers.DateTimeField()


class OrderSerializer(serializers.ModelSerializer):
    price_limit = MoneyField(source="price_limit_micros")
    accelerators = serializers.ListField(source="accelerator_ids", child=serializers.IntegerField())
    software = serializers.CharField(source="software_spec")
    currency = CurrencyField()
    job = serializers.SerializerMethodField()
    allocations = AllocationOutSerializer(many=True, read_only=True)
    jobs = OrderJobSerializer(many=True, read_only=True)
    status_reason = serializers.SerializerMethodField(
        help_text="Why the order is in its status, in English (empty when there is nothing to say)."
    )
    status_reason_code = serializers.CharField(
        source="status_reason",
        help_text=f"The same as a stable code, empty or one of: {', '.join(OrderReason.values)}.",
    )

    class Meta:
        model = Order
        fields = [
            "id", "term", "status", "status_reason", "status_reason_code", "offer", "accelerators", "kind",
            "min_memory_mib", "devices_per_node", "node_count", "region", "software", "min_reliability", "price_limit",
            "currency", "window_start", "window_end", "restart_on_failure", "job", "allocations", "jobs",
            "matched_at", "ended_at", "created_at", "updated_at",
        ]  # fmt: skip

    def get_status_reason(self, order: Order) -> str:
        return order_reason_english(code=order.status_reason, params=order.status_params)

    def get_job(self, order: Order) -> dict[str, Any]:
        return {"image": order.image, "command": order.command, "env": order.env, "ports": order.ports,
                "runtime": order.runtime, "volumes": order.volumes}  # fmt: skip


class UnmatchedReasonSerializer(serializers.Serializer):
    code = serializers.CharField()
    nodes = serializers.IntegerField()
    lowest_floor = MoneyField(allow_null=True)
    frees_at = serializers.DateTimeField(allow_null=True)
    clearing_price = MoneyField(allow_null=True)


class OrderDetailSerializer(OrderSerializer):
    unmatched_reasons = UnmatchedReasonSerializer(many=True, read_only=True, help_text=(
        "Why an open order is not matched yet (empty when it can be placed at the next round)."
    ))  # fmt: skip

    class Meta(OrderSerializer.Meta):
        fields = [*OrderSerializer.Meta.fields, "unmatched_reasons"]


def _reason_json(reason: Reason) -> dict[str, Any]:
    return {
        "code": reason.code.value,
        "nodes": reason.nodes,
        "lowest_floor": format_amount(reason.lowest_floor_micros)
        if reason.lowest_floor_micros is not None
        else None,
        "frees_at": reason.frees_at.isoformat() if reason.frees_at else None,
        "clearing_price": (
            format_amount(reason.clearing_price_micros) if reason.clearing_price_micros is not None else None
        ),
    }


def _orders_for(user: Any) -> QuerySet[Order]:
    # jobs__node: each job shows its node's public address (JobReachMixin) without a query per job.
    return Order.objects.filter(buyer=user).prefetch_related("allocations", "jobs__node")


class OrderListCreateView(generics.ListAPIView):
    """The buyer's orders (filter by status, term, updated_since) and placing a new one."""

    permission_classes = [IsAuthenticated, HasScope]
    serializer_class = OrderSerializer

    @property
    def required_scope(self) -> str:
        return "trade" if self.request.method == "POST" else "read"

    def get_queryset(self) -> QuerySet[Order]:
        qs = _orders_for(self.request.user)
        status_filter = query_choice(self.request, "status", OrderStatus.values)
        if status_filter:
            qs = qs.filter(status=status_filter)
        term = query_choice(self.request, "term", Term.values)
        if term:
            qs = qs.filter(term=term)
        updated_since = query_datetime(self.request, "updated_since")
        if updated_since is not None:
            qs = qs.filter(updated_at__gte=updated_since)
        return qs

    @extend_schema(
        parameters=[
            OpenApiParameter("status", str, enum=OrderStatus.values),
            OpenApiParameter("term", str, enum=Term.values),
            OpenApiParameter(
                "updated_since",
                OpenApiTypes.DATETIME,
                description="Only orders changed at or after this time",
            ),
        ]
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        request=OrderInSerializer,
        responses={
            201: OrderSerializer,
            200: OrderSerializer,
            402: error_response("The wallet cannot cover the hold (one hour, or the whole window)."),
            409: error_response("The Idempotency-Key was used for another request, or is in progress."),
        },
        parameters=[idempotency_parameter(required=True)],
        description=(
            "Place an order; the matcher places it within seconds. 201 with the new order; a retry "
            "with the same Idempotency-Key and body answers 200 with the original response."
        ),
    )
    @idempotent(required=True)
    def post(self, request: Request) -> Response:
        data = OrderInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        raw_job = v["job"]
        # `"ssh": true` launches with the buyer's profile key (read only when asked for).
        wants_profile_key = isinstance(raw_job, dict) and raw_job.get("ssh") is True
        spec = job_spec_parse(
            raw_job,
            profile_ssh_public_key=buyer_ssh_key_get(user=request.user) if wants_profile_key else "",
        )
        order, created = order_place(
            buyer=request.user,  # type: ignore[arg-type]
            request=OrderRequest(
                term=v["term"],
                devices_per_node=v["devices_per_node"],
                node_count=v.get("node_count", 1),
                price_limit_micros=v["price_limit"],
                job=spec,
                accelerator_ids=tuple(v.get("accelerators", ())),
                kind=v.get("kind", ""),
                min_memory_mib=v.get("min_memory_gib", 0) * 1024,
                region=v.get("region", ""),
                software_spec=v.get("software", ""),
                min_reliability=v.get("min_reliability", Decimal(0)),
                window_start=v.get("window_start"),
                window_end=v.get("window_end"),
                offer_id=v.get("offer"),
                restart_on_failure=v.get("restart_on_failure", False),
            ),
            idempotency_key=request.headers.get("Idempotency-Key", ""),
        )
        body = OrderSerializer(_orders_for(request.user).get(pk=order.pk)).data
        return Response(body, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class OrderDetailView(APIView):
    """An order with its allocations and jobs; an open one also says why it is not matched yet."""

    permission_classes = [IsAuthenticated, HasScope]
    required_scope = "read"

    @extend_schema(responses=OrderDetailSerializer)
    def get(self, request: Request, order_id: int) -> Response:
        order = order_get_for_buyer(buyer=request.user, order_id=order_id)  # type: ignore[arg-type]
        body = dict(OrderSerializer(_orders_for(request.user).get(pk=order.pk)).data)
        body["unmatched_reasons"] = [_reason_json(r) for r in order_explain(order=order)]
        return Response(body)


class OrderCancelView(APIView):
    permission_classes = [IsAuthenticated, HasScope]
    required_scope = "trade"

    @extend_schema(
        request=None,
        responses={200: OrderSerializer, 409: error_response("The order changed concurrently; retry.")},
        description=(
            "Cancel: an open order at once (hold released); a reserved order before its window at once "
            "too (refunded minus the cancellation fee, devices released); a running one stops its jobs "
            "(a reservation whose window has started stays paid). Cancelling again changes nothing."
        ),
    )
    def post(self, request: Request, order_id: int) -> Response:
        order = order_get_for_buyer(buyer=request.user, order_id=order_id)  # type: ignore[arg-type]
        order_cancel(order=order)
        return Response(OrderSerializer(_orders_for(request.user).get(pk=order.pk)).data)


class JobStopView(APIView):
    """Stop a job: SIGTERM now, SIGKILL after 30 s.

    The queued job of a reserved order whose window has not started is not stopped alone: the
    reservation is cancelled (refunded minus the cancellation fee), as ``orders/{id}/cancel`` does.
    """

    permission_classes = [IsAuthenticated, HasScope]
    required_scope = "trade"

    @extend_schema(
        request=None,
        responses={200: OrderJobSerializer, 409: error_response("The job changed concurrently; retry.")},
    )
    def post(self, request: Request, job_id: int) -> Response:
        job = job_get_for_buyer(user=request.user, job_id=job_id)
        # Before a reserved window, stopping its queued job cancels the reservation (order_job_stop).
        job = order_job_stop(job=job)
        return Response(OrderJobSerializer(Job.objects.get(pk=job.pk)).data)


# --- Spot prices -------------------------------------------------------------------------------


class SpotPriceSerializer(serializers.ModelSerializer):
    accelerator = serializers.CharField(source="accelerator.model")
    price = MoneyField(source="price_micros")
    currency = CurrencyField()

    class Meta:
        model = SpotPrice
        fields = ["id", "accelerator", "region", "round_at", "price", "currency", "winners", "losers"]


class SpotPriceListView(generics.ListAPIView):
    """Clearing prices per pool (accelerator model x region), newest first."""

    permission_classes = [AllowAny]
    serializer_class = SpotPriceSerializer

    def get_queryset(self) -> QuerySet[SpotPrice]:
        qs = SpotPrice.objects.select_related("accelerator").order_by("-round_at", "-id")
        model = self.request.query_params.get("model")
        region = self.request.query_params.get("region")
        if model:
            qs = qs.filter(model_filter(model, "accelerator__"))
        if region:
            qs = qs.filter(region=region)
        since = query_datetime(self.request, "since")
        if since is not None:
            qs = qs.filter(round_at__gte=since)
        return qs

    @extend_schema(
        parameters=[
            OpenApiParameter("model", str, description="Accelerator model of the pool, e.g. H100"),
            OpenApiParameter("region", str, description="Region of the pool, e.g. cn-east"),
            OpenApiParameter("since", OpenApiTypes.DATETIME, description="Only rounds at or after this time"),
        ]
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


# --- Provider: a node's offer ------------------------------------------------------------------


class OfferChangeSerializer(serializers.Serializer):
    on_demand_price = MoneyField(required=False, min_micros=0, max_micros=MAX_PRICE_MICROS)
    reserved_price = MoneyField(required=False, min_micros=0, max_micros=MAX_PRICE_MICROS)
    spot_floor = MoneyField(required=False, min_micros=0, max_micros=MAX_PRICE_MICROS)
    listed = serializers.BooleanField(required=False)
    min_rental_minutes = serializers.IntegerField(required=False, min_value=1, max_value=60 * 24 * 366)
    max_rental_hours = serializers.IntegerField(required=False, min_value=1, max_value=24 * 366)
    volume_price = MoneyField(
        required=False,
        min_micros=0,
        max_micros=MAX_PRICE_MICROS,
        help_text="Persistent volumes on this node, per GiB-hour; 0 offers none.",
    )
    # max_digits bounds the input before it is quantized (a huge exponent would otherwise fail
    # there, not as a field error); the range is the model's.
    pue = serializers.DecimalField(
        required=False,
        max_digits=5,
        decimal_places=2,
        min_value=PUE_MIN,
        max_value=PUE_MAX,
        help_text="The node's declared power usage effectiveness, 1.00 to 3.00 (scales its carbon estimate).",
    )


class NodeOfferSerializer(serializers.ModelSerializer):
    on_demand_price = MoneyField(source="on_demand_price_micros")
    reserved_price = MoneyField(source="reserved_price_micros")
    spot_floor = MoneyField(source="spot_floor_micros")
    volume_price = MoneyField(source="volume_price_micros")
    currency = CurrencyField()

    class Meta:
        model = Offer
        fields = ["id", "on_demand_price", "reserved_price", "spot_floor", "volume_price", "currency", "listed",
                  "min_rental_minutes", "max_rental_hours", "reliability", "device_count", "updated_at"]  # fmt: skip


class ProviderNodeDetailSerializer(NodeSerializer):
    offer = NodeOfferSerializer(allow_null=True, help_text="Null until the node has reported its devices.")

    class Meta(NodeSerializer.Meta):
        fields = [*NodeSerializer.Meta.fields, "measured_power_w", "offer"]


class ProviderNodeView(APIView):
    """A provider member's node with its offer; PATCH changes the node's prices, listing and PUE."""

    permission_classes = [IsAuthenticated, HasScope]
    required_scope = "provider"

    def _body(self, node: Any) -> dict[str, Any]:
        from marketplace.services.offers import offer_sync

        body = dict(NodeSerializer(node).data)
        body["measured_power_w"] = None if node.measured_power_w is None else str(node.measured_power_w)
        offer = offer_sync(node=node) if node.devices.exists() else None
        body["offer"] = NodeOfferSerializer(offer).data if offer is not None else None
        return body

    @extend_schema(responses=ProviderNodeDetailSerializer)
    def get(self, request: Request, node_id: int) -> Response:
        node = node_get_for_member(user=request.user, node_id=node_id)  # type: ignore[arg-type]
        return Response(self._body(node))

    @extend_schema(request=OfferChangeSerializer, responses=ProviderNodeDetailSerializer)
    def patch(self, request: Request, node_id: int) -> Response:
        node = node_get_for_member(user=request.user, node_id=node_id)  # type: ignore[arg-type]
        data = OfferChangeSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        change = OfferChange(
            on_demand_price_micros=v.get("on_demand_price"),
            reserved_price_micros=v.get("reserved_price"),
            spot_floor_micros=v.get("spot_floor"),
            listed=v.get("listed"),
            min_rental_minutes=v.get("min_rental_minutes"),
            max_rental_hours=v.get("max_rental_hours"),
            volume_price_micros=v.get("volume_price"),
        )
        # One transaction: a PUE and prices sent together both change, or (a price rule broken)
        # neither does. A PUE alone never touches the offer, so a node that has not reported its
        # devices yet (no offer) can declare it.
        with transaction.atomic():
            if "pue" in v:
                node_pue_set(node=node, pue=v["pue"])
            if "pue" not in v or any(value is not None for value in vars(change).values()):
                offer_update(node=node, change=change)
        return Response(self._body(node))
