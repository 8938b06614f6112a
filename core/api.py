"""API plumbing shared by every app: the error shape, pagination and small field helpers.

Every error leaves the API as ``{"error": {"code", "message", "fields"}}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import kombu.exceptions
import redis.exceptions
from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.db import DataError
from django.db.models import Q
from django.http import Http404, HttpRequest, JsonResponse
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema_field
from rest_framework import exceptions, pagination, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from core.errors import SuanliError, ValidationFailed
from core.money import MICROS_PER_UNIT, MoneyFormatError, format_amount, parse_amount


def error_body(code: str, message: str, fields: dict[str, list[str]] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF nests field errors (lists of dicts for list fields); flatten to dotted paths."""
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            out.update(_flatten(value, name))
    elif isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            out[prefix or "non_field_errors"] = [str(item) for item in detail]
        else:
            for index, item in enumerate(detail):
                out.update(_flatten(item, f"{prefix}.{index}" if prefix else str(index)))
    else:
        out[prefix or "non_field_errors"] = [str(detail)]
    return out


# Redis (heartbeats, the work queue, the cache) or the Celery broker briefly unreachable: the
# client should retry, not see a 500. Agents honour Retry-After with their own jittered backoff.
SERVICE_UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
)
SERVICE_UNAVAILABLE_RETRY_AFTER_S = 5


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, SuanliError):
        return Response(error_body(exc.code, exc.message, exc.fields), status=exc.status_code)
    if isinstance(exc, SERVICE_UNAVAILABLE_ERRORS):
        request = context.get("request")
        logging.getLogger(__name__).warning(
            "api.service_unavailable path=%s error=%s: %s",
            getattr(request, "path", ""),
            type(exc).__name__,
            exc,
        )
        unavailable = Response(
            error_body(
                "service_unavailable",
                _("The exchange is briefly unavailable; retry in a few seconds."),
            ),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
        )
        unavailable["Retry-After"] = str(SERVICE_UNAVAILABLE_RETRY_AFTER_S)
        return unavailable
    hostile = _hostile_request_response(exc, context)
    if hostile is not None:
        return hostile
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        first = next(iter(fields.items()), ("", ["Invalid input."]))
        message = first[1][0] if first[0] == "non_field_errors" else f"{first[0]}: {first[1][0]}"
        response.data = error_body("invalid", message, fields)
    elif isinstance(exc, exceptions.APIException):
        code = exc.get_codes() if isinstance(exc.get_codes(), str) else "error"
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        response.data = error_body(str(code), str(detail))
        wait = getattr(exc, "wait", None)
        if isinstance(exc, exceptions.Throttled) and wait is not None:
            response["Retry-After"] = str(int(wait) + 1)
    return response


