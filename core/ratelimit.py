"""Log-in rate limit, counted in Redis so every web replica shares one count.

Two counters, both for failed attempts only:

* per (client IP, username): at most ``LOGIN_MAX_FAILURES_PER_USER`` failures, then blocked;
* per client IP: at most ``LOGIN_MAX_FAILURES_PER_IP`` failures across all usernames (password
  spraying from one address).

Each recorded failure (re)starts its counter's ``LOGIN_WINDOW_S`` expiry, so a block lifts
``LOGIN_WINDOW_S`` after the last failure. A blocked attempt is rejected before the password is
checked and is not counted, so it neither extends the block nor lets a guess through. A successful
log-in clears its (IP, username) counter. If Redis is unreachable the limit fails open (logged):
an outage of the cache must not lock every user out.

The client IP is ``REMOTE_ADDR``: the TCP peer, or behind the reverse proxies listed in
``SUANLI_TRUSTED_PROXIES`` the client they forwarded for (``core.middleware.TrustedProxyMiddleware``).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import redis

from core.redis import redis_client

log = logging.getLogger("suanli.auth")

LOGIN_WINDOW_S = 15 * 60
LOGIN_MAX_FAILURES_PER_USER = 5
LOGIN_MAX_FAILURES_PER_IP = 50

_KEY_PREFIX = "suanli:ratelimit:login"


@dataclass(frozen=True)
class LoginBlock:
    retry_after_s: int


def _keys(*, ip: str, username: str) -> tuple[str, str]:
    # Hash the username: it is user input (any length, any characters) and personal data.
    pair = hashlib.sha256(f"{ip}\x00{username.strip().lower()}".encode()).hexdigest()[:32]
    return f"{_KEY_PREFIX}:pair:{pair}", f"{_KEY_PREFIX}:ip:{ip}"


def login_block_get(*, ip: str, username: str) -> LoginBlock | None:
    """The block in force for this (IP, username), or None when an attempt may proceed."""
    pair_key, ip_key = _keys(ip=ip, username=username)
    try:
        with redis_client().pipeline(transaction=False) as pipe:
            for key in (pair_key, ip_key):
                pipe.get(key)
                pipe.ttl(key)
            pair_count, pair_ttl, ip_count, ip_ttl = pipe.execute()
    except redis.RedisError:
        log.warning("auth.login_ratelimit_unavailable", exc_info=True)
        return None
    waits = []
    if pair_count is not None and int(pair_count) >= LOGIN_MAX_FAILURES_PER_USER:
        waits.append(int(pair_ttl))
    if ip_count is not None and int(ip_count) >= LOGIN_MAX_FAILURES_PER_IP:
        waits.append(int(ip_ttl))
    if not waits:
        return None
    return LoginBlock(retry_after_s=max(1, *waits))


def login_failure_record(*, ip: str, username: str) -> None:
    pair_key, ip_key = _keys(ip=ip, username=username)
    try:
        with redis_client().pipeline(transaction=True) as pipe:
            for key in (pair_key, ip_key):
                pipe.incr(key)
                pipe.expire(key, LOGIN_WINDOW_S)
            pipe.execute()
    except redis.RedisError:
        log.warning("auth.login_ratelimit_unavailable", exc_info=True)


def login_success_record(*, ip: str, username: str) -> None:
    pair_key, _ip_key = _keys(ip=ip, username=username)
    try:
        redis_client().delete(pair_key)
    except redis.RedisError:
        log.warning("auth.login_ratelimit_unavailable", exc_info=True)
