"""An offer's carbon estimate and TOPS/W: measured device power when known, else the TDP; the
node's declared PUE (API, portal, CLI table)."""

from __future__ import annotations

import json
from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from core.money import parse_amount
from core.services import apikey_create
from marketplace.models import Offer
from marketplace.services.offers import OfferChange, offer_update
from providers.models import AcceleratorModel, Node, NodeStatus, Provider
from providers.services import heartbeats_flush
from tests.providers.factories import ProviderFactory, agent_client, member_of, registered_node

pytestmark = pytest.mark.django_db

OFFERS = "/api/v1/offers"
H100_INT8_TOPS = Decimal("1978.9")
H100_TDP = Decimal(700)


def intensity(region: str) -> Decimal:
    table = settings.SUANLI_GRID_INTENSITY
    return Decimal(str(table.get(region, table.get("default", 0.48))))


def kg(power: Decimal, pue: Decimal, region: str = "cn-east") -> str:
    return str((power * pue * intensity(region) / 1000).quantize(Decimal("0.001"), rounding=ROUND_HALF_UP))


def per_watt(power: Decimal) -> str:
    return str((H100_INT8_TOPS / power).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def node_with_offer(
    name: str, *, provider: Provider | None = None, devices: int = 1, on_demand: str = "2.50"
) -> Node:
    """An online H100 node (registered through the real service) with a listed offer; its agent
    credential is kept so the test can heartbeat as its agent."""
    node, credential = registered_node(provider or ProviderFactory(), name=name, devices=devices)
    CREDENTIALS[node.pk] = credential
    Node.objects.filter(pk=node.pk).update(status=NodeStatus.ONLINE, last_heartbeat_at=timezone.now())
    node.refresh_from_db()
    offer_update(
        node=node,
        change=OfferChange(
            on_demand_price_micros=parse_amount(on_demand),
            reserved_price_micros=parse_amount("0.50"),
            spot_floor_micros=parse_amount("0.50"),
            listed=True,
        ),
    )
    return node


CREDENTIALS: dict[int, str] = {}


def measure(node: Node, *watts: float) -> None:
    """The node's agent reports its devices busy at ``watts`` each, through the API, then the
    heartbeat flush runs (the real path of the figure)."""
    body = {
        "agent_version": "0.2.0",
        "running_jobs": [],
        "devices": [
            {"index": i, "uuid": f"GPU-{node.name}-{i}", "health": "ok", "utilization_pct": 92.0,
             "memory_used_mib": 1024, "power_w": w, "temperature_c": 70.0}
            for i, w in enumerate(watts)
        ],
    }  # fmt: skip
    response = agent_client(CREDENTIALS[node.pk]).post("/api/agent/v1/heartbeat", body, format="json")
    assert response.status_code == 200, response.json()
    heartbeats_flush()


def offer_row(name: str, **params) -> dict:
    rows = APIClient().get(OFFERS, params).json()["results"]
    return next(row for row in rows if row["node"]["name"] == name)


def test_an_unmeasured_offer_uses_the_tdp():
    node_with_offer("tdp", devices=2)
    row = offer_row("tdp")
    assert row["node"]["measured_power_w"] is None and row["node"]["pue"] == "1.40"
    assert row["accelerator"]["int8_tops"] == "1978.90" and row["accelerator"]["tdp_watts"] == 700
    assert row["kg_co2e_per_device_hour"] == kg(H100_TDP, Decimal("1.40"))
    assert row["tops_per_watt"] == per_watt(H100_TDP) == "2.83"


def test_measured_power_replaces_the_tdp_in_carbon_and_tops_per_watt():
    node = node_with_offer("measured", devices=2)
    measure(node, 480.0, 520.0)
    row = offer_row("measured")
    assert row["node"]["measured_power_w"] == "500.0"
    assert row["kg_co2e_per_device_hour"] == kg(Decimal(500), Decimal("1.40"))
    assert row["tops_per_watt"] == per_watt(Decimal(500)) == "3.96"


def test_a_pue_set_through_the_api_changes_the_carbon_estimate():
    provider = ProviderFactory()
    node = node_with_offer("pue", provider=provider, devices=2)
    measure(node, 500.0, 500.0)
    client = APIClient()
    client.credentials(
        HTTP_AUTHORIZATION=f"Bearer {apikey_create(user=member_of(provider), name='k', scopes=('provider',)).secret}"
    )
    body = client.get(f"/api/v1/provider/nodes/{node.pk}").json()
    assert body["measured_power_w"] == "500.0"
    assert (
        client.patch(f"/api/v1/provider/nodes/{node.pk}", {"pue": "1.10"}, format="json").status_code == 200
    )
    row = offer_row("pue")
    assert row["node"]["pue"] == "1.10"
    assert row["kg_co2e_per_device_hour"] == kg(Decimal(500), Decimal("1.10"))
    # TOPS/W is the device's own efficiency: the site's PUE does not enter it.
    assert row["tops_per_watt"] == per_watt(Decimal(500))


def test_sort_by_carbon_uses_the_measured_power():
    hungry = node_with_offer("hungry", on_demand="1.00")
    node_with_offer("datasheet", on_demand="2.00")

    def by_carbon() -> list[str]:
        return [r["node"]["name"] for r in APIClient().get(OFFERS, {"sort": "carbon"}).json()["results"]]

    # Both at the TDP: a tie, broken by price.
    assert by_carbon() == ["hungry", "datasheet"]
    # Measured above the datasheet figure, the cheaper node now ranks behind.
    measure(hungry, 710.0)
    assert by_carbon() == ["datasheet", "hungry"]


def test_no_int8_figure_or_no_power_gives_no_tops_per_watt_and_no_error():
    node = node_with_offer("odd", devices=1)
    offer = Offer.objects.get(node=node)
    # A catalog row without an INT8 figure.
    Offer.objects.filter(pk=offer.pk).update(accelerator=AcceleratorModel.objects.get(model="Gaudi 3"))
    row = offer_row("odd")
    assert row["tops_per_watt"] is None and row["kg_co2e_per_device_hour"] is not None
    # A power of zero (not something the flush stores, but the column allows it): no division error.
    Offer.objects.filter(pk=offer.pk).update(accelerator=AcceleratorModel.objects.get(model="H100 SXM 80GB"))
    Node.objects.filter(pk=node.pk).update(measured_power_w=Decimal(0))
    row = offer_row("odd")
    assert row["tops_per_watt"] is None and row["kg_co2e_per_device_hour"] == "0.000"


def reference_page(**params) -> dict:
    """The offer list through the reference queryset and serializer (not the SQL fast path)."""
    from rest_framework.test import APIRequestFactory

    from marketplace.api.trading import OfferListView

    response = OfferListView.as_view(search_sql=False)(APIRequestFactory().get(OFFERS, params))
    response.render()
    return json.loads(response.content)


def test_both_offer_list_paths_agree_and_read_the_figures_without_extra_queries():
    node_with_offer("q0")
    with CaptureQueriesContext(connection) as one:
        reference_page()
    for i in range(1, 4):
        measure(node_with_offer(f"q{i}"), 500.0)
    with CaptureQueriesContext(connection) as four:
        reference = reference_page(sort="carbon")
    # The reference path fetches only OFFER_LIST_COLUMNS: a figure outside them costs a query a row.
    assert len(four) == len(one)
    rows = reference["results"]
    assert len(rows) == 4 and [r["tops_per_watt"] for r in rows] == ["3.96", "3.96", "3.96", "2.83"]
    assert APIClient().get(OFFERS, {"sort": "carbon"}).json() == reference


def test_portal_market_and_offer_page_show_tops_per_watt_and_measured_power(client):
    node = node_with_offer("portal", devices=2)
    measure(node, 500.0, 500.0)
    market = client.get("/market/").content.decode()
    assert "TOPS/W" in market and "3.96" in market
    offer_id = node.offer.pk
    page = client.get(f"/market/offers/{offer_id}/").content.decode()
    assert "3.96 TOPS/W" in page and "500 W" in page


@pytest.mark.django_db(transaction=True)
def test_cli_offers_table_has_a_tops_per_watt_column(live_server, capsys, tmp_path, monkeypatch):
    from cli.main import main

    monkeypatch.setenv("SUANLI_CONFIG", str(tmp_path / "cli.json"))
    node = node_with_offer("cli", devices=1)
    measure(node, 500.0)
    assert main(["--server", live_server.url, "offers"]) == 0
    out = capsys.readouterr().out
    assert "TOPS/W" in out and "3.96" in out
    assert main(["--server", live_server.url, "offers", "--json"]) == 0
    assert '"tops_per_watt": "3.96"' in capsys.readouterr().out
