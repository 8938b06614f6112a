"""The API's shared conventions: Idempotency-Key, throttling, API keys over the API, pagination,
ETags, the error shape, and the OpenAPI schema and its documentation pages."""

from __future__ import annotations

import base64
import json
from io import StringIO

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from billing.models import TopUp
from core.models import ApiKey, IdempotentRequest
from core.services import IDEMPOTENCY_STALE_AFTER, apikey_authenticate
from marketplace.models import Order
from providers.models import JoinToken
from tests.api.world import World

pytestmark = pytest.mark.django_db


def client_for(actor) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {actor.key}")
    return client


# --- Idempotency-Key -------------------------------------------------------------------------------


def test_top_up_replays_the_original_response_and_refuses_another_body(world: World):
    client = client_for(world.buyer_a)
    first = client.post(
        "/api/v1/wallet/top-ups", {"amount": "25.00"}, format="json", HTTP_IDEMPOTENCY_KEY="t1"
    )
    assert first.status_code == 201
    again = client.post(
        "/api/v1/wallet/top-ups", {"amount": "25.00"}, format="json", HTTP_IDEMPOTENCY_KEY="t1"
    )
    assert again.status_code == 200
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    other = client.post(
        "/api/v1/wallet/top-ups", {"amount": "30.00"}, format="json", HTTP_IDEMPOTENCY_KEY="t1"
    )
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert TopUp.objects.filter(buyer=world.buyer_a.user).count() == 1


def test_join_token_and_order_replays_create_nothing_new(world: World):
    provider = client_for(world.provider_member)
    token = provider.post(
        "/api/v1/provider/join-tokens", {"region": "cn-east"}, format="json", HTTP_IDEMPOTENCY_KEY="j"
    )
    replay = provider.post(
        "/api/v1/provider/join-tokens", {"region": "cn-east"}, format="json", HTTP_IDEMPOTENCY_KEY="j"
    )
    assert (token.status_code, replay.status_code) == (201, 200)
    assert replay.json()["token"] == token.json()["token"]
    assert JoinToken.objects.filter(pk=token.json()["id"]).count() == 1
    assert JoinToken.objects.count() == 3  # the world's two nodes, and this one

    buyer = client_for(world.buyer_a)
    body = {"term": "on_demand", "devices_per_node": 1, "price_limit": "3.00", "offer": world.node.offer.pk,
            "job": {"runtime": "process", "command": ["python", "-V"]}}  # fmt: skip
    created = buyer.post("/api/v1/orders", body, format="json", HTTP_IDEMPOTENCY_KEY="o")
    # Key order and spacing of the JSON do not matter; its content does.
    reordered = json.dumps(dict(reversed(list(body.items()))), indent=3)
    replay = buyer.post(
        "/api/v1/orders", reordered, content_type="application/json", HTTP_IDEMPOTENCY_KEY="o"
    )
    assert (created.status_code, replay.status_code) == (201, 200)
    assert replay.json() == created.json()
    assert Order.objects.filter(buyer=world.buyer_a.user).count() == 2
    changed = buyer.post(
        "/api/v1/orders", {**body, "devices_per_node": 2}, format="json", HTTP_IDEMPOTENCY_KEY="o"
    )
    assert changed.status_code == 409
    # The same key on another endpoint is another request: refused too.
    elsewhere = buyer.post(
        "/api/v1/wallet/top-ups", {"amount": "25.00"}, format="json", HTTP_IDEMPOTENCY_KEY="o"
    )
    assert elsewhere.status_code == 409


