"""Reaching a job: the node's public address (registration, heartbeat), published ports as
``host:port`` and the SSH launch mode, through the agent and buyer APIs on PostgreSQL/Redis."""

from __future__ import annotations

import base64
import getpass
import json
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from core.errors import ValidationFailed
from marketplace.models import Job, JobStatus
from marketplace.selectors import job_log_read
from marketplace.services import JobSpec, job_assign
from marketplace.services.job_spec import SSH_KEY_ENV, job_spec_parse, ssh_public_key_problem
from providers.models import Node
from providers.services import join_token_create, node_auth_cache_clear
from tests.agent.test_ssh_mode import FAKE_SSHD
from tests.marketplace.market_helpers import funded_buyer, online_node
from tests.providers.factories import (
    ProviderFactory,
    UserFactory,
    agent_client,
    ensure_catalog,
    h100_inventory,
    registered_node,
)
from tests.support.live import AGENT, Agent, live_exchange, wait_for

pytestmark = pytest.mark.django_db


def _string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def ed25519_key(comment: str = "me@laptop") -> str:
    """A well-formed OpenSSH ed25519 public key line (the wire format, random key bytes)."""
    blob = _string(b"ssh-ed25519") + _string(os.urandom(32))
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}".strip()


def rsa_key() -> str:
    blob = _string(b"ssh-rsa") + _string(b"\x01\x00\x01") + _string(b"\x00" + os.urandom(256))
    return f"ssh-rsa {base64.b64encode(blob).decode()}"


def register(public_address: object, name: str = "edge-1"):
    ensure_catalog()
    token = join_token_create(provider=ProviderFactory(), created_by=None, region="cn-east").token
    inventory = h100_inventory(1, name=name)
    if public_address is not None:
        inventory["host"]["public_address"] = public_address
    body = {"token": token, "name": name, "agent_version": "0.1.0", "inventory": inventory}
    return APIClient().post("/api/agent/v1/register", body, format="json")


def buyer_api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


# --- the node's public address ----------------------------------------------------------------


@pytest.mark.parametrize("address", ["203.0.113.7", "2001:db8::7", "gpu-7.dc1.example.com"])
def test_registration_stores_the_public_address(address: str) -> None:
    response = register(address)
    assert response.status_code == 201, response.json()
    assert Node.objects.get(pk=response.json()["node_id"]).public_address == address


def test_registration_without_an_address_still_works() -> None:
    response = register(None)
    assert response.status_code == 201, response.json()
    assert Node.objects.get(pk=response.json()["node_id"]).public_address == ""


@pytest.mark.parametrize(
    "address",
    [
        "203.0.113.7\x00",
        "a b",
        "-oProxyCommand=x",
        "root@host",
        "host:22",
        "1.2.3.4.5",
        "fe80::1%eth0",
        "x" * 254,
        7,
        ["h"],
    ],
)
def test_registration_refuses_a_bad_public_address(address: object) -> None:
    response = register(address)
    assert response.status_code == 400, response.json()
    assert "inventory.host.public_address" in response.json()["error"]["fields"]
    assert not Node.objects.exists()


def test_a_heartbeat_updates_the_public_address_and_refuses_a_bad_one() -> None:
    node, credential = registered_node(name="moving")
    client = agent_client(credential)
    ok = client.post(
        "/api/agent/v1/heartbeat", {"devices": [], "public_address": "198.51.100.4"}, format="json"
    )
    assert ok.status_code == 200, ok.json()
    node.refresh_from_db()
    assert node.public_address == "198.51.100.4"

    # A heartbeat that names none (an older agent) leaves it.
    assert client.post("/api/agent/v1/heartbeat", {"devices": []}, format="json").status_code == 200
    node_auth_cache_clear()
    assert (
        client.post(
            "/api/agent/v1/heartbeat", {"public_address": "gpu.example.org"}, format="json"
        ).status_code
        == 200
    )
    node.refresh_from_db()
    assert node.public_address == "gpu.example.org"

    for bad in ("a\x00b", "two words", 12, ""):
        response = client.post("/api/agent/v1/heartbeat", {"public_address": bad}, format="json")
        if bad == "":
            assert response.status_code == 200  # empty: "not reported", nothing changes
            continue
        assert response.status_code == 400, response.json()
        assert "public_address" in response.json()["error"]["fields"]
    node.refresh_from_db()
    assert node.public_address == "gpu.example.org"


