"""API plumbing shared by every app: the error shape, pagination and small field helpers.

Every error leaves the API as ``{"error": {"code", "message", "fields"}}``.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from drf_spectacular.utils import extend_schema_field
from rest_framework import exceptions, pagination, serializers, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from core.errors import SuanliError
from core.money import MoneyFormatError, format_amount, parse_amount


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


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, SuanliError):
        return Response(error_body(exc.code, exc.message, exc.fields), status=exc.status_code)
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


class CursorPagination(pagination.CursorPagination):
    page_size = 50
    max_page_size = 500
    page_size_query_param = "limit"
    ordering = "-id"


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
        try:
            micros = parse_amount(data)
        except MoneyFormatError:
            self.fail("invalid")
        if self.min_micros is not None and micros < self.min_micros:
            raise serializers.ValidationError(f"Must be at least {format_amount(self.min_micros)}.")
        if self.max_micros is not None and micros > self.max_micros:
            raise serializers.ValidationError(f"Must be at most {format_amount(self.max_micros)}.")
        return micros


__all__ = ["CursorPagination", "MoneyField", "error_body", "exception_handler", "status"]
