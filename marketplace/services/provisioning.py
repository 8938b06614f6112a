"""Provisioning: what follows a job's state changes, and the periodic housekeeping of jobs.

Billing follows the agent's reports: an on-demand or spot lease opens when the job reports
``running`` (image pulls are not billed) and closes when it ends; a job that never started is not
billed and its order's hold goes back to the wallet. A reserved booking is paid for its whole
window, so a job ending early does not close it; only a lost node does (the provider did not
deliver). ``job_status_changed`` runs inside the transaction of the status change itself.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import psycopg2.errors
from django.db import IntegrityError, OperationalError, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone
from psycopg2.extras import NumericRange

from billing.models import Hold, HoldStatus, Lease, LeaseKind, LeaseStatus
from billing.services import hold_capture, hold_release, lease_close, lease_open, leases_unable_to_pay
from core.errors import InvalidTransition
from marketplace.models import (
    JOB_ENDED,
    SPAN_DEVICE_STRIDE,
    Allocation,
    AllocationSlot,
    AllocationStatus,
    Job,
    JobStatus,
    Order,
    OrderReason,
    OrderStatus,
    StopReason,
    Term,
)
from marketplace.services.jobs import job_end_unreported_stop, job_stop_request, job_transition, lock_order_of
from marketplace.services.orders import order_transition
from marketplace.services.webhooks import job_webhook_on_status
from marketplace.services.work import node_nudge

log = logging.getLogger(__name__)

ACK_TIMEOUT = timedelta(seconds=60)
GANG_GRACE = timedelta(seconds=30)
FUNDS_NOTICE = timedelta(seconds=30)
END_NOTICE = timedelta(seconds=30)
# How long past a stop deadline the agent has to report the stop itself (with its exit code)
# before the server ends the job on its own; billing ends at the deadline either way.
STOP_REPORT_GRACE = timedelta(seconds=15)

_LEASE_KIND = {
    Term.ON_DEMAND: LeaseKind.ON_DEMAND,
    Term.SPOT: LeaseKind.SPOT,
    Term.RESERVED: LeaseKind.RESERVED,
}


def job_status_changed(*, job: Job, old: str) -> None:
    """React to ``job`` having moved from ``old`` to ``job.status`` (same transaction)."""
    # The buyer's webhooks: rows written in this transaction, posted after it commits.
    job_webhook_on_status(job=job, old=old)
    if job.order_id is None:
        return
    order = Order.objects.select_for_update().get(pk=job.order_id)
    if job.status == JobStatus.RUNNING:
        _on_running(job, order)
    elif job.status in JOB_ENDED:
        _on_ended(job, order)


def _on_running(job: Job, order: Order) -> None:
    if order.term != Term.RESERVED and job.lease_id is None:
        assert job.allocation_id is not None
        allocation = Allocation.objects.get(pk=job.allocation_id)  # fresh: spot rounds re-rate it
        lease = lease_open(
            buyer=order.buyer,
            provider_id=job.node.provider_id,
            job_id=job.pk,
            device_count=len(job.device_indexes),
            rate_micros=allocation.unit_price_micros,
            started_at=job.started_at or timezone.now(),
            kind=_LEASE_KIND[Term(order.term)],
            idempotency_key=f"job:{job.pk}",
        )
        Job.objects.filter(pk=job.pk).update(lease_id=lease.pk)
        job.lease_id = lease.pk
        hold = _open_hold(order)
        if hold is not None:
            # The hour set aside becomes this lease's prepayment; what it does not use returns
            # to the wallet when the lease closes.
            hold_capture(hold=hold, lease=lease)
    if order.status == OrderStatus.ALLOCATED:
        order_transition(order=order, to=OrderStatus.RUNNING)


def _on_ended(job: Job, order: Order) -> None:
    ended_at = job.ended_at or timezone.now()
    lease = Lease.objects.filter(pk=job.lease_id).first() if job.lease_id else None
    closes_lease = order.term != Term.RESERVED or job.status == JobStatus.LOST
    if lease is not None and closes_lease and lease.status in (LeaseStatus.OPEN, LeaseStatus.PAUSED):
        # Never before the current rate segment (a spot re-rate), which lease_close refuses.
        lease_close(lease=lease, at=max(ended_at, lease.segment_started_at or lease.started_at))
    if order.term != Term.RESERVED or job.status == JobStatus.LOST:
        allocations_release(order=order, at=ended_at, allocation_ids=[job.allocation_id])
        if job.stop_requested_at is not None and _handover_waiting(job):
            # A displacing order waits on these devices: start it now, not at the notice deadline.
            transaction.on_commit(_trigger_promotion)
    live = Job.objects.filter(order=order).exclude(pk=job.pk).exclude(status__in=list(JOB_ENDED))
    if live.exists():
        # A gang ends together, but its members usually finish within moments of each other:
        # the others get GANG_GRACE to end on their own before ``jobs_stop_gang_remainders``
        # stops them.
        return
    hold = _open_hold(order)
    if hold is not None:
        hold_release(hold=hold)  # never started: nothing to pay
    if order.status not in (OrderStatus.ALLOCATED, OrderStatus.RUNNING):
        return
    if job.status == JobStatus.LOST and order.restart_on_failure and order.term != Term.RESERVED:
        _requeue(order, reason=OrderReason.REQUEUED_NODE_LOST)
        return
    final = (
        OrderStatus.FAILED if job.status == JobStatus.FAILED and job.started_at is None else OrderStatus.ENDED
    )
    reason, params = _end_reason(job)
    order_transition(order=order, to=final, ended_at=ended_at, status_reason=reason, status_params=params)


def _handover_waiting(job: Job) -> bool:
    """Whether a queued job of a displacing (non-reserved) order waits for the node's devices."""
    return (
        Job.objects.filter(
            node_id=job.node_id, status=JobStatus.QUEUED, allocation__starts_at__gt=timezone.now()
        )
        .exclude(order__term=Term.RESERVED)
        .exists()
    )


