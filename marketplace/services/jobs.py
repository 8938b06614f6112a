"""Jobs: assignment, the state machine, stop requests, agent events and lost jobs."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from core.errors import CapacityUnavailable, InvalidTransition, NotFound, ValidationFailed
from marketplace.models import JOB_ENDED, JOB_LIVE, TRANSITIONS, Job, JobStatus, Order, Runtime, StopReason
from marketplace.services.webhooks import job_webhook_on_stop_notice
from marketplace.services.work import node_nudge
from providers.models import Device, Node, NodeStatus

log = logging.getLogger(__name__)

DEFAULT_STOP_NOTICE = timedelta(seconds=30)


def preemption_notice() -> timedelta:
    """SIGTERM-to-SIGKILL notice of a preempted spot job (``SUANLI_PREEMPTION_NOTICE_S``, 120 s)."""
    return timedelta(seconds=settings.SUANLI_PREEMPTION_NOTICE_S)


@dataclass(frozen=True)
class JobSpec:
    """What to run: the buyer-facing part of a job."""

    runtime: str = Runtime.DOCKER
    image: str = ""
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    ports: list[int] = field(default_factory=list)
    memory_mib: int | None = None
    cpus: int | None = None
    # Persistent volumes to mount, as the buyer named them (``[{"name": "data"}]`` or
    # ``[{"id": 7}]``); ``order_place`` resolves them to the buyer's volumes on one node.
    volumes: list[dict[str, Any]] = field(default_factory=list)

    def validate(self) -> None:
        fields: dict[str, str] = {}
        if self.runtime not in Runtime.values:
            fields["runtime"] = _("Choose one of %(choices)s.") % {"choices": ", ".join(Runtime.values)}
        if self.runtime == Runtime.DOCKER and not self.image.strip():
            fields["image"] = _("A docker job needs an image.")
        if self.runtime == Runtime.PROCESS and not self.command:
            fields["command"] = _("The process runtime needs a command.")
        if not all(isinstance(part, str) for part in self.command):
            fields["command"] = _("Must be a list of strings.")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.env.items()):
            fields["env"] = _("Must be an object of string values.")
        if not all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in self.ports):
            fields["ports"] = _("Ports are between 1 and 65535.")
        if fields:
            raise ValidationFailed(_("Invalid job spec."), fields=fields)


def lock_order_of(*, job_id: int) -> None:
    """Lock the order of job ``job_id`` (if any), inside the caller's transaction.

    The lock order everywhere is order, then job: an agent's event, a buyer's stop and the
    matcher all take the order first, so a gang whose jobs end at once cannot deadlock.
    """
    order_id = Job.objects.filter(pk=job_id).values_list("order_id", flat=True).first()
    if order_id is not None:
        list(Order.objects.select_for_update().filter(pk=order_id).values_list("pk", flat=True))


def job_transition(*, job: Job, to: str, **changes: Any) -> Job:
    """Move ``job`` from its current status to ``to`` with a conditional update.

    Contract: allowed only along ``TRANSITIONS``; the row moves only if it is still in the
    status ``job`` was read with (exactly one row changes), else ``InvalidTransition``. The
    in-memory ``job`` is updated to match the row. Billing and the order follow in the same
    transaction (``provisioning.job_status_changed``): a lease opens at ``running`` and closes
    when the job ends.
    """
    from marketplace.services.provisioning import job_status_changed

    current = job.status
    if to not in TRANSITIONS[current]:
        raise InvalidTransition(f"A job cannot go from {current} to {to}.")
    now = timezone.now()
    with transaction.atomic():
        if job.order_id is not None:
            lock_order_of(job_id=job.pk)
        moved = Job.objects.filter(pk=job.pk, status=current).update(status=to, updated_at=now, **changes)
        if moved != 1:
            raise InvalidTransition(f"Job {job.pk} is no longer {current}.")
        job.status = to
        job.updated_at = now
        for name, value in changes.items():
            setattr(job, name, value)
        job_status_changed(job=job, old=current)
    log.info("job.transition job_id=%s from=%s to=%s", job.pk, current, to)
    return job


def job_assign(*, node: Node, device_indexes: Sequence[int], spec: JobSpec, buyer: User | None = None) -> Job:
    """Create a job already ``assigned`` to ``node`` (until the matcher exists: tests and demo).

    Contract: the devices must exist on the node and not be used by another live job of it
    (checked under a lock on the node row, so two concurrent assignments cannot share a
    device); the node's agent is nudged after commit.
    """
    spec.validate()
    indexes = sorted(set(device_indexes))
    with transaction.atomic():
        locked = Node.objects.select_for_update().get(pk=node.pk)
        if locked.status in (NodeStatus.RETIRED, NodeStatus.OFFLINE):
            raise CapacityUnavailable(f"Node {node.pk} is {locked.status}.")
        # The agent reports the runtimes it allows ("docker,process"); the process runtime has no
        # isolation and is opt-in on real nodes.
        offered = locked.software.get("runtimes") if isinstance(locked.software, dict) else None
        if isinstance(offered, str) and spec.runtime not in offered.split(","):
            raise ValidationFailed(
                f"Node {node.pk} does not run {spec.runtime} jobs (it offers {offered}).",
                fields={"runtime": f"This node offers {offered}."},
            )
        known = set(Device.objects.filter(node=locked, index__in=indexes).values_list("index", flat=True))
        missing = [i for i in indexes if i not in known]
        if missing:
            raise ValidationFailed(
                f"Node {node.pk} has no device {missing[0]}.", fields={"device_indexes": "Unknown device."}
            )
        busy = Job.objects.filter(node=locked, status__in=JOB_LIVE, device_indexes__overlap=indexes)
        if busy.exists():
            raise CapacityUnavailable("A device is already used by another job on this node.")
        job = Job.objects.create(
            node=locked,
            buyer=buyer,
            device_indexes=indexes,
            runtime=spec.runtime,
            image=spec.image,
            command=list(spec.command),
            env=dict(spec.env),
            ports=list(spec.ports),
            memory_mib=spec.memory_mib,
            cpus=spec.cpus,
            status=JobStatus.ASSIGNED,
            assigned_at=timezone.now(),
        )
        node_nudge(node_ids=[locked.pk])
    log.info("job.assigned job_id=%s node_id=%s devices=%s", job.pk, node.pk, indexes)
    return job


def job_stop_request(
    *,
    job: Job,
    reason: str = StopReason.BUYER,
    notice: timedelta | None = None,
    deadline: datetime | None = None,
) -> Job:
    """Ask the job's agent to stop it: SIGTERM now, SIGKILL at the deadline.

    Contract: the deadline is ``deadline`` when given (never before now), else now + ``notice``
    (by default 30 s, or the preemption notice). A job the agent has not acknowledged yet stops
    at once without the agent; an ended job is returned unchanged; asking again keeps the earlier
    (sooner) deadline unless the new one is sooner. The agent is nudged after commit.
    """
    if reason not in StopReason.values:
        raise ValidationFailed(
            "Unknown stop reason.", fields={"reason": f"Choose from {', '.join(StopReason.values)}."}
        )
    if notice is None:
        notice = preemption_notice() if reason == StopReason.PREEMPTION else DEFAULT_STOP_NOTICE
    now = timezone.now()
    with transaction.atomic():
        lock_order_of(job_id=job.pk)
        job = Job.objects.select_for_update().get(pk=job.pk)
        if job.ended:
            return job
        if job.status == JobStatus.QUEUED or (job.status == JobStatus.ASSIGNED and job.accepted_at is None):
            ended = JobStatus.PREEMPTED if reason == StopReason.PREEMPTION else JobStatus.STOPPED
            job = job_transition(job=job, to=ended, ended_at=now, stop_requested_at=now, stop_reason=reason)
            job_webhook_on_stop_notice(job=job)
            return job
        deadline = max(deadline, now) if deadline is not None else now + notice
        if job.stop_deadline is not None and job.stop_deadline <= deadline:
            return job
        Job.objects.filter(pk=job.pk).update(
            stop_requested_at=job.stop_requested_at or now,
            stop_deadline=deadline,
            stop_reason=reason,
            updated_at=now,
        )
        job.refresh_from_db()
        node_nudge(node_ids=[job.node_id])
        job_webhook_on_stop_notice(job=job)
    log.info("job.stop_requested job_id=%s reason=%s deadline=%s", job.pk, reason, job.stop_deadline)
    return job


# --- Agent events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobEventIn:
    seq: int
    state: str  # accepted | starting | running | exited | failed | stopped
    at: datetime
    exit_code: int | None = None
    ports: Mapping[str, Any] | Sequence[Any] | None = None
    message: str = ""


AGENT_STATES = ("accepted", "starting", "running", "exited", "failed", "stopped")
# The furthest an event's seq may lie past the job's last one (agents count 1, 2, 3...; a few
# may be refused or lost on the way).
EVENT_SEQ_MAX_GAP = 1000
_RANK = {JobStatus.ASSIGNED: 1, JobStatus.STARTING: 2, JobStatus.RUNNING: 3}


def job_for_node(*, node: Node, job_id: int, lock: bool = False) -> Job:
    """The node's job ``job_id``; another node's job is ``NotFound`` (no existence leak)."""
    jobs = Job.objects.select_for_update() if lock else Job.objects.all()
    job = jobs.filter(pk=job_id, node_id=node.pk).first()
    if job is None:
        raise NotFound("No such job on this node.")
    return job


def max_clock_skew() -> timedelta:
    """How far an agent's clock may be off ours (``SUANLI_AGENT_MAX_CLOCK_SKEW_S``, 300 s)."""
    return timedelta(seconds=settings.SUANLI_AGENT_MAX_CLOCK_SKEW_S)


