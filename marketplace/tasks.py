"""Marketplace periodic tasks (scheduled in ``config.celery_app``)."""

from __future__ import annotations

from celery import shared_task

from core.tasks import SuanliTask
from marketplace.services import jobs_mark_lost


@shared_task(
    base=SuanliTask, name="marketplace.provisioning.mark_lost_jobs", soft_time_limit=60, time_limit=90
)
def mark_lost_jobs() -> list[int]:
    """Live jobs on nodes that went offline become ``lost`` (ended at the last heartbeat)."""
    return jobs_mark_lost()
