"""Page-by-page authorisation of the marketplace, billing and provider portal routes: each is
public or requires a login (anonymous visitors are sent to log in, for GET and POST alike). What a
signed-in user may see of another user's objects is tested page by page in
tests/{marketplace,billing,providers}/test_portal_pages.py."""

import pytest
from django.contrib.auth.models import User
from django.urls import URLPattern, reverse

from billing import urls as billing_urls
from marketplace import urls as marketplace_urls
from providers import urls as providers_urls

pytestmark = pytest.mark.django_db

PUBLIC = {
    "marketplace:market": {},
    "marketplace:offer_detail": {"offer_id": 1},
    "billing:stripe-webhook": {},  # authenticated by its Stripe-Signature header
}
PRIVATE = {
    "marketplace:order_new": {"offer_id": 1},
    "marketplace:orders": {},
    "marketplace:order_detail": {"order_id": 1},
    "marketplace:order_cancel": {"order_id": 1},
    "marketplace:job_detail": {"job_id": 1},
    "marketplace:job_stop": {"job_id": 1},
    "marketplace:nodes": {},
    "marketplace:node_detail": {"node_id": 1},
    "marketplace:pricing": {},
    "marketplace:pricing_update": {"node_id": 1},
    "marketplace:volumes": {},
    "marketplace:volume_delete": {"volume_id": 1},
    "marketplace:spend_settings": {},
    "marketplace:webhook_add": {},
    "marketplace:webhook_delete": {"webhook_id": 1},
    "billing:statement-csv": {"pk": 1},
    "billing:statement-html": {"pk": 1},
    "billing:wallet": {},
    "billing:topup": {},
    "billing:earnings": {},
    "billing:payout_onboard": {},
    "providers:start": {},
    "providers:join": {},
    "providers:node_settings": {"node_id": 1},
}


def test_every_portal_route_is_classified():
    names = {
        f"{module.app_name}:{pattern.name}"
        for module in (marketplace_urls, billing_urls, providers_urls)
        for pattern in module.urlpatterns
        if isinstance(pattern, URLPattern)
    }
    assert names == set(PUBLIC) | set(PRIVATE), "classify new routes here (and test them)"


@pytest.mark.parametrize(("name", "kwargs"), PRIVATE.items())
@pytest.mark.parametrize("method", ["get", "post"])
def test_anonymous_users_are_sent_to_login(client, name, kwargs, method):
    url = reverse(name, kwargs=kwargs)
    response = getattr(client, method)(url)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={url}"


def test_the_navigation_links_every_portal_page():
    user = User.objects.create_user(username="nav@example.com", email="nav@example.com", password="x")
    from django.test import Client

    client = Client()
    client.force_login(user)
    body = client.get("/").content.decode()
    for path in ("/market/", "/orders/", "/wallet/", "/provider/nodes/", "/provider/pricing/",
                 "/provider/payouts/", "/keys/"):  # fmt: skip
        assert f'href="{path}"' in body, path
    for path in ("/market/", "/orders/", "/wallet/", "/provider/nodes/", "/provider/pricing/",
                 "/provider/payouts/", "/provider/start/"):  # fmt: skip
        assert client.get(path).status_code == 200, path


def test_stripe_checkout_and_connect_return_addresses_reach_the_portal(client):
    user = User.objects.create_user(username="ret@example.com", email="ret@example.com", password="x")
    client.force_login(user)
    # billing.services.topups and billing.api use SITE_URL/wallet and SITE_URL/provider/payouts.
    assert client.get("/wallet?top_up=1", follow=True).redirect_chain[-1][0] == "/wallet/?top_up=1"
    assert client.get("/provider/payouts", follow=True).status_code == 200
