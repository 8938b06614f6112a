"""Provider portal pages: becoming a provider and joining a node."""

from __future__ import annotations

import pytest
from django.test import Client

from providers.models import JoinToken, Provider, ProviderMembership
from providers.services import hash_secret
from tests.providers.factories import ProviderFactory, UserFactory, member_of

pytestmark = pytest.mark.django_db


def client_for(user) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(user)
    return client


def test_a_user_becomes_a_provider_then_gets_a_join_token_shown_once():
    user = UserFactory()
    client = client_for(user)
    assert client.get("/provider/nodes/join/")["Location"] == "/provider/start/"
    assert "Become a provider" in client.get("/provider/nodes/").content.decode()
    response = client.post("/provider/start/", {"name": "Huaxia Compute"})
    assert response.status_code == 302 and response["Location"] == "/provider/nodes/join/"
    provider = Provider.objects.get(name="Huaxia Compute")
    assert ProviderMembership.objects.filter(provider=provider, user=user, role="owner").exists()

    page = client.post(
        "/provider/nodes/join/", {"provider": provider.pk, "region": "cn-east", "cluster": "sh-a"}
    )
    body = page.content.decode()
    token = JoinToken.objects.get(provider=provider)
    assert token.region == "cn-east" and token.cluster == "sh-a" and token.created_by == user
    assert "suanli-agent join --server" in body and "no-store" in page["Cache-Control"]
    secret = body.split('id="join-token" type="text" value="')[1].split('"')[0]
    assert hash_secret(secret) == token.token_hash
    # Shown once: the nodes page and a fresh join page never show it again.
    assert secret not in client.get("/provider/nodes/").content.decode()
    assert secret not in client.get("/provider/nodes/join/").content.decode()


def test_a_member_cannot_issue_a_token_for_someone_elses_provider():
    mine, theirs = ProviderFactory(), ProviderFactory()
    member = member_of(mine)
    response = client_for(member).post("/provider/nodes/join/", {"provider": theirs.pk, "region": "x"})
    assert response.status_code == 200 and not JoinToken.objects.exists()


def test_an_error_on_the_hidden_provider_field_is_shown_above_the_form():
    # With one provider the field is hidden; a tampered or stale value must not fail silently.
    mine, theirs = ProviderFactory(), ProviderFactory()
    client = client_for(member_of(mine))
    body = client.post("/provider/nodes/join/", {"provider": theirs.pk, "region": "cn-east"}).content.decode()
    assert 'type="hidden" name="provider"' in body
    assert '<div role="alert"><ul class="errorlist nonfield"><li>Provider: Select a valid choice.' in body
    client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/"})
    body = client.post("/provider/nodes/join/", {"provider": theirs.pk}).content.decode()
    assert "<li>供应商：选择一个有效的选项" in body
    assert not JoinToken.objects.exists()
