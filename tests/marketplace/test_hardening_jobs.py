"""Issue #11, items 1, 2, 4 and 15: agent job events, usage samples, stop deadlines, hand-over.

Everything goes through the agent API (node credential) or the services the periodic tasks call,
on real PostgreSQL and Redis; only the clock is moved (time-machine).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.utils import timezone

from billing.models import Lease, LeaseStatus, UsageSample
from billing.services import settle
from config.celery_app import BEAT_SCHEDULE
from config.celery_app import app as celery_app
from core.money import parse_amount
from marketplace.models import Allocation, AllocationSlot, Job, JobStatus, Order, StopReason
from marketplace.services import job_stop_request
from marketplace.services.jobs import EVENT_SEQ_MAX_GAP, JobSpec
from marketplace.services.matching import matching_run, spot_round
from marketplace.services.offers import OfferChange, offer_update
from marketplace.services.orders import OrderRequest, order_place
from marketplace.services.provisioning import jobs_promote_deferred
from marketplace.tasks import end_past_stop_deadline
from providers.models import Node, NodeStatus
from tests.marketplace.market_helpers import MICROS, funded_buyer
from tests.providers.factories import ProviderFactory, agent_client, registered_node

pytestmark = pytest.mark.django_db

SPEC = JobSpec(runtime="docker", image="nvcr.io/nvidia/pytorch:24.05-py3", command=["python", "train.py"])
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
BIGINT_MAX = 2**63 - 1


def market_node(*, name: str = "n", devices: int = 2, on_demand: str = "3.60", spot_floor: str = "1.00"):
    """An online, listed H100 node and an API client holding its agent credential."""
    node, credential = registered_node(ProviderFactory(), name=name, devices=devices)
    Node.objects.filter(pk=node.pk).update(
        status=NodeStatus.ONLINE,
        last_heartbeat_at=timezone.now(),
        cluster="sh-a",
        software={"cuda": "12.4", "driver": "550.54.15", "runtimes": "docker,process"},
    )
    node.refresh_from_db()
    offer_update(
        node=node,
        change=OfferChange(
            on_demand_price_micros=parse_amount(on_demand),
            reserved_price_micros=parse_amount("2.00"),
            spot_floor_micros=parse_amount(spot_floor),
            listed=True,
        ),
    )
    return node, agent_client(credential)


def place(term: str = "on_demand", *, devices: int = 1, limit: str = "4.00", key: str = "k") -> Order:
    request = OrderRequest(
        term=term, devices_per_node=devices, price_limit_micros=int(Decimal(limit) * MICROS), job=SPEC
    )
    order, _ = order_place(buyer=funded_buyer(1000), request=request, idempotency_key=key)
    return order


def placed_job(*, devices: int = 1) -> Job:
    order = place(devices=devices)
    assert matching_run().placed == [order.pk]
    return Job.objects.get(order=order)


def event(client, job: Job, seq: Any, state: str, *, at: datetime | None = None, **extra: Any):
    body = {"seq": seq, "state": state, "at": (at or timezone.now()).isoformat(), **extra}
    return client.post(f"/api/agent/v1/jobs/{job.pk}/events", body, format="json")


def usage(client, samples: list[dict[str, Any]]):
    return client.post("/api/agent/v1/usage", {"samples": samples}, format="json")


def window(job: Job, seq: int, start: datetime, seconds: float = 30, **extra: Any) -> dict[str, Any]:
    return {
        "job_id": job.pk, "seq": seq, "window_start": start.isoformat(),
        "window_end": (start + timedelta(seconds=seconds)).isoformat(), "device_count": 1,
        "utilization_pct": 90, "memory_used_mib": 4096, "power_w": 500, **extra,
    }  # fmt: skip


def lease_of(job: Job) -> Lease:
    job.refresh_from_db()
    return Lease.objects.get(pk=job.lease_id)


# --- 1. event times are clamped to [assignment, now]; gross skew is refused ----------------------


def test_a_running_event_backdated_by_a_day_is_refused_and_bills_nothing():
    _node, client = market_node()
    with time_machine.travel(T0, tick=False):
        job = placed_job()
    with time_machine.travel(T0 + timedelta(seconds=5), tick=False):
        assert event(client, job, 1, "accepted").status_code == 200
        reply = event(client, job, 2, "running", at=T0 - timedelta(days=1))
        assert reply.status_code == 400
        body = reply.json()["error"]
        assert body["code"] == "clock_skew" and "at" in body["fields"]
        # A day ahead is as wrong as a day behind.
        ahead = event(client, job, 2, "running", at=T0 + timedelta(days=1))
        assert ahead.status_code == 400 and ahead.json()["error"]["code"] == "clock_skew"
    job.refresh_from_db()
    assert job.status == JobStatus.ASSIGNED and job.started_at is None and job.lease_id is None
    assert job.last_event_seq == 1  # the refused events were not recorded as seen


def test_a_slightly_backdated_running_event_is_clamped_to_the_acceptance():
    # Given a job assigned at T0 and accepted at T0+5s, on a node at 3.60 per device-hour
    _node, client = market_node(on_demand="3.60")
    with time_machine.travel(T0, tick=False):
        job = placed_job()
    with time_machine.travel(T0 + timedelta(seconds=5), tick=False):
        event(client, job, 1, "accepted")
    # When the agent says it has been running since four minutes before the assignment (within
    # the 5-minute clock skew allowance) and the job exits 57 s after its acceptance
    with time_machine.travel(T0 + timedelta(seconds=10), tick=False):
        assert event(client, job, 2, "running", at=T0 - timedelta(minutes=4)).json() == {
            "job_status": "running"
        }
    with time_machine.travel(T0 + timedelta(seconds=62), tick=False):
        assert event(client, job, 3, "exited", exit_code=0).json() == {"job_status": "exited"}
        settle(until=timezone.now())
    # Then billing runs from the acceptance, not from the claimed start: 57 s, billed as the
    # 60-second minimum: 3.60 x 60 / 3600 = 0.06 (a backdated start would have cost 0.297)
    job.refresh_from_db()
    assert job.started_at == T0 + timedelta(seconds=5)
    lease = lease_of(job)
    assert lease.status == LeaseStatus.CLOSED and lease.started_at == T0 + timedelta(seconds=5)
    assert lease.charged_micros == 60_000


def test_an_end_event_is_clamped_to_the_stop_deadline():
    _node, client = market_node(on_demand="3.60")
    with time_machine.travel(T0, tick=False):
        job = placed_job()
        event(client, job, 1, "accepted")
        event(client, job, 2, "running")
    with time_machine.travel(T0 + timedelta(minutes=10), tick=False):
        job = job_stop_request(job=job, reason=StopReason.BUYER)
        deadline = job.stop_deadline
        assert deadline == T0 + timedelta(minutes=10, seconds=30)
    # The agent reports the stop late, dated two minutes past the SIGKILL deadline.
    with time_machine.travel(deadline + timedelta(minutes=3), tick=False):
        event(client, job, 3, "stopped", at=deadline + timedelta(minutes=2), exit_code=-9)
        settle(until=timezone.now())
    job.refresh_from_db()
    assert job.status == JobStatus.STOPPED and job.ended_at == deadline
    assert lease_of(job).charged_micros == 630_000  # 3.60 x 10.5 min


# --- 2. bounded seq, server-enforced stop deadlines, reconciliation with the work poll -----------


@pytest.mark.parametrize(
    "seq", [BIGINT_MAX, BIGINT_MAX + 1, 2**70, 0, -1, "5", 1.5, True, None, 1e30]
)  # fmt: skip
def test_bad_event_seqs_are_field_errors(seq):
    _node, client = market_node()
    job = placed_job()
    reply = event(client, job, seq, "running")
    assert reply.status_code == 400, reply.content
    assert "seq" in reply.json()["error"]["fields"]
    job.refresh_from_db()
    assert job.status == JobStatus.ASSIGNED and job.last_event_seq == 0


def test_a_seq_far_past_the_last_cannot_hide_later_events_and_the_stop_applies():
    _node, client = market_node()
    job = placed_job()
    assert event(client, job, 1, "accepted").status_code == 200
    assert event(client, job, 2, "running").json() == {"job_status": "running"}
    # A jump beyond EVENT_SEQ_MAX_GAP is refused: seen nothing, so the real events still count.
    jump = event(client, job, 2 + EVENT_SEQ_MAX_GAP + 1, "running")
    assert jump.status_code == 400 and "seq" in jump.json()["error"]["fields"]
    job_stop_request(job=job, reason=StopReason.BUYER)
    assert event(client, job, 3, "stopped", exit_code=-15).json() == {"job_status": "stopped"}
    assert lease_of(job).status == LeaseStatus.CLOSED


def test_the_server_ends_a_job_past_its_stop_deadline_and_bills_to_the_deadline():
    # Given a job running since T0 at 3.60 per device-hour, stopped by its buyer at T0+10min
    _node, client = market_node(on_demand="3.60")
    with time_machine.travel(T0, tick=False):
        job = placed_job()
        event(client, job, 1, "accepted")
        event(client, job, 2, "running")
    with time_machine.travel(T0 + timedelta(minutes=10), tick=False):
        deadline = job_stop_request(job=job, reason=StopReason.BUYER).stop_deadline
    # When its agent never reports the stop, the periodic task ends it (not within the grace)
    with time_machine.travel(deadline + timedelta(seconds=5), tick=False):
        assert end_past_stop_deadline() == []
    with time_machine.travel(deadline + timedelta(minutes=10), tick=False):
        assert end_past_stop_deadline() == [job.pk]
        assert end_past_stop_deadline() == []  # a second run changes nothing
        settle(until=timezone.now())
    # Then the job ended at the deadline and its lease closed there: 3.60 x 10.5 min = 0.63
    job.refresh_from_db()
    assert job.status == JobStatus.STOPPED and job.ended_at == deadline
    lease = lease_of(job)
    assert lease.status == LeaseStatus.CLOSED and lease.ends_at == deadline
    assert lease.charged_micros == 630_000
    assert job.order.status == "ended"
    # The late report changes nothing; the agent still listing it is told to stop it at once.
    with time_machine.travel(deadline + timedelta(minutes=11), tick=False):
        assert event(client, job, 3, "stopped", exit_code=-9).json() == {"job_status": "stopped"}
        reply = client.post("/api/agent/v1/work?wait=0", {"running": [job.pk]}, format="json")
    assert [s["job_id"] for s in reply.json()["stop"]] == [job.pk]


def test_the_stop_deadline_task_is_scheduled():
    tasks = {entry["task"] for entry in BEAT_SCHEDULE.values()}
    assert "marketplace.provisioning.end_past_stop_deadline" in tasks


def test_a_stopping_job_its_agent_no_longer_runs_ends_at_the_next_work_poll():
    _node, client = market_node(devices=2)
    with time_machine.travel(T0, tick=False):
        stopping = placed_job()
        other = placed_job()
        for job in (stopping, other):
            event(client, job, 1, "accepted")
            event(client, job, 2, "running")
    with time_machine.travel(T0 + timedelta(minutes=5), tick=False):
        job_stop_request(job=stopping, reason=StopReason.BUYER)
    with time_machine.travel(T0 + timedelta(minutes=5, seconds=3), tick=False):
        # A poll that does not say what the agent runs reconciles nothing.
        assert client.post("/api/agent/v1/work?wait=0", {}, format="json").status_code == 200
        assert Job.objects.get(pk=stopping.pk).status == JobStatus.RUNNING
        # The agent stopped it (its `stopped` event got lost) and lists only the other job.
        reply = client.post("/api/agent/v1/work?wait=0", {"running": [other.pk]}, format="json")
        assert reply.status_code == 200
    stopping.refresh_from_db()
    assert stopping.status == JobStatus.STOPPED
    assert stopping.ended_at == T0 + timedelta(minutes=5, seconds=3)
    assert lease_of(stopping).status == LeaseStatus.CLOSED
    # A job without a stop request is never ended for being missing from the list.
    assert Job.objects.get(pk=other.pk).status == JobStatus.RUNNING


# --- 4. usage samples within the job's running interval and devices ------------------------------


@pytest.fixture
def running_job():
    """A 2-device job that ran from T0 for 15 minutes, and its node's API client."""
    _node, client = market_node(devices=2)
    with time_machine.travel(T0, tick=False):
        job = placed_job(devices=2)
        event(client, job, 1, "accepted")
        event(client, job, 2, "running")
    with time_machine.travel(T0 + timedelta(minutes=15), tick=False):
        event(client, job, 3, "exited", exit_code=0)
    job.refresh_from_db()
    return job, client


