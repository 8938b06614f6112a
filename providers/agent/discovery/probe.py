"""Running vendor tools: a missing, failing or hanging tool must never crash discovery."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys

log = logging.getLogger("suanli_agent.discovery")

DEFAULT_TIMEOUT_S = 10.0


def tool_timeout() -> float:
    try:
        return float(os.environ.get("SUANLI_AGENT_TOOL_TIMEOUT", DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S


def warn(message: str) -> None:
    # Discovery warnings go to stderr even when logging is not configured (the `detect` command
    # prints JSON on stdout, so stdout must stay clean).
    print(f"warning: {message}", file=sys.stderr)
    log.warning("discovery.warning %s", message)


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def run_tool(argv: list[str], *, quiet_missing: bool = True) -> str | None:
    """Run a vendor tool and return its stdout, or None (with a warning) when it fails.

    The tool runs in its own session so that a timeout kills the whole process group: a shell
    wrapper that forks (`sleep`, a pager) would otherwise keep the pipe open and hang us.
    """
    path = shutil.which(argv[0])
    if path is None:
        if not quiet_missing:
            warn(f"{argv[0]} not found on PATH; skipped")
        return None
    try:
        proc = subprocess.Popen(
            [path, *argv[1:]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        warn(f"{argv[0]} could not be started ({exc}); skipped")
        return None
    timeout = tool_timeout()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        warn(f"{' '.join(argv)} timed out after {timeout:g}s; skipped")
        return None
    if proc.returncode != 0:
        first = err.decode("utf-8", "replace").strip().splitlines()[:1]
        detail = f": {first[0]}" if first else ""
        warn(f"{' '.join(argv)} exited with status {proc.returncode}{detail}; skipped")
        return None
    return out.decode("utf-8", "replace")


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def to_int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    text = str(value).strip()
    try:
        return int(text, 0)
    except ValueError:
        pass
    try:
        return int(float(text))
    except ValueError:
        return None


def normalize_bus_id(bus_id: str | None) -> str | None:
    """Lower-case `dddd:bb:dd.f`; nvidia-smi prints an 8-digit domain (`00000000:18:00.0`)."""
    if not bus_id:
        return None
    text = bus_id.strip().lower()
    if text in ("", "n/a", "na", "-"):
        return None
    parts = text.split(":")
    if len(parts) == 3 and len(parts[0]) > 4:
        parts[0] = parts[0][-4:]
    return ":".join(parts)