def _hostile_request_response(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Django's request errors (not DRF's) in the error shape; a ``DataError`` as a last resort.

    ``core.parsers.JsonParser`` refuses what the database cannot store, naming the field; a
    ``DataError`` that still gets through (a value out of a column's range) is the client's input
    all the same, so it answers 400, logged so the missing field check gets written.
    """
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return Response(
            error_body("too_large", _("The body is larger than %(limit)s bytes.") % {"limit": limit}),
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, SuspiciousOperation):  # too many fields, a malformed multipart body ...
        return Response(error_body("bad_request", _("The request was refused as malformed.")), status=400)
    if isinstance(exc, DataError):
        request = context.get("request")
        logging.getLogger(__name__).warning(
            "api.data_error path=%s: %s", getattr(request, "path", ""), exc, exc_info=True
        )
        return Response(
            error_body("invalid", _("A value in the request is out of range or cannot be stored.")),
            status=status.HTTP_400_BAD_REQUEST,
        )
    return None


@csrf_exempt  # nothing to protect, and a CSRF page would not be the API's error shape
def api_not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    """Any /api/ URL that matches no route (``/api/v1/orders/abc``): the error shape, not a page."""
    return JsonResponse(error_body("not_found", "No such API endpoint."), status=404)


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable machine code: invalid, not_found, conflict, throttled ...")
    message = serializers.CharField(help_text="One human sentence.")
    fields = serializers.DictField(  # type: ignore[assignment]  # the wire name "fields"
        child=serializers.ListField(child=serializers.CharField()),
        help_text="Messages per input field (dotted paths for nested fields); empty when none.",
    )


class ErrorSerializer(serializers.Serializer):
    """The one error shape of the API (documentation only; ``exception_handler`` builds it)."""

    error = ErrorDetailSerializer()


# --- Pagination ----------------------------------------------------------------------------------

SORT_PARAMETER_CHOICES = {"newest": "-id", "oldest": "id"}


class CursorPagination(pagination.CursorPagination):
    """Opaque cursors over ``id``: ``?sort=newest`` (default) or ``oldest``, ``?limit=`` up to 500."""

    page_size = 50
    max_page_size = 500
    page_size_query_param = "limit"
    ordering = "-id"

    def get_page_size(self, request: Request) -> int:
        # DRF falls back to the default page size for ``limit=-5`` or ``limit=abc``: refuse instead.
        return query_page_size(request, self.page_size_query_param, default=self.page_size,
                               maximum=self.max_page_size)  # fmt: skip

    def get_ordering(self, request: Request, queryset: Any, view: Any) -> tuple[str, ...]:
        return (
            SORT_PARAMETER_CHOICES[query_choice(request, "sort", list(SORT_PARAMETER_CHOICES)) or "newest"],
        )

    def decode_cursor(self, request: Request) -> Any:
        try:
            return super().decode_cursor(request)
        except exceptions.NotFound:
            raise ValidationFailed(
                _("Invalid cursor."), fields={"cursor": _("Use the next link as given.")}
            ) from None

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        return [
            *_bounded_limit(super().get_schema_operation_parameters(view), self.max_page_size),
            {
                "name": "sort",
                "required": False,
                "in": "query",
                "description": "newest (default) or oldest first",
                "schema": {"type": "string", "enum": list(SORT_PARAMETER_CHOICES)},
            },
        ]


class KeysetPagination(pagination.BasePagination):
    """Forward-only opaque cursors over any ordering that ends in a unique column.

    The view's ``get_keyset()`` returns ``[(name, descending), ...]`` (model fields or non-null
    annotations, the last one unique, usually ``("id", False)``); the cursor holds the last row's
    values, so a page never repeats or skips a row however many rows tie on the first keys.
    """

    page_size = 50
    max_page_size = 500
    page_size_query_param = "limit"
    cursor_query_param = "cursor"

    def paginate_queryset(self, queryset: Any, request: Request, view: Any = None) -> list[Any]:
        keys: Sequence[tuple[str, bool]] = view.get_keyset()
        self.request = request
        self.limit = self._limit(request)
        queryset = queryset.order_by(*[f"-{name}" if desc else name for name, desc in keys])
        raw = request.query_params.get(self.cursor_query_param)
        if raw:
            queryset = queryset.filter(self._after(keys, self._decode(raw, len(keys))))
        rows = list(queryset[: self.limit + 1])
        self.next_values = None
        if len(rows) > self.limit:
            rows = rows[: self.limit]
            self.next_values = [_cursor_value(getattr(rows[-1], name)) for name, _ in keys]
        return rows

    def _limit(self, request: Request) -> int:
        return query_page_size(request, self.page_size_query_param, default=self.page_size,
                               maximum=self.max_page_size)  # fmt: skip

    @staticmethod
    def _decode(raw: str, length: int) -> list[Any]:
        try:
            values = json.loads(base64.urlsafe_b64decode(raw.encode() + b"=" * (-len(raw) % 4)))
        except (ValueError, binascii.Error, UnicodeError):
            values = None
        if not isinstance(values, list) or len(values) != length:
            raise ValidationFailed(_("Invalid cursor."), fields={"cursor": _("Use the next link as given.")})
        return values

    @staticmethod
    def _after(keys: Sequence[tuple[str, bool]], values: list[Any]) -> Q:
        condition = Q(pk__in=[])
        for i, (name, desc) in enumerate(keys):
            step = Q(**{name: value for (name, _), value in zip(keys[:i], values[:i], strict=True)})
            condition |= step & Q(**{f"{name}__{'lt' if desc else 'gt'}": values[i]})
        return condition

    def get_next_link(self) -> str | None:
        if self.next_values is None:
            return None
        cursor = base64.urlsafe_b64encode(json.dumps(self.next_values).encode()).decode().rstrip("=")
        params = {k: v for k, v in self.request.query_params.items() if k != self.cursor_query_param}
        params[self.cursor_query_param] = cursor
        return self.request.build_absolute_uri(self.request.path) + "?" + urlencode(params)

    def get_paginated_response(self, data: Any) -> Response:
        return Response({"next": self.get_next_link(), "previous": None, "results": data})

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["results"],
            "properties": {
                "next": {"type": "string", "nullable": True, "format": "uri"},
                "previous": {"type": "string", "nullable": True, "format": "uri"},
                "results": schema,
            },
        }

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        return [
            {"name": self.cursor_query_param, "required": False, "in": "query",
             "description": "The cursor from the previous page's next link.", "schema": {"type": "string"}},
            {"name": self.page_size_query_param, "required": False, "in": "query",
             "description": f"Results per page (at most {self.max_page_size}).",
             "schema": {"type": "integer", "minimum": 1, "maximum": self.max_page_size}},
        ]  # fmt: skip


def _bounded_limit(parameters: list[dict[str, Any]], maximum: int) -> list[dict[str, Any]]:
    """Document ``limit``'s range: anything outside it is a 400 (``query_page_size``)."""
    return [
        {**p, "schema": {**p.get("schema", {}), "minimum": 1, "maximum": maximum}}
        if p.get("name") == "limit"
        else p
        for p in parameters
    ]