@pytest.mark.parametrize(
    ("start", "seconds", "extra", "field"),
    [
        (T0, 30, {"device_count": 3}, "device_count"),
        (T0, 30 * 86_400, {}, "window_end"),  # 30 days on a 15-minute job
        (datetime(2020, 1, 1, tzinfo=UTC), 30, {}, "window_start"),
        (datetime(9999, 12, 31, 23, 0, tzinfo=UTC), 30, {}, "window_end"),
        (T0 - timedelta(hours=1), 30, {}, "window_start"),
        (T0 + timedelta(minutes=30), 30, {}, "window_end"),
    ],
)
def test_usage_outside_the_jobs_running_interval_or_devices_is_refused(
    running_job, start, seconds, extra, field
):
    job, client = running_job
    good = window(job, 1, T0, device_count=2)
    with time_machine.travel(T0 + timedelta(minutes=20), tick=False):
        reply = usage(client, [good, window(job, 2, start, seconds, **extra)])
    assert reply.status_code == 400, reply.content
    assert f"samples.1.{field}" in reply.json()["error"]["fields"]
    assert UsageSample.objects.count() == 0  # nothing of the batch, the good sample included


def test_usage_within_the_running_interval_is_stored(running_job):
    job, client = running_job
    # The clock skew allowance (5 min) lets a window overhang the interval a little.
    samples = [
        window(job, 1, T0 - timedelta(seconds=2), 32, device_count=2),
        window(job, 2, T0 + timedelta(minutes=14, seconds=50), 20),
    ]
    with time_machine.travel(T0 + timedelta(minutes=20), tick=False):
        assert usage(client, samples).json() == {"accepted": 2, "duplicates": 0}


