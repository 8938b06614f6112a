"""The agent's work long-poll: what a node must start or stop, and the nudges that wake it.

A poll that finds nothing new waits on a Redis list (``BLPOP``) keyed by node, holding neither
a database connection nor a transaction; a service that gives a node work pushes onto that
list after its transaction commits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import redis
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from core.redis import redis_client
from marketplace.models import JOB_ENDED, JOB_LIVE, Job, JobStatus, Order, Volume, VolumeStatus
from marketplace.services.gang import gang_env
from providers.models import Device, Node, Vendor

log = logging.getLogger(__name__)

MAX_WAIT_S = 30
NUDGE_KEY = "suanli:work:nudge:{node_id}"
# What a node was sent lately (job and stop offers); only something not in here returns a poll
# at once, so an offer repeated until acknowledged does not turn long-polls into a busy loop.
DELIVERED_KEY = "suanli:work:delivered:{node_id}"
REDELIVER_AFTER_S = 60

# Catalog vendor -> the agent's vendor name (it picks device-visibility variables by it).
_AGENT_VENDOR: dict[str, str] = {Vendor.GENERIC: "cpu"}


@lru_cache(maxsize=1)
def _blocking_pool(url: str) -> redis.ConnectionPool:
    # The shared pool times sockets out after 2 s; a BLPOP of up to MAX_WAIT_S needs longer.
    return redis.ConnectionPool.from_url(url, socket_timeout=MAX_WAIT_S + 10, socket_connect_timeout=2.0)


def _blocking_client() -> redis.Redis:
    return redis.Redis(connection_pool=_blocking_pool(settings.REDIS_URL))


def node_nudge(*, node_ids: Iterable[int]) -> None:
    """Wake the nodes' waiting polls once the current transaction commits (at once outside one)."""
    ids = sorted(set(node_ids))
    if not ids:
        return

    def push() -> None:
        try:
            pipe = redis_client().pipeline(transaction=False)
            for node_id in ids:
                key = NUDGE_KEY.format(node_id=node_id)
                pipe.rpush(key, "1")
                pipe.expire(key, MAX_WAIT_S * 2)
            pipe.execute()
        except redis.RedisError:
            # The next poll finds the work anyway, at most MAX_WAIT_S later.
            log.warning("work.nudge_failed node_ids=%s", ids, exc_info=True)

    transaction.on_commit(push)


@dataclass
class WorkOffer:
    jobs: list[dict[str, Any]] = field(default_factory=list)
    stop: list[dict[str, Any]] = field(default_factory=list)
    # Volumes the agent holds that no longer exist here (deleted): it removes their data. Not an
    # offer to acknowledge: it is answered from what the agent reports on every poll.
    delete_volumes: list[int] = field(default_factory=list)

    def keys(self) -> set[str]:
        return {f"job:{job['id']}" for job in self.jobs} | {
            f"stop:{s['job_id']}:{s['deadline']}" for s in self.stop
        }

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"jobs": self.jobs, "stop": self.stop}
        if self.delete_volumes:  # only then: agents without volumes see the reply they always did
            body["delete_volumes"] = self.delete_volumes
        return body


