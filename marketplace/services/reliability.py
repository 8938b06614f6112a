"""Reliability score per node: heartbeat coverage x job success over 30 days; new nodes 0.6."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from django.db.models import Count, Q
from django.utils import timezone

from marketplace.models import Job, JobStatus, Offer
from providers.models import Node

WINDOW = timedelta(days=30)
NEW_NODE_SCORE = Decimal("0.600")
# Below this much history a node keeps the new-node score, blended in as evidence accumulates.
MIN_EVIDENCE_JOBS = 5


def reliability_score(*, coverage: Decimal, succeeded: int, failed: int) -> Decimal:
    """``coverage`` in [0, 1]; jobs that ended ``lost`` or ``failed`` after starting count as failures.

    With few finished jobs the success rate is blended with the new-node prior (a node with one
    lost job is not 0 forever): success = (succeeded + prior x k) / (finished + k).
    """
    k = Decimal(MIN_EVIDENCE_JOBS)
    finished = Decimal(succeeded + failed)
    success = (Decimal(succeeded) + NEW_NODE_SCORE * k) / (finished + k)
    score = max(Decimal(0), min(Decimal(1), coverage)) * success
    return score.quantize(Decimal("0.001"), rounding=ROUND_HALF_EVEN)


def node_coverage(node: Node, *, now: datetime) -> Decimal:
    """Share of the window (or of the node's life, if younger) it was heard from.

    Heartbeat history is kept as the node's status; a node online now with its last heartbeat
    fresh counts as covered for its life so far, minus the time its jobs were lost to outages.
    """
    start = max(node.created_at, now - WINDOW)
    span = Decimal(max((now - start).total_seconds(), 1))
    lost_seconds = Decimal(0)
    for job in Job.objects.filter(node=node, status=JobStatus.LOST, ended_at__gte=start):
        ended = job.ended_at
        assert ended is not None  # the filter on ended_at excludes nulls
        # A lost job marks an outage from the last heartbeat until the node came back (or now).
        back = node.last_heartbeat_at if node.last_heartbeat_at and node.last_heartbeat_at > ended else now
        lost_seconds += Decimal(max((back - ended).total_seconds(), 0))
    if node.last_heartbeat_at is None:
        return Decimal(0)
    silent = Decimal(max((now - node.last_heartbeat_at).total_seconds(), 0))
    return max(Decimal(0), (span - lost_seconds - silent) / span)


def reliability_refresh(*, now: datetime | None = None) -> int:
    """Recompute every offer's reliability score; returns how many changed."""
    now = now or timezone.now()
    since = now - WINDOW
    counts = {
        row["node_id"]: row
        for row in Job.objects.filter(ended_at__gte=since, started_at__isnull=False)
        .values("node_id")
        .annotate(
            ok=Count("id", filter=Q(status__in=[JobStatus.EXITED, JobStatus.STOPPED, JobStatus.PREEMPTED])),
            bad=Count("id", filter=Q(status__in=[JobStatus.LOST, JobStatus.FAILED])),
        )
    }
    changed = 0
    for offer in Offer.objects.select_related("node"):
        row = counts.get(offer.node_id, {"ok": 0, "bad": 0})
        score = reliability_score(
            coverage=node_coverage(offer.node, now=now), succeeded=row["ok"], failed=row["bad"]
        )
        if row["ok"] + row["bad"] == 0 and offer.node.last_heartbeat_at is not None:
            score = max(score, NEW_NODE_SCORE) if score >= Decimal("0.9") else score
        if score != offer.reliability:
            Offer.objects.filter(pk=offer.pk).update(reliability=score)
            changed += 1
    return changed
