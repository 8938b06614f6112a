"""The API keys page: create (secret shown once), list, revoke; only one's own keys."""

import pytest
from django.contrib.auth.models import User

from core.models import ApiKey
from core.services import apikey_authenticate, apikey_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def ann(client):
    user = User.objects.create_user(username="ann@example.com", email="ann@example.com", password="x")
    client.force_login(user)
    return user


@pytest.fixture
def bob():
    return User.objects.create_user(username="bob@example.com", email="bob@example.com", password="x")


def test_create_shows_the_secret_once_then_only_the_prefix(client, ann):
    response = client.post("/keys/", {"name": "training cluster", "scopes": ["read", "trade"]})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    api_key = ApiKey.objects.get(user=ann)
    secret = response.context["secret"]
    assert secret.startswith(f"sk_{api_key.prefix}_")
    body = response.content.decode()
    assert f'value="{secret}"' in body
    assert "shown only once" in body
    assert api_key.name == "training cluster" and api_key.scopes == ["read", "trade"]
    assert apikey_authenticate(secret) == api_key

    listing = client.get("/keys/").content.decode()
    assert f"sk_{api_key.prefix}_…" in listing
    assert secret not in listing
    assert "training cluster" in listing


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "ci"}, "Choose at least one scope."),
        ({"name": "   ", "scopes": ["read"]}, "This field is required."),
        ({"name": "ci", "scopes": ["admin"]}, "Select a valid choice."),
    ],
)
def test_create_rejects_bad_input(client, ann, data, message):
    response = client.post("/keys/", data)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not ApiKey.objects.exists()


def test_revoke_asks_for_confirmation_then_revokes(client, ann):
    issued = apikey_create(user=ann, name="old", scopes=["read"])
    url = f"/keys/{issued.api_key.pk}/revoke/"
    confirm = client.get(url)
    assert confirm.status_code == 200
    assert "Revoke this API key?" in confirm.content.decode()
    issued.api_key.refresh_from_db()
    assert issued.api_key.is_active  # GET changes nothing

    response = client.post(url, follow=True)
    assert response.redirect_chain[-1][0] == "/keys/"
    assert "is revoked" in response.content.decode()
    issued.api_key.refresh_from_db()
    assert not issued.api_key.is_active
    assert apikey_authenticate(issued.secret) is None
    # Revoking again is harmless; the confirmation page now just points back to the list.
    assert client.post(url).status_code == 302
    assert client.get(url)["Location"] == "/keys/"


def test_another_users_key_is_invisible_and_cannot_be_revoked(client, ann, bob):
    bobs = apikey_create(user=bob, name="bob's secret project", scopes=["read"]).api_key
    listing = client.get("/keys/").content.decode()
    assert "bob&#x27;s secret project" not in listing and bobs.prefix not in listing
    assert client.get(f"/keys/{bobs.pk}/revoke/").status_code == 404
    assert client.post(f"/keys/{bobs.pk}/revoke/").status_code == 404
    bobs.refresh_from_db()
    assert bobs.is_active


def test_dashboard_counts_only_the_users_active_keys(client, ann, bob):
    apikey_create(user=ann, name="a", scopes=["read"])
    revoked = apikey_create(user=ann, name="b", scopes=["read"]).api_key
    client.post(f"/keys/{revoked.pk}/revoke/")
    apikey_create(user=bob, name="c", scopes=["read"])
    response = client.get("/")
    assert response.context["active_key_count"] == 1


@pytest.mark.parametrize("count", [1, 50])
def test_keys_page_query_count_does_not_grow_with_rows(client, ann, django_assert_max_num_queries, count):
    ApiKey.objects.bulk_create(
        ApiKey(user=ann, name=f"key {i}", prefix=f"p{i:04d}", key_hash="0" * 64, scopes=["read"])
        for i in range(count)
    )
    with django_assert_max_num_queries(4):
        response = client.get("/keys/")
    assert response.status_code == 200
    assert len(response.context["keys"]) == count


def test_keys_page_paginates(client, ann):
    ApiKey.objects.bulk_create(
        ApiKey(user=ann, name=f"key {i}", prefix=f"p{i:04d}", key_hash="0" * 64, scopes=["read"])
        for i in range(51)
    )
    first = client.get("/keys/")
    assert len(first.context["keys"]) == 50
    assert "Page 1 of 2" in first.content.decode()
    assert len(client.get("/keys/?page=2").context["keys"]) == 1
