"""OpenAPI: the project's authentication schemes and the errors every operation can answer.

``ApiAutoSchema`` (``DEFAULT_SCHEMA_CLASS``) adds to each operation the error responses its view can
produce, all in the one error shape (``core.api.ErrorSerializer``): 400 where there is input,
401/403 where there are credentials or permissions, 404 where there is a path id or a cursor, 429
where a throttle applies (with ``Retry-After``), and 304 + ``ETag`` on API reads. Errors particular
to an operation (402, 409, 502 ...) are declared on the view with ``error_response()``.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework.permissions import AllowAny

from core.api import ErrorSerializer


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "core.auth.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: object) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "sk_<prefix>_<secret>",
            "description": "A scoped API key (read, trade, provider) created in the portal or API.",
        }


def error_response(description: str) -> OpenApiResponse:
    """An error answer of one operation, in the one error shape."""
    return OpenApiResponse(ErrorSerializer, description=description)


_GENERIC = {
    "400": "Invalid input: `error.fields` names each offending field (or query parameter).",
    "401": "Missing, invalid or revoked credentials.",
    "403": "Authenticated, but not allowed: the API key lacks the scope, or the CSRF check failed.",
    "404": "No such object, or it belongs to someone else.",
    "409": "The Idempotency-Key was already used for a different request, or that request is still running.",
    "429": "Too many requests for this API key (or client IP); retry after `Retry-After` seconds.",
}


class ApiAutoSchema(AutoSchema):
    def _error_codes(self) -> list[str]:
        view, method = self.view, self.method.upper()
        codes = []
        has_input = method in ("POST", "PUT", "PATCH") or bool(self._get_paginator())
        has_input = has_input or any(p.get("in") == "query" for p in self._get_parameters())
        if has_input:
            codes.append("400")
        if view.get_authenticators():
            codes.append("401")
        permissions = view.get_permissions()
        if any(not isinstance(p, AllowAny) for p in permissions) or (
            method not in ("GET", "HEAD") and view.get_authenticators()
        ):
            codes.append("403")
        if "{" in self.path or self._get_paginator():
            codes.append("404")
        if any(p.get("name") == "Idempotency-Key" for p in self._get_parameters()):
            codes.append("409")
        if view.get_throttles():
            codes.append("429")
        return codes

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses: dict[str, Any] = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        for code in self._error_codes():
            if code not in responses:
                responses[code] = self._get_response_for_code(
                    error_response(_GENERIC[code]), code, direction=direction
                )
        if "429" in responses:
            responses["429"].setdefault("headers", {})["Retry-After"] = {
                "schema": {"type": "integer"},
                "description": "Seconds until the limit resets.",
            }
        if self.method.upper() == "GET" and self.path.startswith("/api/v1/") and "200" in responses:
            responses["200"].setdefault("headers", {})["ETag"] = {
                "schema": {"type": "string"},
                "description": "Send it back as If-None-Match to get 304 while nothing changed.",
            }
            responses["304"] = {"description": "Not modified since the ETag sent in If-None-Match."}
        return responses
