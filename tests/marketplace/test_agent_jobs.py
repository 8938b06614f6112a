"""The job-facing agent endpoints: work long-poll, events, logs, usage; and the buyer's view."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from billing.models import UsageSample
from core.services import apikey_create
from marketplace.models import Job, JobLogChunk, JobStatus, StopReason
from marketplace.services import JobSpec, job_assign, job_stop_request, jobs_mark_lost
from marketplace.services import logs as log_service
from providers.models import Node, NodeStatus
from tests.providers.factories import ProviderFactory, UserFactory, agent_client, registered_node

pytestmark = pytest.mark.django_db

SPEC = JobSpec(runtime="process", command=["python", "-c", "print('hi')"], env={"A": "1"}, ports=[8000])


@pytest.fixture
def node_and_client():
    node, credential = registered_node(name="mine")
    return node, agent_client(credential)


@pytest.fixture
def other_client():
    _node, credential = registered_node(ProviderFactory(), name="other")
    return agent_client(credential)


def work(client, *, running=(), wait=0):
    response = client.post(f"/api/agent/v1/work?wait={wait}", {"running": list(running)}, format="json")
    assert response.status_code == 200, response.json()
    return response.json()


def event(client, job, seq, state, **extra):
    body = {"seq": seq, "state": state, "at": timezone.now().isoformat(), **extra}
    return client.post(f"/api/agent/v1/jobs/{job.pk}/events", body, format="json")


def logs(client, job, offset, data):
    return client.post(f"/api/agent/v1/jobs/{job.pk}/logs", {"offset": offset, "data": data}, format="json")


def sample(job, seq, *, start=None, seconds=30, **extra):
    start = start or datetime(2026, 11, 1, 12, 0, tzinfo=UTC) + timedelta(seconds=30 * seq)
    return {
        "job_id": job.pk, "seq": seq, "window_start": start.isoformat(),
        "window_end": (start + timedelta(seconds=seconds)).isoformat(), "device_count": 1,
        "utilization_pct": 87.25, "memory_used_mib": 4096, "power_w": 612.3, **extra,
    }  # fmt: skip


# --- work ----------------------------------------------------------------------------------------


def test_work_returns_an_assigned_job_at_once(node_and_client):
    node, client = node_and_client
    job = job_assign(node=node, device_indexes=[1], spec=SPEC)
    started = time.monotonic()
    reply = work(client, wait=25)
    assert time.monotonic() - started < 5
    assert reply == {
        "jobs": [
            {
                "id": job.pk, "runtime": "process", "image": "", "command": ["python", "-c", "print('hi')"],
                "env": {"A": "1"}, "ports": [8000], "device_indexes": [1], "vendor": "nvidia",
                "memory_mib": None, "cpus": None,
            }
        ],
        "stop": [],
    }  # fmt: skip


def test_work_returns_empty_after_wait_when_nothing_is_pending(node_and_client):
    _node, client = node_and_client
    started = time.monotonic()
    assert work(client, wait=1) == {"jobs": [], "stop": []}
    assert 0.9 <= time.monotonic() - started < 5


def test_an_offer_repeats_until_accepted_but_only_a_new_one_ends_the_poll_early(node_and_client):
    node, client = node_and_client
    job = job_assign(node=node, device_indexes=[0], spec=SPEC)
    assert [j["id"] for j in work(client)["jobs"]] == [job.pk]
    # Delivered but not yet acknowledged: offered again, after the wait (no busy loop).
    started = time.monotonic()
    assert [j["id"] for j in work(client, wait=1)["jobs"]] == [job.pk]
    assert time.monotonic() - started >= 0.9
    assert event(client, job, 1, "accepted").json() == {"job_status": "assigned"}
    assert work(client)["jobs"] == []


def test_wait_is_capped_and_validated(node_and_client):
    _node, client = node_and_client
    response = client.post("/api/agent/v1/work?wait=soon", {"running": []}, format="json")
    assert response.status_code == 400


@pytest.mark.django_db(transaction=True)
def test_a_waiting_poll_wakes_when_a_job_is_assigned():
    node, credential = registered_node(name="waker")
    client = agent_client(credential)
    replies: list[dict] = []
    poller = threading.Thread(target=lambda: replies.append(work(client, wait=20)))
    started = time.monotonic()
    poller.start()
    time.sleep(0.5)
    job = job_assign(node=node, device_indexes=[0], spec=SPEC)
    poller.join(25)
    assert replies and [j["id"] for j in replies[0]["jobs"]] == [job.pk]
    assert time.monotonic() - started < 10


def test_stop_requests_and_ended_jobs_the_agent_still_runs(node_and_client):
    node, client = node_and_client
    running = job_assign(node=node, device_indexes=[0], spec=SPEC)
    event(client, running, 1, "running")
    lost = job_assign(node=node, device_indexes=[1], spec=SPEC)
    event(client, lost, 1, "running")
    Job.objects.filter(pk=lost.pk).update(status=JobStatus.LOST, ended_at=timezone.now())

    job_stop_request(job=running, reason=StopReason.PREEMPTION)
    reply = work(client, running=[running.pk, lost.pk])
    assert reply["jobs"] == []
    stops = {s["job_id"]: s for s in reply["stop"]}
    assert set(stops) == {running.pk, lost.pk}
    assert stops[running.pk]["reason"] == "preemption"
    deadline = datetime.fromisoformat(stops[running.pk]["deadline"].replace("Z", "+00:00"))
    assert timedelta(seconds=110) < deadline - timezone.now() <= timedelta(seconds=120)
    assert stops[lost.pk]["reason"] == "lost"

    # The agent reports the stop: a preemption becomes `preempted`, and no stop is offered again.
    assert event(client, running, 2, "stopped", exit_code=-15).json() == {"job_status": "preempted"}
    assert [s["job_id"] for s in work(client, running=[lost.pk])["stop"]] == [lost.pk]
    assert work(client, running=[])["stop"] == []


def test_stopping_an_unacknowledged_job_ends_it_without_the_agent(node_and_client):
    node, client = node_and_client
    job = job_assign(node=node, device_indexes=[0], spec=SPEC)
    job = job_stop_request(job=job, reason=StopReason.BUYER)
    assert job.status == JobStatus.STOPPED and job.ended_at is not None
    assert work(client) == {"jobs": [], "stop": []}


def test_a_device_is_not_assigned_twice(node_and_client):
    from core.errors import CapacityUnavailable

    node, _client = node_and_client
    job_assign(node=node, device_indexes=[0], spec=SPEC)
    with pytest.raises(CapacityUnavailable):
        job_assign(node=node, device_indexes=[0, 1], spec=SPEC)


# --- events --------------------------------------------------------------------------------------


def test_events_move_the_job_forward_and_are_idempotent_by_seq(node_and_client):
    node, client = node_and_client
    job = job_assign(node=node, device_indexes=[0], spec=SPEC)
    assert event(client, job, 1, "accepted").json() == {"job_status": "assigned"}
    assert event(client, job, 2, "starting").json() == {"job_status": "starting"}
    ports = {"8000/tcp": 8000}
    assert event(client, job, 3, "running", ports=ports).json() == {"job_status": "running"}
    job.refresh_from_db()
    started_at = job.started_at
    assert job.accepted_at and started_at and job.published_ports == ports and job.last_event_seq == 3
    # A resent event (seq already seen) changes nothing, and still answers 200.
    assert event(client, job, 2, "starting").json() == {"job_status": "running"}
    assert event(client, job, 3, "exited", exit_code=1).json() == {"job_status": "running"}
    assert event(client, job, 4, "exited", exit_code=0).json() == {"job_status": "exited"}
    job.refresh_from_db()
    assert job.exit_code == 0 and job.ended_at is not None and job.started_at == started_at
    # After the end, nothing moves it.
    assert event(client, job, 5, "running").json() == {"job_status": "exited"}
    assert Job.objects.get(pk=job.pk).last_event_seq == 5


def test_a_future_event_time_is_clamped_to_now(node_and_client):
    node, client = node_and_client
    job = job_assign(node=node, device_indexes=[0], spec=SPEC)
    # Within the clock skew allowance (a day ahead is refused: tests/marketplace/test_hardening_jobs.py).
    future = timezone.now() + timedelta(minutes=2)
    client.post(
        f"/api/agent/v1/jobs/{job.pk}/events",
        {"seq": 1, "state": "running", "at": future.isoformat()},
        format="json",
    )
    job.refresh_from_db()
    assert job.started_at <= timezone.now()


@pytest.mark.parametrize(
    "body",
    [{"seq": 0, "state": "running"}, {"seq": 1, "state": "dancing"}, {"seq": "1", "state": "running"},
     {"state": "running"}, {"seq": 1, "state": "exited", "exit_code": "0"}, {"seq": 1, "state": "running", "ports": 8000}],
)  # fmt: skip
def test_malformed_events_are_refused(node_and_client, body):
    node, client = node_and_client
    job = job_assign(node=node, device_indexes=[0], spec=SPEC)
    response = client.post(f"/api/agent/v1/jobs/{job.pk}/events", body, format="json")
    assert response.status_code == 400
    assert Job.objects.get(pk=job.pk).last_event_seq == 0


# --- logs ----------------------------------------------------------------------------------------


def test_log_offsets(node_and_client):
    node, client = node_and_client
    job = job_assign(node=node, device_indexes=[0], spec=SPEC)
    assert logs(client, job, 0, "héllo\n").json() == {"next_offset": 7}  # bytes of UTF-8
    assert logs(client, job, 7, "world\n").json() == {"next_offset": 13}
    # A repeated chunk stores nothing; an overlapping one only its new tail.
    assert logs(client, job, 7, "world\n").json() == {"next_offset": 13}
    assert logs(client, job, 7, "world\nagain\n").json() == {"next_offset": 19}
    assert JobLogChunk.objects.filter(job=job).count() == 3
    # A gap is refused with the server's offset so the agent resends from there.
    response = logs(client, job, 25, "lost?\n")
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "log_offset_gap" and error["fields"]["next_offset"] == ["19"]
    assert Job.objects.get(pk=job.pk).log_size == 19


def test_an_oversized_log_chunk_is_refused(node_and_client):
    node, client = node_and_client
    job = job_assign(node=node, device_indexes=[0], spec=SPEC)
    assert logs(client, job, 0, "x" * 65536).status_code == 200
    response = logs(client, job, 65536, "é" * 32769)  # 65538 bytes of UTF-8
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "log_chunk_too_large"
    assert Job.objects.get(pk=job.pk).log_size == 65536


def test_log_storage_per_job_is_bounded(node_and_client, monkeypatch):
    monkeypatch.setattr(log_service, "LOG_MAX_BYTES", 100)
    node, client = node_and_client
    job = job_assign(node=node, device_indexes=[0], spec=SPEC)
    offset = 0
    for i in range(10):
        offset = logs(client, job, offset, f"line {i:04d} ....................\n").json()["next_offset"]
    job.refresh_from_db()
    assert job.log_size == offset == 310  # ten lines of 31 bytes
    assert 100 - 31 < job.log_size - job.log_start <= 100
    stored = sum(len(bytes(d)) for d in JobLogChunk.objects.filter(job=job).values_list("data", flat=True))
    assert stored == job.log_size - job.log_start


def test_buyer_reads_logs_by_offset(node_and_client):
    node, client = node_and_client
    buyer = UserFactory()
    job = job_assign(node=node, device_indexes=[0], spec=SPEC, buyer=buyer)
    logs(client, job, 0, "one\n")
    logs(client, job, 4, "two\n")
    logs(client, job, 8, "three\n")
    api = APIClient()
    api.credentials(
        HTTP_AUTHORIZATION=f"Bearer {apikey_create(user=buyer, name='k', scopes=['read']).secret}"
    )
    body = api.get(f"/api/v1/jobs/{job.pk}/logs?offset=0").json()
    assert body["data"] == "one\ntwo\nthree\n" and body["next_offset"] == 14 and body["complete"] is False
    body = api.get(f"/api/v1/jobs/{job.pk}/logs?offset=6&limit=5").json()
    assert (body["offset"], body["data"], body["next_offset"]) == (6, "o\nthr", 11)
    body = api.get(f"/api/v1/jobs/{job.pk}/logs?offset=14").json()
    assert body["data"] == "" and body["next_offset"] == 14
    assert api.get(f"/api/v1/jobs/{job.pk}").json()["status"] == "assigned"

    # Another buyer sees nothing of it.
    stranger = APIClient()
    stranger.credentials(
        HTTP_AUTHORIZATION=f"Bearer {apikey_create(user=UserFactory(), name='k', scopes=['read']).secret}"
    )
    assert stranger.get(f"/api/v1/jobs/{job.pk}").status_code == 404
    assert stranger.get(f"/api/v1/jobs/{job.pk}/logs").status_code == 404
    # A node credential is not a buyer.
    assert client.get(f"/api/v1/jobs/{job.pk}").status_code in (401, 403)


# --- usage ---------------------------------------------------------------------------------------


def test_usage_is_stored_through_billing_and_deduplicated(node_and_client):
    node, client = node_and_client
    job = job_assign(node=node, device_indexes=[0], spec=SPEC)
    # Samples must lie within the job's running interval: it has run since the helper's windows.
    Job.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING, started_at=datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    )
    batch = [sample(job, 1), sample(job, 2)]
    reply = client.post("/api/agent/v1/usage", {"samples": batch}, format="json")
    assert reply.json() == {"accepted": 2, "duplicates": 0}
    reply = client.post("/api/agent/v1/usage", {"samples": [*batch, sample(job, 3)]}, format="json")
    assert reply.json() == {"accepted": 1, "duplicates": 2}
    stored = UsageSample.objects.get(job_id=job.pk, seq=1)
    assert str(stored.utilization_pct) == "87.25" and str(stored.power_w) == "612.3"
    assert UsageSample.objects.filter(job_id=job.pk).count() == 3


def test_usage_for_another_nodes_job_stores_nothing(node_and_client, other_client):
    node, client = node_and_client
    mine = job_assign(node=node, device_indexes=[0], spec=SPEC)
    other_node = Node.objects.get(name="other")
    theirs = job_assign(node=other_node, device_indexes=[0], spec=SPEC)
    reply = client.post(
        "/api/agent/v1/usage", {"samples": [sample(mine, 1), sample(theirs, 1)]}, format="json"
    )
    assert reply.status_code == 404
    assert UsageSample.objects.count() == 0


@pytest.mark.parametrize(
    "change",
    [{"seq": -1}, {"device_count": "1"}, {"utilization_pct": 150}, {"power_w": -1}, {"window_start": "yesterday"},
     {"window_end": "2026-11-01T11:00:00Z"}, {"job_id": None}],
)  # fmt: skip
def test_malformed_usage_stores_nothing(node_and_client, change):
    node, client = node_and_client
    job = job_assign(node=node, device_indexes=[0], spec=SPEC)
    reply = client.post(
        "/api/agent/v1/usage", {"samples": [sample(job, 1), {**sample(job, 2), **change}]}, format="json"
    )
    assert reply.status_code == 400
    assert UsageSample.objects.count() == 0


def test_usage_batch_is_at_most_500(node_and_client):
    node, client = node_and_client
    job = job_assign(node=node, device_indexes=[0], spec=SPEC)
    reply = client.post(
        "/api/agent/v1/usage", {"samples": [sample(job, i) for i in range(501)]}, format="json"
    )
    assert reply.status_code == 400
    assert UsageSample.objects.count() == 0


# --- scoping -------------------------------------------------------------------------------------


def test_another_nodes_credential_changes_nothing(node_and_client, other_client):
    node, client = node_and_client
    job = job_assign(node=node, device_indexes=[0], spec=SPEC)
    event(client, job, 1, "running")
    logs(client, job, 0, "mine\n")
    before = Job.objects.filter(pk=job.pk).values().get()

    assert event(other_client, job, 2, "exited", exit_code=0).status_code == 404
    assert logs(other_client, job, 5, "theirs\n").status_code == 404
    assert (
        other_client.post("/api/agent/v1/usage", {"samples": [sample(job, 1)]}, format="json").status_code
        == 404
    )
    # The other node's polls never see this node's jobs, nor stop them.
    job_stop_request(job=job, reason=StopReason.BUYER)
    before = Job.objects.filter(pk=job.pk).values().get()
    assert work(other_client, running=[job.pk]) == {"jobs": [], "stop": []}

    assert Job.objects.filter(pk=job.pk).values().get() == before
    assert JobLogChunk.objects.filter(job=job).count() == 1
    assert UsageSample.objects.count() == 0
    # And a job id that does not exist is the same 404.
    assert event(client, Job(pk=999_999), 1, "running").status_code == 404


def test_agent_endpoints_need_a_node_credential(node_and_client):
    node, _client = node_and_client
    job = job_assign(node=node, device_indexes=[0], spec=SPEC)
    anonymous = APIClient()
    for path in ["/api/agent/v1/work", f"/api/agent/v1/jobs/{job.pk}/events", f"/api/agent/v1/jobs/{job.pk}/logs",
                 "/api/agent/v1/usage", "/api/agent/v1/heartbeat"]:  # fmt: skip
        assert anonymous.post(path, {}, format="json").status_code == 401, path


# --- lost jobs -----------------------------------------------------------------------------------


def test_live_jobs_on_an_offline_node_become_lost_at_the_last_heartbeat(node_and_client):
    node, client = node_and_client
    running = job_assign(node=node, device_indexes=[0], spec=SPEC)
    event(client, running, 1, "running")
    finished = job_assign(node=node, device_indexes=[1], spec=SPEC)
    event(client, finished, 1, "exited", exit_code=0)
    last_heartbeat = timezone.now()
    Node.objects.filter(pk=node.pk).update(status=NodeStatus.OFFLINE, last_heartbeat_at=last_heartbeat)

    assert jobs_mark_lost() == [running.pk]
    running.refresh_from_db()
    assert running.status == JobStatus.LOST
    assert running.ended_at == max(last_heartbeat, running.started_at)
    assert Job.objects.get(pk=finished.pk).status == JobStatus.EXITED
    assert jobs_mark_lost() == []
    # The agent's late events change nothing; its next poll tells it to stop the job.
    assert event(client, running, 2, "running").json() == {"job_status": "lost"}
    assert [s["job_id"] for s in work(client, running=[running.pk])["stop"]] == [running.pk]


def test_a_job_needs_a_runtime_the_node_offers(node_and_client):
    from core.errors import ValidationFailed

    node, _client = node_and_client
    Node.objects.filter(pk=node.pk).update(software={"cuda": "12.4", "runtimes": "docker"})
    with pytest.raises(ValidationFailed):
        job_assign(node=node, device_indexes=[0], spec=SPEC)
    assert job_assign(node=node, device_indexes=[0], spec=JobSpec(image="python:3.12")).runtime == "docker"