def _cursor_value(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal | datetime) else value


# --- Query parameters ------------------------------------------------------------------------------


def query_page_size(request: Request, name: str, *, default: int, maximum: int) -> int:
    """``?limit=``: a whole number from 1 to ``maximum``; anything else is a 400 naming it.

    Not clamped: a client asking for ``-5`` or ``10000`` rows has a bug it should hear about.
    """
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    value = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 9 else None
    if value is None or not 1 <= value <= maximum:
        raise ValidationFailed(
            _("%(name)s must be a whole number from 1 to %(max)s.") % {"name": name, "max": maximum},
            fields={name: _("A whole number from 1 to %(max)s.") % {"max": maximum}},
        )
    return value


def query_choice(request: Request, name: str, choices: Sequence[str]) -> str | None:
    """A query parameter that must be one of ``choices`` (None when absent or empty)."""
    value = request.query_params.get(name)
    if value in (None, ""):
        return None
    if value not in choices:
        raise ValidationFailed(
            _("%(name)s: choose one of %(choices)s.") % {"name": name, "choices": ", ".join(choices)},
            fields={name: _("Invalid choice.")},
        )
    return value


def query_datetime(request: Request, name: str) -> datetime | None:
    """An ISO 8601 time with its offset (``2026-03-02T09:00:00Z``), or None when absent."""
    value = request.query_params.get(name)
    if value in (None, ""):
        return None
    try:
        parsed = parse_datetime(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise ValidationFailed(
            _("%(name)s must be an ISO 8601 time with a zone, like 2026-03-02T09:00:00Z.") % {"name": name},
            fields={name: _("An ISO 8601 time with a zone.")},
        )
    return parsed


@extend_schema_field(
    {"type": "string", "format": "decimal", "pattern": r"^-?\d+\.\d{2,6}$", "example": "12.50"}
)
class MoneyField(serializers.Field):
    """Micro-units on the model, a decimal string on the wire (``"12.50"``)."""

    default_error_messages = {"invalid": "Enter an amount like 12.50 (at most 6 decimal places)."}

    def __init__(self, *, min_micros: int | None = None, max_micros: int | None = None, **kwargs: Any):
        self.min_micros = min_micros
        self.max_micros = max_micros
        super().__init__(**kwargs)

    def to_representation(self, value: int) -> str:
        return format_amount(int(value))

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool | float) or not isinstance(data, str | int):
            self.fail("invalid")
        if _beyond_bigint_micros(data):
            # Before parse_amount: "1e999999999" would otherwise build a billion-digit integer,
            # and anything past bigint cannot be stored.
            raise serializers.ValidationError(_("Too large an amount."))
        try:
            micros = parse_amount(data)
        except MoneyFormatError:
            self.fail("invalid")
        if self.min_micros is not None and micros < self.min_micros:
            raise serializers.ValidationError(f"Must be at least {format_amount(self.min_micros)}.")
        if self.max_micros is not None and micros > self.max_micros:
            raise serializers.ValidationError(f"Must be at most {format_amount(self.max_micros)}.")
        return micros


def _beyond_bigint_micros(data: str | int) -> bool:
    try:
        value = Decimal(str(data).strip())
    except ArithmeticError:  # decimal.InvalidOperation: parse_amount names it
        return False
    # copy_abs and comparison are exact; abs() would round, and overflow on 1e999999999.
    return value.is_finite() and value.copy_abs() > _MAX_AMOUNT


# The largest amount whose micro-units fit PostgreSQL's bigint (9,223,372,036,854.775807).
_MAX_AMOUNT = Decimal(2**63 - 1) / MICROS_PER_UNIT


@extend_schema_field({"type": "string", "pattern": "^[A-Z]{3}$", "example": "USD"})
class CurrencyField(serializers.Field):
    """The exchange's ISO 4217 currency, next to every amount (read-only)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.update(source="*", read_only=True)
        super().__init__(**kwargs)

    def to_representation(self, value: Any) -> str:
        from django.conf import settings

        return str(settings.SUANLI_CURRENCY)


__all__ = [
    "CurrencyField",
    "CursorPagination",
    "ErrorSerializer",
    "KeysetPagination",
    "MoneyField",
    "error_body",
    "exception_handler",
    "query_choice",
    "query_datetime",
    "status",
]
