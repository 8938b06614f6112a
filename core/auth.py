"""API-key authentication and scope permissions for DRF."""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext as _
from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from core.models import ApiKey
from core.services import apikey_authenticate
from core.throttling import auth_failure_record, auth_failure_wait


def credential_attempt_allow(request: Request) -> None:
    """Raise 429 (with ``Retry-After``) while the client is blocked for failed authentications.

    Called before a presented credential is looked up, by every credential authenticator.
    """
    wait = auth_failure_wait(client_ip=client_address(request))
    if wait is not None:
        raise exceptions.Throttled(wait, detail=_("Too many failed authentications from this address."))


def credential_failure_record(request: Request) -> None:
    auth_failure_record(client_ip=client_address(request))


def client_address(request: Request) -> str:
    # The real client behind trusted proxies (core.middleware.TrustedProxyMiddleware sets it).
    return str(request.META.get("REMOTE_ADDR") or "unknown")


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer sk_...``. Other bearer tokens (node credentials) are left alone."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, ApiKey] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme != self.keyword or not token.startswith("sk_"):
            return None
        credential_attempt_allow(request)
        api_key = apikey_authenticate(token.strip())
        if api_key is None or not api_key.user.is_active:
            credential_failure_record(request)
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        return api_key.user, api_key

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class HasScope(permissions.BasePermission):
    """Session users have every scope; API keys only those they were created with.

    Views declare ``required_scope = "read" | "trade" | "provider"``.
    """

    message = "This API key lacks the scope this endpoint needs."

    def has_permission(self, request: Request, view: Any) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        scope = getattr(view, "required_scope", None)
        if scope is None or not isinstance(request.auth, ApiKey):
            return True
        return scope in request.auth.scopes
