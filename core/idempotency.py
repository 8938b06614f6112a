"""``Idempotency-Key`` for creating POSTs: one mechanism for every view that creates something.

The same key with the same method, path and JSON body returns the original response again
(status 200, header ``Idempotent-Replayed: true``, the body as first sent); the same key with a
different request is a 409. Keys belong to the user (whichever API key or session made the
call), are at most 128 characters, and are remembered for 24 hours. Only successful responses are
remembered: a request that failed may be retried with the same key.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from typing import Any

from django.utils.translation import gettext as _
from drf_spectacular.utils import OpenApiParameter
from rest_framework import status
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from core.errors import ValidationFailed
from core.services import (
    IDEMPOTENCY_KEY_MAX,
    idempotent_request_abandon,
    idempotent_request_begin,
    idempotent_request_finish,
)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"


def idempotency_parameter(*, required: bool = False) -> OpenApiParameter:
    return OpenApiParameter(
        HEADER,
        str,
        OpenApiParameter.HEADER,
        required=required,
        description=(
            f"1 to {IDEMPOTENCY_KEY_MAX} characters, unique per request you mean to make once. A retry "
            "with the same key and body returns the original response (200, Idempotent-Replayed: "
            "true); the same key with another body is a 409."
        ),
    )


def request_fingerprint(request: Request) -> str:
    """SHA-256 of the parsed JSON body in a canonical form (key order and spacing do not matter)."""
    canonical = json.dumps(request.data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def idempotent(*, required: bool = False) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
    """Decorate an APIView's ``post`` so that it honours ``Idempotency-Key``.

    Without the header the request simply runs (or, with ``required=True``, is refused with 400).
    """

    def decorator(method: Callable[..., Response]) -> Callable[..., Response]:
        @functools.wraps(method)
        def wrapper(view: Any, request: Request, *args: Any, **kwargs: Any) -> Response:
            key = request.headers.get(HEADER, "")
            if not key:
                if required:
                    raise ValidationFailed(
                        _("An %(header)s header (at most %(max)s characters) is required.")
                        % {"header": HEADER, "max": IDEMPOTENCY_KEY_MAX},
                        fields={HEADER: _("Required.")},
                    )
                return method(view, request, *args, **kwargs)
            user = request.user
            earlier = idempotent_request_begin(
                user=user,
                key=key,
                method=request.method or "POST",
                path=request.path,
                body_hash=request_fingerprint(request),
            )
            if earlier is not None:
                return Response(
                    earlier.response_body, status=status.HTTP_200_OK, headers={REPLAYED_HEADER: "true"}
                )
            try:
                response = method(view, request, *args, **kwargs)
            except BaseException:
                idempotent_request_abandon(user=user, key=key)
                raise
            if 200 <= response.status_code < 300:
                # Stored as the client saw it (dates and money already rendered to strings).
                body = json.loads(JSONRenderer().render(response.data) or b"null")
                idempotent_request_finish(
                    user=user, key=key, status_code=response.status_code, response_body=body
                )
            else:
                idempotent_request_abandon(user=user, key=key)
            return response

        return wrapper

    return decorator
