"""The project's middleware: API caching validators, the client's address, the API error shape.

``ApiConditionalGetMiddleware``: an ``ETag`` on every successful ``GET /api/v1/...``. A client
polling an order or a job sends the ETag back as ``If-None-Match`` and gets ``304 Not Modified``
(no body) until the representation changes. The tag is a hash of the
response body (Django's ``ConditionalGetMiddleware``), so it changes exactly when what the client
would see changes; ``Vary: Authorization, Cookie`` keeps shared caches from mixing users.

``TrustedProxyMiddleware``, ``ApiErrorShapeMiddleware``, ``RequestIdMiddleware`` and
``RequestMetricsMiddleware``: see their docstrings.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import time
import uuid
from collections.abc import Callable

import structlog
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponseBase, JsonResponse
from django.middleware.http import ConditionalGetMiddleware
from django.utils.cache import patch_vary_headers
from django.utils.translation import gettext as _

from core.api import error_body
from core.metrics import observe_http_request

API_PREFIX = "/api/v1/"


class ApiConditionalGetMiddleware(ConditionalGetMiddleware):
    def process_response(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        if not request.path.startswith(API_PREFIX) or request.method not in ("GET", "HEAD"):
            return response
        patch_vary_headers(response, ("Authorization", "Cookie"))
        return super().process_response(request, response)


# --- Client address behind trusted proxies -------------------------------------------------------


class TrustedProxyMiddleware:
    """Make ``REMOTE_ADDR`` the real client's address, believing ``X-Forwarded-For`` only from
    the proxies in ``SUANLI_TRUSTED_PROXIES`` (IPs or CIDRs; none by default).

    Every per-client limit (anonymous API rate, agent registration, failed authentication, log-in)
    keys on ``REMOTE_ADDR``. A header any client can set must not choose that key: with rotating
    ``X-Forwarded-For`` values one client would get a fresh budget per request. Behind a proxy
    that we trust, the client is the nearest hop, walking the header from the right, that is not
    itself a trusted proxy. The peer's own address stays in ``META["SUANLI_PEER_ADDR"]``.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        peer = str(request.META.get("REMOTE_ADDR") or "")
        request.META["SUANLI_PEER_ADDR"] = peer
        request.META["REMOTE_ADDR"] = client_ip_from(
            peer=peer,
            forwarded_for=request.META.get("HTTP_X_FORWARDED_FOR"),
            trusted=trusted_proxies(tuple(settings.SUANLI_TRUSTED_PROXIES)),
        )
        return self.get_response(request)


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=8)
def trusted_proxies(entries: tuple[str, ...]) -> tuple[IpNetwork, ...]:
    """``("10.0.0.0/8", "192.0.2.7")`` parsed once; a typo stops the server, never trusts all."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ImproperlyConfigured(
                f"SUANLI_TRUSTED_PROXIES: {entry!r} is not an IP address or CIDR network"
            ) from None
    return tuple(networks)


def client_ip_from(*, peer: str, forwarded_for: str | None, trusted: tuple[IpNetwork, ...]) -> str:
    if not forwarded_for or not trusted or not _is_trusted(_address(peer), trusted):
        return peer
    client = peer
    for hop in reversed(forwarded_for.split(",")):
        address = _address(hop)
        if address is None:
            # Garbage in the header: keep the last address a trusted proxy vouched for.
            break
        client = str(address)
        if not _is_trusted(address, trusted):
            break
    return client


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "203.0.113.9:51234"
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _is_trusted(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None, trusted: tuple[IpNetwork, ...]
) -> bool:
    return address is not None and any(address in network for network in trusted)


# --- The API's error shape for errors raised outside DRF -----------------------------------------


class ApiErrorShapeMiddleware:
    """Under ``/api/``, every error is ``{"error": {"code", "message", "fields"}}``.

    DRF views answer in that shape themselves (``core.api.exception_handler``); what Django
    answers before or around them (a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE``, a bad Host, a
    CSRF failure, an unhandled error) is an HTML page, which an API client cannot read. Query
    parameters holding NUL are refused here, once for every endpoint: PostgreSQL text cannot
    hold NUL, and a filter on one would fail in the database.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if not request.path.startswith("/api/"):
            return self.get_response(request)
        bad = sorted(
            {name for name, values in request.GET.lists() for value in [name, *values] if "\x00" in value}
        )
        if bad:
            return JsonResponse(
                error_body(
                    "invalid",
                    _("Query parameters must not contain NUL characters."),
                    {
                        name.replace("\x00", "") or "query": [_("Must not contain NUL characters.")]
                        for name in bad
                    },
                ),
                status=400,
            )
        response = self.get_response(request)
        if response.status_code >= 400 and not response.get("Content-Type", "").startswith(
            "application/json"
        ):
            return _error_shaped(response)
        return response


_CODES = {400: "bad_request", 401: "not_authenticated", 403: "permission_denied", 404: "not_found",
          405: "method_not_allowed", 413: "too_large", 429: "throttled", 500: "server_error",
          502: "bad_gateway", 503: "service_unavailable"}  # fmt: skip


def _error_shaped(response: HttpResponseBase) -> JsonResponse:
    code = _CODES.get(response.status_code, "error")
    message = str(getattr(response, "reason_phrase", "") or code)
    if response.status_code == 413 or code == "bad_request":
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        message = _("The request was refused: malformed, or a body over %(limit)s bytes.") % {"limit": limit}
    shaped = JsonResponse(error_body(code, message), status=response.status_code)
    for header in ("Retry-After", "WWW-Authenticate", "Allow"):
        if header in response:
            shaped[header] = response[header]
    return shaped


# --- Request ids and request metrics -------------------------------------------------------------

REQUEST_ID_HEADER = "X-Request-ID"
# What a proxy or client may send as its own id (UUIDs, hex, nginx's $request_id, ULIDs): anything
# else (too long, spaces, control characters) would let a client forge or break log lines.
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{7,127}")


def request_id_from(header: str | None) -> str:
    """The client's ``X-Request-ID`` when well-formed (8-128 of ``A-Z a-z 0-9 . _ : -``), else a new one."""
    if header and _REQUEST_ID_RE.fullmatch(header):
        return header
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Give every request an id, bind it to every log line it causes, echo it in the response.

    The id is bound with ``structlog.contextvars``, so stdlib and structlog lines alike carry
    ``request_id`` (``core.logging``); it is cleared first because a server thread serves many
    requests and context variables outlive one.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        request.META["SUANLI_REQUEST_ID"] = request_id
        structlog.contextvars.clear_contextvars()
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        return response


class RequestMetricsMiddleware:
    """Time every request for ``suanli_http_request_duration_seconds`` (``core.metrics``).

    The view label is the URL pattern's name (or its view's dotted path), never the raw path, so
    ids in URLs do not make one series per object; what no pattern matched is ``static`` (served
    by WhiteNoise before URL resolution) or ``unmatched``.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        if match is not None:
            view = match.view_name or match.route or "unnamed"
        elif request.path.startswith(settings.STATIC_URL):
            view = "static"
        else:
            view = "unmatched"
        observe_http_request(
            view=view,
            method=request.method or "",
            status_code=response.status_code,
            seconds=time.perf_counter() - started,
        )
        return response
