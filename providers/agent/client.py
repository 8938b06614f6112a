"""The agent protocol over HTTP (stdlib urllib + json only, to keep the daemon small)."""

from __future__ import annotations

import json
import logging
import random
import urllib.error
import urllib.request
from typing import Any

from providers.agent import __version__

log = logging.getLogger("suanli_agent.client")

API = "/api/agent/v1"
USER_AGENT = f"suanli-agent/{__version__}"


class AgentError(Exception):
    """Base of everything the client raises."""


class Unreachable(AgentError):
    """Connection refused, DNS failure, timeout, or a 5xx: retry with backoff."""


class ApiError(AgentError):
    """A 4xx with the server's error shape `{"error": {"code", "message", "fields"}}`."""

    def __init__(self, status: int, code: str, message: str, fields: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields

    @property
    def auth(self) -> bool:
        return self.status in (401, 403)

    @property
    def retryable(self) -> bool:
        return self.auth or self.status in (408, 409, 423, 425, 429)


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
            if exc.code >= 500:
                raise Unreachable(f"server error HTTP {exc.code} from {self.server}") from None
            raise _api_error(exc.code, raw) from None
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

    def heartbeat(self, *, running_jobs: list[int], devices: list[dict[str, Any]]) -> Any:
        body = {"agent_version": __version__, "running_jobs": running_jobs, "devices": devices}
        return self.post("/heartbeat", body)

    def work(self, *, running: list[int], wait: int) -> dict[str, Any]:
        reply = self.post(f"/work?wait={wait}", {"running": running}, timeout=wait + 15.0)
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
    """Exponential backoff with full jitter, capped (60 s by default)."""

    def __init__(self, base: float = 1.0, cap: float = 60.0) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        ceiling = min(self.cap, self.base * 2 ** min(self.failures - 1, 16))
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not security

    def reset(self) -> None:
        self.failures = 0
