"""One Redis connection pool per process, from ``settings.REDIS_URL``."""

from __future__ import annotations

from functools import lru_cache

import redis
from django.conf import settings


@lru_cache(maxsize=1)
def _pool(url: str) -> redis.ConnectionPool:
    return redis.ConnectionPool.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)


def redis_client() -> redis.Redis:
    return redis.Redis(connection_pool=_pool(settings.REDIS_URL))


# When the oldest heartbeat still waiting for a flush arrived: set (if absent) by every heartbeat,
# removed by every successful flush (``providers.services``). Named here because /healthz reads
# it and core imports no app.
HEARTBEAT_PENDING_SINCE_KEY = "suanli:hb:pending_since"
# The flush runs every 10 s (``config.celery_app``): a heartbeat waiting longer than this means
# several flushes in a row failed or never ran, so node liveness is frozen.
HEARTBEAT_FLUSH_STALL_S = 60.0
