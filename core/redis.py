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
