"""``GET /api/v1/offers`` answers from one hand-written query (``offer_search_page``, issue 12 item
4); its pages must be byte for byte what the ORM path (``offers_list`` + ``OfferSerializer`` +
``KeysetPagination``, still served by ``OfferListView.as_view(search_sql=False)``) returns.

The comparison draws random markets (accelerators, regions outside the grid table too, prices to
the micro-unit, reliabilities, PUEs, measured power, verification, offline and unlisted nodes,
failed devices, stored counts fresh or marked stale, names and software with quotes, backslashes,
control and line-separator characters) and random filters, sorts, terms and page sizes, and walks
every page of both, cursor by cursor.
"""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.db import connection, transaction
from django.http import HttpResponseBase
from django.utils import timezone
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient, APIRequestFactory

from core.money import format_amount
from marketplace.api.trading import OfferListView
from marketplace.models import Offer
from marketplace.selectors import _half_even_sql
from marketplace.services.offers import offer_free_devices_refresh
from providers.models import AcceleratorModel, Device, DeviceHealth, Node, NodeStatus, Provider

pytestmark = pytest.mark.django_db

FAST = OfferListView.as_view(throttle_classes=[])
ORM = OfferListView.as_view(throttle_classes=[], search_sql=False)


class Rollback(Exception):
    """Raised to undo one Hypothesis example's rows."""


def get(view: Any, query: str) -> HttpResponseBase:
    response = view(APIRequestFactory().get(f"/api/v1/offers{query}"))
    if hasattr(response, "render"):
        response.render()
    return response


def cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def assert_same_pages(query: str, *, max_pages: int = 30) -> int:
    """Walk ``query``'s pages on both paths, each following its own next link; every page must be
    the same bytes (next links included). Returns how many offers the walk saw."""
    seen = 0
    for _page in range(max_pages):
        fast, orm = get(FAST, query), get(ORM, query)
        assert (fast.status_code, fast["Content-Type"]) == (orm.status_code, orm["Content-Type"]), query
        assert fast.content == orm.content, query
        if fast.status_code != 200:
            return seen
        body = json.loads(fast.content)
        seen += len(body["results"])
        if body["next"] is None:
            return seen
        query = "?" + urlsplit(body["next"]).query
    return seen


# Text as nodes and providers may be named: quotes, backslashes, control characters, U+2028/9 (which
# DRF's renderer escapes), CJK; never NUL or a lone surrogate (PostgreSQL text holds neither).
names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=12
) | st.sampled_from(['a"b', "c\\d", "e\u2028f", "g\tline\nh", "算力", "\x1f\x7f"])
software = st.dictionaries(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6),
    st.one_of(
        st.text(
            alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6
        ),
        st.integers(-(10**20), 10**20),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.none(),
        st.lists(st.integers(), max_size=3),
    ),
    max_size=4,
)
node_plan = st.fixed_dictionaries(
    {
        "accelerator": st.integers(0, 10_000),
        "region": st.sampled_from(["cn-east", "cn-north", "us-west", "eu-north", "mars-1", ""]),
        "status": st.sampled_from([NodeStatus.ONLINE] * 5 + [NodeStatus.OFFLINE]),
        "listed": st.sampled_from([True] * 6 + [False]),
        # Prices to the micro-unit, with ties (few distinct values) as often as not.
        "on_demand": st.one_of(st.sampled_from([1_000_000, 2_500_000]), st.integers(0, 9_000_000)),
        "reserved_pct": st.integers(0, 100),
        "spot_pct": st.integers(0, 100),
        "reliability": st.one_of(st.sampled_from([600, 950]), st.integers(0, 1000)),
        "pue": st.integers(100, 300),
        "measured_power": st.one_of(st.none(), st.integers(0, 20_000)),
        "verified": st.booleans(),
        "devices": st.integers(1, 4),
        "failed": st.integers(0, 2),
        "name": names,
        "provider": names,
        "cluster": st.sampled_from(["", "sh-a", 'q"uote']),
        "software": software,
    }
)
filters = st.fixed_dictionaries(
    {},
    optional={
        "kind": st.sampled_from(["gpu", "npu", "cpu", "fpga"]),
        "vendor": st.sampled_from(["nvidia", "huawei", "amd"]),
        "model": st.sampled_from(["H100", "h100 sxm", "A100", "910B", "%", "_", "H1_0", "MI300X", "x" * 80]),
        "min_memory_gib": st.sampled_from(["16", "80", "100000"]),
        "region": st.sampled_from(["cn-east", "us-west", "mars-1", "nowhere"]),
        "term": st.sampled_from(["on_demand", "reserved", "spot"]),
        "max_price": st.sampled_from(["0", "1.00", "2.50", "4.123456", "99999999999999"]),
        "min_reliability": st.sampled_from(["0", "0.6", "0.95", "1"]),
        "devices": st.sampled_from(["1", "2", "3", "4"]),
        "verified": st.sampled_from(["true", "false"]),
        "sort": st.sampled_from(["price", "price_per_pflop", "reliability", "carbon"]),
        "limit": st.sampled_from(["1", "2", "3", "50"]),
    },
)