def work_pending(*, node: Node, running: list[int], volumes: list[int] | None = None) -> WorkOffer:
    """Jobs the node must start and jobs it must stop, right now (two or three queries).

    Jobs are offered while ``assigned`` and not yet acknowledged; a stop while one is requested
    and the job has not ended; and a job the agent says it runs but the server considers ended
    (lost while the node was away) is to be stopped at once. A job that mounts volumes carries
    them (id, name, size); of the volumes the agent says it holds (``volumes``), those deleted or
    not this node's are to be removed.
    """
    offer = WorkOffer()
    new_jobs = list(
        Job.objects.filter(
            node=node, status=JobStatus.ASSIGNED, accepted_at__isnull=True, stop_requested_at__isnull=True
        ).order_by("pk")
    )
    if new_jobs:
        vendors = dict(Device.objects.filter(node=node).values_list("index", "accelerator__vendor"))
        mounts = _order_volumes({job.order_id for job in new_jobs if job.order_id is not None})
        for job in new_jobs:
            vendor = next((vendors[i] for i in job.device_indexes if i in vendors), Vendor.GENERIC)
            offer.jobs.append(
                {
                    "id": job.pk,
                    "runtime": job.runtime,
                    "image": job.image,
                    "command": job.command,
                    # The server's gang variables win over same-named ones in the buyer's env.
                    "env": {**(job.env or {}), **gang_env(job=job)},
                    "ports": job.ports,
                    "device_indexes": job.device_indexes,
                    "vendor": _AGENT_VENDOR.get(vendor, vendor),
                    "memory_mib": job.memory_mib,
                    "cpus": job.cpus,
                }
            )
            if job.order_id in mounts:
                offer.jobs[-1]["volumes"] = mounts[job.order_id]
    stopping = Job.objects.filter(node=node, status__in=JOB_LIVE, stop_requested_at__isnull=False)
    for job_id, deadline, reason in stopping.order_by("pk").values_list("pk", "stop_deadline", "stop_reason"):
        offer.stop.append({"job_id": job_id, "deadline": deadline, "reason": reason})
    if running:
        now = timezone.now()
        ended = Job.objects.filter(node=node, pk__in=running, status__in=JOB_ENDED)
        for job_id, job_status in ended.order_by("pk").values_list("pk", "status"):
            offer.stop.append({"job_id": job_id, "deadline": now, "reason": job_status})
    for command in offer.stop:
        command["deadline"] = command["deadline"].isoformat().replace("+00:00", "Z")
    if volumes:
        held = Volume.objects.filter(node=node, pk__in=volumes, status=VolumeStatus.READY)
        live = set(held.values_list("pk", flat=True))
        offer.delete_volumes = sorted(set(volumes) - live)
    return offer


def _order_volumes(order_ids: set[int]) -> dict[int, list[dict[str, Any]]]:
    if not order_ids:
        return {}
    rows = Order.objects.filter(pk__in=order_ids).exclude(volumes=[]).values_list("pk", "volumes")
    return {pk: list(volumes) for pk, volumes in rows}


def work_poll(
    *, node: Node, running: list[int] | None, wait_s: float, volumes: list[int] | None = None
) -> WorkOffer:
    """Long-poll for work: return at once when something new is pending, else wait up to
    ``wait_s`` (at most 30 s) for a nudge and return whatever is pending then (possibly nothing).

    Offers repeat until acknowledged (at-least-once delivery), but only a new one, or one not
    sent for ``REDELIVER_AFTER_S``, ends a poll early. While waiting, the request holds no
    database connection. ``running`` is what the agent says it runs (None: it did not say):
    stopping jobs missing from it have stopped and are ended first (``jobs_reconcile_reported``).
    """
    from marketplace.services.jobs import jobs_reconcile_reported

    if running is not None:
        jobs_reconcile_reported(node=node, running=running)
    running = running or []
    wait_s = max(0.0, min(float(wait_s), MAX_WAIT_S))
    deadline = time.monotonic() + wait_s
    client = redis_client()
    nudge_key = NUDGE_KEY.format(node_id=node.pk)
    delivered_key = DELIVERED_KEY.format(node_id=node.pk)
    # Nudges from before this poll are stale: the query below sees what they announced.
    client.delete(nudge_key)
    while True:
        offer = work_pending(node=node, running=running, volumes=volumes)
        keys = offer.keys()
        remaining = deadline - time.monotonic()
        fresh = _fresh(client, delivered_key, keys)
        if fresh or remaining <= 0:
            _mark_delivered(client, delivered_key, keys)
            return offer
        if not connection.in_atomic_block:
            connection.close()
        # A fractional BLPOP timeout needs Redis >= 6 (0 would mean "forever").
        popped = _blocking_client().blpop([nudge_key], timeout=max(0.05, round(remaining, 3)))
        if popped is None and deadline - time.monotonic() <= 0.05:
            offer = work_pending(node=node, running=running, volumes=volumes)
            _mark_delivered(client, delivered_key, offer.keys())
            return offer


def _fresh(client: redis.Redis, delivered_key: str, keys: set[str]) -> bool:
    if not keys:
        return False
    ordered = sorted(keys)
    sent = client.hmget(delivered_key, ordered)
    now = time.time()
    return any(value is None or now - float(value) > REDELIVER_AFTER_S for value in sent)


def _mark_delivered(client: redis.Redis, delivered_key: str, keys: set[str]) -> None:
    # The hash holds exactly what was just sent: acknowledged offers drop out of it.
    pipe = client.pipeline(transaction=True)
    pipe.delete(delivered_key)
    if keys:
        pipe.hset(delivered_key, mapping=dict.fromkeys(keys, f"{time.time():.3f}"))
        pipe.expire(delivered_key, REDELIVER_AFTER_S * 10)
    pipe.execute()
