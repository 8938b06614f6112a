"""The daemon: heartbeat, work long-poll, job supervision (stops, usage samples) and shipping.

Four threads, all daemon threads; the main thread only waits for SIGTERM/SIGINT. Jobs run in
their own sessions and survive the agent: a restarted agent re-attaches from the job records.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from providers.agent import __version__
from providers.agent.client import AgentClient, ApiError, Backoff, Unreachable
from providers.agent.discovery.types import Inventory
from providers.agent.jobs import JobRecord, JobStore
from providers.agent.logship import DEFAULT_MAX_BACKLOG, LogShipper
from providers.agent.runtimes.base import Runtime, StartError, Status
from providers.agent.spool import EVENTS, USAGE, Spool
from providers.agent.state import StateDir, iso, parse_iso, utcnow
from providers.agent.telemetry import Reading, Telemetry
from providers.agent.volumes import (
    Mount,
    VolumeError,
    job_mounts,
    volumes_held,
    volumes_prepare,
    volumes_remove,
)

log = logging.getLogger("suanli_agent.daemon")

USAGE_BATCH = 500


@dataclass
class AgentConfig:
    state_dir: Path
    server: str
    credential: str
    name: str
    simulate: str | None = None
    heartbeat_interval: float = 10.0
    sample_interval: float = 30.0
    work_wait: int = 25
    tick: float = 1.0
    max_log_backlog: int = DEFAULT_MAX_BACKLOG
    # Where buyers reach this node's jobs, sent with every heartbeat ("" sends none).
    public_address: str = ""


def aggregate(readings: list[Reading]) -> dict[str, Any]:
    utils = [r.utilization_pct for r in readings if r.utilization_pct is not None]
    mems = [r.memory_used_mib for r in readings if r.memory_used_mib is not None]
    powers = [r.power_w for r in readings if r.power_w is not None]
    return {
        "utilization_pct": round(sum(utils) / len(utils), 1) if utils else None,
        "memory_used_mib": sum(mems) if mems else None,
        "power_w": round(sum(powers), 1) if powers else None,
    }


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        inventory: Inventory,
        telemetry: Telemetry,
        runtimes: dict[str, Runtime] | None = None,
        client: AgentClient | None = None,
    ) -> None:
        self.config = config
        self.inventory = inventory
        self.telemetry = telemetry
        self.state = StateDir(config.state_dir)
        self.state.ensure()
        self.spool = Spool(self.state.spool_dir)
        self.store = JobStore(self.state, self.spool)
        self.client = client or AgentClient(config.server, config.credential)
        self.shipper = LogShipper(self.store, self.client, max_backlog=config.max_log_backlog)
        if runtimes is None:
            from providers.agent.runtimes.docker import DockerRuntime
            from providers.agent.runtimes.process import ProcessRuntime

            runtimes = {
                "process": ProcessRuntime(self.state, public_address=config.public_address),
                "docker": DockerRuntime(self.state),
            }
        self.runtimes = runtimes
        self.stopping = threading.Event()
        self.wake_shipper = threading.Event()
        self.threads: list[threading.Thread] = []

    # ---- lifecycle -------------------------------------------------------------------------

    def recover(self) -> None:
        """Re-attach to the jobs recorded before a restart; report those that died meanwhile."""
        self.store.load()
        for rec in self.store.active():
            if rec.pid is None and rec.container_id is None and rec.state in ("accepted", "starting"):
                log.info("job.resume_start job_id=%s", rec.id)
                self._spawn(self._start_job, rec)
                continue
            status = self._runtime(rec).poll(rec)
            if status.running:
                log.info("job.reattached job_id=%s pid=%s", rec.id, rec.pid)
                if rec.state != "running":
                    self.store.emit(rec, "running")
            else:
                self._finish(rec, status, downtime=True)

    def start(self) -> None:
        self.recover()
        for name, target in (
            ("heartbeat", self._heartbeat_loop),
            ("work", self._work_loop),
            ("supervisor", self._supervisor_loop),
            ("shipper", self._shipper_loop),
        ):
            t = threading.Thread(target=target, name=f"suanli-{name}", daemon=True)
            t.start()
            self.threads.append(t)
        log.info("agent.started version=%s name=%s", __version__, self.config.name)

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        self.wake_shipper.set()
        for t in self.threads:
            if t.name != "suanli-work":  # may sit in a long-poll; it is a daemon thread
                t.join(timeout)
        log.info("agent.stopped running_jobs=%s", self.store.running_ids())

    def run_forever(self) -> None:
        def _on_signal(signum: int, _frame: Any) -> None:
            log.info("agent.signal signal=%s", signal.Signals(signum).name)
            self.stopping.set()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
        self.start()
        while not self.stopping.wait(1.0):
            pass
        self.stop()

    # ---- helpers ---------------------------------------------------------------------------

    def _spawn(self, fn: Any, *args: Any) -> None:
        threading.Thread(target=fn, args=args, daemon=True, name="suanli-start").start()

    def _runtime(self, rec: JobRecord) -> Runtime:
        runtime = self.runtimes.get(rec.runtime)
        if runtime is None:
            raise StartError(f"runtime {rec.runtime!r} is not enabled on this node")
        return runtime

    def _emit(self, rec: JobRecord, state: str, **kwargs: Any) -> None:
        self.store.emit(rec, state, **kwargs)
        self.wake_shipper.set()

    def _busy(self) -> set[int]:
        return {i for r in self.store.active() if r.state == "running" for i in r.device_indexes}

    # ---- jobs ------------------------------------------------------------------------------

    def accept(self, spec: dict[str, Any]) -> JobRecord | None:
        try:
            rec = self.store.add(spec)
        except (KeyError, TypeError, ValueError) as exc:
            log.error("job.bad_assignment spec=%r error=%s", spec, exc)
            return None
        if rec is None:
            return None  # already known: assignments are idempotent
        self._emit(rec, "accepted")
        self._spawn(self._start_job, rec)
        return rec

    def _start_job(self, rec: JobRecord) -> None:
        if rec.stop_deadline:
            self._emit(rec, "stopped", message="stopped before it started")
            return
        if rec.state == "accepted":
            self._emit(rec, "starting")
        try:
            runtime = self._runtime(rec)
            try:
                volumes_prepare(job_mounts(self.state.root, rec.spec))
            except (VolumeError, OSError) as exc:
                raise StartError(f"cannot prepare volumes: {exc}") from exc
            runtime.start(rec)
        except StartError as exc:
            log.warning("job.start_failed job_id=%s error=%s", rec.id, exc)
            self._emit(rec, "failed", message=str(exc)[:500])
            return
        except Exception as exc:
            log.exception("job.start_crashed job_id=%s", rec.id)
            self._emit(rec, "failed", message=f"agent error: {exc}"[:500])
            return
        now = utcnow()
        with self.store.lock:
            rec.started_at = iso(now)
            rec.usage_window_end = None
        self._emit(rec, "running", at=now)

    def request_stop(self, command: dict[str, Any]) -> None:
        rec = self.store.get(int(command.get("job_id", -1)))
        if rec is None or rec.finished:
            return
        deadline = command.get("deadline") or iso(utcnow())
        with self.store.lock:
            if rec.stop_deadline is None or parse_iso(deadline) < parse_iso(rec.stop_deadline):
                rec.stop_deadline = deadline
            rec.stop_reason = command.get("reason")
            self.store.save(rec)
        log.info("job.stop_requested job_id=%s deadline=%s reason=%s", rec.id, deadline, rec.stop_reason)
        if rec.state == "running":
            self._enforce_stop(rec, utcnow())

    def _enforce_stop(self, rec: JobRecord, now: datetime) -> None:
        if rec.stop_deadline is None:
            return
        runtime = self._runtime(rec)
        if not rec.term_sent:
            runtime.terminate(rec)
            rec.term_sent = True
            self.store.save(rec)
        if not rec.kill_sent and now >= parse_iso(rec.stop_deadline):
            runtime.kill(rec)
            rec.kill_sent = True
            self.store.save(rec)

    def _sample(self, rec: JobRecord, now: datetime) -> None:
        readings = self.telemetry.read(rec.device_indexes, self._busy()) if rec.device_indexes else []
        sample = self.store.sample(rec, now=now, **aggregate(readings))
        if sample is not None:
            self.wake_shipper.set()

    def _finish(self, rec: JobRecord, status: Status, *, downtime: bool = False) -> None:
        now = utcnow()
        at = now
        runtime = self._runtime(rec)
        exit_file = getattr(runtime, "exit_file", None)
        if downtime and exit_file is not None:
            # The wrapper wrote the exit file as the job ended: the best end time we have.
            try:
                at = min(now, datetime.fromtimestamp(exit_file(rec).stat().st_mtime, UTC))
            except OSError:
                at = now
        if rec.state == "running" and rec.started_at:
            self._sample(rec, at)
        runtime.sync_logs(rec)
        if rec.stop_deadline:
            self._emit(rec, "stopped", exit_code=status.exit_code, at=at, message=rec.stop_reason or "")
        elif status.known and status.exit_code is not None:
            self._emit(rec, "exited", exit_code=status.exit_code, at=at)
        else:
            self._emit(rec, "failed", at=at, message="job ended while the agent was not watching")

    def supervise_once(self) -> None:
        now = utcnow()
        for rec in self.store.active():
            if rec.state != "running":
                continue
            try:
                runtime = self._runtime(rec)
                self._enforce_stop(rec, now)
                status = runtime.poll(rec)
                if not status.running:
                    self._finish(rec, status)
                    continue
                if rec.runtime == "docker":
                    runtime.sync_logs(rec)
                last = rec.usage_window_end or rec.started_at
                if last and (now - parse_iso(last)).total_seconds() >= self.config.sample_interval:
                    self._sample(rec, now)
            except Exception:
                log.exception("job.supervise_error job_id=%s", rec.id)

    # ---- shipping --------------------------------------------------------------------------

    def ship_once(self) -> None:
        """Send spooled events, usage batches and log chunks; raises on transport failure."""
        for item in self.spool.pending(EVENTS):
            try:
                self.client.job_event(item.job_id, item.payload)
            except ApiError as exc:
                if exc.retryable:
                    raise
                log.error("event.rejected job_id=%s seq=%s error=%s", item.job_id, item.seq, exc)
                self.spool.reject([item.path])
                continue
            self.spool.ack([item.path])
        while True:
            batch = self.spool.pending(USAGE, limit=USAGE_BATCH)
            if not batch:
                break
            try:
                reply = self.client.usage([i.payload for i in batch])
            except ApiError as exc:
                if exc.retryable:
                    raise
                refused = refused_samples(exc, len(batch))
                log.error("usage.rejected samples=%s of=%s error=%s", len(refused), len(batch), exc)
                # Only the samples the server named are set aside: the rest of the batch is
                # the provider's earned time and goes again in the next batch.
                self.spool.reject([batch[i].path for i in refused])
                continue
            log.info(
                "usage.sent samples=%s accepted=%s duplicates=%s",
                len(batch),
                reply.get("accepted"),
                reply.get("duplicates"),
            )
            self.spool.ack([i.path for i in batch])
            if len(batch) < USAGE_BATCH:
                break
        self._forget_shipped()
        for rec in self.store.all():
            if self.shipper.pending_bytes(rec):
                try:
                    self.shipper.ship(rec)
                except ApiError as exc:
                    if exc.retryable:
                        raise
                    log.error("logs.rejected job_id=%s error=%s", rec.id, exc)

    def _forget_shipped(self) -> None:
        unsent = {i.job_id for kind in (EVENTS, USAGE) for i in self.spool.pending(kind)}
        shipped = {
            r.id
            for r in self.store.all()
            if r.finished and r.id not in unsent and not self.shipper.pending_bytes(r)
        }
        self.store.forget_old(utcnow(), shipped)

    def _shipper_loop(self) -> None:
        backoff = Backoff()
        while not self.stopping.is_set():
            try:
                self.ship_once()
                backoff.reset()
                delay = self.config.tick
            except (Unreachable, ApiError) as exc:
                delay = backoff.next_delay(exc.retry_after)
                log.warning("ship.retry error=%s retry_in=%.1fs", exc, delay)
            except Exception:
                delay = backoff.next_delay()
                log.exception("ship.error")
            self.wake_shipper.wait(delay)
            self.wake_shipper.clear()

    def _supervisor_loop(self) -> None:
        while not self.stopping.wait(self.config.tick):
            self.supervise_once()

    # ---- heartbeat and work ----------------------------------------------------------------

    def heartbeat_payload(self) -> dict[str, Any]:
        indexes = [d.index for d in self.inventory.devices if d.vendor != "cpu"]
        readings = {r.index: r for r in self.telemetry.read(indexes, self._busy())} if indexes else {}
        devices = []
        for d in self.inventory.devices:
            r = readings.get(d.index) or Reading(index=d.index)
            devices.append(
                {
                    "index": d.index,
                    "uuid": d.uuid,
                    "health": r.health if r.health != "ok" else d.health,
                    "utilization_pct": r.utilization_pct,
                    "memory_used_mib": r.memory_used_mib,
                    "power_w": r.power_w,
                    "temperature_c": r.temperature_c,
                }
            )
        payload: dict[str, Any] = {"running_jobs": self.store.running_ids(), "devices": devices}
        if self.config.public_address:
            payload["public_address"] = self.config.public_address
        return payload

    def _heartbeat_loop(self) -> None:
        backoff = Backoff()
        while not self.stopping.is_set():
            try:
                self.client.heartbeat(**self.heartbeat_payload())
                backoff.reset()
                interval = self.config.heartbeat_interval
                delay = random.uniform(interval * 0.8, interval * 1.2)  # noqa: S311 - jitter
            except ApiError as exc:
                delay = backoff.next_delay(exc.retry_after)
                event = "heartbeat.auth_rejected" if exc.auth else "heartbeat.rejected"
                log.warning("%s status=%s error=%s retry_in=%.1fs", event, exc.status, exc, delay)
            except Unreachable as exc:
                # Includes a 503 while the exchange's Redis is down: one line per retry, no trace.
                delay = backoff.next_delay(exc.retry_after)
                log.warning("heartbeat.unreachable error=%s retry_in=%.1fs", exc, delay)
            except Exception:
                # The heartbeat is the node's liveness: a bug here must not end the thread.
                delay = backoff.next_delay()
                log.exception("heartbeat.error retry_in=%.1fs", delay)
            self.stopping.wait(delay)

    def handle_work(self, reply: dict[str, Any]) -> None:
        for spec in reply.get("jobs") or []:
            self.accept(spec)
        for command in reply.get("stop") or []:
            self.request_stop(command)
        deleted = reply.get("delete_volumes") or []
        if isinstance(deleted, list) and deleted:
            in_use = {m.id for r in self.store.active() for m in self._mounts(r)}
            volumes_remove(self.state.root, deleted, in_use=in_use)

    def _mounts(self, rec: JobRecord) -> list[Mount]:
        try:
            return job_mounts(self.state.root, rec.spec)
        except VolumeError:
            return []

    def _work_loop(self) -> None:
        backoff = Backoff()
        while not self.stopping.is_set():
            try:
                reply = self.client.work(
                    running=self.store.running_ids(),
                    wait=self.config.work_wait,
                    # The exchange takes at most 1024 ids a poll; the rest wait until these are gone.
                    volumes=volumes_held(self.state.root)[:1024],
                )
                backoff.reset()
                self.handle_work(reply)
                continue
            except ApiError as exc:
                delay = backoff.next_delay(exc.retry_after)
                event = "work.auth_rejected" if exc.auth else "work.rejected"
                log.warning("%s status=%s error=%s retry_in=%.1fs", event, exc.status, exc, delay)
            except Unreachable as exc:
                delay = backoff.next_delay(exc.retry_after)
                log.warning("work.unreachable error=%s retry_in=%.1fs", exc, delay)
            except Exception:
                delay = backoff.next_delay()
                log.exception("work.error")
            self.stopping.wait(delay)


def refused_samples(exc: ApiError, count: int) -> list[int]:
    """Positions of the samples a 400 names (``samples.3.window_end``); every one if it names none."""
    named: set[int] = set()
    for field in exc.fields or {}:
        parts = str(field).split(".")
        if len(parts) >= 2 and parts[0] == "samples" and parts[1].isdigit() and int(parts[1]) < count:
            named.add(int(parts[1]))
    return sorted(named) if named else list(range(count))
