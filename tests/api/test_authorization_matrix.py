"""Every endpoint x {anonymous, buyer A, buyer B, provider member, other provider, agent}.

Each actor calls with its real credential (an API key with the scopes its role needs: buyers
``read,trade``, provider members ``read,provider``; the agent its node credential). The objects
in paths belong to buyer A (order, job, invoice, API key) and provider P (node): everybody else
gets 404 for them (never 403, which would confirm they exist), or 403 first when their key lacks
the endpoint's scope.
"""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.api.world import World

pytestmark = pytest.mark.django_db

ACTORS = ["anonymous", "buyer_a", "buyer_b", "provider_member", "other_provider", "agent"]

HEARTBEAT = {"agent_version": "0.1.0", "running_jobs": [], "devices": []}
EVENT = {"seq": 10, "state": "running"}

# (method, path, body, expected status for each of ACTORS)
MATRIX: list[tuple[str, str, Any, tuple[int, ...]]] = [
    # Public reads.
    ("get", "/api/v1/accelerators", None, (200, 200, 200, 200, 200, 200)),
    ("get", "/api/v1/offers", None, (200, 200, 200, 200, 200, 200)),
    ("get", "/api/v1/spot-prices", None, (200, 200, 200, 200, 200, 200)),
    ("get", "/api/schema/", None, (200, 200, 200, 200, 200, 200)),
    ("get", "/api/agent/v1/ping", None, (200, 200, 200, 200, 200, 200)),
    # Buyer: A's own objects.
    ("get", "/api/v1/orders", None, (401, 200, 200, 200, 200, 401)),
    ("post", "/api/v1/orders", "order", (401, 201, 201, 403, 403, 401)),
    ("get", "/api/v1/orders/{order}", None, (401, 200, 404, 404, 404, 401)),
    ("post", "/api/v1/orders/{order}/cancel", None, (401, 200, 404, 403, 403, 401)),
    ("get", "/api/v1/jobs/{job}", None, (401, 200, 404, 404, 404, 401)),
    ("get", "/api/v1/jobs/{job}/logs", None, (401, 200, 404, 404, 404, 401)),
    ("post", "/api/v1/jobs/{job}/stop", None, (401, 200, 404, 403, 403, 401)),
    ("get", "/api/v1/wallet", None, (401, 200, 200, 200, 200, 401)),
    ("post", "/api/v1/wallet/top-ups", {"amount": "25.00"}, (401, 201, 201, 403, 403, 401)),
    ("get", "/api/v1/usage", None, (401, 200, 200, 200, 200, 401)),
    ("get", "/api/v1/invoices", None, (401, 200, 200, 200, 200, 401)),
    ("get", "/api/v1/invoices/{invoice}", None, (401, 200, 404, 404, 404, 401)),
    # API keys: listed with any key; created and revoked only with a portal session.
    ("get", "/api/v1/api-keys", None, (401, 200, 200, 200, 200, 401)),
    ("post", "/api/v1/api-keys", {"name": "x", "scopes": ["read"]}, (401, 403, 403, 403, 403, 401)),
    ("post", "/api/v1/api-keys/{api_key}/revoke", None, (401, 403, 403, 403, 403, 401)),
    # Provider: P's node.
    ("post", "/api/v1/provider/join-tokens", {}, (401, 403, 403, 201, 201, 401)),
    ("get", "/api/v1/provider/nodes", None, (401, 403, 403, 200, 200, 401)),
    ("get", "/api/v1/provider/nodes/{node}", None, (401, 403, 403, 200, 404, 401)),
    ("patch", "/api/v1/provider/nodes/{node}", {"on_demand_price": "2.10"}, (401, 403, 403, 200, 404, 401)),
    ("get", "/api/v1/provider/earnings", None, (401, 403, 403, 200, 200, 401)),
    ("get", "/api/v1/provider/payouts", None, (401, 403, 403, 200, 200, 401)),
    ("post", "/api/v1/provider/payout-account", "payout_account", (401, 403, 403, 201, 403, 401)),
    # Agent protocol: the node credential only.
    ("post", "/api/agent/v1/heartbeat", HEARTBEAT, (401, 401, 401, 401, 401, 200)),
    ("post", "/api/agent/v1/work?wait=0", {"running": []}, (401, 401, 401, 401, 401, 200)),
    ("post", "/api/agent/v1/jobs/{job}/events", EVENT, (401, 401, 401, 401, 401, 200)),
    (
        "post",
        "/api/agent/v1/jobs/{job}/logs",
        {"offset": 6, "data": "more\n"},
        (401, 401, 401, 401, 401, 200),
    ),
    ("post", "/api/agent/v1/usage", {"samples": []}, (401, 401, 401, 401, 401, 200)),
    # A wrong join token is the same answer for everybody.
    ("post", "/api/agent/v1/register", "register", (400, 400, 400, 400, 400, 400)),
]


