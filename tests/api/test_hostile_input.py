"""Hostile input never reaches a 5xx: deep nesting, integers past bigint, lone surrogates, NUL,
oversized bodies and bad ``?limit=`` all answer a 4xx in the API's error shape, naming the field
where there is one, on the buyer API, the agent API and unauthenticated agent registration.

The fixed cases below are the reproductions of issue #11 (items 7-10); the Hypothesis test at the
end throws such values into every POST/PATCH endpoint so the class stays closed.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from billing.models import TopUp, UsageSample
from core.errors import ValidationFailed
from core.parsers import body_check
from marketplace.models import Order
from tests.api.world import Actor, World
from tests.providers.factories import h100_inventory

pytestmark = pytest.mark.django_db


DEEP = 5_000
BEYOND_BIGINT = 2**63


def client_for(actor: Actor | None) -> APIClient:
    client = APIClient()
    if actor is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {actor.key}")
    return client


def post_raw(client: APIClient, path: str, body: str | bytes) -> Any:
    return client.generic(
        "POST", path, body, content_type="application/json", HTTP_IDEMPOTENCY_KEY=uuid.uuid4().hex
    )


def assert_error_shape(response: Any, status: int, *, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"code", "message", "fields"}
    assert isinstance(error["message"], str) and error["message"]
    if field is not None:
        assert field in error["fields"], error
    return error


def order_body(world: World, **job: Any) -> dict[str, Any]:
    return {
        "term": "on_demand", "devices_per_node": 1, "price_limit": "3.00", "offer": world.node.offer.pk,
        "job": {"runtime": "process", "command": ["python", "-V"], **job},
    }  # fmt: skip


def usage_sample(world: World, **overrides: Any) -> dict[str, Any]:
    return {
        "job_id": world.job.pk, "seq": 1, "window_start": "2026-01-01T00:00:00Z",
        "window_end": "2026-01-01T00:00:30Z", "device_count": 1, **overrides,
    }  # fmt: skip


# --- Item 7: JSON nested thousands deep ------------------------------------------------------------


@pytest.mark.parametrize("deep", [DEEP, 50_000])
def test_deeply_nested_json_is_a_400_everywhere(world: World, deep: int):
    nested = "[" * deep + "]" * deep
    orders = post_raw(client_for(world.buyer_a), "/api/v1/orders", f'{{"job": {nested}}}')
    assert_error_shape(orders, 400)
    usage = post_raw(client_for(world.agent), "/api/agent/v1/usage", f'{{"samples": {nested}}}')
    assert_error_shape(usage, 400)
    register = post_raw(APIClient(), "/api/agent/v1/register", f'{{"token": {nested}}}')
    assert_error_shape(register, 400)
    assert Order.objects.count() == 1  # the world's


def test_nesting_the_parser_accepts_is_still_bounded(world: World):
    # Deep enough to parse, deep enough to hurt serializers and the idempotency fingerprint.
    nested = "[" * 200 + "]" * 200
    response = post_raw(client_for(world.buyer_a), "/api/v1/orders", f'{{"job": {{"command": {nested}}}}}')
    error = assert_error_shape(response, 400)
    assert any(name.startswith("job.command") for name in error["fields"])


# --- Item 8: integers beyond bigint ----------------------------------------------------------------


@pytest.mark.parametrize("field", ["seq", "memory_used_mib", "job_id"])
def test_usage_integers_beyond_bigint_are_field_errors(world: World, field: str):
    body = {"samples": [usage_sample(world, **{field: BEYOND_BIGINT})]}
    response = client_for(world.agent).post("/api/agent/v1/usage", body, format="json")
    assert_error_shape(response, 400, field=f"samples.0.{field}")
    assert not UsageSample.objects.filter(seq=1).exists()


def test_job_event_seq_beyond_bigint_is_a_field_error(world: World):
    response = client_for(world.agent).post(
        f"/api/agent/v1/jobs/{world.job.pk}/events", {"seq": BEYOND_BIGINT, "state": "running"}, format="json"
    )
    assert_error_shape(response, 400, field="seq")


def test_negative_integers_beyond_bigint_are_field_errors(world: World):
    response = post_raw(
        client_for(world.buyer_a), "/api/v1/orders", json.dumps({**order_body(world), "offer": -(2**64)})
    )
    assert_error_shape(response, 400, field="offer")


@pytest.mark.parametrize("amount", ["1" + "0" * 30, "1e30", "1e999999999", "-1e30", "99999999999999.99"])
def test_huge_top_up_amounts_are_field_errors(world: World, amount: str):
    response = post_raw(client_for(world.buyer_a), "/api/v1/wallet/top-ups", json.dumps({"amount": amount}))
    assert_error_shape(response, 400, field="amount")
    assert not TopUp.objects.exists()


def test_a_float_infinity_is_a_field_error(world: World):
    body = json.dumps({"samples": [usage_sample(world)]}).replace(
        '"device_count": 1', '"device_count": 1e999'
    )
    response = post_raw(client_for(world.agent), "/api/agent/v1/usage", body)
    assert_error_shape(response, 400, field="samples.0.device_count")


# --- Item 9: lone surrogates ------------------------------------------------------------------------


def test_a_lone_surrogate_in_the_job_command_is_a_field_error(world: World):
    # json.dumps writes the lone surrogate as the escape "\ud800", exactly as an attacker would.
    body = json.dumps(order_body(world, command=["python", "\ud800"]))
    response = post_raw(client_for(world.buyer_a), "/api/v1/orders", body)
    assert_error_shape(response, 400, field="job.command.1")
    assert Order.objects.count() == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"agent_version": "\ud800"}, "agent_version"),
        ({"devices": [{"index": 0, "uuid": "\udfff", "health": "ok"}]}, "devices.0.uuid"),
        ({"devices": [{"index": 0, "health": "ok", "\ud800": 1}]}, "devices.0"),
    ],
)
def test_lone_surrogates_in_heartbeats_are_field_errors(world: World, body: dict[str, Any], field: str):
    response = post_raw(client_for(world.agent), "/api/agent/v1/heartbeat", json.dumps(body))
    assert_error_shape(response, 400, field=field)


def test_lone_surrogates_in_registration_and_job_events_are_field_errors(world: World):
    register = post_raw(
        APIClient(), "/api/agent/v1/register", json.dumps({"token": "jt_\ud800", "name": "n"})
    )
    assert_error_shape(register, 400, field="token")
    event = post_raw(
        client_for(world.agent),
        f"/api/agent/v1/jobs/{world.job.pk}/events",
        json.dumps({"seq": 99, "state": "running", "message": "\ud800"}),
    )
    assert_error_shape(event, 400, field="message")
    logs = post_raw(
        client_for(world.agent),
        f"/api/agent/v1/jobs/{world.job.pk}/logs",
        json.dumps({"offset": 6, "data": "\udc00"}),
    )
    assert_error_shape(logs, 400, field="data")


def test_nul_in_a_buyer_api_body_is_a_field_error(world: World):
    # The job spec is free JSON (jsonb): no serializer field would catch it before PostgreSQL.
    response = post_raw(
        client_for(world.buyer_a), "/api/v1/orders", json.dumps(order_body(world, image="a\x00b"))
    )
    assert_error_shape(response, 400, field="job.image")
    assert Order.objects.count() == 1


def test_nul_in_an_agent_body_is_a_field_error(world: World):
    # Published ports are free JSON (jsonb), which cannot hold NUL either.
    body = {"seq": 5, "state": "running", "ports": {"8000/tcp": "a\x00"}}
    response = client_for(world.agent).post(f"/api/agent/v1/jobs/{world.job.pk}/events", body, format="json")
    assert_error_shape(response, 400, field="ports.8000/tcp")


def test_a_view_may_allow_nul_where_it_is_data():
    body_check({"data": "a\x00b"}, nul_allowed=frozenset({"data"}))
    with pytest.raises(ValidationFailed) as refused:
        body_check({"data": "ok", "other": ["a\x00b"]}, nul_allowed=frozenset({"data"}))
    assert refused.value.fields == {"other.0": ["Must not contain NUL characters."]}


def test_invalid_utf8_is_a_400(world: World):
    response = post_raw(client_for(world.buyer_a), "/api/v1/orders", b'{"term": "\xed\xa0\x80"}')
    assert_error_shape(response, 400)


def test_nul_in_a_query_parameter_is_a_field_error(world: World):
    response = client_for(world.buyer_a).get("/api/v1/offers?region=cn%00east")
    assert_error_shape(response, 400, field="region")


# --- Item 10: oversized bodies and ?limit= ------------------------------------------------------


def test_an_oversized_body_answers_the_json_error_shape(world: World, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    body = json.dumps(order_body(world, command=["x" * 20_000]))
    response = post_raw(client_for(world.buyer_a), "/api/v1/orders", body)
    error = assert_error_shape(response, 413)
    assert error["code"] == "too_large"
    register = post_raw(APIClient(), "/api/agent/v1/register", json.dumps({"token": "x" * 20_000}))
    assert_error_shape(register, 413)


def test_django_errors_outside_drf_answer_the_json_error_shape(world: World, settings):
    # A Host header that is not allowed: Django refuses it before any view, with an HTML page.
    settings.ALLOWED_HOSTS = ["exchange.test"]
    response = client_for(world.buyer_a).get("/api/v1/wallet", HTTP_HOST="evil.test")
    assert_error_shape(response, 400)
    # The portal keeps its HTML pages.
    assert (
        not APIClient()
        .get("/accounts/login/", HTTP_HOST="evil.test")["Content-Type"]
        .startswith("application/json")
    )


@pytest.mark.parametrize("limit", ["-5", "0", "abc", "1.5", "501", "10" + "0" * 30, "٣"])
@pytest.mark.parametrize(
    "path", ["/api/v1/offers", "/api/v1/orders", "/api/v1/usage", "/api/v1/provider/nodes"]
)
def test_a_bad_limit_is_a_400_on_every_paginated_list(world: World, path: str, limit: str):
    actor = world.provider_member if "provider" in path else world.buyer_a
    response = client_for(actor).get(path, {"limit": limit})
    assert_error_shape(response, 400, field="limit")


def test_a_good_limit_still_pages(world: World):
    client = client_for(world.buyer_a)
    assert len(client.get("/api/v1/offers", {"limit": "1"}).json()["results"]) == 1
    assert client.get("/api/v1/orders", {"limit": "500"}).status_code == 200


# --- The class stays closed: hostile values into every POST/PATCH endpoint ----------------------

HOSTILE_VALUES = [
    BEYOND_BIGINT, -(2**63) - 1, 10**40, "\ud800", "a\udfffb", "\x00", "a\x00", "1e30", "1" + "0" * 31,
    "1e999999999", "-1e999999999", "NaN", "Infinity", 1e308, -1e308, 0.5, -1, 0, "", None, True, [], {},
    [[[[[]]]]], {"\ud800": 1}, {"\x00": "x"}, "x" * 5000, "2020-01-01T00:00:00", "9999-12-31T23:59:59Z",
]  # fmt: skip


def valid_bodies(world: World) -> dict[tuple[str, str], tuple[Actor | None, dict[str, Any]]]:
    """A well-formed body per endpoint, and who sends it; the fuzzer spoils one place in it."""
    job = world.job.pk
    reading = {"index": 0, "uuid": "GPU-0", "health": "ok", "utilization_pct": 50, "memory_used_mib": 100,
               "power_w": 300.5, "temperature_c": 60}  # fmt: skip
    return {
        ("POST", "/api/v1/orders"): (world.buyer_a, order_body(world, env={"A": "b"}, ports=[8000])),
        ("POST", "/api/v1/wallet/top-ups"): (world.buyer_a, {"amount": "25.00"}),
        ("POST", "/api/v1/volumes"): (world.buyer_a, {"node": world.node.pk, "name": "data", "size_gib": 1}),
        ("PATCH", "/api/v1/spend-controls"): (
            world.buyer_a,
            {"monthly_cap": "500.00", "low_balance_threshold": "20.00"},
        ),
        ("POST", "/api/v1/webhooks"): (
            world.buyer_a,
            {"url": "http://127.0.0.1:9/hook", "events": ["job.ended"]},
        ),
        ("PATCH", "/api/v1/profile"): (
            world.buyer_a,
            {
                "ssh_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@laptop"
            },
        ),
        ("POST", "/api/v1/orders/<int:order_id>/cancel"): (world.buyer_a, {}),
        ("POST", "/api/v1/jobs/<int:job_id>/stop"): (world.buyer_a, {}),
        ("POST", "/api/v1/api-keys"): (world.buyer_a, {"name": "ci", "scopes": ["read"]}),
        ("POST", "/api/v1/api-keys/<int:api_key_id>/revoke"): (world.buyer_a, {}),
        ("POST", "/api/v1/provider/join-tokens"): (
            world.provider_member,
            {"region": "cn-east", "cluster": "a"},
        ),
        ("POST", "/api/v1/provider/payout-account"): (world.provider_member, {}),
        ("PATCH", "/api/v1/provider/nodes/<int:node_id>"): (
            world.provider_member,
            {
                "on_demand_price": "2.10",
                "spot_floor": "0.90",
                "listed": True,
                "min_rental_minutes": 10,
                "volume_price": "0.002",
                "pue": "1.25",
            },
        ),
        ("POST", "/api/agent/v1/register"): (
            None,
            {"token": "jt_abc_def", "name": "n1", "agent_version": "0.1.0", "inventory": h100_inventory(1)},
        ),
        ("POST", "/api/agent/v1/heartbeat"): (
            world.agent,
            {"agent_version": "0.1.0", "running_jobs": [job], "devices": [reading]},
        ),
        ("POST", "/api/agent/v1/work"): (world.agent, {"running": [job], "volumes": [1]}),
        ("POST", "/api/agent/v1/jobs/<int:job_id>/events"): (
            world.agent,
            {"seq": 5, "state": "running", "exit_code": 0, "ports": {"8000/tcp": 8000}, "message": "ok"},
        ),
        ("POST", "/api/agent/v1/jobs/<int:job_id>/logs"): (world.agent, {"offset": 6, "data": "more\n"}),
        ("POST", "/api/agent/v1/usage"): (
            world.agent,
            {"samples": [usage_sample(world, utilization_pct=50.5, memory_used_mib=1, power_w=10)]},
        ),
    }


def write_endpoints() -> list[tuple[str, str]]:
    """Every route under /api/ with a POST or PATCH handler."""
    found: list[tuple[str, str]] = []

    def walk(patterns: list[Any], prefix: str) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern):
                view = getattr(pattern.callback, "view_class", None)
                route = prefix + str(pattern.pattern)
                if view is None or not route.startswith("api/"):
                    continue
                for method in ("post", "patch"):
                    if hasattr(view, method):
                        found.append((method.upper(), "/" + route))

    walk(get_resolver().url_patterns, "")
    return found


def fill(route: str, world: World) -> str:
    ids = {"order_id": world.order.pk, "job_id": world.job.pk, "node_id": world.node.pk,
           "api_key_id": world.buyer_a_key_id, "id": world.invoice_id}  # fmt: skip
    for name, value in ids.items():
        route = route.replace(f"<int:{name}>", str(value))
    return route


def places(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value: the value itself, each member, each element, recursively."""
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += places(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += places(item, (*path, index))
    return found


def spoil(value: Any, path: tuple[Any, ...], bad: Any) -> Any:
    if not path:
        return bad
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: spoil(value[head], rest, bad)}
    copy = list(value)
    copy[head] = spoil(copy[head], rest, bad)
    return copy