def test_usage_for_a_job_that_never_ran_is_refused():
    _node, client = market_node()
    job = placed_job()
    reply = usage(client, [window(job, 1, timezone.now() - timedelta(seconds=30))])
    assert reply.status_code == 400 and "samples.0.window_start" in reply.json()["error"]["fields"]
    assert UsageSample.objects.count() == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [({"seq": BIGINT_MAX + 1}, "seq"), ({"memory_used_mib": BIGINT_MAX + 1}, "memory_used_mib"),
     ({"job_id": BIGINT_MAX + 1}, "job_id"), ({"memory_used_mib": 1e30}, "memory_used_mib"),
     ({"seq": 10**31}, "seq"), ({"device_count": 2**40}, "device_count")],
)  # fmt: skip
def test_usage_integers_beyond_bigint_are_field_errors(running_job, change, field):
    job, client = running_job
    reply = usage(client, [{**window(job, 1, T0), **change}])
    assert reply.status_code == 400, reply.content
    assert f"samples.0.{field}" in reply.json()["error"]["fields"]
    assert UsageSample.objects.count() == 0


def test_agent_integers_beyond_bigint_are_field_errors():
    _node, client = market_node()
    job = placed_job()
    work = client.post("/api/agent/v1/work?wait=0", {"running": [2**64]}, format="json")
    assert work.status_code == 400 and "running.0" in work.json()["error"]["fields"]
    logs = client.post(f"/api/agent/v1/jobs/{job.pk}/logs", {"offset": 2**64, "data": "x"}, format="json")
    assert logs.status_code == 400 and "offset" in logs.json()["error"]["fields"]