def test_the_provider_api_shows_the_public_address() -> None:
    from tests.providers.factories import member_of

    provider = ProviderFactory()
    node, _credential = registered_node(provider, name="shown")
    Node.objects.filter(pk=node.pk).update(public_address="203.0.113.9")
    api = buyer_api(member_of(provider))
    rows = api.get("/api/v1/provider/nodes").json()["results"]
    assert [r["public_address"] for r in rows] == ["203.0.113.9"]


# --- the job spec's SSH mode --------------------------------------------------------------------


def test_ssh_public_key_validation() -> None:
    assert ssh_public_key_problem(ed25519_key()) is None
    assert ssh_public_key_problem(rsa_key()) is None
    assert ssh_public_key_problem("  " + ed25519_key("") + "\n") is None  # a pasted line, trimmed
    ecdsa = _string(b"ecdsa-sha2-nistp256") + _string(b"nistp256") + _string(b"\x04" + os.urandom(64))
    assert ssh_public_key_problem(f"ecdsa-sha2-nistp256 {base64.b64encode(ecdsa).decode()} x") is None
    good = ed25519_key()
    kind, blob, _comment = good.split(" ")
    for bad in (
        "",
        "ssh-ed25519",
        f"ssh-dss {blob}",  # DSA: not accepted
        f"ssh-rsa {blob}",  # the blob names another type
        f"{kind} {blob[:20]}",  # truncated
        f"{kind} {blob} a\nssh-ed25519 {blob}",  # two lines
        f"{kind} {blob} with\x00nul",
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        f"{kind} {blob} {'c' * 5000}",
        42,
    ):
        assert ssh_public_key_problem(bad) is not None, bad


def test_job_spec_ssh_mode_puts_the_key_in_the_job_env() -> None:
    key = ed25519_key()
    spec = job_spec_parse({"runtime": "process", "command": ["sleep", "1"], "ssh_public_key": key})
    assert spec.env == {SSH_KEY_ENV: key}
    spec = job_spec_parse({"image": "ubuntu:24.04", "ssh": True}, profile_ssh_public_key=key)
    assert spec.env[SSH_KEY_ENV] == key
    # The same key spelt as a variable is checked the same way.
    assert job_spec_parse({"image": "ubuntu:24.04", "env": {SSH_KEY_ENV: key}}).env[SSH_KEY_ENV] == key
    assert SSH_KEY_ENV not in job_spec_parse({"image": "ubuntu:24.04", "ssh": False}).env