def _trigger_promotion() -> None:
    from marketplace.tasks import promote_deferred

    try:
        promote_deferred.delay()
    except Exception:  # the broker is down: the matcher's tick promotes it within 5 s
        log.warning("jobs.promotion_dispatch_failed", exc_info=True)


def _end_reason(job: Job) -> tuple[str, dict[str, Any]]:
    """The ``OrderReason`` code (and its details) of an order whose last job ended as ``job``."""
    if job.status == JobStatus.EXITED:
        return OrderReason.JOB_EXITED, {"exit_code": job.exit_code}
    if job.status == JobStatus.FAILED:
        return OrderReason.JOB_FAILED, ({"message": job.message[:200]} if job.message else {})
    if job.status == JobStatus.STOPPED:
        return OrderReason.JOB_STOPPED, {}
    if job.status == JobStatus.PREEMPTED:
        return OrderReason.JOB_PREEMPTED, {"preemption": job.preemption_reason}
    if job.status == JobStatus.LOST:
        return OrderReason.NODE_LOST, {}
    return "", {}


def _open_hold(order: Order) -> Hold | None:
    if order.hold_id is None:
        return None
    return Hold.objects.filter(pk=order.hold_id, status=HoldStatus.OPEN).first()


def _requeue(order: Order, *, reason: str) -> None:
    """Send an order back to the matcher with a fresh hold (the old one was used or released)."""
    from billing.services import hold_place

    order_transition(order=order, to=OrderStatus.OPEN, status_reason=reason, status_params={})
    amount = order.price_limit_micros * order.devices_per_node * order.node_count
    try:
        hold = hold_place(
            buyer=order.buyer,
            amount_micros=amount,
            reference=f"order:{order.pk}:requeue:{order.updated_at.timestamp()}",
        )
    except Exception:  # noqa: BLE001 - InsufficientFunds: the order cannot wait on an empty wallet
        order_transition(
            order=order, to=OrderStatus.FAILED, status_reason=OrderReason.RESTART_UNFUNDED, status_params={}
        )
        return
    Order.objects.filter(pk=order.pk).update(hold_id=hold.pk)


def allocations_release(*, order: Order, at: datetime, allocation_ids: list[int | None] | None = None) -> int:
    """End the order's live allocations at ``at`` and free their devices from then on."""
    allocations = Allocation.objects.filter(order=order, status=AllocationStatus.LIVE)
    if allocation_ids is not None:
        allocations = allocations.filter(pk__in=[a for a in allocation_ids if a is not None])
    released = 0
    for allocation in allocations.select_for_update():
        for slot in AllocationSlot.objects.select_for_update().filter(allocation=allocation, live=True):
            if not slot.span.isempty:
                base = slot.device_id * SPAN_DEVICE_STRIDE
                end = max(min(slot.span.upper, base + int(at.timestamp())), slot.span.lower + 1)
                # The slot stays as history, no longer live: the exclusion constraint ignores it.
                slot.span = NumericRange(slot.span.lower, end, "[)")
            slot.live = False
            slot.save(update_fields=["span", "live"])
        allocation.status = AllocationStatus.RELEASED
        allocation.released_at = at
        allocation.save(update_fields=["status", "released_at", "updated_at"])
        released += 1
    return released


