"""Terminal output of the `suanli` CLI: aligned tables, a price chart, a progress line."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, TextIO

BLOCKS = "▁▂▃▄▅▆▇█"


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    out.write("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip() + "\n")
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
    if not cells:
        out.write("(none)\n")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def fields(pairs: Sequence[tuple[str, Any]], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        out.write(f"{key.ljust(width)}  {_cell(value)}\n")


def sparkline(values: Sequence[Decimal]) -> str:
    if not values:
        return ""
    low, high = min(values), max(values)
    span = high - low
    if span == 0:
        return BLOCKS[3] * len(values)
    return "".join(BLOCKS[int((v - low) / span * (len(BLOCKS) - 1))] for v in values)


def price_chart(points: Sequence[tuple[str, str]], *, width: int = 60, height: int = 8) -> list[str]:
    """A small chart of (time, price) oldest first: one column per round, min/max on the axis."""
    prices = []
    for _, price in points[-width:]:
        try:
            prices.append(Decimal(price))
        except InvalidOperation:
            continue
    if not prices:
        return ["(no spot rounds yet)"]
    low, high = min(prices), max(prices)
    span = high - low or Decimal(1)
    levels = [int((p - low) / span * (height - 1)) if high != low else height // 2 for p in prices]
    label_width = max(len(str(high)), len(str(low)))
    lines = []
    for row in range(height - 1, -1, -1):
        label = str(high) if row == height - 1 else str(low) if row == 0 else ""
        line = "".join("█" if level >= row else " " for level in levels)
        lines.append(f"{label.rjust(label_width)} │{line}")
    lines.append(" " * label_width + " └" + "─" * len(prices))
    first, last = points[-len(prices)][0], points[-1][0]
    lines.append(" " * (label_width + 2) + f"{first}  →  {last}")
    return lines


class Progress:
    """A one-line progress display on stderr: redrawn in place on a terminal, a new line per
    state change otherwise (so logs of scripts stay readable)."""

    SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self.last = ""
        self.ticks = 0

    def update(self, message: str) -> None:
        if not self.enabled:
            return
        elapsed = int(time.monotonic() - self.started)
        if self.tty:
            self.ticks += 1
            spinner = self.SPINNER[self.ticks % len(self.SPINNER)]
            self.stream.write(f"\r\033[K{spinner} {message} ({elapsed}s)")
            self.stream.flush()
        elif message != self.last:
            self.stream.write(f"... {message}\n")
            self.stream.flush()
        self.last = message

    def done(self, message: str | None = None) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K")
        if message:
            self.stream.write(f"{message}\n")
        self.stream.flush()


def endpoint_rows(job: dict[str, Any]) -> list[tuple[str, Any]]:
    """`fields` rows for a job's published ports (``8000/tcp  203.0.113.7:32768``) and its ssh line."""
    rows: list[tuple[str, Any]] = []
    for endpoint in job.get("endpoints") or []:
        where = endpoint.get("address") or f"port {endpoint.get('host_port')} (node address unknown)"
        rows.append((f"{endpoint.get('port')}/{endpoint.get('protocol') or 'tcp'}", where))
    ssh = job.get("ssh")
    if ssh:
        rows.append(("ssh", ssh.get("command") or "(waiting for the node to publish the port)"))
    return rows


def ssh_argv(ssh: dict[str, Any], *, identity: str | None = None) -> list[str]:
    """The ``ssh`` command line for a job's ``ssh`` object (host and port are set)."""
    argv = ["ssh", "-p", str(int(ssh["port"]))]
    if identity:
        argv += ["-i", identity]
    host = str(ssh["host"])
    # A value from the server starting with "-" would be read by ssh as an option.
    if host.startswith("-") or (ssh.get("user") and str(ssh["user"]).startswith("-")):
        raise ValueError("refusing an ssh target that starts with '-'")
    argv.append(f"{ssh['user']}@{host}" if ssh.get("user") else host)
    return argv
