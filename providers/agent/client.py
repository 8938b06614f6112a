"""The agent protocol over HTTP (stdlib urllib + json only, to keep the daemon small)."""

from __future__ import annotations

import json
import logging
import random
import time
import urllib.error
import urllib.request
from email.utils import parsedate_to_datetime
from typing import Any

from providers.agent import __version__

log = logging.getLogger("suanli_agent.client")

API = "/api/agent/v1"
USER_AGENT = f"suanli-agent/{__version__}"


class AgentError(Exception):
    """Base of everything the client raises."""


# A server asking for more than this is misconfigured; an agent silent that long goes offline.
MAX_RETRY_AFTER_S = 300.0


class Unreachable(AgentError):
    """Connection refused, DNS failure, timeout, or a 5xx: retry with backoff.

    ``retry_after`` is the server's ``Retry-After`` in seconds (a 503 while Redis is down), or None.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ApiError(AgentError):
    """A 4xx with the server's error shape `{"error": {"code", "message", "fields"}}`."""

    def __init__(self, status: int, code: str, message: str, fields: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields
        self.retry_after: float | None = None  # set from the Retry-After header (429)

    @property
    def auth(self) -> bool:
        return self.status in (401, 403)

    @property
    def retryable(self) -> bool:
        return self.auth or self.status in (408, 409, 423, 425, 429)


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now (delta-seconds or an HTTP date), capped; None if absent."""
    if not value or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(seconds, MAX_RETRY_AFTER_S))


def _error_message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return ""


def _api_error(status: int, body: bytes) -> ApiError:
    try:
        err = json.loads(body)["error"]
        return ApiError(status, str(err.get("code", "")), str(err.get("message", "")), err.get("fields"))
    except (ValueError, KeyError, TypeError, AttributeError):
        text = body.decode("utf-8", "replace").strip().splitlines()
        return ApiError(status, "http_error", f"HTTP {status}" + (f": {text[0][:200]}" if text else ""))


class AgentClient:
    def __init__(self, server: str, credential: str | None = None, *, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self.credential = credential
        self.timeout = timeout

    def post(self, path: str, body: dict[str, Any], *, timeout: float | None = None) -> Any:
        url = f"{self.server}{API}{path}"
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if self.credential:
            headers["Authorization"] = f"Bearer {self.credential}"
        if not url.startswith(("http://", "https://")):
            raise ApiError(0, "bad_url", f"server URL must start with http:// or https://: {url}")
        req = urllib.request.Request(  # noqa: S310 - scheme checked above
            url, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:  # noqa: S310
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            retry_after = retry_after_seconds(exc.headers.get("Retry-After") if exc.headers else None)
            if exc.code >= 500:
                detail = _error_message(raw)
                raise Unreachable(
                    f"server error HTTP {exc.code} from {self.server}" + (f": {detail}" if detail else ""),
                    retry_after=retry_after,
                ) from None
            error = _api_error(exc.code, raw)
            error.retry_after = retry_after
            raise error from None
        except (TimeoutError, urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"cannot reach {self.server}: {reason}") from None
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise Unreachable(f"invalid JSON from {self.server}") from None

    # One method per endpoint, so the payload shapes live in one place.
    def register(self, *, token: str, name: str, inventory: dict[str, Any]) -> dict[str, Any]:
        body = {"token": token, "name": name, "agent_version": __version__, "inventory": inventory}
        return self.post("/register", body)

    def heartbeat(
        self, *, running_jobs: list[int], devices: list[dict[str, Any]], public_address: str = ""
    ) -> Any:
        body: dict[str, Any] = {
            "agent_version": __version__,
            "running_jobs": running_jobs,
            "devices": devices,
        }
        if public_address:
            body["public_address"] = public_address
        return self.post("/heartbeat", body)

    def work(self, *, running: list[int], wait: int, volumes: list[int] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"running": running}
        if volumes:  # the volumes this node holds data for: the reply names the deleted ones
            body["volumes"] = volumes
        reply = self.post(f"/work?wait={wait}", body, timeout=wait + 15.0)
        return reply if isinstance(reply, dict) else {}

    def job_event(self, job_id: int, event: dict[str, Any]) -> Any:
        return self.post(f"/jobs/{job_id}/events", event)

    def job_logs(self, job_id: int, *, offset: int, data: str) -> dict[str, Any]:
        reply = self.post(f"/jobs/{job_id}/logs", {"offset": offset, "data": data})
        return reply if isinstance(reply, dict) else {}

    def usage(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        reply = self.post("/usage", {"samples": samples})
        return reply if isinstance(reply, dict) else {}


class Backoff:
    """Exponential backoff with jitter, capped (60 s by default), honouring ``Retry-After``.

    The n-th failure in a row waits a random time in ``[c/2, c]`` with ``c = min(cap, base*2^(n-1))``;
    when the server sent ``Retry-After`` the wait is at least that, plus up to 20 % jitter so a
    fleet told the same number does not come back in one burst.
    """

    def __init__(self, base: float = 1.0, cap: float = 60.0) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        self.failures += 1
        ceiling = min(self.cap, self.base * 2 ** min(self.failures - 1, 16))
        delay = random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not security
        if retry_after is not None:
            asked = min(max(retry_after, 0.0), MAX_RETRY_AFTER_S)
            delay = max(delay, asked * random.uniform(1.0, 1.2))  # noqa: S311
        return delay

    def reset(self) -> None:
        self.failures = 0
