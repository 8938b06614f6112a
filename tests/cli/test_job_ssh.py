"""`suanli job ssh` / `job show` / `order create --ssh-key`, with the real `suanli` command against a
live gunicorn on the test database. `ssh` itself is a fake on PATH that prints its arguments (the
one boundary: no sshd runs here; tests/marketplace/test_job_endpoints.py reaches a real job)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from core.services import apikey_create
from marketplace.models import Job, Order
from marketplace.services import JobSpec, job_assign
from marketplace.services.job_spec import SSH_KEY_ENV
from providers.models import Node
from tests.marketplace.market_helpers import funded_buyer, online_node
from tests.marketplace.test_job_endpoints import ed25519_key
from tests.providers.factories import UserFactory, registered_node
from tests.support.live_server import LiveServer
from tests.support.worker import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SUANLI = str(Path(sys.executable).parent / "suanli")


@pytest.fixture(scope="module")
def server(django_db_setup: None) -> Iterator[LiveServer]:
    live = LiveServer(
        log_path=ROOT / "var" / "test" / "cli-ssh-gunicorn.log",
        SUANLI_API_RATE="100000/min",
        SUANLI_API_ANON_RATE="100000/min",
    ).start()
    try:
        yield live
    finally:
        live.stop()


def suanli(
    server: LiveServer, key: str, *args: str, path: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUANLI_")}
    env.update(
        SUANLI_SERVER=server.url,
        SUANLI_API_KEY=key,
        # A config file that does not exist: the server and key come from the environment.
        SUANLI_CONFIG=str(Path(tempfile.gettempdir()) / f"suanli-no-config-{os.getpid()}.json"),
    )
    if path is not None:
        env["PATH"] = path
    return subprocess.run([SUANLI, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def ssh_job(*, ports: dict[str, int], address: str = "203.0.113.7", ssh: bool = True) -> tuple[Job, str]:
    node, _credential = registered_node(name="ssh-node")
    Node.objects.filter(pk=node.pk).update(public_address=address)
    buyer = UserFactory()
    env = {SSH_KEY_ENV: ed25519_key()} if ssh else {}
    job = job_assign(
        node=node,
        device_indexes=[0],
        spec=JobSpec(runtime="docker", image="ubuntu:24.04", ports=[8888], env=env),
        buyer=buyer,
    )
    Job.objects.filter(pk=job.pk).update(status="running", started_at=timezone.now(), published_ports=ports)
    return job, apikey_create(user=buyer, name="cli", scopes=["read", "trade"]).secret


def test_job_ssh_prints_the_command_and_exec_runs_ssh(server: LiveServer, tmp_path: Path) -> None:
    job, key = ssh_job(ports={"8888/tcp": 40001, "22/tcp": 40002})

    printed = suanli(server, key, "job", "ssh", str(job.pk))
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == "ssh -p 40002 root@203.0.113.7"
    with_identity = suanli(server, key, "job", "ssh", str(job.pk), "-i", "~/.ssh/id_ed25519")
    assert with_identity.stdout.strip() == "ssh -p 40002 -i '~/.ssh/id_ed25519' root@203.0.113.7"
    as_json = json.loads(suanli(server, key, "job", "ssh", str(job.pk), "--json").stdout)
    assert as_json == {
        "host": "203.0.113.7",
        "port": 40002,
        "user": "root",
        "command": "ssh -p 40002 root@203.0.113.7",
    }

    # --exec replaces the CLI with ssh (a fake here, printing what it was given).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ssh"
    fake.write_text('#!/bin/sh\necho "fake-ssh $*"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    ran = suanli(server, key, "job", "ssh", str(job.pk), "--exec", path=str(bin_dir))
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "fake-ssh -p 40002 root@203.0.113.7"


def test_job_show_lists_host_colon_port_for_each_published_port(server: LiveServer) -> None:
    job, key = ssh_job(ports={"8888/tcp": 40001, "22/tcp": 40002})
    shown = suanli(server, key, "job", "show", str(job.pk))
    assert shown.returncode == 0, shown.stderr
    lines = [" ".join(line.split()) for line in shown.stdout.splitlines()]
    assert "address 203.0.113.7" in lines
    assert "8888/tcp 203.0.113.7:40001" in lines
    assert "22/tcp 203.0.113.7:40002" in lines
    assert "ssh ssh -p 40002 root@203.0.113.7" in lines


def test_job_ssh_explains_why_there_is_nothing_to_connect_to(server: LiveServer) -> None:
    plain, key = ssh_job(ports={"8888/tcp": 40001}, ssh=False)
    result = suanli(server, key, "job", "ssh", str(plain.pk))
    assert result.returncode == 1 and "not launched in SSH mode" in result.stderr

    waiting, key = ssh_job(ports={})
    result = suanli(server, key, "job", "ssh", str(waiting.pk))
    assert result.returncode == 1 and "not published yet" in result.stderr


def test_order_create_with_an_ssh_key_file(server: LiveServer, tmp_path: Path) -> None:
    online_node(name="n")
    buyer = funded_buyer(100)
    key = apikey_create(user=buyer, name="cli", scopes=["read", "trade"]).secret
    public_key = ed25519_key()
    key_file = tmp_path / "id_ed25519.pub"
    key_file.write_text(public_key + "\n")
    base = [
        "order",
        "create",
        "--term",
        "on-demand",
        "--devices",
        "1",
        "--max-price",
        "3.00",
        "--image",
        "ubuntu:24.04",
    ]

    created = suanli(server, key, *base, "--ssh-key", str(key_file), "--json")
    assert created.returncode == 0, created.stderr
    order: Any = Order.objects.get(pk=json.loads(created.stdout)["id"])
    assert order.env == {SSH_KEY_ENV: public_key}

    # A file that is not a public key is the server's field error, exit 1, no traceback.
    key_file.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    refused = suanli(server, key, *base, "--ssh-key", str(key_file))
    assert (
        refused.returncode == 1 and "ssh_public_key" in refused.stderr and "Traceback" not in refused.stderr
    )
    missing = suanli(server, key, *base, "--ssh-key", str(tmp_path / "nope.pub"))
    assert missing.returncode == 2 and "cannot read --ssh-key" in missing.stderr
