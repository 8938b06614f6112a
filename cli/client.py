"""The HTTP side of the `suanli` CLI: its config file and a small JSON client (stdlib only).

Imports nothing from the server: the CLI speaks the REST API documented in docs/api.md.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from cli import __version__

# Exit codes (documented in docs/api.md and `suanli --help`).
EXIT_OK = 0
EXIT_REFUSED = 1  # the server refused the request (400, 410, 413 ...) or a job ended badly
EXIT_USAGE = 2  # bad arguments, or not logged in
EXIT_AUTH = 3  # 401/403: invalid or revoked key, or the key lacks the scope
EXIT_NOT_FOUND = 4  # 404
EXIT_CONFLICT = 5  # 402 (insufficient funds) or 409 (conflict)
EXIT_RATE_LIMITED = 6  # 429
EXIT_UNAVAILABLE = 7  # 5xx, network error or timeout
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """One clear line for the user, and the exit code that goes with it."""

    def __init__(self, message: str, exit_code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class ApiError(CliError):
    """An error answer of the API (``{"error": {"code", "message", "fields"}}``)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: dict[str, list[str]] | None = None,
        retry_after: str | None = None,
    ) -> None:
        exit_code = {401: EXIT_AUTH, 403: EXIT_AUTH, 404: EXIT_NOT_FOUND, 402: EXIT_CONFLICT,
                     409: EXIT_CONFLICT, 429: EXIT_RATE_LIMITED}.get(status)  # fmt: skip
        if exit_code is None:
            exit_code = EXIT_UNAVAILABLE if status >= 500 else EXIT_REFUSED
        details = "; ".join(
            f"{name}: {', '.join(messages)}" for name, messages in (fields or {}).items() if messages
        )
        line = message if not details or details in message else f"{message} ({details})"
        if status == 429 and retry_after:
            line += f" Retry after {retry_after} s."
        super().__init__(line, exit_code)
        self.status = status
        self.code = code
        self.fields = fields or {}
        self.retry_after = retry_after


# --- Config ----------------------------------------------------------------------------------------


def config_path() -> Path:
    configured = os.environ.get("SUANLI_CONFIG")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "suanli" / "config.json"


def config_load() -> dict[str, str]:
    path = config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}", EXIT_USAGE) from None
    return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def config_save(config: dict[str, str]) -> Path:
    """Write the config readable by its owner only (0600): it holds an API key."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(config, handle, indent=2)
        handle.write("\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


# --- HTTP --------------------------------------------------------------------------------------------


class Client:
    def __init__(self, server: str, key: str | None, *, timeout: float = 30.0) -> None:
        if not server:
            raise CliError("not logged in: run `suanli login --server URL --key KEY` first", EXIT_USAGE)
        parsed = urllib.parse.urlsplit(server)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise CliError(f"not a server URL: {server!r} (expected https://host)", EXIT_USAGE)
        self.server = server.rstrip("/")
        self.key = key
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        idempotency_key: str | None = None,
        auth: bool = True,
    ) -> Any:
        url = self.server + path
        query = {k: v for k, v in (params or {}).items() if v not in (None, "", [])}
        if query:
            url += "?" + urllib.parse.urlencode(query, doseq=True)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", "User-Agent": f"suanli-cli/{__version__}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if auth and self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310 - http(s) only
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:  # noqa: S310 - http(s) only
                raw = reply.read()
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError(f"cannot reach {self.server}: {reason}", EXIT_UNAVAILABLE) from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise CliError(
                f"{self.server} did not answer with JSON; is it a Suanli server?", EXIT_UNAVAILABLE
            ) from None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any = None, *, idempotency_key: str | None = None) -> Any:
        return self.request(
            "POST", path, body=body if body is not None else {}, idempotency_key=idempotency_key
        )

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, body=body)


def new_idempotency_key() -> str:
    return f"cli-{uuid.uuid4()}"


def _api_error(exc: urllib.error.HTTPError) -> ApiError:
    try:
        payload = json.loads(exc.read() or b"{}")
        error = payload["error"]
        return ApiError(
            exc.code,
            str(error.get("code", "error")),
            str(error.get("message", exc.reason)),
            {str(k): [str(m) for m in v] for k, v in (error.get("fields") or {}).items()},
            exc.headers.get("Retry-After"),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return ApiError(
            exc.code, "error", f"HTTP {exc.code} {exc.reason}", retry_after=exc.headers.get("Retry-After")
        )