def job_event_record(*, node: Node, job_id: int, event: JobEventIn) -> Job:
    """Apply one agent event to the node's job.

    Contract: idempotent by ``seq``: an event whose seq is not above ``last_event_seq`` changes
    nothing; one more than ``EVENT_SEQ_MAX_GAP`` above it is refused (``ValidationFailed``), so
    one absurd seq cannot make every later real event look stale. Events only move a job forward
    (``assigned < starting < running < ended``); a stale or contradicting one (``running`` for a
    lost job) is recorded as seen and ignored, so the agent never retries it forever.
    ``accepted`` acknowledges the assignment; ``stopped`` after a preemption request becomes
    ``preempted``.

    Times are the agent's clock, and billing runs from ``started_at`` to ``ended_at``: an ``at``
    more than the clock skew allowance after now or before the assignment is refused; within it,
    ``at`` is clamped to [the job's latest recorded time (assigned, accepted, started), now],
    and an end is never later than the stop deadline (the agent kills the job then).
    """
    if event.state not in AGENT_STATES:
        raise ValidationFailed(
            "Unknown job state.", fields={"state": f"Choose from {', '.join(AGENT_STATES)}."}
        )
    now = timezone.now()
    skew = max_clock_skew()
    if event.at > now + skew:
        raise ValidationFailed(
            _("The event time is %(seconds)s s ahead of the server's clock; check the node's clock.")
            % {"seconds": int((event.at - now).total_seconds())},
            fields={"at": _("More than %(skew)s s in the future.") % {"skew": int(skew.total_seconds())}},
            code="clock_skew",
        )
    with transaction.atomic():
        lock_order_of(job_id=job_id)
        job = job_for_node(node=node, job_id=job_id, lock=True)
        if event.seq <= job.last_event_seq:
            return job
        if event.seq > job.last_event_seq + EVENT_SEQ_MAX_GAP:
            # An agent numbers a job's events 1, 2, 3...: a jump this large is not a lost event.
            raise ValidationFailed(
                _("Event seq %(seq)s jumps too far past the last one seen (%(last)s).")
                % {"seq": event.seq, "last": job.last_event_seq},
                fields={"seq": _("At most %(max)s.") % {"max": job.last_event_seq + EVENT_SEQ_MAX_GAP}},
            )
        assigned_at = job.assigned_at or job.created_at
        if event.at < assigned_at - skew:
            raise ValidationFailed(
                _("The event time is before the job was assigned; check the node's clock."),
                fields={"at": _("Before the job was assigned (%(at)s).") % {"at": assigned_at.isoformat()}},
                code="clock_skew",
            )
        at = _clamp_event_time(job, event.at, now)
        changes: dict[str, Any] = {"last_event_seq": event.seq}
        if event.message:
            changes["message"] = event.message[:2000]
        if event.ports:
            changes["published_ports"] = event.ports
        target = _target_status(job, event.state)
        if event.state == "accepted" and job.status == JobStatus.ASSIGNED and job.accepted_at is None:
            changes["accepted_at"] = at
        if target is None:
            Job.objects.filter(pk=job.pk).update(updated_at=now, **changes)
            for name, value in changes.items():
                setattr(job, name, value)
            return job
        if job.accepted_at is None:
            changes["accepted_at"] = at
        if target == JobStatus.RUNNING:
            changes["started_at"] = at
        if target in JOB_ENDED:
            # SIGKILL lands at the stop deadline: nothing after it is the buyer's time.
            ended_at = at if job.stop_deadline is None else max(min(at, job.stop_deadline), _floor(job))
            changes["ended_at"] = ended_at
            changes["exit_code"] = event.exit_code
        return job_transition(job=job, to=target, **changes)


