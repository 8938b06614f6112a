"""Provider API: join tokens and nodes, for members of the provider only."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from core.services import apikey_create
from providers.models import JoinToken
from providers.services import inventory_from_json, node_register
from tests.providers.factories import ProviderFactory, UserFactory, h100_inventory, member_of, registered_node

pytestmark = pytest.mark.django_db

JOIN_TOKENS = "/api/v1/provider/join-tokens"


def client_for(user, scopes=("provider",)) -> APIClient:
    client = APIClient()
    key = apikey_create(user=user, name="test", scopes=scopes)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.secret}")
    return client


def test_member_creates_a_join_token_that_registers_a_node(settings):
    provider = ProviderFactory()
    user = member_of(provider)
    response = client_for(user).post(JOIN_TOKENS, {"region": "cn-north", "cluster": "bj-1"}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["provider"] == provider.pk
    assert body["region"] == "cn-north" and body["cluster"] == "bj-1"
    assert body["token"].startswith("jt_") and body["expires_at"].endswith("Z")
    assert body["install_command"] == (
        f"pip install suanli-exchange && suanli-agent join --server {settings.SITE_URL} "
        f"--token {body['token']} && suanli-agent run"
    )
    assert JoinToken.objects.get(pk=body["id"]).created_by == user
    registered = node_register(
        token=body["token"], name="n", agent_version="1", inventory=inventory_from_json(h100_inventory(1))
    )
    assert registered.node.provider == provider and registered.node.region == "cn-north"


def test_join_tokens_only_for_members():
    provider, other = ProviderFactory(), ProviderFactory()
    user = member_of(provider)
    # Naming a provider the user does not belong to.
    response = client_for(user).post(JOIN_TOKENS, {"provider": other.pk}, format="json")
    assert response.status_code == 403
    # A user of no provider at all.
    response = client_for(UserFactory()).post(JOIN_TOKENS, {}, format="json")
    assert response.status_code == 403
    # Anonymous.
    assert APIClient().post(JOIN_TOKENS, {}, format="json").status_code in (401, 403)
    # A key without the provider scope.
    assert client_for(user, scopes=("read",)).post(JOIN_TOKENS, {}, format="json").status_code == 403
    assert JoinToken.objects.count() == 0


def test_a_member_of_several_providers_must_name_one():
    first, second = ProviderFactory(), ProviderFactory()
    user = member_of(first)
    member_of(second, user)
    response = client_for(user).post(JOIN_TOKENS, {}, format="json")
    assert response.status_code == 400
    assert "provider" in response.json()["error"]["fields"]
    response = client_for(user).post(JOIN_TOKENS, {"provider": second.pk}, format="json")
    assert response.status_code == 201
    assert response.json()["provider"] == second.pk


def test_nodes_are_listed_for_members_only():
    provider, other = ProviderFactory(), ProviderFactory()
    mine, _ = registered_node(provider, name="mine")
    theirs, _ = registered_node(other, name="theirs")
    client = client_for(member_of(provider))
    response = client.get("/api/v1/provider/nodes")
    assert response.status_code == 200
    results = response.json()["results"]
    assert [row["id"] for row in results] == [mine.pk]
    assert results[0]["status"] == "pending"
    assert [d["accelerator"] for d in results[0]["devices"]] == ["H100 SXM 80GB", "H100 SXM 80GB"]
    assert "credential_hash" not in results[0] and "credential_prefix" not in results[0]

    assert client.get(f"/api/v1/provider/nodes/{mine.pk}").json()["name"] == "mine"
    assert client.get(f"/api/v1/provider/nodes/{theirs.pk}").status_code == 404
    assert client.get("/api/v1/provider/nodes/999999").status_code == 404
    assert client_for(UserFactory()).get("/api/v1/provider/nodes").json()["results"] == []


def test_operator_creates_a_join_token_from_the_admin(admin_client):
    provider = ProviderFactory()
    response = admin_client.post(
        "/admin/providers/provider/",
        {"action": "create_join_token", "_selected_action": [provider.pk]},
        follow=True,
    )
    assert response.status_code == 200
    join_token = JoinToken.objects.get(provider=provider)
    text = response.content.decode()
    assert "suanli-agent join --server" in text and f"jt_{join_token.prefix}_" in text