# --- Periodic housekeeping (every 5 s, with the matcher) ---------------------------------------


def jobs_promote_deferred(*, now: datetime | None = None) -> list[int]:
    """Hand queued jobs to their agents once their devices are theirs.

    Contract: a job whose allocation has begun (a reserved window, the end of a preemption
    notice) is assigned unless a job on its devices is still within its stop notice (one past
    its deadline is gone: SIGKILL). A displacing on-demand or spot job (allocated after a
    preemption notice) is assigned before its allocation begins as soon as no live job uses its
    devices any more: its allocation and slots are moved to start now (the exclusion constraint
    still guards them; on a conflict the job waits for its start). Reserved jobs never start
    before their window. Safe to run twice.
    """
    now = now or timezone.now()
    promoted: list[int] = []
    due = Q(allocation__starts_at__lte=now) | (
        Q(allocation__starts_at__gt=now) & ~Q(order__term=Term.RESERVED)
    )
    for job in Job.objects.filter(due, status=JobStatus.QUEUED).select_related("allocation").order_by("pk"):
        assert job.allocation is not None
        blockers = Job.objects.filter(
            allocation__slots__device_id__in=list(job.allocation.slots.values_list("device_id", flat=True)),
            status__in=[JobStatus.ASSIGNED, JobStatus.STARTING, JobStatus.RUNNING],
        ).exclude(pk=job.pk)
        early = job.allocation.starts_at > now
        if early and blockers.exists():
            continue  # the preempted job still runs: it has until its deadline
        # A preempted job past its deadline is gone (SIGKILL) whatever its agent has reported.
        if not early and blockers.filter(stop_deadline__gt=now).exists():
            continue
        try:
            with transaction.atomic():
                # Order first, then slots: the lock order of the matcher and of job events (the
                # slots first deadlocked against a matcher holding the order).
                lock_order_of(job_id=job.pk)
                if early:
                    _start_allocation_now(job.allocation, now)
                job_transition(job=job, to=JobStatus.ASSIGNED, assigned_at=now)
        except (InvalidTransition, IntegrityError):
            continue  # moved meanwhile, or a slot overlaps: it waits for its own start
        except OperationalError as exc:
            if not isinstance(
                exc.__cause__, psycopg2.errors.DeadlockDetected | psycopg2.errors.SerializationFailure
            ):
                raise
            log.warning("job.promote_retry job_id=%s error=%s", job.pk, exc)
            continue  # rolled back whole; the next tick tries again
        promoted.append(job.pk)
    if promoted:
        node_nudge(node_ids=set(Job.objects.filter(pk__in=promoted).values_list("node_id", flat=True)))
    return promoted


def _start_allocation_now(allocation: Allocation, now: datetime) -> None:
    """Move a deferred allocation's start (and its live slots') back to ``now``."""
    for slot in AllocationSlot.objects.select_for_update().filter(allocation=allocation, live=True):
        if slot.span.isempty:
            continue
        base = slot.device_id * SPAN_DEVICE_STRIDE
        slot.span = NumericRange(min(base + int(now.timestamp()), slot.span.lower), slot.span.upper, "[)")
        slot.save(update_fields=["span"])
    Allocation.objects.filter(pk=allocation.pk).update(starts_at=now, updated_at=now)


def jobs_requeue_unacknowledged(*, now: datetime | None = None) -> list[int]:
    """Assignments no agent acknowledged within 60 s: fail the job, send the order back to the matcher."""
    now = now or timezone.now()
    stale = Job.objects.filter(
        status=JobStatus.ASSIGNED, accepted_at__isnull=True, assigned_at__lt=now - ACK_TIMEOUT
    )
    requeued: list[int] = []
    for job in stale.order_by("pk"):
        with transaction.atomic():
            try:
                job_transition(
                    job=job,
                    to=JobStatus.FAILED,
                    ended_at=now,
                    message="the node did not acknowledge the job in time",
                )
            except InvalidTransition:
                continue
            order = (
                Order.objects.select_for_update().filter(pk=job.order_id).first()
                if job.order_id is not None
                else None
            )
            if order is not None and order.status == OrderStatus.FAILED and order.term != Term.RESERVED:
                # _on_ended failed it as "never started"; an unacknowledged assignment is retried.
                Order.objects.filter(pk=order.pk).update(
                    status=OrderStatus.OPEN,
                    status_reason=OrderReason.REQUEUED_NO_ACK,
                    status_params={},
                    ended_at=None,
                )
                hold = Hold.objects.filter(pk=order.hold_id).first() if order.hold_id is not None else None
                if hold is not None and hold.status != HoldStatus.OPEN:
                    from billing.services import hold_place

                    try:
                        new_hold = hold_place(
                            buyer=order.buyer,
                            amount_micros=hold.amount_micros,
                            reference=f"{hold.reference}:retry:{job.pk}",
                        )
                        Order.objects.filter(pk=order.pk).update(hold_id=new_hold.pk)
                    except Exception:  # noqa: BLE001 - cannot re-hold: the order fails for good
                        Order.objects.filter(pk=order.pk).update(
                            status=OrderStatus.FAILED, status_reason=OrderReason.RETRY_UNFUNDED
                        )
        requeued.append(job.pk)
    return requeued


