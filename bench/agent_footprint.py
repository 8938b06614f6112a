"""Agent footprint: memory and CPU of a real `suanli-agent run --simulate h100x8` with 4 running jobs.

A live exchange (gunicorn on a scratch database ``suanli_bench_agent`` created and dropped on the
``DATABASE_URL`` server, Redis from ``REDIS_URL``), one agent joined with a token and running at its
default intervals (heartbeat 10 s, usage samples 30 s, 25 s work long-poll), and four process-runtime
jobs (sleep loops printing a line a second, so logs ship too) on two devices each. Once all four
run, the agent process (the daemon itself, not its jobs) is sampled with psutil every second for
``--seconds`` (default 60):

* ``rss_mb``: the largest resident set seen, MiB;
* ``cpu_pct``: CPU time used over the window / the window, in % of one core.

Targets: < 50 MB RSS and < 1 % of a core. Prints one JSON line: {"jobs", "rss_mb", "cpu_pct", "seconds"}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("SUANLI_ENV", "test")
os.environ["DATABASE_TEST_NAME"] = "suanli_bench_agent"

JOB = "import time\nwhile True:\n    print('working', flush=True)\n    time.sleep(1)\n"


def measure(seconds: float, jobs: int, work_dir: Path) -> dict[str, object]:
    import psutil

    from marketplace.models import Job, JobStatus
    from marketplace.services import JobSpec, job_assign
    from providers.models import Node, NodeStatus
    from providers.services import heartbeats_flush, join_token_create
    from tests.providers.factories import ProviderFactory, ensure_catalog
    from tests.support.live import Agent, live_exchange, wait_for

    ensure_catalog()
    with live_exchange(work_dir) as server:
        agent = Agent(server, work_dir / "agent", "footprint")
        try:
            node_id = agent.join(join_token_create(provider=ProviderFactory(), created_by=None).token)
            # Default intervals: what a production node runs with.
            agent.start(heartbeat=10, sample=30, work_wait=25)

            def online() -> bool:
                heartbeats_flush()
                return Node.objects.filter(pk=node_id, status=NodeStatus.ONLINE).exists()

            wait_for("the node online", online, timeout=60)
            node = Node.objects.get(pk=node_id)
            spec = JobSpec(runtime="process", command=[sys.executable, "-c", JOB])
            ids = [
                job_assign(node=node, device_indexes=[2 * i, 2 * i + 1], spec=spec).pk for i in range(jobs)
            ]
            wait_for(
                "every job running",
                lambda: Job.objects.filter(pk__in=ids, status=JobStatus.RUNNING).count() == jobs,
                timeout=60,
            )
            assert agent.process is not None
            process = psutil.Process(agent.process.pid)
            time.sleep(2)  # past the start-up burst
            cpu_start = sum(process.cpu_times()[:2])
            started = time.monotonic()
            rss = process.memory_info().rss
            while time.monotonic() - started < seconds:
                time.sleep(1)
                rss = max(rss, process.memory_info().rss)
            wall = time.monotonic() - started
            cpu = sum(process.cpu_times()[:2]) - cpu_start
            assert Job.objects.filter(pk__in=ids, status=JobStatus.RUNNING).count() == jobs
        finally:
            agent.stop()
            agent.kill_jobs()
    return {
        "jobs": jobs,
        "rss_mb": round(rss / 2**20, 1),
        "cpu_pct": round(100 * cpu / wall, 2),
        "seconds": round(wall),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--jobs", type=int, default=4)
    args = parser.parse_args()

    import django

    django.setup()
    from django.db import connection

    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    try:
        with tempfile.TemporaryDirectory(prefix="suanli-footprint-") as work_dir:
            line = measure(args.seconds, args.jobs, Path(work_dir))
    finally:
        connection.close()
        connection.creation.destroy_test_db(old_name, verbosity=0)
    print(json.dumps(line))


if __name__ == "__main__":
    main()