def build_market(plans: list[dict[str, Any]], *, refresh: bool, fail_after: list[int]) -> None:
    catalog = list(AcceleratorModel.objects.order_by("id"))
    now = timezone.now()
    for i, plan in enumerate(plans):
        accelerator = catalog[plan["accelerator"] % len(catalog)]
        provider = Provider.objects.create(name=plan["provider"], slug=f"p-{i}")
        node = Node.objects.create(
            provider=provider, name=plan["name"], region=plan["region"], cluster=plan["cluster"],
            status=plan["status"], last_heartbeat_at=now, software=plan["software"],
            pue=Decimal(plan["pue"]) / 100,
            measured_power_w=None if plan["measured_power"] is None else Decimal(plan["measured_power"]) / 10,
            verified_at=now if plan["verified"] else None,
        )  # fmt: skip
        Device.objects.bulk_create(
            Device(
                node=node,
                accelerator=accelerator,
                index=d,
                uuid=f"GPU-{i}-{d}",
                health=DeviceHealth.FAILED if d < plan["failed"] else DeviceHealth.OK,
            )
            for d in range(plan["devices"])
        )
        price = plan["on_demand"]
        Offer.objects.create(
            node=node, accelerator=accelerator, device_count=plan["devices"], region=plan["region"],
            listed=plan["listed"], reliability=Decimal(plan["reliability"]) / 1000,
            on_demand_price_micros=price, reserved_price_micros=price * plan["reserved_pct"] // 100,
            spot_floor_micros=price * plan["spot_pct"] // 100,
        )  # fmt: skip
    if refresh:
        # Stored counts for every node; then writes that mark some nodes, which read live again.
        offer_free_devices_refresh()
        ids = list(Device.objects.order_by("id").values_list("pk", flat=True))
        for index in fail_after if ids else []:
            Device.objects.filter(pk=ids[index % len(ids)]).update(health=DeviceHealth.FAILED)


# Writes after the market is built, to every table an offer's stored card shows (migration 0012's
# triggers must follow each): (what, which row, a value).
WRITES = (
    "provider_name", "node_name", "node_region", "node_cluster", "node_software", "node_pue",
    "node_power", "node_verified", "node_save", "accelerator_tdp", "accelerator_fp16",
    "accelerator_int8", "accelerator_memory", "accelerator_model", "offer_prices", "offer_reliability",
    "offer_region", "offer_rental", "offer_save", "offer_accelerator",
)  # fmt: skip
writes = st.lists(st.tuples(st.sampled_from(WRITES), st.integers(0, 1000), names), max_size=6)


