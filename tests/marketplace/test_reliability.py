"""Reliability scores live on the node (shown whether or not it has an offer) and are copied to
its offer; worked examples of heartbeat coverage x job success over 30 days."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from marketplace.models import Job, JobStatus, Offer
from marketplace.services.offers import OfferChange, offer_update
from marketplace.services.reliability import reliability_refresh
from providers.models import Node
from tests.marketplace.market_helpers import online_node
from tests.providers.factories import ProviderFactory, member_of, registered_node

pytestmark = pytest.mark.django_db


def member_client(provider) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(member_of(provider))
    return client


def test_a_new_node_without_an_offer_shows_the_new_node_score(django_assert_max_num_queries):
    provider = ProviderFactory()
    client = member_client(provider)
    for n in range(3):
        registered_node(provider, name=f"bare-{n}")
    online_node(provider, name="priced")
    with django_assert_max_num_queries(8):
        listing = client.get("/provider/nodes/").content.decode()
    assert listing.count('class="num">0.600</td>') == 4 and 'class="num">—' not in listing
    bare = Node.objects.get(name="bare-0")
    page = client.get(f"/provider/nodes/{bare.pk}/").content.decode()
    assert '<span class="stat">0.600</span>' in page


def test_refresh_scores_every_node_and_copies_the_score_to_its_offer():
    now = timezone.now().replace(microsecond=0)
    provider = ProviderFactory()
    # Given: a node without an offer, 10 days old, that lost a job 2 days ago and is back now;
    flaky, _ = registered_node(provider, name="flaky")
    # a priced node heard from all along, whose offer still carries an old score;
    steady = online_node(provider, name="steady")
    Offer.objects.filter(node=steady).update(reliability=Decimal("0.950"))
    # and a node never heard from.
    silent, _ = registered_node(provider, name="silent")
    Node.objects.filter(pk__in=[flaky.pk, steady.pk, silent.pk]).update(created_at=now - timedelta(days=10))
    Node.objects.filter(pk__in=[flaky.pk, steady.pk]).update(last_heartbeat_at=now)
    Job.objects.create(node=flaky, status=JobStatus.LOST, device_indexes=[0],
                       started_at=now - timedelta(days=3), ended_at=now - timedelta(days=2))  # fmt: skip

    assert reliability_refresh(now=now) == 1  # only flaky's score moves off 0.600

    # coverage (10 d - 2 d outage) / 10 d = 0.8; success (0 + 0.6 x 5) / (1 + 5) = 0.5: 0.8 x 0.5
    assert Node.objects.get(pk=flaky.pk).reliability == Decimal("0.400")
    # coverage 1; success with no finished job is the 0.6 prior
    assert Node.objects.get(pk=steady.pk).reliability == Decimal("0.600")
    assert Offer.objects.get(node=steady).reliability == Decimal("0.600")
    assert Node.objects.get(pk=silent.pk).reliability == Decimal("0.600")
    page = member_client(provider).get(f"/provider/nodes/{flaky.pk}/").content.decode()
    assert '<span class="stat">0.400</span>' in page
    assert reliability_refresh(now=now) == 0  # a second run changes nothing


def test_an_offer_created_later_starts_from_the_nodes_score():
    node, _ = registered_node(name="n")
    Node.objects.filter(pk=node.pk).update(reliability=Decimal("0.420"))
    node.refresh_from_db()
    offer = offer_update(node=node, change=OfferChange(on_demand_price_micros=2_000_000))
    assert offer.reliability == Decimal("0.420")
