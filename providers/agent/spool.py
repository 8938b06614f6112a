"""The durable outbox: job events and usage samples, one fsync'd file per item.

An item is written (and fsync'd) BEFORE it is first sent and deleted only after the server
acknowledged it, so a kill -9 at any point loses nothing; the server deduplicates by
(job, seq), so resending after a crash between "server stored it" and "we deleted it" counts
nothing twice. File names sort by (job, seq), which keeps each job's events in order.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from providers.agent.state import atomic_write_json, unlink_durably

log = logging.getLogger("suanli_agent.spool")

EVENTS = "events"
USAGE = "usage"
REJECTED = "rejected"


@dataclass
class SpoolItem:
    path: Path
    job_id: int
    seq: int
    payload: dict[str, Any]


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        for kind in (EVENTS, USAGE, REJECTED):
            (root / kind).mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, kind: str, job_id: int, seq: int) -> Path:
        return self.root / kind / f"{job_id:012d}-{seq:010d}.json"

    def put(self, kind: str, job_id: int, seq: int, payload: dict[str, Any]) -> Path:
        path = self._path(kind, job_id, seq)
        atomic_write_json(path, payload)
        return path

    def put_event(self, job_id: int, payload: dict[str, Any]) -> Path:
        return self.put(EVENTS, job_id, int(payload["seq"]), payload)

    def put_usage(self, sample: dict[str, Any]) -> Path:
        return self.put(USAGE, int(sample["job_id"]), int(sample["seq"]), sample)

    def pending(self, kind: str, limit: int | None = None) -> list[SpoolItem]:
        names = sorted(n for n in os.listdir(self.root / kind) if n.endswith(".json"))
        items = []
        for name in names[:limit] if limit else names:
            path = self.root / kind / name
            try:
                with open(path, encoding="utf-8") as fh:
                    payload = json.load(fh)
                job, seq = name[:-5].split("-")
            except (OSError, ValueError) as exc:
                # Unreadable items cannot have come from atomic_write_json; quarantine them.
                log.error("spool.corrupt path=%s error=%s", path, exc)
                self.reject([path])
                continue
            items.append(SpoolItem(path=path, job_id=int(job), seq=int(seq), payload=payload))
        return items

    def ack(self, paths: list[Path]) -> None:
        unlink_durably(paths)

    def reject(self, paths: list[Path]) -> None:
        """Keep what the server refused for an operator to inspect, out of the resend queue."""
        for p in paths:
            try:
                os.replace(p, self.root / REJECTED / f"{p.parent.name}-{p.name}")
            except FileNotFoundError:
                continue

    def latest(self, kind: str, job_id: int) -> SpoolItem | None:
        prefix = f"{job_id:012d}-"
        names = sorted(n for n in os.listdir(self.root / kind) if n.startswith(prefix))
        for name in reversed(names):
            try:
                with open(self.root / kind / name, encoding="utf-8") as fh:
                    payload = json.load(fh)
            except (OSError, ValueError):
                continue
            return SpoolItem(self.root / kind / name, job_id, int(name[13:-5]), payload)
        return None

    def count(self, kind: str) -> int:
        return sum(1 for n in os.listdir(self.root / kind) if n.endswith(".json"))
