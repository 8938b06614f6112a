"""Helpers for marketplace tests: online nodes with offers, funded buyers, agent events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone

from marketplace.models import Job
from marketplace.services.jobs import JobEventIn, job_event_record
from marketplace.services.offers import OfferChange, offer_update
from providers.models import Node, NodeStatus, Provider
from tests.billing.conftest import fund, make_user
from tests.providers.factories import ProviderFactory, registered_node

MICROS = 1_000_000


def online_node(
    provider: Provider | None = None,
    *,
    name: str,
    devices: int = 8,
    region: str = "cn-east",
    cluster: str = "sh-a",
    on_demand: float | str = "2.50",
    reserved: str = "2.00",
    spot_floor: str = "1.00",
) -> Node:
    from core.money import parse_amount

    node, _credential = registered_node(
        provider or ProviderFactory(), name=name, devices=devices, region=region
    )
    Node.objects.filter(pk=node.pk).update(
        status=NodeStatus.ONLINE,
        last_heartbeat_at=timezone.now(),
        cluster=cluster,
        software={"cuda": "12.4", "driver": "550.54.15", "runtimes": "docker,process"},
    )
    node.refresh_from_db()
    offer_update(
        node=node,
        change=OfferChange(
            on_demand_price_micros=parse_amount(str(on_demand)),
            reserved_price_micros=parse_amount(reserved),
            spot_floor_micros=parse_amount(spot_floor),
            listed=True,
        ),
    )
    return node


def funded_buyer(amount_units: int = 1000) -> Any:
    buyer = make_user("buyer")
    fund(buyer, amount_units * MICROS)
    return buyer


_seq: dict[int, int] = {}


def agent_reports(job: Job, state: str, *, at: datetime | None = None, exit_code: int | None = None) -> Job:
    """The job's agent reports ``state`` (with the next sequence number)."""
    _seq[job.pk] = _seq.get(job.pk, 0) + 1
    return job_event_record(
        node=job.node,
        job_id=job.pk,
        event=JobEventIn(seq=_seq[job.pk], state=state, at=at or timezone.now(), exit_code=exit_code),
    )
