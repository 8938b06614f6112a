"""`GET /api/v1/offers` with filters over 5,000 offers under concurrent load, next to a trivial
JSON endpoint on the same server in the same run.

Creates its own database (``suanli_bench_api``) on the PostgreSQL server of ``DATABASE_URL``,
migrates it, seeds ``--offers`` listed offers on online nodes (a mix of accelerators, regions
and prices, 8 devices each, bulk-inserted), starts gunicorn against it, and drives each endpoint
for ``--duration`` seconds (alternating ``--rounds``) from ``--procs`` x ``--threads`` keep-alive
clients: the load generator is this script (stdlib ``http.client`` in processes and threads; no
external tool to install). The database is dropped at the end (``--keep`` keeps it).

* offers: ``GET /api/v1/offers?model=H100&region=cn-east&devices=8&max_price=3.00&sort=price&limit=50``
  (anonymous, so the per-IP throttle runs on every request, with a rate set high enough never
  to refuse), rotating over a few filter combinations;
* baseline: ``GET /api/agent/v1/ping`` (no authentication, no database).

The seed ends with ``offer_free_devices_refresh`` (as the beat would run it), so the offers are
listed from their stored free-device counts. Prints one JSON line: {"offers", "rps", "p50_ms",
"p99_ms", "baseline_rps", "ratio", ...}.
Usage::

    DATABASE_URL=postgres://... REDIS_URL=redis://... .venv/bin/python bench/api.py --duration 20

(``--db-name`` names the bench database, so that two checkouts can run it on one server at once.)
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import random
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH_DB = "suanli_bench_api"

QUERIES = [
    "/api/v1/offers?model=H100&region=cn-east&devices=8&max_price=3.00&sort=price&limit=50",
    "/api/v1/offers?kind=gpu&min_memory_gib=80&region=cn-north&sort=price_per_pflop&limit=50",
    "/api/v1/offers?vendor=huawei&devices=4&sort=reliability&limit=50",
    "/api/v1/offers?term=spot&max_price=1.50&sort=carbon&limit=50",
]


def bench_database_url(base: str, name: str = BENCH_DB) -> str:
    parts = urllib.parse.urlsplit(base)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


def admin_execute(base: str, *statements: str) -> None:
    import psycopg2

    parts = urllib.parse.urlsplit(base)
    conn = psycopg2.connect(urllib.parse.urlunsplit(parts._replace(path="/postgres")))
    conn.autocommit = True
    with conn.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)
    conn.close()


def seed(count: int) -> None:
    """Bulk-insert ``count`` online nodes with 8 healthy devices and a listed offer each."""
    import django

    django.setup()
    from django.utils import timezone

    from marketplace.models import Offer
    from providers.catalog import catalog_sync
    from providers.models import AcceleratorModel, Device, Node, NodeStatus, Provider

    catalog_sync(AcceleratorModel)
    models = list(AcceleratorModel.objects.exclude(kind="cpu").order_by("id"))
    h100 = AcceleratorModel.objects.get(model="H100 SXM 80GB")
    regions = ["cn-east", "cn-north", "cn-south", "cn-west", "us-west", "eu-central"]
    rng = random.Random(42)
    now = timezone.now()
    providers = Provider.objects.bulk_create(
        [Provider(name=f"Bench provider {i}", slug=f"bench-{i}") for i in range(50)]
    )
    nodes, plan = [], []
    for i in range(count):
        accelerator = h100 if i % 5 == 0 else rng.choice(models)
        region = regions[i % len(regions)]
        nodes.append(
            Node(
                provider=providers[i % len(providers)], name=f"node-{i:05d}", region=region,
                cluster=f"{region}-{i % 7}", status=NodeStatus.ONLINE, last_heartbeat_at=now,
                software={"cuda": "12.4", "runtimes": "docker,process"}, credential_prefix=f"b{i:010d}",
            )
        )  # fmt: skip
        plan.append(accelerator)
    nodes = Node.objects.bulk_create(nodes, batch_size=1000)
    devices = [
        Device(
            node=node,
            accelerator=accelerator,
            index=d,
            uuid=f"GPU-{node.pk}-{d}",
            memory_mib=accelerator.memory_gib * 1024,
        )
        for node, accelerator in zip(nodes, plan, strict=True)
        for d in range(8)
    ]
    Device.objects.bulk_create(devices, batch_size=5000)
    offers = []
    for node, accelerator in zip(nodes, plan, strict=True):
        price = rng.randint(50, 600) * 10_000  # 0.50 .. 6.00 per device-hour
        offers.append(
            Offer(
                node=node, accelerator=accelerator, device_count=8, region=node.region, listed=True,
                reliability=f"{rng.uniform(0.5, 1.0):.3f}", on_demand_price_micros=price,
                reserved_price_micros=price * 8 // 10, spot_floor_micros=price // 2,
            )
        )  # fmt: skip
    Offer.objects.bulk_create(offers, batch_size=2000)
    # What the beat's marketplace-offer-free-devices task does within seconds of any change: store
    # each node's free-device count, so the list reads it instead of counting devices per offer.
    from marketplace.services.offers import offer_free_devices_refresh

    offer_free_devices_refresh()
    # Planner statistics, as autovacuum would gather within a minute of the bulk load: without
    # them the first seconds of the run are planned for empty tables.
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def _drive(args: tuple[str, list[str], float, float, int]) -> tuple[int, int, list[float]]:
    """One client process: keep-alive threads hammering the paths until the deadline."""
    server, paths, start, deadline, threads = args
    url = urllib.parse.urlsplit(server)
    counts, errors = [0] * threads, [0] * threads
    latencies: list[list[float]] = [[] for _ in range(threads)]

    def worker(slot: int) -> None:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        n = slot
        while time.time() < start:
            time.sleep(0.001)
        while time.time() < deadline:
            path = paths[n % len(paths)]
            n += 1
            began = time.perf_counter()
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    counts[slot] += 1
                    latencies[slot].append(time.perf_counter() - began)
                else:
                    errors[slot] += 1
            except (OSError, http.client.HTTPException):
                errors[slot] += 1
                conn.close()
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        conn.close()

    pool = [threading.Thread(target=worker, args=(slot,)) for slot in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return sum(counts), sum(errors), [x for slot in latencies for x in slot]


def measure(server: str, paths: list[str], *, duration: float, procs: int, threads: int) -> dict[str, Any]:
    start = time.time() + 1.0
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        results = pool.map(_drive, [(server, paths, start, start + duration, threads)] * procs)
    return {
        "done": sum(r[0] for r in results),
        "errors": sum(r[1] for r in results),
        "latencies": [x for r in results for x in r[2]],
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


def start_server(
    database_url: str, redis_url: str, workers: int, threads: int
) -> tuple[str, subprocess.Popen[bytes]]:
    from bench.live import start_gunicorn

    # Throttling off: the benchmark measures the search, not the rate limiter.
    return start_gunicorn(
        env_overrides={
            "DATABASE_URL": database_url, "REDIS_URL": redis_url,
            "SUANLI_API_ANON_RATE": "100000000/min", "SUANLI_API_RATE": "100000000/min",
        },
        workers=workers, threads=threads,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--offers", type=int, default=5000)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per endpoint, over all rounds")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--procs", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--threads", type=int, default=8, help="client threads per process")
    parser.add_argument("--workers", type=int, default=max(2, (os.cpu_count() or 2) // 2))
    parser.add_argument("--server-threads", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the bench database")
    # Two runs at once on one PostgreSQL server (two checkouts) must not drop each other's database.
    parser.add_argument("--db-name", default=BENCH_DB, help="the bench database's name")
    args = parser.parse_args()

    base = os.environ.get("DATABASE_URL")
    redis_url = os.environ.get("REDIS_URL")
    if not base or not redis_url:
        sys.exit("bench/api.py needs DATABASE_URL (its server hosts the bench database) and REDIS_URL")
    bench_db = args.db_name
    database_url = bench_database_url(base, bench_db)
    admin_execute(base, f"DROP DATABASE IF EXISTS {bench_db}", f"CREATE DATABASE {bench_db}")
    os.environ.update(DATABASE_URL=database_url, DJANGO_SETTINGS_MODULE="config.settings")
    process = None
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True)
        seed(args.offers)
        from django.db import connections

        connections.close_all()
        server, process = start_server(database_url, redis_url, args.workers, args.server_threads)
        # Warm both endpoints (imports, connections, query plans) before measuring.
        for path in [*QUERIES, "/api/agent/v1/ping"]:
            with urllib.request.urlopen(server + path, timeout=30) as reply:
                body = json.loads(reply.read())
        first = json.loads(urllib.request.urlopen(server + QUERIES[0], timeout=30).read())
        assert first["results"], "the filtered query found no offers"
        del body

        offers: dict[str, Any] = {"done": 0, "errors": 0, "latencies": []}
        baseline: dict[str, Any] = {"done": 0, "errors": 0, "latencies": []}
        share = args.duration / args.rounds
        for _ in range(args.rounds):
            for total, paths in ((baseline, ["/api/agent/v1/ping"]), (offers, QUERIES)):
                result = measure(server, paths, duration=share, procs=args.procs, threads=args.threads)
                for key in total:
                    total[key] += result[key]
        rps = offers["done"] / args.duration
        baseline_rps = baseline["done"] / args.duration
        print(
            json.dumps(
                {
                    "offers": args.offers,
                    "rps": round(rps, 1),
                    "p50_ms": round(percentile(offers["latencies"], 0.50), 1),
                    "p99_ms": round(percentile(offers["latencies"], 0.99), 1),
                    "baseline_rps": round(baseline_rps, 1),
                    "ratio": round(rps / baseline_rps, 3) if baseline_rps else None,
                    "baseline_p50_ms": round(percentile(baseline["latencies"], 0.50), 1),
                    "baseline_p99_ms": round(percentile(baseline["latencies"], 0.99), 1),
                    "page_size": 50,
                    "errors": offers["errors"] + baseline["errors"],
                    "duration_s": args.duration,
                    "clients": args.procs * args.threads,
                    "server": f"gunicorn -w {args.workers} --threads {args.server_threads}",
                    "cpus": os.cpu_count(),
                }
            )
        )
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        if not args.keep:
            from django.db import connections

            connections.close_all()
            admin_execute(base, f"DROP DATABASE IF EXISTS {bench_db}")


if __name__ == "__main__":
    main()
