"""The Celery application: queues, reliability settings and the whole periodic schedule.

Queues: ``matching`` (the matcher and spot rounds), ``provisioning`` (jobs onto agents and
liveness), ``billing`` (settlement, payouts, statements) and ``default``. Tasks are routed by the
prefix of their stable ``name=``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, bootsteps, signals
from celery.schedules import crontab
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("suanli")
app.config_from_object("django.conf:settings", namespace="CELERY")

QUEUES = ("matching", "provisioning", "billing", "default")

app.conf.update(
    task_queues=[Queue(name) for name in QUEUES],
    task_default_queue="default",
    task_routes={
        "marketplace.matching.*": {"queue": "matching"},
        "marketplace.spot.*": {"queue": "matching"},
        "marketplace.provisioning.*": {"queue": "provisioning"},
        "providers.liveness.*": {"queue": "provisioning"},
        "billing.*": {"queue": "billing"},
    },
    # A task is acknowledged only after it ran, so a worker killed mid-task leaves it queued
    # for the next worker. Every task must therefore be safe to run twice.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_soft_time_limit=240,
    task_time_limit=300,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    # Unacknowledged messages of a dead worker are redelivered after this long.
    broker_transport_options={"visibility_timeout": 600},
    worker_hijack_root_logger=False,
    timezone="UTC",
    enable_utc=True,
)


def _seconds(name: str) -> float:
    """An interval from the settings (the matcher, spot and settlement periods are configurable)."""
    from django.conf import settings

    return float(getattr(settings, name))


# The periodic schedule, in one place. Every entry names a task by its stable name; each task is
# idempotent, so a late or doubled beat tick is harmless.
BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    # Heartbeats land in Redis; move them to PostgreSQL in bulk (last_heartbeat_at, device
    # health, pending -> online).
    "providers-flush-heartbeats": {"task": "providers.liveness.flush_heartbeats", "schedule": 10.0},
    # Silent nodes: online -> suspect after 45 s, -> offline after 150 s (flushes first).
    "providers-liveness-sweep": {"task": "providers.liveness.sweep", "schedule": 15.0},
    # Live jobs on offline nodes become lost (ended at the node's last heartbeat).
    "marketplace-mark-lost-jobs": {"task": "marketplace.provisioning.mark_lost_jobs", "schedule": 15.0},
    # Match open reserved and on-demand orders; start deferred jobs, retry unacknowledged ones,
    # give notice to jobs whose allocation ends soon (every SUANLI_MATCHING_INTERVAL_S, 5 s).
    "marketplace-matching": {
        "task": "marketplace.matching.run",
        "schedule": _seconds("SUANLI_MATCHING_INTERVAL_S"),
    },
    # Clear every spot pool at one uniform price; winners' leases are re-rated to it (every
    # SUANLI_SPOT_INTERVAL_S, 30 s).
    "marketplace-spot-round": {
        "task": "marketplace.spot.round",
        "schedule": _seconds("SUANLI_SPOT_INTERVAL_S"),
    },
    # Jobs still live 15 s past their stop deadline (the agent never reported the stop) end at
    # the deadline, closing their leases there: the server enforces stops, not only the agent.
    "marketplace-end-past-stop-deadline": {
        "task": "marketplace.provisioning.end_past_stop_deadline",
        "schedule": 10.0,
    },
    # Recount the stored free devices behind GET /api/v1/offers for nodes whose slots or devices
    # changed, or whose reserved window opened or closed, since the last run; the list counts
    # those live until then (every SUANLI_OFFER_FREE_REFRESH_S, 5 s).
    "marketplace-offer-free-devices": {
        "task": "marketplace.offers.free_devices_refresh",
        "schedule": _seconds("SUANLI_OFFER_FREE_REFRESH_S"),
    },
    # Stop (with notice) jobs whose buyer cannot cover the next two settlement intervals.
    "marketplace-stop-unpaid": {"task": "marketplace.provisioning.stop_unpaid", "schedule": 60.0},
    # Heartbeat coverage x job success over 30 days, shown on every offer.
    "marketplace-reliability": {"task": "marketplace.reliability.refresh", "schedule": 300.0},
    # Webhook deliveries whose retry task was lost (each delivery schedules its own retries).
    "marketplace-webhooks-retry-due": {"task": "marketplace.webhooks.retry_due", "schedule": 60.0},
    # --- billing ---
    # Settle every open lease through "now" (cumulative, so a late or doubled tick posts nothing
    # extra), every BILLING_SETTLEMENT_INTERVAL_S (60 s).
    "billing-settle": {"task": "billing.settle", "schedule": _seconds("BILLING_SETTLEMENT_INTERVAL_S")},
    # Compare cached balances with the sum of entries; drift is logged as an error.
    "billing-reconcile": {"task": "billing.reconcile", "schedule": crontab(minute=17)},
    # Pay provider payable above the threshold out to Stripe Connect, once a day.
    "billing-payouts": {"task": "billing.payouts.run", "schedule": crontab(hour=3, minute=0)},
    # Keep this month's draft statements current; finalize last month's on the 1st.
    "billing-statements-refresh": {
        "task": "billing.statements.refresh",
        "schedule": crontab(hour=1, minute=30),
    },
    "billing-statements-finalize": {
        "task": "billing.statements.finalize",
        "schedule": crontab(day_of_month=1, hour=2, minute=0),
    },
    # --- core ---
    # Forget Idempotency-Keys past their 24-hour retention (core.idempotency).
    "core-idempotency-purge": {"task": "core.idempotency.purge", "schedule": crontab(minute=41)},
}
app.conf.beat_schedule = BEAT_SCHEDULE

app.autodiscover_tasks()

# --- Worker liveness for /healthz ----------------------------------------------------------------

WORKER_SEEN_KEY = "suanli:celery:worker_seen"
WORKER_SEEN_EVERY_S = 15.0


class WorkerSeen(bootsteps.StartStopStep):
    """Records, every few seconds, that a worker is alive and consuming (read by /healthz)."""

    requires = ("celery.worker.components:Timer",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.tref: Any = None

    def start(self, worker: Any) -> None:
        self.tref = worker.timer.call_repeatedly(WORKER_SEEN_EVERY_S, _record_worker_seen, (), priority=10)
        _record_worker_seen()

    def stop(self, worker: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()


def _record_worker_seen() -> None:
    import time

    from core.redis import redis_client

    try:
        redis_client().set(WORKER_SEEN_KEY, f"{time.time():.3f}", ex=120)
    except Exception:  # liveness bookkeeping must never break the worker
        logging.getLogger(__name__).warning("celery.worker_seen_failed", exc_info=True)


app.steps["worker"].add(WorkerSeen)

# --- Logs: the worker and beat use settings.LOGGING (core.logging), like the web ----------------


@signals.setup_logging.connect
def _logging_from_settings(**_kwargs: Any) -> None:
    """A receiver here stops Celery from installing its own handlers and format: worker and beat
    log through ``settings.LOGGING``, in the same JSON (or console) lines as the web."""
    import logging.config

    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


@signals.task_prerun.connect
def _bind_task_to_logs(task_id: str | None = None, task: Any = None, **_kwargs: Any) -> None:
    # Every line a task writes names the task and its id, as every web line names its request.
    # Bound and unbound by name, never cleared: an eager task runs inside a web request, whose
    # request_id must survive it.
    import structlog

    structlog.contextvars.bind_contextvars(task_id=task_id, task=getattr(task, "name", None))


@signals.task_postrun.connect
def _unbind_task_from_logs(**_kwargs: Any) -> None:
    import structlog

    structlog.contextvars.unbind_contextvars("task_id", "task")
