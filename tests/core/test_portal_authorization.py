"""Page-by-page authorisation: every core portal route is either public or requires a login."""

import pytest
from django.contrib.auth.models import User
from django.urls import URLPattern, get_resolver, reverse

from core import urls as core_urls
from core.services import apikey_create

pytestmark = pytest.mark.django_db

PUBLIC = {
    "home",
    "signup",
    "login",
    "logout",
    "password_reset",
    "password_reset_done",
    "password_reset_confirm",
    "password_reset_complete",
}
PRIVATE = {"apikey_list": {}, "apikey_revoke": {"api_key_id": 1}, "ssh_key": {}}


def test_every_core_route_is_classified():
    names = {pattern.name for pattern in core_urls.urlpatterns if isinstance(pattern, URLPattern)}
    assert names == PUBLIC | set(PRIVATE), "classify new routes here (and test them)"


@pytest.mark.parametrize(("name", "kwargs"), PRIVATE.items())
@pytest.mark.parametrize("method", ["get", "post"])
def test_anonymous_users_are_sent_to_login(client, name, kwargs, method):
    url = reverse(name, kwargs=kwargs)
    response = getattr(client, method)(url)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={url}"


def test_the_home_page_shows_no_private_data_to_anonymous_visitors(client):
    user = User.objects.create_user(username="ann@example.com", email="ann@example.com", password="x")
    apikey_create(user=user, name="ann key", scopes=["read"])
    body = client.get("/").content.decode()
    assert "ann@example.com" not in body and "ann key" not in body
    assert 'href="/keys/"' not in body


def test_user_b_cannot_see_or_revoke_user_as_key(client):
    ann = User.objects.create_user(username="ann@example.com", email="ann@example.com", password="x")
    bob = User.objects.create_user(username="bob@example.com", email="bob@example.com", password="x")
    anns = apikey_create(user=ann, name="ann key", scopes=["trade"]).api_key
    client.force_login(bob)
    for page in ("/", "/keys/"):
        body = client.get(page).content.decode()
        assert "ann key" not in body and anns.prefix not in body and "ann@example.com" not in body
    assert client.get(f"/keys/{anns.pk}/revoke/").status_code == 404
    assert client.post(f"/keys/{anns.pk}/revoke/").status_code == 404
    anns.refresh_from_db()
    assert anns.is_active


def test_resolver_has_the_language_switcher():
    assert reverse("set_language") == "/i18n/setlang/"
    assert get_resolver().resolve("/i18n/setlang/").url_name == "set_language"
