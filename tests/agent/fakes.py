"""Test doubles for the agent's true boundaries: vendor CLIs on PATH and the exchange's HTTP API."""

from __future__ import annotations

import json
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).parent / "golden"


class FakeBin:
    """A directory of fake vendor executables that print recorded outputs for exact argv."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def tool(self, name: str, responses: dict[str, str | tuple[int, str] | float]) -> Path:
        """`responses` maps the joined argv to a golden file name, `(exit, stdout)` or a sleep."""
        lines = ["#!/bin/sh", 'case "$*" in']
        for args, resp in responses.items():
            if isinstance(resp, str):
                action = f"exec /bin/cat {shlex.quote(str(GOLDEN / resp))}"
            elif isinstance(resp, tuple):
                code, text = resp
                action = f"printf '%s\\n' {shlex.quote(text)}; exit {code}"
            else:
                action = f"exec /bin/sleep {resp}"
            lines.append(f"  {shlex.quote(args)}) {action};;")
        lines.append('  *) echo "fake: unsupported arguments: $*" >&2; exit 64;;')
        lines.append("esac")
        path = self.root / name
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o755)
        return path


NVIDIA_QUERY = (
    "--query-gpu=index,uuid,name,pci.bus_id,memory.total,driver_version --format=csv,noheader,nounits"
)
ROCM_SMI_ARGS = "--showproductname --showmeminfo vram --showbus --showuniqueid --json"
HY_SMI_ARGS = "--showproductname --showmeminfo vram --showbus --json"
HL_SMI_ARGS = "-Q index,uuid,name,bus_id,memory.total,driver_version --format csv,noheader"


@dataclass
class Recorded:
    path: str
    body: Any
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)


@dataclass
class FakeExchange:
    """A tiny in-thread HTTP server speaking the agent protocol, with scriptable failures."""

    credential: str = "nc_test"
    requests: list[Recorded] = field(default_factory=list)
    work_replies: list[dict[str, Any]] = field(default_factory=list)
    fail_next: dict[str, list[int]] = field(default_factory=dict)
    log_offsets: dict[int, int] = field(default_factory=dict)
    log_data: dict[int, str] = field(default_factory=dict)
    events: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    samples: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    register_reply: tuple[int, dict[str, Any]] | None = None
    on_request: Callable[[str], None] | None = None
    # Like the real exchange: a chunk starting past the end is a 409 log_offset_gap.
    strict_log_offsets: bool = False
    # Sent as Retry-After with every scripted 429 or 503 (like the exchange while Redis is down).
    retry_after: str | None = None
    # (job_id, seq) of usage samples answered, like the exchange, with a 400 naming each one.
    refused_samples: set[tuple[int, int]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        exchange = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                status, reply = exchange.handle(self.path, body, dict(self.headers))
                data = json.dumps(reply).encode()
                self.send_response(status)
                if status in (429, 503) and exchange.retry_after is not None:
                    self.send_header("Retry-After", exchange.retry_after)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def paths(self, prefix: str) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.path.startswith(prefix)]

    def handle(self, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
        route = path.removeprefix("/api/agent/v1")
        with self.lock:
            self.requests.append(Recorded(route, body, headers))
            key = route.split("?")[0]
            for prefix, codes in self.fail_next.items():
                if key.startswith(prefix) and codes:
                    code = codes.pop(0)
                    return code, {"error": {"code": "fake", "message": f"fake {code}", "fields": {}}}
            if key == "/register":
                if self.register_reply:
                    return self.register_reply
                return 201, {"node_id": 12, "credential": self.credential, "heartbeat_interval": 10}
            if headers.get("Authorization") != f"Bearer {self.credential}":
                return 401, {"error": {"code": "unauthorized", "message": "bad credential"}}
            if key == "/heartbeat":
                return 200, {"node_status": "online", "server_time": "2026-01-01T00:00:00Z"}
            if key == "/work":
                reply = self.work_replies.pop(0) if self.work_replies else {"jobs": [], "stop": []}
                return 200, reply
            if key == "/usage":
                bad = {
                    f"samples.{i}.seq": ["Outside the job's running interval."]
                    for i, s in enumerate(body["samples"])
                    if (s["job_id"], s["seq"]) in self.refused_samples
                }
                if bad:
                    return 400, {"error": {"code": "invalid", "message": "refused", "fields": bad}}
                accepted = duplicates = 0
                for s in body["samples"]:
                    k = (s["job_id"], s["seq"])
                    if k in self.samples:
                        duplicates += 1
                    else:
                        self.samples[k] = s
                        accepted += 1
                return 200, {"accepted": accepted, "duplicates": duplicates}
            parts = key.strip("/").split("/")
            if len(parts) == 3 and parts[0] == "jobs":
                job_id = int(parts[1])
                if parts[2] == "events":
                    seen = self.events.setdefault(job_id, [])
                    if all(e["seq"] != body["seq"] for e in seen):
                        seen.append(body)
                    return 200, {}
                if parts[2] == "logs":
                    have = self.log_offsets.get(job_id, 0)
                    if self.strict_log_offsets and body["offset"] > have:
                        error = {
                            "code": "log_offset_gap",
                            "message": f"Log offset {body['offset']} is past the end; resend from {have}.",
                            "fields": {"offset": [f"Resend from {have}."], "next_offset": [str(have)]},
                        }
                        return 409, {"error": error}
                    if body["offset"] == have:
                        self.log_data[job_id] = self.log_data.get(job_id, "") + body["data"]
                        have += len(body["data"].encode())
                        self.log_offsets[job_id] = have
                    return 200, {"next_offset": have}
            return 404, {"error": {"code": "not_found", "message": "no such endpoint"}}
