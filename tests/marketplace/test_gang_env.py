"""Gang jobs get their peers: rank, world size, peer addresses and the rendezvous point.

The API tests read the work payload an agent pulls; the end-to-end test runs a 2-node gang on two
real `suanli-agent` processes (process runtime) on loopback whose jobs print their environment.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone

from marketplace.models import Job, JobStatus, Order
from marketplace.selectors import job_log_read
from marketplace.services.gang import DEFAULT_MASTER_PORT, node_address
from marketplace.services.jobs import JobSpec
from marketplace.services.matching import matching_run
from marketplace.services.offers import OfferChange, offer_update
from marketplace.services.orders import OrderRequest, order_place
from providers.models import Node, NodeStatus
from providers.services import heartbeats_flush, join_token_create
from tests.marketplace.market_helpers import MICROS, funded_buyer
from tests.providers.factories import ProviderFactory, agent_client, ensure_catalog, registered_node
from tests.support.live import Agent, live_exchange, wait_for

GANG_VARS = ("SUANLI_RANK", "SUANLI_WORLD_SIZE", "SUANLI_PEERS", "SUANLI_MASTER_ADDR", "SUANLI_MASTER_PORT")
LISTED = OfferChange(
    on_demand_price_micros=int(Decimal("2.50") * MICROS),
    reserved_price_micros=int(Decimal("2.00") * MICROS),
    spot_floor_micros=int(Decimal("1.00") * MICROS),
    listed=True,
)
HAS_PUBLIC_ADDRESS = any(f.name == "public_address" for f in Node._meta.get_fields())


def _set_address(node: Node, address: str) -> str:
    """Give the node a public address where the model has one; return what peers will see."""
    if HAS_PUBLIC_ADDRESS:
        Node.objects.filter(pk=node.pk).update(public_address=address)
        return address
    return node.name


def gang_request(
    nodes: int, env: dict[str, str] | None = None, command: list[str] | None = None
) -> OrderRequest:
    return OrderRequest(
        term="on_demand",
        devices_per_node=2,
        node_count=nodes,
        price_limit_micros=3 * MICROS,
        job=JobSpec(runtime="process", command=command or ["true"], env=env or {}),
    )


CREDENTIALS: dict[int, str] = {}


def listed_node(name: str, cluster: str = "sh-a") -> Node:
    """An online, listed node (as ``online_node``) whose agent credential is kept for pulling work."""
    node, credential = registered_node(ProviderFactory(), name=name, devices=8)
    Node.objects.filter(pk=node.pk).update(
        status=NodeStatus.ONLINE,
        last_heartbeat_at=timezone.now(),
        cluster=cluster,
        software={"runtimes": "docker,process"},
    )
    offer_update(node=node, change=LISTED)
    CREDENTIALS[node.pk] = credential
    node.refresh_from_db()
    return node


def pulled_env(node: Node) -> dict[str, str]:
    client = agent_client(CREDENTIALS[node.pk])
    reply = client.post("/api/agent/v1/work?wait=0", {"running": []}, format="json")
    assert reply.status_code == 200, reply.content
    jobs = reply.json()["jobs"]
    assert len(jobs) == 1, jobs
    return jobs[0]["env"]


@pytest.mark.django_db
def test_every_gang_member_pulls_its_rank_the_world_size_and_the_peers() -> None:
    # Given three nodes in one cluster (created out of name order) and a 3-node gang order
    nodes = [listed_node(name, cluster="fab") for name in ("n-c", "n-a", "n-b")]
    addresses = {n.pk: _set_address(n, f"10.0.0.{i + 1}") for i, n in enumerate(nodes)}
    buyer = funded_buyer()
    order, _ = order_place(buyer=buyer, request=gang_request(3, env={"MY_VAR": "x"}), idempotency_key="g3")

    # When the matcher places it and each agent pulls its job
    matching_run()
    assert Job.objects.filter(order=order).count() == 3
    envs = {n.pk: pulled_env(n) for n in nodes}

    # Then ranks follow node ids, every member sees the same peers in rank order, and rank 0 is master
    ordered = sorted(addresses)
    peers = ",".join(addresses[pk] for pk in ordered)
    for rank, node_id in enumerate(ordered):
        env = envs[node_id]
        assert env["SUANLI_RANK"] == str(rank)
        assert env["SUANLI_WORLD_SIZE"] == "3"
        assert env["SUANLI_PEERS"] == peers
        assert env["SUANLI_MASTER_ADDR"] == addresses[ordered[0]]
        assert env["SUANLI_MASTER_PORT"] == str(DEFAULT_MASTER_PORT)
        assert env["MY_VAR"] == "x"  # the buyer's own variables are kept


@pytest.mark.django_db
def test_single_node_jobs_are_rank_0_of_1_and_the_order_may_choose_the_port() -> None:
    node = listed_node("solo")
    address = _set_address(node, "solo.example.net")
    buyer = funded_buyer()
    order_place(
        buyer=buyer,
        request=gang_request(1, env={"SUANLI_MASTER_PORT": "23456", "SUANLI_RANK": "7"}),
        idempotency_key="solo",
    )
    matching_run()

    env = pulled_env(node)

    # the buyer's port is honoured; a buyer's SUANLI_RANK cannot lie about the rank
    assert {k: env[k] for k in GANG_VARS} == {
        "SUANLI_RANK": "0",
        "SUANLI_WORLD_SIZE": "1",
        "SUANLI_PEERS": address,
        "SUANLI_MASTER_ADDR": address,
        "SUANLI_MASTER_PORT": "23456",
    }


@pytest.mark.django_db
def test_an_invalid_port_in_the_order_env_falls_back_to_the_default() -> None:
    node = listed_node("solo2")
    order_place(
        buyer=funded_buyer(),
        request=gang_request(1, env={"SUANLI_MASTER_PORT": "99999"}),
        idempotency_key="p",
    )
    matching_run()
    assert pulled_env(node)["SUANLI_MASTER_PORT"] == str(DEFAULT_MASTER_PORT)


PRINT_ENV = (
    "import json, os\n"
    "keys = ('SUANLI_RANK', 'SUANLI_WORLD_SIZE', 'SUANLI_PEERS', 'SUANLI_MASTER_ADDR', 'SUANLI_MASTER_PORT')\n"
    "print('GANG ' + json.dumps({k: os.environ.get(k) for k in keys}), flush=True)\n"
)


@pytest.fixture
def two_agents(tmp_path: Path, transactional_db: None) -> Iterator[list[Agent]]:
    agents: list[Agent] = []
    with live_exchange(tmp_path) as server:
        try:
            agents += [Agent(server, tmp_path / f"agent-{n}", f"gang-{n}") for n in ("a", "b")]
            yield agents
        finally:
            for agent in agents:
                agent.stop()
                agent.kill_jobs()


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_real_agents_run_a_gang_whose_members_see_each_other(two_agents: list[Agent]) -> None:
    ensure_catalog()
    provider = ProviderFactory()
    # Given two real agents on loopback, joined into one cluster, online and listed
    node_ids = [
        agent.join(join_token_create(provider=provider, created_by=None, region="e2e", cluster="x").token)
        for agent in two_agents
    ]
    for agent in two_agents:
        agent.start()

    def both_online() -> bool:
        heartbeats_flush()
        return Node.objects.filter(pk__in=node_ids, status=NodeStatus.ONLINE).count() == 2

    wait_for("both nodes online", both_online, timeout=60)
    nodes = [Node.objects.get(pk=pk) for pk in node_ids]
    # What the agents reported (their public address, autodetected), or the node names: left as is,
    # since an agent's next heartbeat would put back an address the test wrote.
    addresses = {n.pk: node_address(n) for n in nodes}
    assert all(addresses.values())
    for node in nodes:
        offer_update(node=node, change=LISTED)

    # When a 2-node gang whose command prints its environment is placed
    order, _ = order_place(
        buyer=funded_buyer(),
        request=gang_request(2, command=[sys.executable, "-c", PRINT_ENV]),
        idempotency_key="gang-env",
    )
    matching_run()
    assert Order.objects.get(pk=order.pk).allocations.count() == 2

    # Then each member's process printed its rank, the world size and the same peers
    wait_for(
        "both members to exit",
        lambda: Job.objects.filter(order=order, status=JobStatus.EXITED).count() == 2,
        timeout=60,
    )

    def printed(job: Job) -> dict[str, str] | None:
        text = job_log_read(job=job, offset=0).data
        line = next((ln for ln in text.splitlines() if ln.startswith("GANG ")), None)
        return json.loads(line[5:]) if line else None

    ordered = sorted(node_ids)
    seen = {}
    for job in Job.objects.filter(order=order):
        seen[job.node_id] = wait_for(f"job {job.pk}'s log", lambda job=job: printed(job), timeout=30)
    for rank, node_id in enumerate(ordered):
        assert seen[node_id] == {
            "SUANLI_RANK": str(rank),
            "SUANLI_WORLD_SIZE": "2",
            "SUANLI_PEERS": ",".join(addresses[pk] for pk in ordered),
            "SUANLI_MASTER_ADDR": addresses[ordered[0]],
            "SUANLI_MASTER_PORT": str(DEFAULT_MASTER_PORT),
        }
