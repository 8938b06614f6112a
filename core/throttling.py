"""API rate limits, counted in Redis so every web replica shares one count.

``ApiKeyRateThrottle`` counts per API key (per user for a browser session), ``AnonRateThrottle``
per client IP for anonymous calls; node-credential (agent) requests are counted by neither. Each
is a fixed window of the rate's period (``"1200/min"``): one ``INCR`` and one ``EXPIRE`` per
request, whatever the rate. Over the limit DRF answers 429 and ``core.api`` adds ``Retry-After``
(the seconds left in the window). If Redis is unreachable the limit fails open (logged).

Failed authentications (a wrong API key or node credential) are counted per client IP too
(``auth_failure_wait`` / ``auth_failure_record``, rate ``SUANLI_AUTH_FAILURE_RATE``), agents
included: a blocked client is refused before its credential is looked up.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

from core.models import ApiKey
from core.redis import redis_client

log = logging.getLogger("suanli.api")

_PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600,
            "d": 86400, "day": 86400}  # fmt: skip


def parse_rate(rate: str) -> tuple[int, int]:
    """``"1200/min"`` -> (1200, 60)."""
    count, _, period = rate.partition("/")
    return int(count), _PERIODS[period.strip().lower()]


class _RedisWindowThrottle(BaseThrottle):
    scope = ""

    def __init__(self) -> None:
        self._wait: float | None = None

    def identity(self, request: Request) -> str | None:
        raise NotImplementedError

    def allow_request(self, request: Request, view: Any) -> bool:
        ident = self.identity(request)
        rate = api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)
        if ident is None or not isinstance(rate, str) or not rate:
            return True
        limit, period = parse_rate(rate)
        now = time.time()
        window = int(now // period)
        key = f"suanli:throttle:{self.scope}:{ident}:{window}"
        try:
            with redis_client().pipeline(transaction=False) as pipe:
                pipe.incr(key)
                pipe.expire(key, period + 1)
                count, _ = pipe.execute()
        except redis.RedisError:
            log.warning("api.throttle_unavailable", exc_info=True)
            return True
        if int(count) <= limit:
            return True
        self._wait = (window + 1) * period - now
        return False

    def wait(self) -> float | None:
        return self._wait


class ApiKeyRateThrottle(_RedisWindowThrottle):
    """Per API key; per user for session (portal) calls. Rate: ``SUANLI_API_RATE``."""

    scope = "api"

    def identity(self, request: Request) -> str | None:
        if isinstance(request.auth, ApiKey):
            return f"key:{request.auth.pk}"
        user = request.user
        if user is not None and user.is_authenticated:
            return f"user:{user.pk}"
        return None


class AnonRateThrottle(_RedisWindowThrottle):
    """Per client IP for unauthenticated calls. Rate: ``SUANLI_API_ANON_RATE``.

    Node-credential requests are not anonymous here: agents are bounded by their own protocol
    (heartbeat interval, long-poll) and many nodes may share one address.
    """

    scope = "anon"

    def identity(self, request: Request) -> str | None:
        user = request.user
        if (user is not None and user.is_authenticated) or request.auth is not None:
            return None
        # REMOTE_ADDR, not X-Forwarded-For, which any client can set; behind trusted proxies
        # core.middleware.TrustedProxyMiddleware has already put the real client there.
        return f"ip:{request.META.get('REMOTE_ADDR', '')}"


# --- Failed authentication -------------------------------------------------------------------------

AUTH_FAILURE_SCOPE = "auth_failure"


def _auth_failure_window(client_ip: str) -> tuple[str, int, int, float] | None:
    rate = api_settings.DEFAULT_THROTTLE_RATES.get(AUTH_FAILURE_SCOPE)
    if not isinstance(rate, str) or not rate:
        return None
    limit, period = parse_rate(rate)
    now = time.time()
    window = int(now // period)
    return (
        f"suanli:throttle:{AUTH_FAILURE_SCOPE}:ip:{client_ip}:{window}",
        limit,
        period,
        (window + 1) * period - now,
    )


def auth_failure_wait(*, client_ip: str) -> float | None:
    """Seconds until ``client_ip`` may present a credential again; None when it may now.

    A client that failed ``SUANLI_AUTH_FAILURE_RATE`` times in the window is refused before its
    credential is even looked up, valid or not, so guessing gains nothing while blocked. Fails
    open (logged) when Redis is unreachable.
    """
    window = _auth_failure_window(client_ip)
    if window is None:
        return None
    key, limit, _period, wait = window
    try:
        count = redis_client().get(key)
    except redis.RedisError:
        log.warning("api.auth_throttle_unavailable", exc_info=True)
        return None
    return wait if count is not None and int(count) >= limit else None


def auth_failure_record(*, client_ip: str) -> None:
    """Count one failed API-key or node-credential authentication from ``client_ip``."""
    window = _auth_failure_window(client_ip)
    if window is None:
        return
    key, _limit, period, _wait = window
    try:
        with redis_client().pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, period + 1)
            pipe.execute()
    except redis.RedisError:
        log.warning("api.auth_throttle_unavailable", exc_info=True)
