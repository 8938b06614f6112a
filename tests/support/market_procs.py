"""Processes of the marketplace concurrency test, each a fresh interpreter on the test database.

``python -m tests.support.market_procs placer INDEX BUYER_ID SEED UNTIL`` is one buyer placing and
cancelling orders and playing the agent of its own jobs; ``... matching UNTIL`` runs the matcher
with its housekeeping and ``... spot UNTIL`` the spot round with settlement, in loops until the
wall-clock time ``UNTIL``. Subprocesses rather than forks: a fork would share the parent's
database and broker sockets. Any unexpected exception ends the process with a traceback and a
non-zero exit status.
"""

from __future__ import annotations

import os
import random
import sys
import time
from datetime import timedelta
from decimal import Decimal


def _price(rng: random.Random, low: str, high: str) -> int:
    return int(Decimal(str(round(rng.uniform(float(low), float(high)), 2))) * 1_000_000)


def _request(rng: random.Random) -> object:
    from django.utils import timezone

    from marketplace.services.jobs import JobSpec
    from marketplace.services.orders import OrderRequest

    spec = JobSpec(runtime="docker", image="nvcr.io/nvidia/pytorch:24.05-py3", command=["python", "train.py"])
    roll = rng.random()
    if roll < 0.4:
        return OrderRequest(
            term="on_demand", devices_per_node=rng.choice((1, 2, 4)),
            price_limit_micros=_price(rng, "2.20", "3.00"), job=spec,
        )  # fmt: skip
    if roll < 0.8:
        return OrderRequest(
            term="spot", devices_per_node=rng.choice((1, 2, 4)), price_limit_micros=_price(rng, "0.90", "2.00"),
            job=spec,
        )  # fmt: skip
    if roll < 0.9:
        return OrderRequest(
            term="on_demand", devices_per_node=2, node_count=2, price_limit_micros=_price(rng, "2.50", "3.00"),
            job=spec,
        )  # fmt: skip
    start = (timezone.now() + timedelta(seconds=rng.choice((60, 150, 600)))).replace(microsecond=0)
    return OrderRequest(
        term="reserved", devices_per_node=rng.choice((1, 2)), price_limit_micros=_price(rng, "2.00", "3.00"),
        job=spec, window_start=start, window_end=start + timedelta(minutes=10),
    )  # fmt: skip


def placer(index: int, buyer_id: int, seed: int, until: float) -> None:
    """One buyer: place and cancel orders, and play the agent of its own jobs."""
    from django.contrib.auth import get_user_model

    from core.errors import SuanliError
    from marketplace.models import JOB_LIVE, Job, JobStatus, Order, OrderStatus
    from marketplace.services.orders import order_cancel, order_place
    from tests.marketplace.market_helpers import agent_reports

    rng = random.Random(seed)
    buyer = get_user_model().objects.get(pk=buyer_id)
    n = 0
    while time.time() < until:
        roll = rng.random()
        try:
            if roll < 0.45:
                n += 1
                order_place(buyer=buyer, request=_request(rng), idempotency_key=f"p{index}-{n}")  # type: ignore[arg-type]
            elif roll < 0.65:
                mine = list(
                    Order.objects.filter(buyer=buyer)
                    .exclude(status__in=[OrderStatus.ENDED, OrderStatus.CANCELLED, OrderStatus.FAILED])
                    .values_list("pk", flat=True)
                )
                if mine:
                    order_cancel(order=Order.objects.get(pk=rng.choice(mine)))
            else:
                for job in Job.objects.filter(buyer=buyer, status__in=list(JOB_LIVE)).order_by("?")[:3]:
                    if job.status == JobStatus.ASSIGNED and job.accepted_at is None:
                        agent_reports(job, "accepted")
                        agent_reports(job, "running")
                    elif job.status == JobStatus.RUNNING:
                        if job.stop_requested_at is not None:
                            agent_reports(job, "stopped", exit_code=143)
                        elif rng.random() < 0.2:
                            agent_reports(job, "exited", exit_code=0)
        except SuanliError:
            pass  # expected under contention: a lost race, an empty wallet, a job that moved first
        time.sleep(rng.uniform(0, 0.05))


def rounds(kind: str, until: float) -> None:
    """The matcher (with its housekeeping) or the spot round (with settlement), in a loop."""
    from django.utils import timezone

    from billing.services import settle
    from marketplace.services.matching import matching_run, spot_round
    from marketplace.services.provisioning import jobs_promote_deferred, jobs_stop_at_allocation_end

    settled_at = 0.0
    while time.time() < until:
        if kind == "matching":
            matching_run()
            jobs_promote_deferred()
            jobs_stop_at_allocation_end()
            time.sleep(0.05)
        else:
            spot_round()
            if time.time() - settled_at > 2:
                settle(until=timezone.now())
                settled_at = time.time()
            time.sleep(0.2)


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    kind = argv[0]
    if kind == "placer":
        placer(int(argv[1]), int(argv[2]), int(argv[3]), float(argv[4]))
    else:
        rounds(kind, float(argv[1]))


if __name__ == "__main__":
    main(sys.argv[1:])