def _body(world: World, body: Any) -> Any:
    if body == "order":
        return {"term": "on_demand", "devices_per_node": 1, "price_limit": "3.00", "offer": world.node.offer.pk,
                "job": {"runtime": "process", "command": ["python", "-V"]}}  # fmt: skip
    if body == "payout_account":
        return {"provider_id": world.node.provider_id}
    if body == "register":
        from tests.providers.factories import h100_inventory

        return {
            "token": "jt_000000000000_nope",
            "name": "x",
            "agent_version": "0.1",
            "inventory": h100_inventory(1),
        }
    return body


def _path(world: World, template: str) -> str:
    return template.format(
        order=world.order.pk, job=world.job.pk, invoice=world.invoice_id, node=world.node.pk,
        api_key=world.buyer_a_key_id,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("method", "template", "body", "expected"), MATRIX, ids=[f"{m} {p}" for m, p, *_ in MATRIX]
)
def test_every_actor_gets_exactly_its_access(world: World, method: str, template: str, body: Any, expected):
    path = _path(world, template)
    got = {}
    for actor_name in ACTORS:
        client = APIClient()
        headers = {} if actor_name == "anonymous" else getattr(world, actor_name).headers
        kwargs: dict[str, Any] = {"format": "json", **headers}
        if method == "post":
            kwargs["HTTP_IDEMPOTENCY_KEY"] = f"matrix-{actor_name}"
        call = getattr(client, method)
        response = (
            call(path, _body(world, body), **kwargs)
            if body is not None or method != "get"
            else call(path, **headers)
        )
        got[actor_name] = response.status_code
        if response.status_code >= 400 and path.startswith("/api/"):
            assert set(response.json()) == {"error"}, (actor_name, response.content)
    assert got == dict(zip(ACTORS, expected, strict=True))


def test_lists_show_only_the_callers_own_objects(world: World):
    def ids(actor: str, path: str) -> set[int]:
        response = APIClient().get(path, **getattr(world, actor).headers)
        assert response.status_code == 200
        return {row["id"] for row in response.json()["results"]}

    assert world.order.pk in ids("buyer_a", "/api/v1/orders")
    assert ids("buyer_b", "/api/v1/orders") == set()
    assert world.invoice_id in ids("buyer_a", "/api/v1/invoices")
    assert ids("buyer_b", "/api/v1/invoices") == set()
    assert ids("buyer_b", "/api/v1/usage") == set()
    assert len(ids("buyer_a", "/api/v1/usage")) == 1
    assert ids("provider_member", "/api/v1/provider/nodes") == {world.node.pk}
    assert ids("other_provider", "/api/v1/provider/nodes") == {world.other_node.pk}
    assert world.buyer_a_key_id in ids("buyer_a", "/api/v1/api-keys")
    assert world.buyer_a_key_id not in ids("buyer_b", "/api/v1/api-keys")


def test_a_read_only_key_cannot_trade(world: World):
    from core.services import apikey_create

    read_only = apikey_create(user=world.buyer_a.user, name="ro", scopes=["read"]).secret
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {read_only}")
    assert client.get(f"/api/v1/orders/{world.order.pk}").status_code == 200
    refused = client.post(f"/api/v1/jobs/{world.job.pk}/stop")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "permission_denied"