def test_a_failed_request_frees_its_key_and_keys_are_per_user(world: World):
    buyer = client_for(world.buyer_a)
    too_small = buyer.post(
        "/api/v1/wallet/top-ups", {"amount": "0.01"}, format="json", HTTP_IDEMPOTENCY_KEY="k"
    )
    assert too_small.status_code == 400
    assert not IdempotentRequest.objects.filter(key="k").exists()
    ok = buyer.post("/api/v1/wallet/top-ups", {"amount": "10.00"}, format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert ok.status_code == 201
    other_buyer = client_for(world.buyer_b)
    theirs = other_buyer.post(
        "/api/v1/wallet/top-ups", {"amount": "12.00"}, format="json", HTTP_IDEMPOTENCY_KEY="k"
    )
    assert theirs.status_code == 201
    assert theirs.json()["id"] != ok.json()["id"]


def test_a_request_in_progress_is_a_conflict_until_it_is_stale(world: World):
    from django.utils import timezone

    from core.idempotency import request_fingerprint  # noqa: F401 - the documented hashing

    IdempotentRequest.objects.create(
        user=world.buyer_a.user, key="busy", method="POST", path="/api/v1/wallet/top-ups",
        body_hash="x", started_at=timezone.now(),
    )  # fmt: skip
    buyer = client_for(world.buyer_a)
    busy = buyer.post(
        "/api/v1/wallet/top-ups", {"amount": "10.00"}, format="json", HTTP_IDEMPOTENCY_KEY="busy"
    )
    assert busy.status_code == 409  # another body: reused
    IdempotentRequest.objects.filter(key="busy").delete()
    import hashlib

    body_hash = hashlib.sha256(b'{"amount":"10.00"}').hexdigest()
    row = IdempotentRequest.objects.create(
        user=world.buyer_a.user, key="busy", method="POST", path="/api/v1/wallet/top-ups",
        body_hash=body_hash, started_at=timezone.now(),
    )  # fmt: skip
    running = buyer.post(
        "/api/v1/wallet/top-ups", {"amount": "10.00"}, format="json", HTTP_IDEMPOTENCY_KEY="busy"
    )
    assert running.status_code == 409
    assert running.json()["error"]["code"] == "idempotency_in_progress"
    IdempotentRequest.objects.filter(pk=row.pk).update(
        started_at=timezone.now() - IDEMPOTENCY_STALE_AFTER * 2
    )
    taken_over = buyer.post(
        "/api/v1/wallet/top-ups", {"amount": "10.00"}, format="json", HTTP_IDEMPOTENCY_KEY="busy"
    )
    assert taken_over.status_code == 201


def test_orders_require_a_key_and_long_keys_are_refused(world: World):
    buyer = client_for(world.buyer_a)
    body = {"term": "on_demand", "devices_per_node": 1, "price_limit": "3.00", "job": {"runtime": "process",
            "command": ["true"]}}  # fmt: skip
    missing = buyer.post("/api/v1/orders", body, format="json")
    assert missing.status_code == 400 and "Idempotency-Key" in missing.json()["error"]["fields"]
    too_long = buyer.post(
        "/api/v1/wallet/top-ups", {"amount": "10.00"}, format="json", HTTP_IDEMPOTENCY_KEY="k" * 129
    )
    assert too_long.status_code == 400


# --- Throttling ------------------------------------------------------------------------------------


def test_each_key_is_throttled_on_its_own_with_retry_after(world: World, settings):
    rates = dict(settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], api="3/min", anon="2/min")
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    buyer = client_for(world.buyer_a)
    assert [buyer.get("/api/v1/wallet").status_code for _ in range(3)] == [200, 200, 200]
    limited = buyer.get("/api/v1/wallet")
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "throttled"
    assert 1 <= int(limited["Retry-After"]) <= 61
    # Another key of another user has its own budget; anonymous callers theirs, per IP.
    assert client_for(world.buyer_b).get("/api/v1/wallet").status_code == 200
    anonymous = APIClient()
    assert [anonymous.get("/api/v1/accelerators").status_code for _ in range(3)] == [200, 200, 429]
    # Agents are not throttled by the API limits.
    agent = client_for(world.agent)
    heartbeat = {"agent_version": "0.1.0", "running_jobs": [], "devices": []}
    assert all(
        agent.post("/api/agent/v1/heartbeat", heartbeat, format="json").status_code == 200 for _ in range(4)
    )


# --- API keys ----------------------------------------------------------------------------------------


def test_api_keys_are_created_with_a_session_shown_once_and_revocable(world: World):
    session = APIClient(enforce_csrf_checks=True)
    session.force_login(world.buyer_a.user)
    no_csrf = session.post("/api/v1/api-keys", {"name": "ci", "scopes": ["read"]}, format="json")
    assert no_csrf.status_code == 403  # a session needs its CSRF token

    session = APIClient()
    session.force_login(world.buyer_a.user)
    created = session.post("/api/v1/api-keys", {"name": "ci", "scopes": ["read", "trade"]}, format="json")
    assert created.status_code == 201
    secret = created.json()["secret"]
    assert secret.startswith(created.json()["key_prefix"])
    key = ApiKey.objects.get(pk=created.json()["id"])
    assert secret not in json.dumps(list(ApiKey.objects.values()), default=str)  # only the hash is kept
    assert key.last_used_at is None
    listed = client_for(type("A", (), {"key": secret})).get("/api/v1/api-keys")
    assert listed.status_code == 200
    assert all("secret" not in row for row in listed.json()["results"])
    key.refresh_from_db()
    assert key.last_used_at is not None  # recorded on use

    bad = session.post("/api/v1/api-keys", {"name": "x", "scopes": ["admin"]}, format="json")
    assert bad.status_code == 400 and "scopes.0" in bad.json()["error"]["fields"]
    revoked = session.post(f"/api/v1/api-keys/{key.pk}/revoke")
    assert revoked.status_code == 200 and revoked.json()["active"] is False
    assert apikey_authenticate(secret) is None
    assert client_for(type("A", (), {"key": secret})).get("/api/v1/wallet").status_code == 401
    assert session.post(f"/api/v1/api-keys/{world.buyer_a_key_id + 10_000}/revoke").status_code == 404


def test_createapikey_prints_a_working_key_once(world: World):
    out = StringIO()
    call_command("createapikey", world.buyer_b.user.username, "--scopes", "read,provider", stdout=out)
    secret = out.getvalue().strip()
    key = apikey_authenticate(secret)
    assert key is not None and sorted(key.scopes) == ["provider", "read"]


# --- Pagination, ETags, errors ---------------------------------------------------------------------