# --- 15. a preempted job that ends early hands its devices over at once --------------------------


def _preempted_by_on_demand():
    """Two spot jobs fill an 8-device node; an on-demand order for 4 preempts the lower bid."""
    _node, client = market_node(devices=8, on_demand="2.50", spot_floor="1.00")
    high = place("spot", devices=4, limit="1.80", key="high")
    low = place("spot", devices=4, limit="1.40", key="low")
    spot_round()
    for job in Job.objects.filter(order__in=[high, low]):
        event(client, job, 1, "accepted")
        event(client, job, 2, "running")
    od = place(devices=4, limit="3.00", key="od")
    assert matching_run().placed == [od.pk]
    low_job = Job.objects.get(order=low)
    od_job = Job.objects.get(order=od)
    assert low_job.stop_reason == StopReason.PREEMPTION and od_job.status == JobStatus.QUEUED
    return client, low_job, od_job


def test_the_displacing_job_starts_as_soon_as_the_preempted_job_exits(
    monkeypatch, django_capture_on_commit_callbacks
):
    # The promotion is a task sent after commit; run it in-process here.
    monkeypatch.setitem(celery_app.conf, "task_always_eager", True)
    with time_machine.travel(T0, tick=False):
        client, low_job, od_job = _preempted_by_on_demand()
        deadline = Job.objects.get(pk=low_job.pk).stop_deadline
        assert deadline == T0 + timedelta(seconds=120)
        assert Allocation.objects.get(pk=od_job.allocation_id).starts_at == deadline
        # Nothing moves while the preempted job still runs.
        assert jobs_promote_deferred() == []
    # When the preempted job exits 2 s into its notice
    with time_machine.travel(T0 + timedelta(seconds=2), tick=False):
        with django_capture_on_commit_callbacks(execute=True):
            assert event(client, low_job, 3, "stopped", exit_code=143).json() == {"job_status": "preempted"}
        # Then the on-demand job is handed to the agent at once, its allocation starting now
        od_job.refresh_from_db()
        assert od_job.status == JobStatus.ASSIGNED and od_job.assigned_at == T0 + timedelta(seconds=2)
        allocation = Allocation.objects.get(pk=od_job.allocation_id)
        assert allocation.starts_at == T0 + timedelta(seconds=2)
        offered = client.post("/api/agent/v1/work?wait=0", {"running": []}, format="json").json()
    assert [j["id"] for j in offered["jobs"]] == [od_job.pk]
    # Its slots now begin when the devices were freed, and never overlap the old ones.
    start = int((T0 + timedelta(seconds=2)).timestamp())
    for slot in AllocationSlot.objects.filter(allocation=allocation):
        assert slot.live and slot.span.lower == slot.device_id * (1 << 40) + start


def test_the_displacing_job_starts_at_the_deadline_when_the_preempted_job_stays_silent():
    with time_machine.travel(T0, tick=False):
        _client, _low_job, od_job = _preempted_by_on_demand()
    with time_machine.travel(T0 + timedelta(seconds=119), tick=False):
        assert jobs_promote_deferred() == []
    with time_machine.travel(T0 + timedelta(seconds=120), tick=False):
        assert jobs_promote_deferred() == [od_job.pk]
