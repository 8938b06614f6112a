"""Job records: what the agent runs, persisted so a restarted agent carries on where it was.

Sequence numbers (events and usage samples, per job) are allocated here. The spooled item is
written before the record's counter is saved; on load the counter is reconciled with the spool,
so a crash between the two never reuses a seq nor leaves a gap in the usage windows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from providers.agent.spool import EVENTS, USAGE, Spool
from providers.agent.state import StateDir, atomic_write_json, iso, parse_iso, read_json, utcnow

log = logging.getLogger("suanli_agent.jobs")

TERMINAL = ("exited", "failed", "stopped")
# How long a finished, fully shipped record is kept so that a re-sent assignment is ignored.
RETAIN_FINISHED = timedelta(hours=24)


@dataclass
class JobRecord:
    id: int
    spec: dict[str, Any]
    state: str = "accepted"
    pid: int | None = None
    create_time: float | None = None
    container_id: str | None = None
    ports: dict[str, int] = field(default_factory=dict)
    exit_code: int | None = None
    stop_deadline: str | None = None
    stop_reason: str | None = None
    term_sent: bool = False
    kill_sent: bool = False
    event_seq: int = 0
    usage_seq: int = 0
    usage_window_end: str | None = None
    log_file_pos: int = 0
    log_server_pos: int = 0
    log_dropped: int = 0
    started_at: str | None = None
    finished_at: str | None = None

    @property
    def runtime(self) -> str:
        return str(self.spec.get("runtime") or "process")

    @property
    def device_indexes(self) -> list[int]:
        return [int(i) for i in self.spec.get("device_indexes") or []]

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobRecord:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


class JobStore:
    def __init__(self, state: StateDir, spool: Spool) -> None:
        self.state = state
        self.spool = spool
        self.lock = threading.RLock()
        self.records: dict[int, JobRecord] = {}

    def load(self) -> None:
        with self.lock:
            for name in sorted(os.listdir(self.state.jobs_dir)):
                if not name.endswith(".json") or name.startswith("."):
                    continue
                try:
                    rec = JobRecord.from_json(read_json(self.state.jobs_dir / name))
                except (OSError, ValueError, TypeError) as exc:
                    log.error("job.record_unreadable file=%s error=%s", name, exc)
                    continue
                self._reconcile(rec)
                self.records[rec.id] = rec

    def _reconcile(self, rec: JobRecord) -> None:
        event = self.spool.latest(EVENTS, rec.id)
        if event and event.seq > rec.event_seq:
            rec.event_seq = event.seq
            if event.payload.get("state") in (*TERMINAL, "running"):
                rec.state = event.payload["state"]
        usage = self.spool.latest(USAGE, rec.id)
        if usage and usage.seq > rec.usage_seq:
            rec.usage_seq = usage.seq
            rec.usage_window_end = usage.payload.get("window_end")
        self.save(rec)

    def save(self, rec: JobRecord) -> None:
        with self.lock:
            atomic_write_json(self.state.jobs_dir / f"{rec.id}.json", asdict(rec))

    def get(self, job_id: int) -> JobRecord | None:
        with self.lock:
            return self.records.get(job_id)

    def add(self, spec: dict[str, Any]) -> JobRecord | None:
        """Record a new assignment; None when the job is already known (assignments repeat)."""
        job_id = int(spec["id"])
        with self.lock:
            if job_id in self.records:
                return None
            rec = JobRecord(id=job_id, spec=spec)
            self.records[job_id] = rec
            self.save(rec)
            return rec

    def active(self) -> list[JobRecord]:
        with self.lock:
            return [r for r in self.records.values() if not r.finished]

    def all(self) -> list[JobRecord]:
        with self.lock:
            return list(self.records.values())

    def running_ids(self) -> list[int]:
        return sorted(r.id for r in self.active())

    def emit(
        self,
        rec: JobRecord,
        state: str,
        *,
        exit_code: int | None = None,
        message: str = "",
        at: datetime | None = None,
    ) -> dict[str, Any]:
        """Move the job to `state` and spool the event (durably) before anything is sent."""
        with self.lock:
            seq = rec.event_seq + 1
            payload: dict[str, Any] = {
                "seq": seq,
                "state": state,
                "at": iso(at or utcnow()),
                "exit_code": exit_code,
                "ports": dict(rec.ports),
                "message": message,
            }
            self.spool.put_event(rec.id, payload)
            rec.event_seq = seq
            rec.state = state
            if state in TERMINAL:
                rec.exit_code = exit_code
                rec.finished_at = payload["at"]
            self.save(rec)
            log.info("job.event job_id=%s seq=%s state=%s", rec.id, seq, state)
            return payload

    def sample(
        self,
        rec: JobRecord,
        *,
        now: datetime,
        utilization_pct: float | None,
        memory_used_mib: int | None,
        power_w: float | None,
    ) -> dict[str, Any] | None:
        """Spool one usage sample covering [previous window end, now]; windows never overlap."""
        with self.lock:
            start = rec.usage_window_end or rec.started_at
            if start is None or parse_iso(start) >= now:
                return None
            seq = rec.usage_seq + 1
            sample: dict[str, Any] = {
                "job_id": rec.id,
                "seq": seq,
                "window_start": start,
                "window_end": iso(now),
                "device_count": len(rec.device_indexes),
                "utilization_pct": utilization_pct,
                "memory_used_mib": memory_used_mib,
                "power_w": power_w,
            }
            self.spool.put_usage(sample)
            rec.usage_seq = seq
            rec.usage_window_end = sample["window_end"]
            self.save(rec)
            return sample

    def forget_old(self, now: datetime, shipped: set[int]) -> None:
        with self.lock:
            for rec in list(self.records.values()):
                if (
                    rec.finished
                    and rec.id in shipped
                    and rec.finished_at
                    and now - parse_iso(rec.finished_at) > RETAIN_FINISHED
                ):
                    del self.records[rec.id]
                    record_file = self.state.jobs_dir / f"{rec.id}.json"
                    for p in (record_file, self.state.job_log_path(rec.id)):
                        with contextlib.suppress(FileNotFoundError):
                            p.unlink()
