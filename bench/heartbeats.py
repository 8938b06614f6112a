"""Heartbeat ingestion through the real HTTP stack, against a trivial JSON endpoint as baseline.

Registers ``--nodes`` nodes through the real services (a throwaway provider, removed at the end),
starts gunicorn on a free port against the configured PostgreSQL and Redis (or uses ``--server``),
then for ``--duration`` seconds each (in alternating ``--rounds``) drives, from ``--procs`` x ``--threads`` keep-alive clients:

* heartbeats: ``POST /api/agent/v1/heartbeat`` round-robin over the nodes, a realistic 8-device
  body, node-credential authentication, validation and the Redis pipeline;
* baseline: ``GET /api/agent/v1/ping`` (no authentication, no database, no Redis), the floor of
  Django + DRF + gunicorn on the same server in the same run.

Prints one JSON line: {"nodes", "heartbeats_per_s", "baseline_per_s", "ratio", ...}. ``ratio`` is
heartbeats_per_s / baseline_per_s. Usage::

    DATABASE_URL=... REDIS_URL=... .venv/bin/python bench/heartbeats.py --nodes 200 --duration 15
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
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
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def heartbeat_body(index: int) -> bytes:
    devices = [
        {
            "index": i,
            "uuid": f"GPU-bench-{index}-{i}",
            "health": "ok",
            "utilization_pct": 87.5,
            "memory_used_mib": 65_000,
            "power_w": 612.3,
            "temperature_c": 71.0,
        }
        for i in range(8)
    ]
    return json.dumps({"agent_version": "bench", "running_jobs": [], "devices": devices}).encode()


def _drive(args: tuple[str, str, list[str], float, int]) -> tuple[int, int]:
    """One client process: ``threads`` keep-alive connections hammering one endpoint until the deadline."""
    server, kind, credentials, deadline, threads = args
    url = urllib.parse.urlsplit(server)
    counts = [0] * threads
    errors = [0] * threads

    def worker(slot: int) -> None:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        n = slot
        while time.time() < deadline:
            try:
                if kind == "heartbeat":
                    credential = credentials[n % len(credentials)]
                    n += threads
                    conn.request(
                        "POST",
                        "/api/agent/v1/heartbeat",
                        body=heartbeat_body(n % 1000),
                        headers={"Content-Type": "application/json", "Authorization": f"Bearer {credential}"},
                    )
                else:
                    conn.request("GET", "/api/agent/v1/ping")
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    counts[slot] += 1
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
    return sum(counts), sum(errors)


def measure(
    server: str, kind: str, credentials: list[str], *, duration: float, procs: int, threads: int
) -> dict[str, Any]:
    # Every client process gets its own share of the credentials, and all start together.
    start = time.time() + 1.0
    deadline = start + duration
    shares = [credentials[i::procs] or credentials for i in range(procs)]
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        results = pool.map(_drive, [(server, kind, share, deadline, threads) for share in shares])
    done = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    return {"per_s": done / duration, "errors": errors}


def database_url() -> str:
    from django.conf import settings

    from config.env import database_url_for

    return database_url_for(settings.DATABASES["default"])


def start_server(workers: int, threads: int) -> tuple[str, subprocess.Popen[bytes]]:
    from django.conf import settings

    from bench.live import start_gunicorn

    return start_gunicorn(
        env_overrides={"DATABASE_URL": database_url(), "REDIS_URL": str(settings.REDIS_URL)},
        workers=workers, threads=threads,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per endpoint, over all rounds")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of baseline and heartbeats")
    parser.add_argument(
        "--procs", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="client processes"
    )
    parser.add_argument("--threads", type=int, default=8, help="client threads per process")
    parser.add_argument("--server", help="use this running server instead of starting gunicorn")
    parser.add_argument(
        "--workers", type=int, default=max(2, (os.cpu_count() or 2) // 2), help="gunicorn workers"
    )
    parser.add_argument("--server-threads", type=int, default=4, help="gunicorn threads per worker")
    args = parser.parse_args()

    import django

    django.setup()
    from core.redis import redis_client
    from providers.models import Device, JoinToken, Node, Provider
    from providers.services import (
        HEARTBEAT_DIRTY_KEY,
        HEARTBEAT_KEY,
        inventory_from_json,
        join_token_create,
        node_register,
    )

    stamp = f"{int(time.time())}-{os.getpid()}"
    provider = Provider.objects.create(name=f"bench {stamp}", slug=f"bench-{stamp}")
    credentials: list[str] = []
    node_ids: list[int] = []
    process = None
    try:
        for i in range(args.nodes):
            issued = join_token_create(provider=provider, created_by=None, region="bench")
            inventory = {
                "host": {"cpu_model": "bench", "cpu_cores": 64, "memory_mib": 1 << 20, "disk_gib": 1000},
                "devices": [
                    {"vendor": "nvidia", "model": "NVIDIA H100 80GB HBM3", "index": d, "uuid": f"GPU-{stamp}-{i}-{d}",
                     "bus_id": "", "memory_mib": 81559}
                    for d in range(8)
                ],
                "software": {"cuda": "12.4"},
            }  # fmt: skip
            registered = node_register(
                token=issued.token,
                name=f"bench-{i}",
                agent_version="bench",
                inventory=inventory_from_json(inventory),
            )
            credentials.append(registered.credential)
            node_ids.append(registered.node.pk)
        from django.db import connections

        connections.close_all()  # no connection may cross the fork into the client processes
        if args.server:
            server = args.server.rstrip("/")
        else:
            server, process = start_server(args.workers, args.server_threads)
        # Alternate short rounds of both, so that load from anything else on the machine falls on
        # both alike; the result is the total of the rounds.
        measure_args = {"duration": args.duration / args.rounds, "procs": args.procs, "threads": args.threads}
        measure(server, "ping", credentials, **{**measure_args, "duration": 2.0})  # warm up
        measure(server, "heartbeat", credentials, **{**measure_args, "duration": 2.0})
        rounds: dict[str, list[dict[str, Any]]] = {"ping": [], "heartbeat": []}
        for _ in range(args.rounds):
            for kind in ("ping", "heartbeat"):
                rounds[kind].append(measure(server, kind, credentials, **measure_args))
        baseline = {
            "per_s": sum(r["per_s"] for r in rounds["ping"]) / args.rounds,
            "errors": sum(r["errors"] for r in rounds["ping"]),
        }
        heartbeats = {
            "per_s": sum(r["per_s"] for r in rounds["heartbeat"]) / args.rounds,
            "errors": sum(r["errors"] for r in rounds["heartbeat"]),
        }
    finally:
        if process is not None:
            process.terminate()
            process.wait(20)
        client = redis_client()
        if node_ids:
            client.delete(*[HEARTBEAT_KEY.format(node_id=node_id) for node_id in node_ids])
            client.srem(HEARTBEAT_DIRTY_KEY, *node_ids)
        Device.objects.filter(node__provider=provider).delete()
        JoinToken.objects.filter(provider=provider).delete()
        Node.objects.filter(provider=provider).delete()
        provider.delete()

    print(
        json.dumps(
            {
                "nodes": args.nodes,
                "heartbeats_per_s": round(heartbeats["per_s"], 1),
                "baseline_per_s": round(baseline["per_s"], 1),
                "ratio": round(heartbeats["per_s"] / baseline["per_s"], 3) if baseline["per_s"] else None,
                "errors": heartbeats["errors"] + baseline["errors"],
                "duration_s": args.duration,
                "clients": args.procs * args.threads,
                "server": "external"
                if args.server
                else f"gunicorn -w {args.workers} --threads {args.server_threads}",
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
