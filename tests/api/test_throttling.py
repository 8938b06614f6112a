"""Per-client limits key on the real client: ``X-Forwarded-For`` counts only from trusted proxies
(``SUANLI_TRUSTED_PROXIES``), and failed API-key or node-credential authentications are limited
per client (``SUANLI_AUTH_FAILURE_RATE``) with a 429 and ``Retry-After`` in the error shape."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from rest_framework.test import APIClient
from rest_framework.throttling import ScopedRateThrottle

from core.middleware import client_ip_from, trusted_proxies
from tests.api.world import World

pytestmark = pytest.mark.django_db

REGISTER = "/api/agent/v1/register"
HEARTBEAT = "/api/agent/v1/heartbeat"


@pytest.fixture
def register_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    # DRF's ScopedRateThrottle reads its rates once, at import (SUANLI_AGENT_REGISTER_RATE).
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"agent_register": "20/min"})


def auth_failure_rate(settings: Any, rate: str) -> None:
    rates = dict(settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], auth_failure=rate)
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}


def guess(client: APIClient, i: int, **extra: str) -> int:
    body = {"token": f"jt_guess{i}_secret", "name": f"n{i}", "agent_version": "1",
            "inventory": {"host": {}, "devices": []}}  # fmt: skip
    return client.post(REGISTER, body, format="json", **extra).status_code


def assert_throttled(response: Any) -> None:
    assert response.status_code == 429, response.content
    error = response.json()["error"]
    assert error["code"] == "throttled" and error["message"] and error["fields"] == {}
    assert 1 <= int(response["Retry-After"]) <= 61


# --- X-Forwarded-For ----------------------------------------------------------------------------


def test_rotating_forwarded_for_from_an_untrusted_client_does_not_escape_the_register_limit(register_rate):
    client = APIClient()
    codes = [guess(client, i, HTTP_X_FORWARDED_FOR=f"198.51.100.{i}") for i in range(60)]
    assert codes[:20] == [400] * 20
    assert codes[20:] == [429] * 40
    assert_throttled(client.post(REGISTER, {}, format="json", HTTP_X_FORWARDED_FOR="198.51.100.250"))


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget(register_rate, settings):
    settings.SUANLI_TRUSTED_PROXIES = ["127.0.0.0/8"]  # the test client's REMOTE_ADDR is 127.0.0.1
    proxy = APIClient()
    assert [guess(proxy, i, HTTP_X_FORWARDED_FOR=f"198.51.100.{i}") for i in range(60)] == [400] * 60
    codes = [guess(proxy, i, HTTP_X_FORWARDED_FOR="203.0.113.7") for i in range(21)]
    assert codes == [400] * 20 + [429]
    # What the client put in front of the header does not change who it is to the proxy.
    assert guess(proxy, 99, HTTP_X_FORWARDED_FOR="10.9.9.9, 203.0.113.7") == 429
    # Another client behind the same proxy is not affected.
    assert guess(proxy, 100, HTTP_X_FORWARDED_FOR="203.0.113.8") == 400


TRUSTED = trusted_proxies(("10.0.0.0/8", "2001:db8::/32", "192.0.2.1"))


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client"),
    [
        ("198.51.100.1", "203.0.113.7", "198.51.100.1"),  # an untrusted peer's header is ignored
        ("10.0.0.5", None, "10.0.0.5"),
        ("10.0.0.5", "203.0.113.7", "203.0.113.7"),
        ("10.0.0.5", "6.6.6.6, 203.0.113.7, 10.1.1.1", "203.0.113.7"),  # nearest untrusted hop
        ("10.0.0.5", "10.2.2.2, 10.1.1.1", "10.2.2.2"),  # all trusted: the first hop
        ("10.0.0.5", "203.0.113.7:51234", "203.0.113.7"),
        ("192.0.2.1", "[2001:db9::1]:443", "2001:db9::1"),
        ("2001:db8::5", "203.0.113.7", "203.0.113.7"),
        ("10.0.0.5", "not-an-ip", "10.0.0.5"),  # garbage: the proxy that vouched for it
        ("10.0.0.5", "203.0.113.7, garbage, 10.1.1.1", "10.1.1.1"),
        ("10.0.0.5", "", "10.0.0.5"),
    ],
)
def test_client_ip_from_forwarded_for(peer: str, forwarded_for: str | None, client: str):
    assert client_ip_from(peer=peer, forwarded_for=forwarded_for, trusted=TRUSTED) == client


def test_no_proxy_is_trusted_by_default_and_a_typo_is_refused(settings):
    assert settings.SUANLI_TRUSTED_PROXIES == []
    assert (
        client_ip_from(peer="127.0.0.1", forwarded_for="203.0.113.7", trusted=trusted_proxies(()))
        == "127.0.0.1"
    )
    with pytest.raises(ImproperlyConfigured):
        trusted_proxies(("10.0.0.0/33",))
    assert trusted_proxies(("10.0.0.1/8",)) == (ipaddress.ip_network("10.0.0.0/8"),)


# --- Failed authentication ------------------------------------------------------------------------


def test_bad_api_keys_are_throttled_per_client(world: World, settings):
    assert settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["auth_failure"] == "30/min"
    attacker = APIClient()
    codes = []
    for i in range(150):
        attacker.credentials(HTTP_AUTHORIZATION=f"Bearer sk_guess{i:03d}_notasecret")
        codes.append(attacker.get("/api/v1/wallet", HTTP_X_FORWARDED_FOR=f"198.51.100.{i}").status_code)
    assert codes[:30] == [401] * 30
    assert codes[30:] == [429] * 120
    # While blocked, even a right key from that client is refused before it is looked up.
    attacker.credentials(HTTP_AUTHORIZATION=f"Bearer {world.buyer_a.key}")
    assert_throttled(attacker.get("/api/v1/wallet"))
    # Another client is not affected.
    other = APIClient(REMOTE_ADDR="192.0.2.44")
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {world.buyer_a.key}")
    assert other.get("/api/v1/wallet").status_code == 200


def test_bad_node_credentials_are_throttled_per_client(world: World, settings):
    auth_failure_rate(settings, "5/min")
    attacker = APIClient(REMOTE_ADDR="192.0.2.10")
    codes = []
    for i in range(150):
        attacker.credentials(HTTP_AUTHORIZATION=f"Bearer nc_guess{i:03d}_notasecret")
        codes.append(attacker.post(HEARTBEAT, {}, format="json").status_code)
    assert codes[:5] == [401] * 5
    assert codes[5:] == [429] * 145
    attacker.credentials(HTTP_AUTHORIZATION=f"Bearer {world.agent.key}")
    assert_throttled(attacker.post("/api/agent/v1/work", {"running": []}, format="json"))
    node = APIClient(REMOTE_ADDR="192.0.2.11")
    node.credentials(HTTP_AUTHORIZATION=f"Bearer {world.agent.key}")
    heartbeat = {"agent_version": "0.1.0", "running_jobs": [], "devices": []}
    assert node.post(HEARTBEAT, heartbeat, format="json").status_code == 200


def test_successful_authentications_are_not_counted(world: World, settings):
    auth_failure_rate(settings, "3/min")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {world.buyer_a.key}")
    assert all(client.get("/api/v1/wallet").status_code == 200 for _ in range(10))
