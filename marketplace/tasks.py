"""Marketplace periodic tasks (scheduled in ``config.celery_app``)."""

from __future__ import annotations

from celery import shared_task

from core.metrics import timed_matching_round
from core.tasks import SuanliTask
from marketplace.services import jobs_mark_lost


@shared_task(
    base=SuanliTask, name="marketplace.provisioning.mark_lost_jobs", soft_time_limit=60, time_limit=90
)
def mark_lost_jobs() -> list[int]:
    """Live jobs on nodes that went offline become ``lost`` (ended at the last heartbeat); volumes
    on them stop billing (until their node is back)."""
    from marketplace.services.volumes import volumes_follow_node_liveness

    lost = jobs_mark_lost()
    volumes_follow_node_liveness()
    return lost


@shared_task(base=SuanliTask, name="marketplace.matching.run", soft_time_limit=30, time_limit=60)
@timed_matching_round("firm")
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
@timed_matching_round("spot")
def spot_round() -> dict[str, list[int]]:
    """Clear every spot pool at one price; place winners, re-rate incumbents, preempt the outbid."""
    from marketplace.services.matching import spot_round as run

    report = run()
    return {"placed": report.placed, "conflicts": report.conflicts, "preempted": report.preempted}


@shared_task(
    base=SuanliTask, name="marketplace.provisioning.end_past_stop_deadline", soft_time_limit=60, time_limit=90
)
def end_past_stop_deadline() -> list[int]:
    """Live jobs whose agent never reported the stop are ended at their stop deadline."""
    from marketplace.services.provisioning import jobs_end_past_stop_deadline

    return jobs_end_past_stop_deadline()


@shared_task(
    base=SuanliTask, name="marketplace.provisioning.promote_deferred", soft_time_limit=30, time_limit=60
)
def promote_deferred() -> list[int]:
    """Hand waiting jobs to their agents (sent when a preempted job ends before its deadline)."""
    from marketplace.services.provisioning import jobs_promote_deferred

    return jobs_promote_deferred()


@shared_task(base=SuanliTask, name="marketplace.provisioning.stop_unpaid", soft_time_limit=60, time_limit=90)
def stop_unpaid() -> list[int]:
    """Stop, with notice, jobs whose buyer cannot cover the next two settlement intervals; delete
    volumes left unpaid past their grace."""
    from marketplace.services.provisioning import jobs_stop_unpaid
    from marketplace.services.volumes import volumes_follow_funds

    stopped = jobs_stop_unpaid()
    volumes_follow_funds()
    return stopped


@shared_task(
    base=SuanliTask, name="marketplace.offers.free_devices_refresh", soft_time_limit=30, time_limit=60
)
def offer_free_devices_refresh() -> int:
    """Recount the offer list's stored free devices where a write or the clock made them stale."""
    from marketplace.services.offers import offer_free_devices_refresh as refresh

    return refresh()


@shared_task(base=SuanliTask, name="marketplace.reliability.refresh", soft_time_limit=120, time_limit=180)
def reliability_refresh() -> int:
    from marketplace.services.reliability import reliability_refresh as refresh

    return refresh()


@shared_task(base=SuanliTask, name="marketplace.webhooks.deliver", soft_time_limit=60, time_limit=90)
def webhook_deliver(delivery_id: int) -> float | None:
    """One attempt at a webhook delivery; a failed one is sent again after its backoff."""
    from marketplace.services.webhooks import webhook_delivery_attempt

    delay = webhook_delivery_attempt(delivery_id=delivery_id)
    if delay is not None:
        webhook_deliver.apply_async(args=[delivery_id], countdown=delay)
    return delay


@shared_task(base=SuanliTask, name="marketplace.webhooks.retry_due", soft_time_limit=60, time_limit=90)
def webhooks_retry_due() -> int:
    """Re-dispatch webhook deliveries whose retry task was lost (broker outage, killed worker)."""
    from marketplace.services.webhooks import webhooks_retry_due as retry_due

    return len(retry_due())
