"""Periodic liveness tasks (scheduled in ``config.celery_app``)."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from core.tasks import SuanliTask
from providers.services import heartbeats_flush, liveness_sweep


@shared_task(base=SuanliTask, name="providers.liveness.flush_heartbeats", soft_time_limit=30, time_limit=60)
def flush_heartbeats() -> int:
    return heartbeats_flush()


@shared_task(base=SuanliTask, name="providers.liveness.sweep", soft_time_limit=30, time_limit=60)
def sweep() -> dict[str, list[int]]:
    # Flush first: a node whose heartbeats are still waiting in Redis must not look silent just
    # because the flush task is queued behind this one.
    heartbeats_flush()
    result = liveness_sweep(now=timezone.now())
    return {"suspect": result.suspect, "offline": result.offline}
