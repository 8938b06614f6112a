"""HTTP caching validators for the API: an ``ETag`` on every successful ``GET /api/v1/...``.

A client polling an order or a job sends the ETag back as ``If-None-Match`` and gets
``304 Not Modified`` (no body) until the representation changes. The tag is a hash of the
response body (Django's ``ConditionalGetMiddleware``), so it changes exactly when what the client
would see changes; ``Vary: Authorization, Cookie`` keeps shared caches from mixing users.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponseBase
from django.middleware.http import ConditionalGetMiddleware
from django.utils.cache import patch_vary_headers

API_PREFIX = "/api/v1/"


class ApiConditionalGetMiddleware(ConditionalGetMiddleware):
    def process_response(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        if not request.path.startswith(API_PREFIX) or request.method not in ("GET", "HEAD"):
            return response
        patch_vary_headers(response, ("Authorization", "Cookie"))
        return super().process_response(request, response)