def _floor(job: Job) -> datetime:
    """The latest time the job is known to have reached: no later event may predate it."""
    known = [t for t in (job.assigned_at, job.accepted_at, job.started_at) if t is not None]
    return max(known) if known else job.created_at


def _clamp_event_time(job: Job, at: datetime, now: datetime) -> datetime:
    # A backdated ``running`` would bill time before the job existed; a future one, time to come.
    return max(min(at, now), _floor(job))


def _target_status(job: Job, state: str) -> str | None:
    if job.ended:
        return None
    rank = _RANK.get(JobStatus(job.status), 0)
    if state == "starting" and rank < _RANK[JobStatus.STARTING]:
        return JobStatus.STARTING
    if state == "running" and rank < _RANK[JobStatus.RUNNING]:
        return JobStatus.RUNNING
    if state in ("exited", "failed"):
        return JobStatus(state)
    if state == "stopped":
        return JobStatus.PREEMPTED if job.stop_reason == StopReason.PREEMPTION else JobStatus.STOPPED
    return None


# --- Stops the agent did not report ------------------------------------------------------------


def _stopped_status(job: Job) -> str:
    return JobStatus.PREEMPTED if job.stop_reason == StopReason.PREEMPTION else JobStatus.STOPPED


def job_end_unreported_stop(*, job: Job, at: datetime, message: str) -> Job | None:
    """End a job whose stop was requested but never reported by its agent, at ``at``.

    Contract: only a live job with a stop request moves (conditional update: a concurrent agent
    event wins, and then this returns None); it becomes ``stopped`` (``preempted`` after a
    preemption notice), ends at ``at`` (never after its stop deadline, never before its start)
    and its lease closes there, in the same transaction.
    """
    if job.ended or job.stop_requested_at is None:
        return None
    ended_at = at if job.stop_deadline is None else min(at, job.stop_deadline)
    ended_at = max(ended_at, _floor(job))
    try:
        return job_transition(job=job, to=_stopped_status(job), ended_at=ended_at, message=message)
    except InvalidTransition:
        return None  # an agent event moved it first


