"""A small exchange with every kind of object and actor, for the authorisation matrix and
Schemathesis: two buyers, two providers with a node each, an order of buyer A running on
provider P's node with a log and a lease, an invoice, a payout account, and API keys."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.utils import timezone

from billing.models import StatementKind
from billing.services import settle
from billing.services.statements import statement_build
from core.money import parse_amount
from core.services import apikey_create
from marketplace.models import Job, Order
from marketplace.services.jobs import JobSpec
from marketplace.services.logs import job_log_append
from marketplace.services.matching import matching_run
from marketplace.services.offers import OfferChange, offer_update
from marketplace.services.orders import OrderRequest, order_place
from providers.models import Node, NodeStatus
from tests.marketplace.market_helpers import MICROS, agent_reports, funded_buyer, online_node
from tests.providers.factories import ProviderFactory, UserFactory, member_of, registered_node

SPEC = JobSpec(runtime="process", image="", command=["python", "-c", "print('hello')"])


@dataclass
class Actor:
    name: str
    user: Any
    key: str  # an API key with every scope the actor needs (or a node credential for the agent)

    @property
    def headers(self) -> dict[str, str]:
        return {"HTTP_AUTHORIZATION": f"Bearer {self.key}"}


@dataclass
class World:
    buyer_a: Actor
    buyer_b: Actor
    provider_member: Actor
    other_provider: Actor
    agent: Actor
    node: Node
    other_node: Node
    order: Order
    job: Job
    invoice_id: int
    buyer_a_key_id: int


def make_online(node: Node, *, on_demand: str) -> None:
    Node.objects.filter(pk=node.pk).update(
        status=NodeStatus.ONLINE,
        last_heartbeat_at=timezone.now(),
        cluster="sh-a",
        software={"cuda": "12.4", "driver": "550.54.15", "runtimes": "docker,process"},
    )
    node.refresh_from_db()
    offer_update(
        node=node,
        change=OfferChange(
            on_demand_price_micros=parse_amount(on_demand),
            reserved_price_micros=parse_amount("1.50"),
            spot_floor_micros=parse_amount("0.80"),
            listed=True,
        ),
    )


def build_world() -> World:
    now = timezone.now()
    provider = ProviderFactory(name="Provider P")
    member = member_of(provider, UserFactory(username="member@p.test"))
    node, credential = registered_node(provider, name="p-h100", devices=8)
    make_online(node, on_demand="2.00")
    other = ProviderFactory(name="Provider Q")
    other_member = member_of(other, UserFactory(username="member@q.test"))
    other_node = online_node(other, name="q-h100", on_demand="2.50", region="cn-north")

    buyer_a = funded_buyer(1000)
    buyer_b = funded_buyer(1000)
    order, _ = order_place(
        buyer=buyer_a,
        request=OrderRequest(term="on_demand", devices_per_node=2, price_limit_micros=3 * MICROS, job=SPEC,
                             offer_id=node.offer.pk),
        idempotency_key="world-order",
    )  # fmt: skip
    matching_run()
    job = Job.objects.get(order=order)
    start = now - timedelta(minutes=10)
    # Ten minutes of history: event times are never earlier than the assignment.
    Job.objects.filter(pk=job.pk).update(assigned_at=start)
    agent_reports(job, "accepted", at=start)
    agent_reports(job, "running", at=start)
    job_log_append(node=node, job_id=job.pk, offset=0, data="hello\n")
    settle(until=now)
    invoice = statement_build(
        kind=StatementKind.BUYER_INVOICE, period_start=now.date(), currency="USD", user_id=buyer_a.pk
    )
    key_a = apikey_create(user=buyer_a, name="a", scopes=["read", "trade"])
    return World(
        buyer_a=Actor("buyer_a", buyer_a, key_a.secret),
        buyer_b=Actor("buyer_b", buyer_b, apikey_create(user=buyer_b, name="b", scopes=["read", "trade"]).secret),
        provider_member=Actor(
            "provider_member", member, apikey_create(user=member, name="p", scopes=["read", "provider"]).secret
        ),
        other_provider=Actor(
            "other_provider", other_member,
            apikey_create(user=other_member, name="q", scopes=["read", "provider"]).secret,
        ),
        agent=Actor("agent", None, credential),
        node=node,
        other_node=other_node,
        order=order,
        job=job,
        invoice_id=invoice.pk,
        buyer_a_key_id=key_a.api_key.pk,
    )  # fmt: skip