def apply_writes(ops: list[tuple[str, int, str]]) -> None:
    nodes = list(Node.objects.order_by("id"))
    catalog = list(AcceleratorModel.objects.order_by("id"))
    if not nodes:
        return
    now = timezone.now()
    for what, number, text in ops:
        node = nodes[number % len(nodes)]
        nodes_of = Node.objects.filter(pk=node.pk)
        offers_of = Offer.objects.filter(node_id=node.pk)
        accelerator = AcceleratorModel.objects.filter(pk=Offer.objects.get(node_id=node.pk).accelerator_id)
        match what:
            case "provider_name":
                Provider.objects.filter(pk=node.provider_id).update(name=text)
            case "node_name":
                nodes_of.update(name=text)
            case "node_region":
                nodes_of.update(region=["cn-east", "us-west", "mars-1"][number % 3])
            case "node_cluster":
                nodes_of.update(cluster=text[:32])
            case "node_software":
                nodes_of.update(software={"cuda": text, "n": number})
            case "node_pue":
                nodes_of.update(pue=Decimal(100 + number % 200) / 100)
            case "node_power":
                nodes_of.update(measured_power_w=None if number % 3 == 0 else Decimal(number * 7) / 10)
            case "node_verified":
                nodes_of.update(verified_at=None if number % 2 else now)
            case "node_save":
                node.refresh_from_db()
                node.name, node.pue = text, Decimal(number % 200 + 100) / 100
                node.save()
            case "accelerator_tdp":
                accelerator.update(tdp_watts=number)
            case "accelerator_fp16":
                accelerator.update(fp16_tflops=Decimal(number * 3) / 2)
            case "accelerator_int8":
                accelerator.update(int8_tops=Decimal(number))
            case "accelerator_memory":
                accelerator.update(memory_gib=number % 200)
            case "accelerator_model":
                # Model names are unique: each one here carries its row's id.
                pk = accelerator.get().pk
                accelerator.update(model=[f"H100 v{pk}", f"910B-{pk}", f"{text[:40]} {pk}"][number % 3])
            case "offer_prices":
                offers_of.update(
                    on_demand_price_micros=number * 12_345,
                    reserved_price_micros=number * 10_001,
                    spot_floor_micros=number * 3_333,
                    volume_price_micros=number,
                )
            case "offer_reliability":
                offers_of.update(reliability=Decimal(number) / 1000)
            case "offer_region":
                offers_of.update(region=["cn-east", "cn-north", "us-west", "mars-1", ""][number % 5])
            case "offer_rental":
                offers_of.update(min_rental_minutes=1 + number, max_rental_hours=1 + number % 50)
            case "offer_save":
                offer = offers_of.get()
                offer.device_count, offer.listed = 1 + number % 4, number % 5 != 0
                offer.save()
            case "offer_accelerator":
                offers_of.update(accelerator=catalog[number % len(catalog)])


