"""A node's declared PUE (API, portal, CLI) and its measured device power (heartbeats -> flush)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from rest_framework.test import APIClient

from core.services import apikey_create
from marketplace.models import Offer
from providers.models import Node
from providers.services import (
    DeviceReading,
    HeartbeatIn,
    heartbeat_record,
    heartbeats_flush,
    node_pue_set,
)
from tests.providers.factories import ProviderFactory, UserFactory, agent_client, member_of, registered_node

pytestmark = pytest.mark.django_db

HEARTBEAT = "/api/agent/v1/heartbeat"


def node_url(node: Node) -> str:
    return f"/api/v1/provider/nodes/{node.pk}"


def client_for(user: Any) -> APIClient:
    client = APIClient()
    key = apikey_create(user=user, name="test", scopes=("provider",))
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.secret}")
    return client


def beat(credential: str, devices: list[tuple[float | None, float | None]]) -> None:
    """One heartbeat through the agent API; ``devices`` are (utilisation %, power W) per index."""
    body = {
        "agent_version": "0.2.0",
        "running_jobs": [],
        "devices": [
            {"index": i, "uuid": f"GPU-{i}", "health": "ok", "utilization_pct": util, "memory_used_mib": 1024,
             "power_w": power, "temperature_c": 60.0}
            for i, (util, power) in enumerate(devices)
        ],
    }  # fmt: skip
    response = agent_client(credential).post(HEARTBEAT, body, format="json")
    assert response.status_code == 200, response.json()


# --- Measured power --------------------------------------------------------------------------


def test_measured_power_is_the_mean_of_busy_devices_only():
    node, credential = registered_node(devices=3)
    assert node.measured_power_w is None
    # Two devices under load, one idle: the idle one would drag the figure towards its idle draw.
    beat(credential, [(87.5, 612.3), (50.0, 587.7), (2.0, 71.0)])
    assert heartbeats_flush() == 1
    node.refresh_from_db()
    assert node.measured_power_w == Decimal("600.0")


def test_an_idle_or_unmetered_node_keeps_no_measured_power():
    node, credential = registered_node(devices=3)
    beat(credential, [(2.0, 70.0), (None, 650.0), (90.0, None)])
    heartbeats_flush()
    node.refresh_from_db()
    assert node.measured_power_w is None and node.status == "online"


def test_measured_power_is_a_time_weighted_moving_average():
    node, credential = registered_node(devices=1)
    start = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    with time_machine.travel(start, tick=False):
        beat(credential, [(90.0, 600.0)])
        heartbeats_flush()
    # Six minutes later a reading of 700 W moves the average a tenth of the way (360 s / 3600 s).
    with time_machine.travel(start + timedelta(seconds=360), tick=False):
        beat(credential, [(90.0, 700.0)])
        heartbeats_flush()
    node.refresh_from_db()
    assert node.measured_power_w == Decimal("610.0")
    # An idle heartbeat moves liveness, not the figure.
    with time_machine.travel(start + timedelta(seconds=370), tick=False):
        beat(credential, [(3.0, 80.0)])
        heartbeats_flush()
    node.refresh_from_db()
    assert node.measured_power_w == Decimal("610.0")
    assert node.last_heartbeat_at == start + timedelta(seconds=370)
    # After more than the time constant without a heartbeat, a reading replaces the figure.
    with time_machine.travel(start + timedelta(hours=3), tick=False):
        beat(credential, [(90.0, 450.0)])
        heartbeats_flush()
    node.refresh_from_db()
    assert node.measured_power_w == Decimal("450.0")
    # A doubled flush of the same heartbeat changes nothing.
    with time_machine.travel(start + timedelta(hours=3), tick=False):
        assert heartbeats_flush() == 0
    node.refresh_from_db()
    assert node.measured_power_w == Decimal("450.0")


def test_unusable_power_readings_are_skipped_and_the_heartbeat_still_counts():
    node, _credential = registered_node(devices=3)
    # Straight into Redis (the API refuses these): NaN, infinity and zero watts from busy devices.
    heartbeat_record(
        node=node,
        payload=HeartbeatIn(
            agent_version="0.2.0",
            running_jobs=[],
            devices=[
                DeviceReading(index=0, uuid="GPU-0", health="ok", utilization_pct=90.0, power_w=float("nan")),
                DeviceReading(index=1, uuid="GPU-1", health="ok", utilization_pct=90.0, power_w=float("inf")),
                DeviceReading(index=2, uuid="GPU-2", health="ok", utilization_pct=90.0, power_w=0.0),
            ],
        ),
    )
    assert heartbeats_flush() == 1
    node.refresh_from_db()
    assert node.measured_power_w is None and node.last_heartbeat_at is not None


# --- PUE through the API -----------------------------------------------------------------------


def test_a_member_sets_the_pue_of_a_node_without_touching_its_offer():
    provider = ProviderFactory()
    node, _ = registered_node(provider)
    client = client_for(member_of(provider))
    before = client.get(node_url(node)).json()
    assert before["pue"] == "1.40" and before["measured_power_w"] is None
    offer_before = Offer.objects.get(node=node)

    response = client.patch(node_url(node), {"pue": "1.25"}, format="json")

    assert response.status_code == 200, response.json()
    assert response.json()["pue"] == "1.25"
    assert Node.objects.get(pk=node.pk).pue == Decimal("1.25")
    assert Offer.objects.get(node=node).updated_at == offer_before.updated_at
    # A JSON number works too.
    assert client.patch(node_url(node), {"pue": 1.5}, format="json").json()["pue"] == "1.50"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("0.99", "greater than or equal to 1.00"),
        ("3.01", "less than or equal to 3.00"),
        ("1.234", "no more than 2 decimal places"),
        ("abc", "valid number"),
        ("NaN", "valid number"),
        ("Infinity", "valid number"),
        ("1e999999", "digits"),  # bounded before it is quantized: no 500
        (None, "may not be null"),
        (True, "valid number"),
        ([1.2], "valid number"),
        ("", "valid number"),
    ],
)
def test_a_bad_pue_is_a_field_error_and_changes_nothing(value, why):
    provider = ProviderFactory()
    node, _ = registered_node(provider)
    response = client_for(member_of(provider)).patch(node_url(node), {"pue": value}, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert list(error["fields"]) == ["pue"]
    assert why in " ".join(error["fields"]["pue"])
    assert Node.objects.get(pk=node.pk).pue == Decimal("1.40")


def test_pue_and_prices_change_together_or_not_at_all():
    provider = ProviderFactory()
    node, _ = registered_node(provider)
    client = client_for(member_of(provider))
    # A listed offer whose spot floor would exceed its on-demand price: refused, PUE included.
    response = client.patch(
        node_url(node),
        {"pue": "1.10", "on_demand_price": "2.00", "spot_floor": "3.00", "listed": True},
        format="json",
    )
    assert response.status_code == 400
    assert "spot_floor" in response.json()["error"]["fields"]
    assert Node.objects.get(pk=node.pk).pue == Decimal("1.40")
    response = client.patch(
        node_url(node),
        {"pue": "1.10", "on_demand_price": "2.00", "spot_floor": "1.00", "listed": True},
        format="json",
    )
    assert response.status_code == 200, response.json()
    assert response.json()["pue"] == "1.10" and response.json()["offer"]["listed"] is True


def test_only_members_set_a_pue():
    node, _ = registered_node(ProviderFactory())
    response = client_for(member_of(ProviderFactory())).patch(node_url(node), {"pue": "1.10"}, format="json")
    assert response.status_code == 404
    assert Node.objects.get(pk=node.pk).pue == Decimal("1.40")


def test_the_service_refuses_what_the_api_would():
    node, _ = registered_node(ProviderFactory())
    from core.errors import ValidationFailed

    for bad in (Decimal("0.5"), Decimal("1.005"), Decimal("NaN"), Decimal("Infinity"), Decimal("1e999999")):
        with pytest.raises(ValidationFailed) as caught:
            node_pue_set(node=node, pue=bad)
        assert set(caught.value.fields) == {"pue"}
    assert node_pue_set(node=node, pue=Decimal("2.5")).pue == Decimal("2.50")


# --- PUE on the portal -------------------------------------------------------------------------


def settings_url(node: Node) -> str:
    return f"/provider/nodes/{node.pk}/settings/"


def test_portal_node_settings_sets_the_pue(client):
    provider = ProviderFactory()
    node, _ = registered_node(provider)
    client.force_login(member_of(provider))
    page = client.get(settings_url(node))
    assert page.status_code == 200
    assert 'name="pue"' in page.content.decode() and 'value="1.40"' in page.content.decode()
    # The node page links to it and shows the PUE.
    detail = client.get(f"/provider/nodes/{node.pk}/").content.decode()
    assert settings_url(node) in detail

    response = client.post(settings_url(node), {"pue": "1.18"})

    assert response.status_code == 302 and response["Location"] == f"/provider/nodes/{node.pk}/"
    assert Node.objects.get(pk=node.pk).pue == Decimal("1.18")
    assert "1.18" in client.get(response["Location"]).content.decode()


@pytest.mark.parametrize("value", ["0.5", "3.5", "1.111", "abc", "", "NaN", "1e999999"])
def test_portal_node_settings_shows_form_errors(client, value):
    provider = ProviderFactory()
    node, _ = registered_node(provider)
    client.force_login(member_of(provider))
    response = client.post(settings_url(node), {"pue": value})
    assert response.status_code == 200
    assert "has-error" in response.content.decode()
    assert Node.objects.get(pk=node.pk).pue == Decimal("1.40")


def test_portal_node_settings_are_for_members_only(client):
    node, _ = registered_node(ProviderFactory())
    assert client.get(settings_url(node)).status_code == 302  # to the login page
    client.force_login(UserFactory())
    assert client.get(settings_url(node)).status_code == 404
    assert client.post(settings_url(node), {"pue": "1.10"}).status_code == 404
    assert Node.objects.get(pk=node.pk).pue == Decimal("1.40")


# --- PUE through the CLI -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_cli_node_price_sets_the_pue(live_server, capsys, tmp_path, monkeypatch):
    from cli.main import main

    monkeypatch.setenv("SUANLI_CONFIG", str(tmp_path / "cli.json"))
    provider = ProviderFactory()
    node, _ = registered_node(provider)
    key = apikey_create(user=member_of(provider), name="cli", scopes=("provider",))
    common = ["--server", live_server.url, "--key", key.secret]

    assert main([*common, "node", "price", str(node.pk), "--pue", "1.30", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pue"] == "1.30"
    assert Node.objects.get(pk=node.pk).pue == Decimal("1.30")

    assert main([*common, "node", "price", str(node.pk), "--pue", "4"]) == 1
    assert "pue" in capsys.readouterr().err
    assert Node.objects.get(pk=node.pk).pue == Decimal("1.30")
