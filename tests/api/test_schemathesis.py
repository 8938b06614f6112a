"""Schemathesis against the live schema of a live server: every operation, as buyer A, as a
provider member and anonymously. No response may be a 5xx, and every response (status code,
content type, headers, body) must conform to the schema at /api/schema/.

Bounded for ``make test`` (about a minute and a half): a fixed seed, a few examples per operation
and phase, no stateful phase. Half of the generated path ids are the seeded objects' real ids.
Reports (JUnit and the console output) land in var/test/schemathesis/<actor>/.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.api.world import World, build_world
from tests.support.live_server import LiveServer
from tests.support.worker import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    ]
)


def write_config(path: Path, world: World) -> None:
    """Half of the generated path ids are the world's real ones, so calls reach the views' logic."""
    ids = {
        "order_id": world.order.pk, "job_id": world.job.pk, "node_id": world.node.pk,
        "id": world.invoice_id, "api_key_id": world.buyer_a_key_id,
    }  # fmt: skip
    lines = []
    for name, value in ids.items():
        lines += [f"[dictionaries.{name}]", f"values = [{value}]"]
    lines.append("[parameters]")
    lines += [f'"path.{name}" = {{ dictionary = "{name}", probability = 0.5 }}' for name in ids]
    path.write_text("\n".join(lines) + "\n")


def run_schemathesis(
    server: LiveServer, *, label: str, key: str | None, config: Path
) -> subprocess.CompletedProcess[str]:
    report = ROOT / "var" / "test" / "schemathesis" / label
    command = [
        SCHEMATHESIS, "--config-file", str(config), "run", f"{server.url}/api/schema/", "--checks", CHECKS,
        "--phases", "examples,coverage,fuzzing", "--max-examples", "6", "--seed", "1234",
        "--workers", "1", "--request-timeout", "40", "--suppress-health-check", "all",
        "--no-shrink", "--report", "junit", "--report-dir", str(report),
    ]  # fmt: skip
    if key:
        command += ["-H", f"Authorization: Bearer {key}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    report.mkdir(parents=True, exist_ok=True)
    (report / "output.txt").write_text(result.stdout + result.stderr)
    return result


def test_every_operation_conforms_to_the_schema(live_api: LiveServer, tmp_path: Path):
    world = build_world()
    config = tmp_path / "schemathesis.toml"
    write_config(config, world)
    failures = []
    for label, key in (
        ("buyer", world.buyer_a.key),
        ("provider", world.provider_member.key),
        ("anonymous", None),
    ):
        result = run_schemathesis(live_api, label=label, key=key, config=config)
        if result.returncode != 0:
            failures.append(
                f"--- as {label} (exit {result.returncode}) ---\n{result.stdout[-6000:]}{result.stderr[-2000:]}"
            )
    assert not failures, "\n".join(failures)