def jobs_stop_at_allocation_end(*, now: datetime | None = None) -> list[int]:
    """Jobs whose allocation ends soon (reserved windows; on-demand and spot at the offer's maximum
    rental, which the matcher writes as the allocation's end) get notice.

    Contract: SIGTERM up to ``END_NOTICE`` before the end, SIGKILL at the allocation's end (never
    later: the devices may be booked from then on). A job its agent has not acknowledged yet is
    left alone until the end itself, because a stop request ends an unacknowledged job at once
    and would take away the rest of a window the buyer paid for.
    """
    now = now or timezone.now()
    ending = Job.objects.filter(
        Q(accepted_at__isnull=False) | Q(allocation__ends_at__lte=now),
        status__in=[JobStatus.ASSIGNED, JobStatus.STARTING, JobStatus.RUNNING],
        stop_requested_at__isnull=True,
        allocation__ends_at__lte=now + END_NOTICE,
    ).select_related("allocation")
    stopped = []
    for job in ending:
        assert job.allocation is not None
        job_stop_request(job=job, reason=StopReason.RENTAL_END, deadline=job.allocation.ends_at)
        stopped.append(job.pk)
    return stopped


def jobs_end_past_stop_deadline(*, now: datetime | None = None) -> list[int]:
    """End live jobs still not reported stopped ``STOP_REPORT_GRACE`` after their stop deadline.

    Contract: the agent kills a job at its deadline; if it never says so (a refused or lost
    event, a silent node), the server ends the job itself, as ``stopped`` (``preempted`` after
    a preemption notice), ended at the deadline, so its lease closes there and the buyer pays
    nothing past it. A concurrent agent event wins; a second run changes nothing. Returns the
    ids of the jobs ended.
    """
    now = now or timezone.now()
    overdue = Job.objects.filter(
        status__in=[JobStatus.ASSIGNED, JobStatus.STARTING, JobStatus.RUNNING],
        stop_deadline__lte=now - STOP_REPORT_GRACE,
    ).order_by("pk")
    ended: list[int] = []
    for job in overdue:
        assert job.stop_deadline is not None
        message = "the node did not report the stop by its deadline"
        if job_end_unreported_stop(job=job, at=job.stop_deadline, message=message) is not None:
            ended.append(job.pk)
    if ended:
        log.info("jobs.ended_past_deadline job_ids=%s", ended)
    return ended


def jobs_stop_gang_remainders(*, now: datetime | None = None) -> list[int]:
    """Members of a gang still live ``GANG_GRACE`` after another member of it ended are stopped."""
    now = now or timezone.now()
    ended_sibling = Job.objects.filter(
        order_id=OuterRef("order_id"), status__in=list(JOB_ENDED), ended_at__lte=now - GANG_GRACE
    ).exclude(pk=OuterRef("pk"))
    remainders = Job.objects.filter(
        Exists(ended_sibling),
        status__in=[JobStatus.ASSIGNED, JobStatus.STARTING, JobStatus.RUNNING],
        stop_requested_at__isnull=True,
        order__node_count__gt=1,
    )
    stopped = []
    for job in remainders:
        job_stop_request(job=job, reason=StopReason.OPERATOR)
        stopped.append(job.pk)
    return stopped


def jobs_stop_unpaid(*, now: datetime | None = None) -> list[int]:
    """Stop, with notice, the jobs of buyers who cannot cover the next two settlement intervals."""
    now = now or timezone.now()
    job_ids = [s.job_id for s in leases_unable_to_pay(at=now) if s.job_id is not None]
    stopped = []
    for job in Job.objects.filter(pk__in=job_ids, stop_requested_at__isnull=True).exclude(
        status__in=list(JOB_ENDED)
    ):
        job_stop_request(job=job, reason=StopReason.FUNDS, notice=FUNDS_NOTICE)
        stopped.append(job.pk)
    if stopped:
        log.info("jobs.stopped_unpaid job_ids=%s", stopped)
    return stopped
