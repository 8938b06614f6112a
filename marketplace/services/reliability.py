"""Reliability score per node: heartbeat coverage x job success over 30 days; new nodes 0.6.

The score lives on the node (``Node.reliability``, shown on the provider's pages whether or not
the node has an offer) and is copied to its offer, which the market filters and sorts by.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
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


def node_coverage(node: Node, *, now: datetime, lost_ended_at: Sequence[datetime] | None = None) -> Decimal:
    """Share of the window (or of the node's life, if younger) it was heard from.

    Heartbeat history is kept as the node's status; a node online now with its last heartbeat
    fresh counts as covered for its life so far, minus the time its jobs were lost to outages.
    ``lost_ended_at``: when the node's lost jobs ended (read from the database when not given).
    """
    start = max(node.created_at, now - WINDOW)
    span = Decimal(max((now - start).total_seconds(), 1))
    if lost_ended_at is None:
        lost_ended_at = [
            ended
            for ended in Job.objects.filter(node=node, status=JobStatus.LOST).values_list(
                "ended_at", flat=True
            )
            if ended is not None
        ]
    lost_seconds = Decimal(0)
    for ended in lost_ended_at:
        if ended < start:
            continue
        # A lost job marks an outage from the last heartbeat until the node came back (or now).
        back = node.last_heartbeat_at if node.last_heartbeat_at and node.last_heartbeat_at > ended else now
        lost_seconds += Decimal(max((back - ended).total_seconds(), 0))
    if node.last_heartbeat_at is None:
        return Decimal(0)
    silent = Decimal(max((now - node.last_heartbeat_at).total_seconds(), 0))
    return max(Decimal(0), (span - lost_seconds - silent) / span)


def reliability_refresh(*, now: datetime | None = None) -> int:
    """Recompute every node's reliability score and copy it to the node's offer.

    A node never heard from has no evidence yet and keeps the new-node score. Four queries plus
    one update per changed node (and per offer out of step). Returns how many nodes changed.
    """
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
    lost: dict[int, list[datetime]] = defaultdict(list)
    for node_id, ended_at in Job.objects.filter(status=JobStatus.LOST, ended_at__gte=since).values_list(
        "node_id", "ended_at"
    ):
        if ended_at is not None:  # the filter on ended_at excludes nulls
            lost[node_id].append(ended_at)
    offers = dict(Offer.objects.values_list("node_id", "reliability"))
    changed = 0
    for node in Node.objects.all().iterator():
        if node.last_heartbeat_at is None:
            score = NEW_NODE_SCORE
        else:
            row = counts.get(node.pk, {"ok": 0, "bad": 0})
            coverage = node_coverage(node, now=now, lost_ended_at=lost.get(node.pk, []))
            score = reliability_score(coverage=coverage, succeeded=row["ok"], failed=row["bad"])
        if score != node.reliability:
            Node.objects.filter(pk=node.pk).update(reliability=score)
            changed += 1
        if node.pk in offers and offers[node.pk] != score:
            Offer.objects.filter(node_id=node.pk).update(reliability=score)
    return changed
