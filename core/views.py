"""Operational endpoints."""

from __future__ import annotations

import time

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from config.celery_app import WORKER_SEEN_KEY, app
from core.redis import redis_client

WORKER_FRESH_S = 60.0


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)
    except Exception:  # noqa: BLE001 - any failure means "not ok"
        return False


def _celery_ok(client: object | None) -> bool:
    """A worker answered within the last minute: its liveness stamp, else a short ping."""
    if client is None:
        return False
    try:
        seen = client.get(WORKER_SEEN_KEY)  # type: ignore[attr-defined]
        if seen is not None and time.time() - float(seen) < WORKER_FRESH_S:
            return True
        replies = app.control.ping(timeout=1.0)
        if replies:
            client.set(WORKER_SEEN_KEY, f"{time.time():.3f}", ex=120)  # type: ignore[attr-defined]
            return True
    except Exception:  # noqa: BLE001
        return False
    return False


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    database = _database_ok()
    client = redis_client()
    try:
        redis_ok = bool(client.ping())
    except Exception:  # noqa: BLE001
        redis_ok = False
    celery = _celery_ok(client if redis_ok else None)
    healthy = database and redis_ok and celery
    body = {
        "status": "ok" if healthy else "degraded",
        "database": "ok" if database else "unavailable",
        "redis": "ok" if redis_ok else "unavailable",
        "celery": "ok" if celery else "no worker seen in the last minute",
    }
    return JsonResponse(body, status=200 if healthy else 503)
