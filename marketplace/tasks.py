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


@shared_task(base=SuanliTask, name="marketplace.matching.run", soft_time_limit=30, time_limit=60)
def matching_run() -> dict[str, list[int]]:
    """Place open reserved and on-demand orders; start deferred jobs; retry unacknowledged ones."""
    from marketplace.services.matching import matching_run as run
    from marketplace.services.orders import orders_expire_reserved
    from marketplace.services.provisioning import (
        jobs_promote_deferred,
        jobs_requeue_unacknowledged,
        jobs_stop_at_allocation_end,
        jobs_stop_gang_remainders,
    )

    # Expire first: a window with less than the minimum left is never booked.
    expired = orders_expire_reserved()
    report = run()
    return {
        "placed": report.placed,
        "conflicts": report.conflicts,
        "preempted": report.preempted,
        "promoted": jobs_promote_deferred(),
        "requeued": jobs_requeue_unacknowledged(),
        "ending": jobs_stop_at_allocation_end(),
        "gang_remainders": jobs_stop_gang_remainders(),
        "expired": expired,
    }


@shared_task(base=SuanliTask, name="marketplace.spot.round", soft_time_limit=30, time_limit=60)
def spot_round() -> dict[str, list[int]]:
    """Clear every spot pool at one price; place winners, re-rate incumbents, preempt the outbid."""
    from marketplace.services.matching import spot_round as run

    report = run()
    return {"placed": report.placed, "conflicts": report.conflicts, "preempted": report.preempted}


@shared_task(base=SuanliTask, name="marketplace.provisioning.stop_unpaid", soft_time_limit=60, time_limit=90)
def stop_unpaid() -> list[int]:
    """Stop, with notice, jobs whose buyer cannot cover the next two settlement intervals."""
    from marketplace.services.provisioning import jobs_stop_unpaid

    return jobs_stop_unpaid()


@shared_task(base=SuanliTask, name="marketplace.reliability.refresh", soft_time_limit=120, time_limit=180)
def reliability_refresh() -> int:
    from marketplace.services.reliability import reliability_refresh as refresh

    return refresh()
