"""The portal's order form offers SSH mode (the profile key) and the buyer's volumes on the node."""

from __future__ import annotations

import pytest

from core.services import buyer_ssh_key_set
from marketplace.models import Offer, Order
from marketplace.services.job_spec import SSH_KEY_ENV
from marketplace.services.volumes import VolumeRequest, volume_create
from tests.marketplace.market_helpers import funded_buyer
from tests.marketplace.test_job_endpoints import ed25519_key
from tests.marketplace.test_portal_pages import client_for
from tests.marketplace.test_volumes import volume_node

pytestmark = pytest.mark.django_db

FORM = {
    "term": "on_demand", "devices": "1", "price_limit": "3.00", "runtime": "process",
    "command": "python train.py",
}  # fmt: skip


def test_the_order_form_launches_with_the_profile_ssh_key_and_mounts_a_chosen_volume():
    node = volume_node(name="form-disk")
    offer = Offer.objects.get(node=node)
    buyer = funded_buyer(100)
    key = ed25519_key()
    buyer_ssh_key_set(user=buyer, ssh_public_key=key)
    volume, _created = volume_create(
        buyer=buyer, request=VolumeRequest(node_id=node.pk, name="data", size_gib=5), idempotency_key="v"
    )
    other_buyer = funded_buyer(100)
    volume_create(
        buyer=other_buyer,
        request=VolumeRequest(node_id=node.pk, name="theirs", size_gib=5),
        idempotency_key="w",
    )
    client = client_for(buyer)

    page = client.get(f"/market/offers/{offer.pk}/order/").content.decode()
    assert 'name="ssh"' in page and 'name="volumes"' in page
    assert ">data<" in page or "data</label>" in page
    assert "theirs" not in page  # another buyer's volume is never offered

    response = client.post(
        f"/market/offers/{offer.pk}/order/",
        {**FORM, "ssh": "on", "volumes": [str(volume.pk)], "idempotency_key": "form-ssh"},
    )
    order = Order.objects.get(buyer=buyer)
    assert response.status_code == 302 and response["Location"] == f"/orders/{order.pk}/"
    assert order.env[SSH_KEY_ENV] == key
    assert [v["id"] for v in order.volumes] == [volume.pk]


def test_ssh_without_a_profile_key_is_a_form_error_and_no_volumes_field_without_volumes():
    node = volume_node(name="form-nokey")
    offer = Offer.objects.get(node=node)
    buyer = funded_buyer(100)
    client = client_for(buyer)

    page = client.get(f"/market/offers/{offer.pk}/order/").content.decode()
    assert 'name="volumes"' not in page

    response = client.post(f"/market/offers/{offer.pk}/order/", {**FORM, "ssh": "on", "idempotency_key": "k"})
    assert response.status_code == 200
    assert "has-error" in response.content.decode()
    assert not Order.objects.filter(buyer=buyer).exists()
