"""The environment that lets the members of a multi-node (gang) order find each other.

Every job of an order gets, in the payload its agent pulls (``work_pending``):

* ``SUANLI_RANK``: the member's place in the gang, ``0 .. WORLD_SIZE-1``, by node id (the order
  the matcher locks nodes in), so it is stable across redeliveries of the offer;
* ``SUANLI_WORLD_SIZE``: how many nodes the gang has;
* ``SUANLI_PEERS``: the members' addresses, comma-separated, in rank order;
* ``SUANLI_MASTER_ADDR`` / ``SUANLI_MASTER_PORT``: rank 0's address and the rendezvous port
  (``DEFAULT_MASTER_PORT``, torch.distributed's default, unless the order's own env sets
  ``SUANLI_MASTER_PORT`` to another valid port).

A single-node order gets the same variables (rank 0 of a world of 1), so a launcher script need
not special-case it. A member's address is the node's public address when the node reports one,
else its name (the agent's host name unless the provider chose another).
"""

from __future__ import annotations

from marketplace.models import AllocationStatus, Job
from providers.models import Node

DEFAULT_MASTER_PORT = 29500
GANG_ENV_NAMES = (
    "SUANLI_RANK",
    "SUANLI_WORLD_SIZE",
    "SUANLI_PEERS",
    "SUANLI_MASTER_ADDR",
    "SUANLI_MASTER_PORT",
)


def node_address(node: Node) -> str:
    """Where the other members reach ``node``: its public address, else its name."""
    # ``public_address`` is reported by the agent (issue 13 item 1); nodes from before it have none.
    return str(getattr(node, "public_address", "") or "").strip() or node.name


def _master_port(env: dict[str, str]) -> int:
    raw = str(env.get("SUANLI_MASTER_PORT", "")).strip()
    if raw.isdigit() and 0 < int(raw) < 65536:
        return int(raw)
    return DEFAULT_MASTER_PORT


def gang_env(*, job: Job) -> dict[str, str]:
    """The gang variables of ``job`` (empty for a job outside any order). Reads only.

    The members are the jobs of the order on live allocations (after a requeue, the previous
    placement's allocations are released and drop out), plus ``job`` itself.
    """
    if job.order_id is None:
        return {}
    members = list(
        Job.objects.filter(order_id=job.order_id, allocation__status=AllocationStatus.LIVE)
        .select_related("node")
        .order_by("node_id", "pk")
    )
    if job.pk not in {m.pk for m in members}:
        members.append(job)
        members.sort(key=lambda m: (m.node_id, m.pk))
    # One member per node: two jobs of an order never share a node, but rank by node either way.
    by_node: dict[int, Job] = {}
    for member in members:
        by_node.setdefault(member.node_id, member)
    nodes = [by_node[node_id].node for node_id in sorted(by_node)]
    addresses = [node_address(node) for node in nodes]
    rank = sorted(by_node).index(job.node_id)
    return {
        "SUANLI_RANK": str(rank),
        "SUANLI_WORLD_SIZE": str(len(nodes)),
        "SUANLI_PEERS": ",".join(addresses),
        "SUANLI_MASTER_ADDR": addresses[0],
        "SUANLI_MASTER_PORT": str(_master_port(job.env or {})),
    }