def test_every_write_endpoint_has_a_fuzz_body(world: World):
    # A new POST/PATCH route must get a body here, or the fuzzer below would not reach it.
    assert set(write_endpoints()) == set(valid_bodies(world))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_hostile_values_anywhere_in_any_body_never_answer_a_5xx(
    world: World, data: st.DataObject, monkeypatch
):
    from rest_framework.throttling import ScopedRateThrottle

    # Registration's per-IP limit would answer 429 before the body is read.
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"agent_register": "100000/min"})
    bodies = valid_bodies(world)
    method, route = data.draw(st.sampled_from(sorted(bodies)), label="endpoint")
    actor, body = bodies[(method, route)]
    place = data.draw(st.sampled_from(places(body)), label="place")
    bad = data.draw(st.sampled_from(HOSTILE_VALUES), label="value")
    if data.draw(st.booleans(), label="as a new member") and isinstance(body, dict) and place == ():
        spoiled: Any = {**body, "extra": bad}
    else:
        spoiled = spoil(body, place, bad)
    client = client_for(actor)
    client.raise_request_exception = False
    response = client.generic(
        method, fill(route, world), json.dumps(spoiled), content_type="application/json",
        HTTP_IDEMPOTENCY_KEY=uuid.uuid4().hex,
    )  # fmt: skip
    assert response.status_code < 500, (method, route, spoiled, response.content[:300])
    if response.status_code >= 400:
        assert_error_shape(response, response.status_code)
