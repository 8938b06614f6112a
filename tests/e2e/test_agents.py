"""End to end: a live exchange (gunicorn) and two real `suanli-agent` processes on simulated
hardware with the process runtime.

Both join with tokens and heartbeat; one runs a job printing a line a second for 20 s and is
killed with SIGKILL mid-job and restarted: the job survives, its log arrives exactly once and its
usage samples have no gap and no double. The other agent is killed for good: its node goes offline
and its job becomes `lost`.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from billing.models import UsageSample
from marketplace.models import Job, JobStatus
from marketplace.selectors import job_log_read
from marketplace.services import JobSpec, job_assign, jobs_mark_lost
from providers.models import Node, NodeStatus
from providers.services import heartbeats_flush, join_token_create, liveness_sweep
from tests.providers.factories import ProviderFactory, ensure_catalog
from tests.support.live import Agent, live_exchange, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

PRINTER = "import time\nfor i in range(20):\n    print(f'line {i:02d}', flush=True)\n    time.sleep(1)\n"
SLEEPER = "import time\nwhile True:\n    print('still here', flush=True)\n    time.sleep(1)\n"


@pytest.fixture
def exchange(tmp_path: Path) -> Iterator[str]:
    with live_exchange(tmp_path) as server:
        yield server


@pytest.fixture
def agents(exchange: str, tmp_path: Path) -> Iterator[list[Agent]]:
    pair = [Agent(exchange, tmp_path / f"agent-{n}", f"e2e-{n}") for n in ("a", "b")]
    try:
        yield pair
    finally:
        for agent in pair:
            agent.stop()
            agent.kill_jobs()


def test_two_agents_join_run_survive_a_crash_and_lose_a_node(agents: list[Agent]) -> None:
    ensure_catalog()
    provider = ProviderFactory()
    a, b = agents

    # Join with one-time tokens, then run: the first flushed heartbeat brings each node online.
    node_ids = [
        agent.join(join_token_create(provider=provider, created_by=None, region="e2e").token)
        for agent in agents
    ]
    for agent in agents:
        agent.start()

    def both_online() -> bool:
        heartbeats_flush()
        return Node.objects.filter(pk__in=node_ids, status=NodeStatus.ONLINE).count() == 2

    wait_for("both nodes online", both_online, timeout=60)
    node_a, node_b = (Node.objects.get(pk=pk) for pk in node_ids)
    assert node_a.devices.count() == 8 and node_a.software.get("runtimes") == "docker,process"

    # A job on each node, picked up through the long-poll.
    printer = job_assign(
        node=node_a,
        device_indexes=[0, 1],
        spec=JobSpec(runtime="process", command=[sys.executable, "-c", PRINTER]),
    )
    sleeper = job_assign(
        node=node_b,
        device_indexes=[0],
        spec=JobSpec(runtime="process", command=[sys.executable, "-c", SLEEPER]),
    )
    wait_for(
        "both jobs running",
        lambda: Job.objects.filter(pk__in=[printer.pk, sleeper.pk], status=JobStatus.RUNNING).count() == 2,
        timeout=60,
    )

    # Kill agent A mid-job; the job keeps running; restart the agent, which re-attaches.
    time.sleep(6)
    a.kill9()
    time.sleep(3)
    a.start()

    printer = wait_for(
        "the printer job to exit",
        lambda: Job.objects.filter(pk=printer.pk, status=JobStatus.EXITED).first(),
        timeout=90,
    )
    assert printer.exit_code == 0 and printer.started_at and printer.ended_at
    assert f"job.reattached job_id={printer.pk}" in a.log_path.read_text()

    # Every line arrives exactly once.
    expected = "".join(f"line {i:02d}\n" for i in range(20))

    def full_log() -> str | None:
        job = Job.objects.get(pk=printer.pk)
        text = job_log_read(job=job, offset=0).data
        return text if len(text) >= len(expected) else None

    assert wait_for("the whole log", full_log, timeout=30) == expected

    # Usage: contiguous windows with consecutive seqs (none lost, none doubled) covering the run.
    def samples_to_the_end() -> list[UsageSample] | None:
        rows = list(UsageSample.objects.filter(job_id=printer.pk).order_by("seq"))
        if rows and rows[-1].window_end >= printer.ended_at - timedelta(seconds=1):
            return rows
        return None

    rows = wait_for("usage samples up to the job's end", samples_to_the_end, timeout=30)
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    for before, after in itertools.pairwise(rows):
        assert after.window_start == before.window_end
    assert all(r.device_count == 2 for r in rows)
    metered = (rows[-1].window_end - rows[0].window_start).total_seconds()
    assert abs(metered - (printer.ended_at - printer.started_at).total_seconds()) < 2
    assert 18 <= metered <= 30

    # Agent B stops for good: its node goes offline 150 s after its last heartbeat and its job is
    # lost at that heartbeat; node A, still beating, is never offline.
    b.kill9()
    time.sleep(2)
    heartbeats_flush()
    node_b.refresh_from_db()
    last_b = node_b.last_heartbeat_at
    wait_for(
        "node A to beat after B's last heartbeat",
        lambda: (
            heartbeats_flush() is not None
            and Node.objects.get(pk=node_a.pk).last_heartbeat_at > last_b + timedelta(seconds=1)
        ),
        timeout=20,
    )
    result = liveness_sweep(now=last_b + timedelta(seconds=151))
    assert result.offline == [node_b.pk]
    assert jobs_mark_lost() == [sleeper.pk]
    sleeper.refresh_from_db()
    assert sleeper.status == JobStatus.LOST and sleeper.ended_at == last_b
    assert Node.objects.get(pk=node_a.pk).status != NodeStatus.OFFLINE