def jobs_reconcile_reported(*, node: Node, running: Sequence[int]) -> list[int]:
    """End the node's stopping jobs that its agent no longer runs (from the work poll's list).

    The agent lists every job it has not finished (accepted ones included), so a job that was
    acknowledged, was asked to stop and is missing from ``running`` has stopped, even if its
    ``stopped`` event never arrived or was refused. It ends now, or at its deadline if that came
    first. Returns the ids of the jobs ended.
    """
    now = timezone.now()
    missing = (
        Job.objects.filter(
            node_id=node.pk, status__in=JOB_LIVE, stop_requested_at__isnull=False, accepted_at__isnull=False
        )
        .exclude(pk__in=list(running))
        .order_by("pk")
    )
    ended: list[int] = []
    for job in missing:
        if job_end_unreported_stop(job=job, at=now, message="the agent no longer runs the job") is not None:
            ended.append(job.pk)
    if ended:
        log.info("jobs.reconciled node_id=%s job_ids=%s", node.pk, ended)
    return ended


# --- Lost jobs ---------------------------------------------------------------------------------


def jobs_mark_lost(*, node_ids: Sequence[int] | None = None) -> list[int]:
    """Mark every live job on an offline node ``lost`` (optionally only on ``node_ids``).

    Contract: each job moves with a conditional update, so a concurrent event wins and a second
    run changes nothing. The job ends at the node's last heartbeat: billing stops there and the
    buyer does not pay for the gap. Returns the ids of the jobs marked lost.
    """
    jobs = Job.objects.filter(status__in=JOB_LIVE, node__status=NodeStatus.OFFLINE).select_related("node")
    if node_ids is not None:
        jobs = jobs.filter(node_id__in=list(node_ids))
    lost: list[int] = []
    now = timezone.now()
    for job in jobs.order_by("pk"):
        ended_at = job.node.last_heartbeat_at or now
        try:
            job_transition(job=job, to=JobStatus.LOST, ended_at=max(ended_at, job.started_at or ended_at))
        except InvalidTransition:
            continue  # an agent event moved it first
        lost.append(job.pk)
    if lost:
        log.info("jobs.lost job_ids=%s", lost)
    return lost