def test_offers_paginate_with_a_cursor_without_repeats(world: World):
    from tests.api.world import make_online
    from tests.providers.factories import registered_node

    for i in range(5):
        node, _ = registered_node(world.node.provider, name=f"more-{i}", devices=8)
        make_online(node, on_demand="2.00")  # ties on price: the cursor must still not repeat
    client = APIClient()
    seen, url, pages = [], "/api/v1/offers?limit=2&sort=price", 0
    while url:
        page = client.get(url).json()
        seen += [o["id"] for o in page["results"]]
        url = page["next"]
        pages += 1
    all_at_once = [o["id"] for o in client.get("/api/v1/offers?limit=100").json()["results"]]
    assert seen == all_at_once and len(seen) == len(set(seen)) == 7 and pages == 4
    bogus = client.get("/api/v1/offers?cursor=" + base64.urlsafe_b64encode(b"[1]").decode())
    assert bogus.status_code == 400 and "cursor" in bogus.json()["error"]["fields"]


def test_lists_filter_and_sort(world: World):
    buyer = client_for(world.buyer_a)
    assert buyer.get("/api/v1/orders?status=running").json()["results"][0]["id"] == world.order.pk
    assert buyer.get("/api/v1/orders?status=open").json()["results"] == []
    assert buyer.get("/api/v1/orders?updated_since=2999-01-01T00:00:00Z").json()["results"] == []
    bad = buyer.get("/api/v1/orders?updated_since=yesterday")
    assert bad.status_code == 400 and bad.json()["error"]["fields"] == {
        "updated_since": ["An ISO 8601 time with a zone."]
    }
    assert buyer.get("/api/v1/orders?sort=sideways").status_code == 400
    assert buyer.get(f"/api/v1/usage?job={world.job.pk}").json()["results"][0]["job_id"] == world.job.pk
    assert buyer.get("/api/v1/usage?status=closed").json()["results"] == []


def test_etag_answers_304_while_nothing_changed(world: World):
    buyer = client_for(world.buyer_a)
    first = buyer.get(f"/api/v1/orders/{world.order.pk}")
    etag = first["ETag"]
    assert buyer.get(f"/api/v1/orders/{world.order.pk}", HTTP_IF_NONE_MATCH=etag).status_code == 304
    buyer.post(f"/api/v1/orders/{world.order.pk}/cancel")
    assert buyer.get(f"/api/v1/orders/{world.order.pk}", HTTP_IF_NONE_MATCH=etag).status_code == 200
    assert "updated_at" in first.json() and first.json()["updated_at"].endswith("Z")


def test_unknown_api_urls_answer_in_the_error_shape(world: World):
    response = APIClient().post("/api/v1/orders/not-a-number/cancel")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


# --- Schema and docs -------------------------------------------------------------------------------


def test_schema_validates_without_warnings():
    # drf-spectacular's own check: --fail-on-warn turns any unresolvable field or enum clash into a failure.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", "/dev/null")


def test_schema_documents_every_route_and_the_docs_are_served_locally(world: World):
    from django.urls import URLPattern, URLResolver, get_resolver

    client = APIClient()
    schema = client.get("/api/schema/?format=json").json()
    paths = set(schema["paths"])

    def routes(resolver: URLResolver, prefix: str = "") -> list[str]:
        out = []
        for entry in resolver.url_patterns:
            if isinstance(entry, URLResolver):
                out += routes(entry, prefix + str(entry.pattern))
            elif isinstance(entry, URLPattern):
                out.append(prefix + str(entry.pattern))
        return out

    api_routes = [r for r in routes(get_resolver()) if r.startswith(("api/v1/", "api/agent/v1/"))]
    for route in api_routes:
        templated = "/" + route.replace("<int:", "{").replace(">", "}").replace("{pk}", "{id}")
        assert templated in paths, f"{templated} is not in the schema"
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            errors = [code for code in responses if code.startswith(("4", "5"))]
            assert errors or path == "/api/agent/v1/ping", f"{method} {path} documents no error"
            for code in errors:
                assert responses[code]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/Error"
                }

    for page in ("/api/docs/", "/api/redoc/"):
        html = client.get(page).content.decode()
        assert "/static/drf_spectacular_sidecar/" in html
        assert "cdn.jsdelivr" not in html and "unpkg" not in html


def test_idempotency_keys_are_forgotten_after_their_retention(world: World):
    from django.utils import timezone

    from core.services import IDEMPOTENCY_RETENTION
    from core.tasks import idempotent_requests_purge

    now = timezone.now()
    for key, age in (("old", IDEMPOTENCY_RETENTION * 2), ("new", IDEMPOTENCY_RETENTION / 2)):
        IdempotentRequest.objects.create(
            user=world.buyer_a.user, key=key, method="POST", path="/p", body_hash="h", started_at=now - age,
            status_code=201, response_body={}, completed_at=now - age,
        )  # fmt: skip
    assert idempotent_requests_purge() == 1
    assert list(IdempotentRequest.objects.values_list("key", flat=True)) == ["new"]
