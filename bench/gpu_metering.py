"""Real-card check of the agent: NVIDIA discovery and usage metering on whatever GPU is present.

Runs the real `suanli-agent` daemon (real discovery, real NVML telemetry, the process runtime)
against an in-process stand-in for the exchange's agent API, first with an idle job and then with
a job that loads GPU 0 with matrix products (PyTorch), and compares the metered samples. Prints one
JSON line:

  {"gpu", "devices", "nvml_matches_smi", "cuda", "driver", "idle_util_pct", "busy_util_pct",
   "idle_power_w", "busy_power_w", "busy_memory_mib", "samples", "util_ratio"}

`--simulate PROFILE` runs the same flow on simulated hardware (for a machine without a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from providers.agent.daemon import Agent, AgentConfig  # noqa: E402
from providers.agent.discovery import detect  # noqa: E402
from providers.agent.simulate import SimulatedTelemetry  # noqa: E402
from providers.agent.telemetry import real_telemetry  # noqa: E402
from tests.agent.fakes import FakeExchange  # noqa: E402

BUSY = """
import time
try:
    import torch
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    end = time.time() + {seconds}
    while time.time() < end:
        for _ in range(20):
            c = a @ b
        torch.cuda.synchronize()
    print("busy done", float(c[0, 0]), flush=True)
except ImportError:
    time.sleep({seconds})
    print("no torch: slept", flush=True)
"""


def run_job(
    agent: Agent, exchange: FakeExchange, job_id: int, code: str, timeout: float
) -> list[dict[str, Any]]:
    agent.handle_work(
        {
            "jobs": [
                {
                    "id": job_id, "runtime": "process", "image": None,
                    "command": [sys.executable, "-c", code], "env": {}, "ports": [],
                    "device_indexes": [0], "vendor": "nvidia", "memory_mib": None, "cpus": None,
                }
            ],
            "stop": [],
        }
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = [e["state"] for e in exchange.events.get(job_id, [])]
        if any(state in events for state in ("exited", "failed", "stopped")):
            break
        time.sleep(0.5)
    time.sleep(3)  # let the shipper deliver the last samples
    return sorted((s for (j, _), s in exchange.samples.items() if j == job_id), key=lambda s: s["seq"])


def mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.fmean(present), 1) if present else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--simulate", default=None)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--save-inventory", default=None, help="write the detect output here")
    args = parser.parse_args()

    inventory = detect(simulate=args.simulate, name="gpu-check")
    devices = [d for d in inventory.to_json()["devices"] if d["vendor"] == "nvidia"]
    if not devices:
        print(json.dumps({"error": "no NVIDIA device discovered"}))
        sys.exit(2)
    smi_matches = None
    if not args.simulate:
        os.environ["SUANLI_AGENT_NO_NVML"] = "1"
        smi_inventory = detect(name="gpu-check").to_json()
        del os.environ["SUANLI_AGENT_NO_NVML"]
        smi_matches = smi_inventory["devices"] == inventory.to_json()["devices"]
    if args.save_inventory:
        Path(args.save_inventory).write_text(json.dumps(inventory.to_json(), indent=2))

    exchange = FakeExchange()
    telemetry = (
        SimulatedTelemetry(args.simulate, "gpu-check") if args.simulate else real_telemetry({"nvidia"})
    )
    with tempfile.TemporaryDirectory() as state:
        agent = Agent(
            AgentConfig(
                state_dir=Path(state), server=exchange.url, credential=exchange.credential,
                name="gpu-check", simulate=args.simulate, heartbeat_interval=2, sample_interval=2,
                work_wait=1, tick=0.2,
            ),
            inventory=inventory,
            telemetry=telemetry,
        )  # fmt: skip
        agent.start()
        try:
            idle = run_job(agent, exchange, 1, "import time; time.sleep(12)", timeout=60)
            busy = run_job(agent, exchange, 2, BUSY.format(seconds=args.seconds), timeout=args.seconds + 120)
        finally:
            agent.stop()
            exchange.close()

    software = inventory.to_json()["software"]
    busy_util = mean([s["utilization_pct"] for s in busy[1:]])  # skip the warm-up window
    idle_util = mean([s["utilization_pct"] for s in idle])
    print(
        json.dumps(
            {
                "gpu": devices[0]["model"],
                "devices": len(devices),
                "nvml_matches_smi": smi_matches,
                "cuda": software.get("cuda"),
                "driver": software.get("driver"),
                "idle_util_pct": idle_util,
                "busy_util_pct": busy_util,
                "idle_power_w": mean([s["power_w"] for s in idle]),
                "busy_power_w": mean([s["power_w"] for s in busy[1:]]),
                "busy_memory_mib": max((s["memory_used_mib"] or 0 for s in busy), default=None),
                "samples": len(idle) + len(busy),
                "util_ratio": round(busy_util / max(idle_util or 0, 1.0), 1)
                if busy_util is not None
                else None,
            }
        )
    )


if __name__ == "__main__":
    main()