def assert_cards_current() -> None:
    """Every offer has a card, and it is what the write function makes of the rows now: the
    triggers missed no write, shown or not (unlisted offers, offline nodes included)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM marketplace_offer o LEFT JOIN marketplace_offercard c ON c.offer_id = o.id WHERE c.offer_id IS NULL"
        )
        assert cursor.fetchone()[0] == 0
        cursor.execute("SELECT * FROM marketplace_offercard ORDER BY offer_id")
        kept = cursor.fetchall()
        cursor.execute("SELECT marketplace_offer_cards_write(ARRAY(SELECT id FROM marketplace_offer))")
        cursor.execute("SELECT * FROM marketplace_offercard ORDER BY offer_id")
        assert cursor.fetchall() == kept


def query_string(params: dict[str, str]) -> str:
    from urllib.parse import urlencode

    return "?" + urlencode(params) if params else ""


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    plans=st.lists(node_plan, min_size=0, max_size=9),
    refresh=st.booleans(),
    fail_after=st.lists(st.integers(0, 100), max_size=2),
    searches=st.lists(filters, min_size=1, max_size=4),
    ops=writes,
)
@example(plans=[], refresh=False, fail_after=[], searches=[{}], ops=[])
def test_fast_path_pages_equal_the_orm_pages_on_random_markets(plans, refresh, fail_after, searches, ops):
    try:
        with transaction.atomic():
            # Given a random market, and random writes to what its offers show
            build_market(plans, refresh=refresh, fail_after=fail_after)
            apply_writes(ops)
            assert_cards_current()
            for search in searches:
                # When both paths list it, page by page: the same bytes
                assert_same_pages(query_string(search))
            raise Rollback
    except Rollback:
        pass


def test_fast_path_equals_the_orm_on_a_larger_market_for_every_sort_and_term():
    plans = [
        {
            "accelerator": i * 7,
            "region": ["cn-east", "cn-north", "us-west", "mars-1"][i % 4],
            "status": NodeStatus.ONLINE if i % 11 else NodeStatus.OFFLINE,
            "listed": i % 13 != 0,
            "on_demand": [1_000_000, 2_500_000, 2_500_001][i % 3] + (i % 5) * 10_000,
            "reserved_pct": 80,
            "spot_pct": 50 + i % 3,
            "reliability": [600, 950, 1000, 0][i % 4],
            "pue": 100 + i % 200,
            "measured_power": None if i % 2 else i * 13,
            "verified": i % 3 == 0,
            "devices": 1 + i % 4,
            "failed": i % 3,
            "name": f"node-{i}",
            "provider": f"p{i % 5}",
            "cluster": "",
            "software": {"cuda": "12.4", "driver": f"55{i % 3}"},
        }
        for i in range(60)
    ]
    build_market(plans, refresh=True, fail_after=[3, 17])
    for sort in ("price", "price_per_pflop", "reliability", "carbon"):
        for term in ("on_demand", "reserved", "spot"):
            for limit in ("1", "7", "50"):
                seen = assert_same_pages(f"?sort={sort}&term={term}&limit={limit}", max_pages=100)
                assert seen > 30


@pytest.mark.parametrize(
    ("sort", "values"),
    [
        ("price", ["abc", 5]),  # a string for the price: a 500 before the fast path
        ("price", ["1.5", 1]),
        ("price", [1.5, 2]),
        ("price", [True, 1]),
        ("price", [None, 1]),
        ("price", [{"a": 1}, 2]),
        ("price", [10**30, 2]),  # beyond bigint
        ("reliability", ["x", 1, 1]),
        ("reliability", [None, 1, 1]),
        ("carbon", ["1e999999", 1, 1]),  # beyond PostgreSQL's numeric
        ("carbon", ["NaN", 1, 1]),
        ("price_per_pflop", [[1], 1]),
        ("price", [1]),  # too short
    ],
)
def test_forged_cursors_are_a_field_error_not_a_500(sort, values):
    reply = APIClient().get("/api/v1/offers", {"sort": sort, "cursor": cursor(values)})
    assert reply.status_code == 400, reply.content
    assert reply.json()["error"]["fields"].keys() == {"cursor"}


def test_cursor_values_a_client_may_write_by_hand_read_as_the_orm_reads_them():
    build_market(
        [
            {
                **plan,
                "name": f"n{i}",
                "provider": "p",
                "on_demand": 1_000_000 * (i + 1),
                "reliability": 900 + i,
            }
            for i, plan in enumerate([PLAIN] * 4)
        ],
        refresh=True,
        fail_after=[],
    )
    for sort, values in [
        ("price", [2_000_000, 0]),
        ("reliability", ["0.902", 0, 0]),
        ("reliability", [1, 0, 0]),  # a number where the next link writes a string
        ("reliability", [0.901, 0, 0]),
        ("carbon", ["0", 0, 0]),
        ("price_per_pflop", ["1e20", 0]),
        ("price_per_pflop", ["0E-20", 0]),
    ]:
        assert_same_pages(f"?sort={sort}&cursor={cursor(values)}")


PLAIN: dict[str, Any] = {
    "accelerator": 0, "region": "cn-east", "status": NodeStatus.ONLINE, "listed": True,
    "on_demand": 2_500_000, "reserved_pct": 80, "spot_pct": 40, "reliability": 950, "pue": 140,
    "measured_power": None, "verified": True, "devices": 4, "failed": 0, "name": "n", "provider": "p",
    "cluster": "sh-a", "software": {"cuda": "12.4"},
}  # fmt: skip


def test_the_page_is_one_prepared_statement(django_assert_max_num_queries):
    build_market([{**PLAIN, "name": f"n{i}"} for i in range(5)], refresh=True, fail_after=[])
    client = APIClient()
    client.get("/api/v1/offers", {"limit": 2})  # prepares the statement on this connection
    with django_assert_max_num_queries(2) as captured:
        reply = client.get("/api/v1/offers", {"limit": 2})
        reply = client.get("/api/v1/offers", {"limit": 2})
    assert reply.status_code == 200
    assert len(reply.json()["results"]) == 2
    assert [q["sql"].split("(")[0].split()[0] for q in captured.captured_queries] == ["EXECUTE", "EXECUTE"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(micros=st.integers(-(10**13), 10**13) | st.sampled_from([0, 1, 10, 100_000, 1_000_000, 1_234_500]))
def test_amounts_formatted_in_sql_equal_format_amount(micros):
    with connection.cursor() as cursor:
        cursor.execute("SELECT marketplace_amount(%(v)s::bigint)", {"v": micros})
        assert cursor.fetchone()[0] == format_amount(micros)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    value=st.decimals(min_value=-(10**6), max_value=10**6, allow_nan=False, places=7)
    | st.sampled_from(
        [Decimal("0.0005"), Decimal("0.0015"), Decimal("0.0025"), Decimal("2.0125"), Decimal("0")]
    ),
    places=st.sampled_from([2, 3]),
)
def test_half_even_rounding_in_sql_equals_python_formatting(value, places):
    if value == 0 and value.is_signed():
        value = Decimal(0)  # Python keeps a negative zero's sign; no offer figure is ever -0
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {_half_even_sql('%(v)s::numeric', places)}", {"v": value})
        sql_text = cursor.fetchone()[0]
    python_text = f"{value:.{places}f}"
    # -0.000 (a negative figure that rounds to zero) is the one spelling that differs.
    assert sql_text == python_text or (python_text.startswith("-") and Decimal(python_text) == 0)


def test_past_the_prepared_statement_cap_the_search_runs_unprepared_with_the_same_pages(monkeypatch):
    import marketplace.selectors

    build_market(
        [{**PLAIN, "name": f"n{i}", "on_demand": 1_000_000 + i} for i in range(5)],
        refresh=True,
        fail_after=[],
    )
    monkeypatch.setattr(marketplace.selectors, "PREPARED_PER_CONNECTION", 0)
    # Forget this connection's statements on both sides (the registry must match the server).
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")
    marketplace.selectors._PREPARED.clear()
    for sort in ("price", "reliability", "carbon"):
        assert assert_same_pages(f"?sort={sort}&limit=2&model=h&max_price=1.000003&min_reliability=0.5") == 4
    assert not marketplace.selectors._PREPARED.get(connection.connection)


def test_each_search_statement_is_planned_once():
    build_market(
        [{**PLAIN, "name": f"n{i}", "on_demand": 1_000_000 + i} for i in range(8)],
        refresh=True,
        fail_after=[],
    )
    client = APIClient()
    queries = [
        f"?sort={sort}&limit=3&term=spot" for sort in ("price", "price_per_pflop", "reliability", "carbon")
    ]
    for _ in range(12):
        for query in queries:
            assert client.get(f"/api/v1/offers{query}").status_code == 200
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE name LIKE 'offer\\_search\\_%%'"
        )
        plans = cursor.fetchall()
    # One statement per sort, each run 12 times on one generic plan (re-planning a search cost
    # more than running it).
    assert len(plans) == 4
    assert all(custom == 0 and generic == 12 for generic, custom in plans), plans


def carbon_indexes_present() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'marketplace_offercard'"
            " AND indexname LIKE 'offercard\\_carbon\\_%%'"
        )
        return {row[0] for row in cursor.fetchall()}


def test_migrating_builds_the_carbon_indexes_for_the_settings():
    from marketplace.selectors import offer_carbon_indexes

    # The test database was migrated with these settings (post_migrate).
    assert carbon_indexes_present() == set(offer_carbon_indexes()) != set()


def test_new_grid_intensities_get_new_carbon_indexes_and_the_search_follows_them(monkeypatch, settings):
    import marketplace.services.offers as offers_service
    from marketplace.selectors import offer_carbon_indexes

    build_market(
        [
            {**PLAIN, "name": f"n{i}", "region": region, "measured_power": 7000 + i}
            for i, region in enumerate(["cn-east", "us-west", "eu-north", "mars-1"] * 3)
        ],
        refresh=True,
        fail_after=[],
    )
    before = carbon_indexes_present()
    monkeypatch.setattr(offers_service, "_CARBON_INDEXES_SEEN", set())
    # Given an operator who changes the grid intensities (us-west now the dirtiest grid)
    settings.SUANLI_GRID_INTENSITY = {**settings.SUANLI_GRID_INTENSITY, "us-west": 1.25, "default": 0.1}
    # Before the indexes follow, the carbon sort is already in the new order (only slower)
    first = json.loads(get(FAST, "?sort=carbon").content)["results"]
    assert first[-1]["region"] == "us-west"
    assert_same_pages("?sort=carbon&limit=5")
    # When the beat's refresh runs: indexes for the new figures replace the old ones
    offer_free_devices_refresh()
    after = carbon_indexes_present()
    assert after == set(offer_carbon_indexes()) and not after & before and len(after) == 3
    # And the search still equals the ORM's, page by page, for every term
    for term in ("on_demand", "reserved", "spot"):
        assert assert_same_pages(f"?sort=carbon&limit=5&term={term}") == 12
    # Running it again changes nothing
    monkeypatch.setattr(offers_service, "_CARBON_INDEXES_SEEN", set())
    assert offers_service.offer_carbon_indexes_ensure() is False