@pytest.mark.parametrize(
    ("job", "field"),
    [
        ({"image": "ubuntu:24.04", "ssh": True}, "job.ssh"),  # no profile key
        ({"image": "ubuntu:24.04", "ssh": "yes"}, "job.ssh"),
        ({"image": "ubuntu:24.04", "ssh_public_key": "ssh-ed25519 AAAA"}, "job.ssh_public_key"),
        ({"image": "ubuntu:24.04", "ssh_public_key": ["x"]}, "job.ssh_public_key"),
        ({"image": "ubuntu:24.04", "env": {SSH_KEY_ENV: "not a key"}}, "job.env"),
        # SSH mode changes nothing of the isolation rules.
        ({"image": "ubuntu:24.04", "ssh": True, "privileged": True}, "job.privileged"),
    ],
)
def test_job_spec_ssh_mode_refusals(job: dict, field: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        job_spec_parse(job)
    assert field in raised.value.fields


def test_an_order_with_a_bad_ssh_key_is_a_field_error_not_a_500() -> None:
    online_node(name="n")
    client = buyer_api(funded_buyer(100))
    body = {
        "term": "on_demand", "devices_per_node": 1, "price_limit": "3.00",
        "job": {"image": "ubuntu:24.04", "ssh_public_key": "ssh-ed25519 \x00"},
    }  # fmt: skip
    response = client.post("/api/v1/orders", body, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"code", "message", "fields"}
    assert "job.ssh_public_key" in response.json()["error"]["fields"]

    body["job"] = {"image": "ubuntu:24.04", "ssh_public_key": ed25519_key()}
    response = client.post("/api/v1/orders", body, format="json", HTTP_IDEMPOTENCY_KEY="k2")
    assert response.status_code == 201, response.json()
    assert response.json()["job"]["env"][SSH_KEY_ENV] == body["job"]["ssh_public_key"]


# --- what the buyer sees ------------------------------------------------------------------------


def _running_job(*, address: str, ports: dict, runtime: str = "docker", env: dict | None = None):
    node, credential = registered_node(name="reach")
    Node.objects.filter(pk=node.pk).update(public_address=address, software={"process_user": "agent"})
    buyer = UserFactory()
    spec = JobSpec(runtime=runtime, image="ubuntu:24.04", command=["sleep", "1"], ports=[8000], env=env or {})
    job = job_assign(node=node, device_indexes=[0], spec=spec, buyer=buyer)
    agent = agent_client(credential)
    for seq, state in enumerate(("accepted", "starting", "running"), start=1):
        body = {"seq": seq, "state": state, "at": timezone.now().isoformat(), "ports": ports}
        assert agent.post(f"/api/agent/v1/jobs/{job.pk}/events", body, format="json").status_code == 200
    return job, buyer


def test_job_detail_shows_each_published_port_as_host_colon_port() -> None:
    job, buyer = _running_job(address="203.0.113.7", ports={"8000/tcp": 32768})
    body = buyer_api(buyer).get(f"/api/v1/jobs/{job.pk}").json()
    assert body["public_address"] == "203.0.113.7"
    assert body["endpoints"] == [
        {"port": 8000, "protocol": "tcp", "host_port": 32768, "address": "203.0.113.7:32768"}
    ]
    assert body["ssh"] is None


def test_an_ipv6_address_is_bracketed_and_a_missing_one_is_null() -> None:
    job, buyer = _running_job(address="2001:db8::7", ports={"8000/tcp": 8000})
    body = buyer_api(buyer).get(f"/api/v1/jobs/{job.pk}").json()
    assert body["endpoints"][0]["address"] == "[2001:db8::7]:8000"
    Node.objects.filter(pk=job.node_id).update(public_address="")
    body = buyer_api(buyer).get(f"/api/v1/jobs/{job.pk}").json()
    assert body["public_address"] is None and body["endpoints"][0]["address"] is None


def test_ssh_mode_job_shows_the_ssh_command_in_job_and_order_detail() -> None:
    key = ed25519_key()
    job, buyer = _running_job(
        address="203.0.113.7", ports={"8000/tcp": 32768, "22/tcp": 32769}, env={SSH_KEY_ENV: key}
    )
    api = buyer_api(buyer)
    body = api.get(f"/api/v1/jobs/{job.pk}").json()
    assert body["ssh"] == {
        "host": "203.0.113.7", "port": 32769, "user": "root", "command": "ssh -p 32769 root@203.0.113.7"
    }  # fmt: skip
    assert {e["address"] for e in body["endpoints"]} == {"203.0.113.7:32768", "203.0.113.7:32769"}

    # The process runtime's job is reached as the agent's own user (reported at join).
    Job.objects.filter(pk=job.pk).update(runtime="process")
    assert api.get(f"/api/v1/jobs/{job.pk}").json()["ssh"]["command"] == "ssh -p 32769 agent@203.0.113.7"


def test_order_detail_and_list_jobs_carry_their_endpoints() -> None:
    from marketplace.models import Order
    from marketplace.services.matching import matching_run
    from marketplace.services.orders import OrderRequest, order_place

    node = online_node(name="o")
    Node.objects.filter(pk=node.pk).update(public_address="gpu.example.com")
    buyer = funded_buyer(100)
    spec = job_spec_parse({"image": "ubuntu:24.04", "ports": [8888], "ssh_public_key": ed25519_key()})
    order, _created = order_place(
        buyer=buyer,
        request=OrderRequest(term="on_demand", devices_per_node=1, price_limit_micros=3_000_000, job=spec),
        idempotency_key="o1",
    )
    matching_run()
    job = Job.objects.get(order=order)
    Job.objects.filter(pk=job.pk).update(published_ports={"8888/tcp": 40001, "22/tcp": 40002})
    api = buyer_api(buyer)
    detail = api.get(f"/api/v1/orders/{order.pk}").json()
    (shown,) = detail["jobs"]
    assert shown["endpoints"][0]["address"] == "gpu.example.com:40002"  # sorted by "22/tcp" first
    assert shown["ssh"]["command"] == "ssh -p 40002 root@gpu.example.com"
    assert Order.objects.filter(buyer=buyer).count() == 1
    listed = api.get("/api/v1/orders").json()["results"]
    assert listed[0]["jobs"][0]["public_address"] == "gpu.example.com"

    # The portal's order page shows the same.
    from django.test import Client

    portal = Client()
    portal.force_login(buyer)
    html = portal.get(f"/orders/{order.pk}/").content.decode()
    assert "gpu.example.com:40001" in html and "ssh -p 40002 root@gpu.example.com" in html


# --- a real agent on loopback -------------------------------------------------------------------


@pytest.fixture
def exchange(tmp_path: Path) -> Iterator[str]:
    with live_exchange(tmp_path, workers=1) as server:
        yield server


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_real_agent_publishes_an_ssh_port_the_buyer_reaches(exchange: str, tmp_path: Path) -> None:
    ensure_catalog()
    agent = Agent(exchange, tmp_path / "agent", "ssh-node")
    try:
        # No --public-address: the agent reports its outbound address to the exchange (loopback).
        node_id = agent.join(
            join_token_create(provider=ProviderFactory(), created_by=None, region="e2e").token
        )
        node = Node.objects.get(pk=node_id)
        assert node.public_address == "127.0.0.1"
        assert node.software["process_user"] == getpass.getuser()
        agent.start()

        key = ed25519_key()
        buyer = UserFactory()
        spec = JobSpec(
            runtime="process", command=[sys.executable, "-u", "-c", FAKE_SSHD], env={SSH_KEY_ENV: key}
        )
        job = job_assign(node=node, device_indexes=[0], spec=spec, buyer=buyer)
        wait_for(
            "the job to run with its ssh port",
            lambda: Job.objects.get(pk=job.pk).published_ports.get("22/tcp"),
        )

        api = APIClient()
        api.force_authenticate(buyer)
        body = api.get(f"/api/v1/jobs/{job.pk}").json()
        ssh = body["ssh"]
        assert body["status"] == JobStatus.RUNNING
        assert ssh["host"] == "127.0.0.1" and ssh["user"] == getpass.getuser()
        assert ssh["command"] == f"ssh -p {ssh['port']} {getpass.getuser()}@127.0.0.1"
        assert body["endpoints"] == [
            {"port": 22, "protocol": "tcp", "host_port": ssh["port"], "address": f"127.0.0.1:{ssh['port']}"}
        ]

        # The published host:port reaches the job's sshd.
        def banner() -> bytes:
            try:
                with socket.create_connection((ssh["host"], ssh["port"]), timeout=2) as conn:
                    return conn.recv(64)
            except OSError:
                return b""

        assert wait_for("the job's sshd to answer", banner, timeout=30).startswith(b"SSH-2.0-")

        # The key went into a file inside the agent's state dir; the log has the connection line.
        keys_file = tmp_path / "agent" / "ssh" / f"job-{job.pk}" / "authorized_keys"
        assert keys_file.read_text() == key + "\n"
        assert oct(keys_file.stat().st_mode & 0o777) == "0o600"
        log = wait_for(
            "the job log",
            lambda: (
                (text := job_log_read(job=Job.objects.get(pk=job.pk), offset=0).data)
                and "keys:" in text
                and text
            ),
        )
        assert f"connect with `{ssh['command']}`" in log.splitlines()[0]
        assert f"keys: {key}" in log
    finally:
        agent.stop()
        agent.kill_jobs()


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_public_address_option_is_validated_and_sent_in_heartbeats(exchange: str, tmp_path: Path) -> None:
    ensure_catalog()
    token = join_token_create(provider=ProviderFactory(), created_by=None, region="e2e").token
    state = tmp_path / "agent"
    base = [AGENT, "join", "--server", exchange, "--token", token, "--name", "addr-node", "--state-dir", str(state),
            "--simulate", "h100x8"]  # fmt: skip
    bad = subprocess.run(
        [*base, "--public-address", "-oProxyCommand=x"], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2 and "public-address" in bad.stderr and "Traceback" not in bad.stderr

    joined = subprocess.run(
        [*base, "--public-address", "gpu-1.example.com"], capture_output=True, text=True, check=False
    )
    assert joined.returncode == 0, joined.stderr
    node_id = json.loads((state / "credential.json").read_text())["node_id"]
    assert Node.objects.get(pk=node_id).public_address == "gpu-1.example.com"

    # `run --public-address` overrides it; the heartbeat carries the new one to the node.
    agent = Agent(exchange, state, "addr-node")
    agent.process = subprocess.Popen(
        [AGENT, "run", "--state-dir", str(state), "--heartbeat-interval", "0.5", "--public-address", "198.51.100.23"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(
            "the heartbeat's address",
            lambda: Node.objects.get(pk=node_id).public_address == "198.51.100.23",
            30,
        )
    finally:
        agent.stop()


# --- the buyer's profile key --------------------------------------------------------------------


def test_profile_ssh_key_api_and_ssh_true_orders_use_it() -> None:
    from core.services import apikey_create

    online_node(name="p")
    buyer = funded_buyer(100)
    api = buyer_api(buyer)
    assert api.get("/api/v1/profile").json() == {"ssh_public_key": ""}

    # ssh: true without a profile key is a field error naming what to do.
    body = {
        "term": "on_demand", "devices_per_node": 1, "price_limit": "3.00",
        "job": {"image": "ubuntu:24.04", "ssh": True},
    }  # fmt: skip
    refused = api.post("/api/v1/orders", body, format="json", HTTP_IDEMPOTENCY_KEY="p1")
    assert refused.status_code == 400 and "job.ssh" in refused.json()["error"]["fields"]

    for bad in ("ssh-dss AAAAB3NzaC1kc3M=", "ssh-ed25519 AAAA\x00", "x" * 5000, ["k"]):
        response = api.put("/api/v1/profile", {"ssh_public_key": bad}, format="json")
        assert response.status_code == 400, bad
        assert "ssh_public_key" in response.json()["error"]["fields"]
    key = ed25519_key()
    saved = api.put("/api/v1/profile", {"ssh_public_key": f"  {key}\n"}, format="json")
    assert saved.status_code == 200 and saved.json() == {"ssh_public_key": key}
    assert api.get("/api/v1/profile").json() == {"ssh_public_key": key}

    placed = api.post("/api/v1/orders", body, format="json", HTTP_IDEMPOTENCY_KEY="p2")
    assert placed.status_code == 201, placed.json()
    assert placed.json()["job"]["env"] == {SSH_KEY_ENV: key}

    # A read-only API key reads the profile but cannot change it.
    reader = APIClient()
    reader.credentials(
        HTTP_AUTHORIZATION=f"Bearer {apikey_create(user=buyer, name='r', scopes=['read']).secret}"
    )
    assert reader.get("/api/v1/profile").json() == {"ssh_public_key": key}
    assert reader.put("/api/v1/profile", {"ssh_public_key": ""}, format="json").status_code == 403
    # Clearing it is allowed.
    assert api.put("/api/v1/profile", {"ssh_public_key": ""}, format="json").json() == {"ssh_public_key": ""}


def test_portal_ssh_key_page_saves_and_refuses() -> None:
    from django.test import Client

    user = UserFactory()
    client = Client()
    client.force_login(user)
    assert client.get("/profile/ssh-key/").status_code == 200
    bad = client.post("/profile/ssh-key/", {"ssh_public_key": "garbage"})
    assert bad.status_code == 200 and "OpenSSH public key" in bad.content.decode()
    key = ed25519_key()
    assert client.post("/profile/ssh-key/", {"ssh_public_key": key}).status_code == 302
    assert key in client.get("/profile/ssh-key/").content.decode()


def test_portal_job_and_order_pages_show_host_port_and_ssh() -> None:
    from django.test import Client

    key = ed25519_key()
    job, buyer = _running_job(
        address="203.0.113.7", ports={"8000/tcp": 32768, "22/tcp": 32769}, env={SSH_KEY_ENV: key}
    )
    client = Client()
    client.force_login(buyer)
    page = client.get(f"/jobs/{job.pk}/")
    assert page.status_code == 200, page.status_code
    html = page.content.decode()
    assert "203.0.113.7:32768" in html and "ssh -p 32769 root@203.0.113.7" in html
