"""Persistent volumes: the API (idempotent create, owner-only reads, delete), per-GiB-hour billing
through the ledger, job-spec validation, orders bound to the volume's node, the agent poll, and a
real `suanli-agent` (process runtime) on loopback keeping a file from one job to the next."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from django.utils import timezone
from rest_framework.test import APIClient

from billing.models import AccountKind, Lease, LeaseKind, LeaseStatus
from billing.services import account_get, settle
from cli.main import main as cli_main
from core.errors import Conflict, ValidationFailed
from core.services import apikey_create
from marketplace.models import Allocation, Job, JobStatus, Offer, Order, OrderStatus, Volume, VolumeStatus
from marketplace.selectors import job_log_read
from marketplace.services.job_spec import job_spec_parse
from marketplace.services.matching import matching_run
from marketplace.services.offers import OfferChange, offer_update
from marketplace.services.orders import OrderRequest, order_cancel, order_place
from marketplace.services.volumes import VolumeRequest, volume_create, volume_delete
from providers.agent.volumes import volume_path
from providers.models import Node, NodeStatus
from providers.services import heartbeats_flush, join_token_create
from tests.marketplace.market_helpers import MICROS, agent_reports, funded_buyer, online_node
from tests.providers.factories import (
    ProviderFactory,
    agent_client,
    ensure_catalog,
    member_of,
    registered_node,
)
from tests.support.live import Agent, live_exchange, wait_for

pytestmark = pytest.mark.django_db

VOLUME_PRICE = 2_000  # 0.002 per GiB-hour


def volume_node(name: str = "disk", **kwargs):
    node = online_node(name=name, **kwargs)
    offer_update(node=node, change=OfferChange(volume_price_micros=VOLUME_PRICE))
    return node


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def create(client: APIClient, body: dict, key: str = "v1"):
    return client.post("/api/v1/volumes", body, format="json", HTTP_IDEMPOTENCY_KEY=key)


def order_with(buyer, volumes: list[dict], key: str = "o1", **extra) -> Order:
    spec = job_spec_parse({"runtime": "process", "command": ["true"], "volumes": volumes})
    order, _created = order_place(
        buyer=buyer,
        request=OrderRequest(
            term="on_demand", devices_per_node=1, price_limit_micros=3 * MICROS, job=spec, **extra
        ),
        idempotency_key=key,
    )
    return order


# --- API ------------------------------------------------------------------------------------------


def test_create_is_idempotent_reads_are_owner_only_and_delete_stops_billing():
    node = volume_node()
    buyer, other = funded_buyer(100), funded_buyer(100)
    client = api(buyer)

    first = create(client, {"node": node.pk, "name": "data", "size_gib": 10})
    assert first.status_code == 201, first.json()
    body = first.json()
    assert body["name"] == "data" and body["size_gib"] == 10 and body["node"] == node.pk
    assert body["mount"] == "/volumes/data" and body["price"] == "0.002" and body["status"] == "ready"
    replay = create(client, {"node": node.pk, "name": "data", "size_gib": 10})
    assert replay.status_code == 200 and replay.json()["id"] == body["id"]
    assert Volume.objects.count() == 1

    # A volume lease: GiB as its device count, the node's volume price as its rate.
    volume = Volume.objects.get(pk=body["id"])
    lease = Lease.objects.get(pk=volume.lease_id)
    assert (lease.kind, lease.device_count, lease.rate_micros, lease.job_id) == (
        LeaseKind.VOLUME, 10, VOLUME_PRICE, None
    )  # fmt: skip
    assert lease.provider_id == node.provider_id and lease.status == LeaseStatus.OPEN

    # Another buyer sees none of it.
    assert api(other).get("/api/v1/volumes").json()["results"] == []
    assert api(other).get(f"/api/v1/volumes/{volume.pk}").status_code == 404
    assert api(other).delete(f"/api/v1/volumes/{volume.pk}").status_code == 404
    assert [v["id"] for v in client.get("/api/v1/volumes").json()["results"]] == [volume.pk]
    assert client.get(f"/api/v1/volumes/{volume.pk}").json()["name"] == "data"

    deleted = client.delete(f"/api/v1/volumes/{volume.pk}")
    assert deleted.status_code == 200 and deleted.json()["status"] == "deleted"
    lease.refresh_from_db()
    assert lease.status == LeaseStatus.CLOSED
    assert client.delete(f"/api/v1/volumes/{volume.pk}").status_code == 200  # again: no change
    assert client.get("/api/v1/volumes").json()["results"] == []
    assert len(client.get("/api/v1/volumes?all=true").json()["results"]) == 1
    # The name is free again.
    assert create(client, {"node": node.pk, "name": "data", "size_gib": 1}, key="v2").status_code == 201


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"node": "DROP", "name": "data", "size_gib": 1}, "node"),
        ({"node": 0, "name": "data", "size_gib": 1}, "node"),
        ({"node": 999999, "name": "data", "size_gib": 1}, "node"),
        ({"node": None, "name": "../etc", "size_gib": 1}, "node"),
        ({"name": "Data", "size_gib": 1}, "name"),
        ({"name": "../x", "size_gib": 1}, "name"),
        ({"name": "a/b", "size_gib": 1}, "name"),
        ({"name": "x" * 64, "size_gib": 1}, "name"),
        ({"name": "data", "size_gib": 0}, "size_gib"),
        ({"name": "data", "size_gib": "lots"}, "size_gib"),
        ({"name": "data", "size_gib": 10**9}, "size_gib"),
    ],
)
def test_bad_create_requests_are_field_errors(body, field):
    node = volume_node()
    body = {k: v for k, v in {"node": node.pk, **body}.items() if v != "DROP"}
    response = create(api(funded_buyer(100)), body)
    assert response.status_code == 400, response.json()
    assert field in response.json()["error"]["fields"]


def test_create_refused_on_a_node_without_volume_price_a_taken_name_and_an_empty_wallet():
    plain = online_node(name="plain")
    node = volume_node()
    buyer = funded_buyer(100)
    client = api(buyer)
    refused = create(client, {"node": plain.pk, "name": "data", "size_gib": 1})
    assert refused.status_code == 400 and "node" in refused.json()["error"]["fields"]
    assert create(client, {"node": node.pk, "name": "data", "size_gib": 1}).status_code == 201
    taken = create(client, {"node": node.pk, "name": "data", "size_gib": 1}, key="v2")
    assert taken.status_code == 400 and "name" in taken.json()["error"]["fields"]
    poor = funded_buyer(0)
    broke = create(api(poor), {"node": node.pk, "name": "data", "size_gib": 1000})
    assert broke.status_code == 402, broke.json()


def test_node_disk_bounds_its_volumes():
    node = volume_node()
    node.disk_gib = 100
    node.save(update_fields=["disk_gib"])
    buyer = funded_buyer(100)
    volume_create(buyer=buyer, request=VolumeRequest(node.pk, "a", 60), idempotency_key="a")
    response = create(api(buyer), {"node": node.pk, "name": "b", "size_gib": 41})
    assert response.status_code == 400 and "size_gib" in response.json()["error"]["fields"]
    assert create(api(buyer), {"node": node.pk, "name": "b", "size_gib": 40}, key="b").status_code == 201


def test_provider_sets_the_volume_price_through_the_node_api():
    node = online_node(name="n")
    owner = member_of(node.provider)
    response = api(owner).patch(
        f"/api/v1/provider/nodes/{node.pk}", {"volume_price": "0.0015"}, format="json"
    )
    assert response.status_code == 200, response.json()
    assert response.json()["offer"]["volume_price"] == "0.0015"
    assert Offer.objects.get(node=node).volume_price_micros == 1500
    bad = api(owner).patch(f"/api/v1/provider/nodes/{node.pk}", {"volume_price": "-1"}, format="json")
    assert bad.status_code == 400 and "volume_price" in bad.json()["error"]["fields"]
    offers = APIClient().get("/api/v1/offers").json()["results"]
    assert [o["volume_price"] for o in offers if o["node"]["id"] == node.pk] == ["0.0015"]


# --- Billing --------------------------------------------------------------------------------------


def test_a_volume_is_billed_per_gib_hour_from_creation_to_deletion():
    node = volume_node()
    buyer = funded_buyer(100)
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        volume, _ = volume_create(
            buyer=buyer, request=VolumeRequest(node.pk, "data", 10), idempotency_key="k"
        )
    with time_machine.travel(start + timedelta(hours=3), tick=False):
        volume_delete(volume=volume)
    settle(until=start + timedelta(hours=3, minutes=1))

    # 10 GiB x 0.002 per GiB-hour x 3 hours = 0.06, split into provider payable and platform fee.
    lease = Lease.objects.get(pk=volume.lease_id)
    assert lease.charged_micros == 10 * VOLUME_PRICE * 3 == 60_000
    payable = account_get(kind=AccountKind.PROVIDER_PAYABLE, provider_id=node.provider_id).balance_micros
    fee = account_get(kind=AccountKind.PLATFORM_FEE).balance_micros
    assert payable + fee == 60_000 and fee == lease.fee_micros
    wallet = account_get(kind=AccountKind.BUYER_WALLET, user_id=buyer.pk).balance_micros
    assert wallet == 100 * MICROS - 60_000


# --- Job specs and orders -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "volumes",
    [
        ["/:/host"],
        [{"name": "../data"}],
        [{"name": "data", "mount": "/etc"}],
        [{"name": "data", "mount": "/volumes/other"}],
        [{"name": "data", "path": "/srv"}],
        [{"name": "data", "id": 3}],
        [{}],
        [{"id": "3"}],
        [{"name": "data"}, {"name": "data"}],
        {"name": "data"},
        [{"name": f"v{n}"} for n in range(9)],
    ],
)
def test_job_spec_volumes_are_names_at_a_fixed_mount(volumes):
    buyer = funded_buyer(100)
    body = {
        "term": "on_demand", "devices_per_node": 1, "price_limit": "3.00",
        "job": {"runtime": "process", "command": ["true"], "volumes": volumes},
    }  # fmt: skip
    response = api(buyer).post("/api/v1/orders", body, format="json", HTTP_IDEMPOTENCY_KEY="o")
    assert response.status_code == 400, response.json()
    assert any(f.startswith("job.volumes") for f in response.json()["error"]["fields"])


def test_job_spec_accepts_a_volume_by_name_or_id_with_its_own_mount_path():
    spec = job_spec_parse(
        {
            "runtime": "process",
            "command": ["true"],
            "volumes": [{"name": "data", "mount": "/volumes/data"}, {"id": 4}],
        }
    )
    assert spec.volumes == [{"name": "data", "mount": "/volumes/data"}, {"id": 4}]


def test_an_order_with_a_volume_runs_on_its_node_and_the_agent_gets_the_volume():
    # Given a cheaper node and the buyer's volume on a dearer one
    online_node(name="cheap", on_demand="1.50", reserved="1.00")
    online = volume_node(on_demand="2.50")
    buyer = funded_buyer(100)
    volume, _ = volume_create(buyer=buyer, request=VolumeRequest(online.pk, "data", 5), idempotency_key="k")

    # When the buyer orders a job mounting it
    order = order_with(buyer, [{"name": "data"}])
    assert order.offer_id == Offer.objects.get(node=online).pk
    assert order.volumes == [{"id": volume.pk, "name": "data", "size_gib": 5}]
    matching_run()

    # Then it lands on the volume's node, and the job offered to the agent carries the volume
    assert Allocation.objects.get(order=order).node_id == online.pk
    api_order = api(buyer).get(f"/api/v1/orders/{order.pk}").json()
    assert api_order["job"]["volumes"] == [{"id": volume.pk, "name": "data", "size_gib": 5}]


def test_agent_poll_carries_volumes_and_names_the_deleted_ones():
    node, credential = registered_node(name="disk")
    Node.objects.filter(pk=node.pk).update(
        status=NodeStatus.ONLINE, last_heartbeat_at=timezone.now(), software={"runtimes": "docker,process"}
    )
    other = volume_node(name="elsewhere")
    offer_update(
        node=node,
        change=OfferChange(
            on_demand_price_micros=2 * MICROS, reserved_price_micros=MICROS, spot_floor_micros=MICROS,
            listed=True, volume_price_micros=VOLUME_PRICE,
        ),
    )  # fmt: skip
    buyer = funded_buyer(100)
    kept, _ = volume_create(buyer=buyer, request=VolumeRequest(node.pk, "kept", 1), idempotency_key="a")
    gone, _ = volume_create(buyer=buyer, request=VolumeRequest(node.pk, "gone", 1), idempotency_key="b")
    foreign, _ = volume_create(
        buyer=buyer, request=VolumeRequest(other.pk, "foreign", 1), idempotency_key="c"
    )
    order = order_with(buyer, [{"name": "kept"}])
    matching_run()
    volume_delete(volume=gone)

    client = agent_client(credential)
    reply = client.post(
        "/api/agent/v1/work?wait=0", {"running": [], "volumes": [kept.pk, gone.pk, foreign.pk]}, format="json"
    ).json()
    job = Job.objects.get(order=order)
    assert [(j["id"], j["volumes"]) for j in reply["jobs"]] == [
        (job.pk, [{"id": kept.pk, "name": "kept", "size_gib": 1}])
    ]
    # A deleted volume and one that is not this node's are to be removed; the live one is not.
    assert reply["delete_volumes"] == sorted([gone.pk, foreign.pk])
    bad = client.post("/api/agent/v1/work?wait=0", {"volumes": ["x"]}, format="json")
    assert bad.status_code == 400


def test_delete_is_refused_while_a_live_order_mounts_the_volume():
    node = volume_node()
    buyer = funded_buyer(100)
    volume, _ = volume_create(buyer=buyer, request=VolumeRequest(node.pk, "data", 1), idempotency_key="k")
    order = order_with(buyer, [{"id": volume.pk}])
    matching_run()
    response = api(buyer).delete(f"/api/v1/volumes/{volume.pk}")
    assert response.status_code == 409, response.json()
    assert Volume.objects.get(pk=volume.pk).status == VolumeStatus.READY

    # Once the job has ended, the volume (which outlived it) can go.
    job = Job.objects.get(order=order)
    agent_reports(job, "accepted")
    agent_reports(job, "running")
    agent_reports(job, "exited", exit_code=0)
    assert Order.objects.get(pk=order.pk).status == OrderStatus.ENDED
    assert api(buyer).delete(f"/api/v1/volumes/{volume.pk}").status_code == 200


def test_an_open_order_also_holds_its_volume_and_a_deleted_volume_cannot_be_ordered():
    node = volume_node()
    buyer = funded_buyer(100)
    volume, _ = volume_create(buyer=buyer, request=VolumeRequest(node.pk, "data", 1), idempotency_key="k")
    order = order_with(buyer, [{"name": "data"}])
    with pytest.raises(Conflict):
        volume_delete(volume=volume)
    order_cancel(order=order)
    volume_delete(volume=volume)
    response = api(buyer).post(
        "/api/v1/orders",
        {"term": "on_demand", "devices_per_node": 1, "price_limit": "3.00",
         "job": {"runtime": "process", "command": ["true"], "volumes": [{"name": "data"}]}},
        format="json", HTTP_IDEMPOTENCY_KEY="again",
    )  # fmt: skip
    assert response.status_code == 400 and "job.volumes.0" in response.json()["error"]["fields"]


def test_orders_cannot_name_another_buyers_volume_or_split_volumes_or_pick_another_node():
    node, elsewhere = volume_node("a"), volume_node("b")
    owner, buyer = funded_buyer(100), funded_buyer(100)
    theirs, _ = volume_create(buyer=owner, request=VolumeRequest(node.pk, "data", 1), idempotency_key="k")
    with pytest.raises(ValidationFailed) as stranger:
        order_with(buyer, [{"id": theirs.pk}])
    assert "job.volumes.0" in stranger.value.fields
    volume_create(buyer=buyer, request=VolumeRequest(node.pk, "one", 1), idempotency_key="1")
    volume_create(buyer=buyer, request=VolumeRequest(elsewhere.pk, "two", 1), idempotency_key="2")
    with pytest.raises(ValidationFailed) as split:
        order_with(buyer, [{"name": "one"}, {"name": "two"}])
    assert "job.volumes" in split.value.fields
    with pytest.raises(ValidationFailed) as other_offer:
        order_with(buyer, [{"name": "one"}], offer_id=Offer.objects.get(node=elsewhere).pk)
    assert "offer" in other_offer.value.fields
    with pytest.raises(ValidationFailed) as gang:
        order_with(buyer, [{"name": "one"}], node_count=2)
    assert "node_count" in gang.value.fields


# --- A real agent ---------------------------------------------------------------------------------

WRITER = (
    "import os, pathlib\n"
    "pathlib.Path(os.environ['SUANLI_VOLUME_DATA'], 'note.txt').write_text('kept between jobs')\n"
    "print('wrote', flush=True)\n"
)
READER = "import pathlib\nprint(pathlib.Path('volumes/data/note.txt').read_text(), flush=True)\n"


@pytest.fixture
def agent(tmp_path: Path, transactional_db: None) -> Iterator[Agent]:
    with live_exchange(tmp_path) as server:
        one = Agent(server, tmp_path / "agent", "volumes")
        try:
            yield one
        finally:
            one.stop()
            one.kill_jobs()


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_file_written_to_a_volume_by_one_job_is_read_by_the_next(agent: Agent, capsys) -> None:
    ensure_catalog()
    node_id = agent.join(join_token_create(provider=ProviderFactory(), created_by=None, region="e2e").token)
    agent.start()

    def online() -> bool:
        heartbeats_flush()
        return Node.objects.filter(pk=node_id, status=NodeStatus.ONLINE).exists()

    wait_for("the node online", online, timeout=60)
    offer_update(
        node=Node.objects.get(pk=node_id),
        change=OfferChange(
            on_demand_price_micros=2 * MICROS, reserved_price_micros=MICROS, spot_floor_micros=MICROS,
            listed=True, volume_price_micros=2_000,
        ),
    )  # fmt: skip
    buyer = funded_buyer(100)
    key = apikey_create(user=buyer, name="cli", scopes=["read", "trade"]).secret

    def suanli(*args: str) -> Any:
        """The `suanli` CLI (in-process) against the live exchange; its --json output."""
        capsys.readouterr()
        split = args.index("--") if "--" in args else len(args)  # options go before the job's command
        code = cli_main([*args[:split], "--json", "--server", agent.server, "--key", key, *args[split:]])
        out = capsys.readouterr()
        assert code == 0, (args, out.out, out.err)
        return json.loads(out.out)

    volume = suanli("volume", "create", "--node", str(node_id), "--name", "data", "--size", "1")
    assert (volume["mount"], volume["status"]) == ("/volumes/data", "ready")
    assert [v["id"] for v in suanli("volume", "list")["results"]] == [volume["id"]]

    def run(code: str) -> Job:
        order = suanli("order", "create", "--term", "on-demand", "--devices", "1", "--max-price", "3.00",
                       "--runtime", "process", "--volume", "data", "--", sys.executable, "-c", code)  # fmt: skip
        assert order["job"]["volumes"] == [{"id": volume["id"], "name": "data", "size_gib": 1}]
        matching_run()  # no Celery worker here: the test runs the round the order would trigger
        job = Job.objects.get(order_id=order["id"])
        assert job.node_id == node_id
        return wait_for(
            f"job {job.pk} to end",
            lambda: Job.objects.filter(pk=job.pk, status__in=[JobStatus.EXITED, JobStatus.FAILED]).first(),
            timeout=60,
        )

    # The first job writes through SUANLI_VOLUME_DATA; the second reads volumes/data/ under its cwd.
    writer = run(WRITER)
    assert (writer.status, writer.exit_code) == (JobStatus.EXITED, 0), writer.message
    data = volume_path(agent.state_dir, volume["id"])
    assert (data / "note.txt").read_text() == "kept between jobs"
    reader = run(READER)
    assert (reader.status, reader.exit_code) == (JobStatus.EXITED, 0), reader.message
    wait_for(
        "the reader's log", lambda: "kept between jobs" in job_log_read(job=reader, offset=0).data, timeout=30
    )

    # Deleted: billing stops and the agent removes the data on a following poll.
    assert suanli("volume", "delete", str(volume["id"]))["status"] == "deleted"
    assert Lease.objects.get(pk=Volume.objects.get(pk=volume["id"]).lease_id).status == LeaseStatus.CLOSED
    wait_for("the volume's data removed", lambda: not data.exists(), timeout=30)


# --- Portal ---------------------------------------------------------------------------------------


def test_portal_volumes_page_creates_lists_and_deletes():
    from django.test import Client

    node = volume_node(name="portal-node")
    buyer, other = funded_buyer(100), funded_buyer(100)
    browser = Client()
    browser.force_login(buyer)

    page = browser.get("/volumes/")
    assert page.status_code == 200 and "portal-node" in page.content.decode()
    bad = browser.post("/volumes/", {"node": node.pk, "name": "../x", "size_gib": 1, "idempotency_key": "p1"})
    assert bad.status_code == 400
    form = {"node": node.pk, "name": "scratch", "size_gib": 3, "idempotency_key": "p2"}
    assert browser.post("/volumes/", form).status_code == 302
    assert browser.post("/volumes/", form).status_code == 302  # a double submit: still one volume
    volume = Volume.objects.get(buyer=buyer)
    listed = browser.get("/volumes/").content.decode()
    assert "scratch" in listed and "/volumes/scratch" in listed

    # Mounted by an open order: deleting is refused with the reason; another buyer gets a 404.
    order = order_with(buyer, [{"name": "scratch"}])
    refused = browser.post(f"/volumes/{volume.pk}/delete/", follow=True)
    assert f"order {order.pk}" in refused.content.decode()
    assert Volume.objects.get(pk=volume.pk).status == VolumeStatus.READY
    stranger = Client()
    stranger.force_login(other)
    assert stranger.post(f"/volumes/{volume.pk}/delete/").status_code == 404
    order_cancel(order=order)
    assert browser.post(f"/volumes/{volume.pk}/delete/").status_code == 302
    assert Volume.objects.get(pk=volume.pk).status == VolumeStatus.DELETED


def test_provider_sets_the_volume_price_on_the_portal_pricing_page():
    from django.test import Client

    node = online_node(name="priced")
    owner = member_of(node.provider)
    browser = Client()
    browser.force_login(owner)
    prefix = f"node-{node.pk}"
    form = {f"{prefix}-on_demand_price": "2.50", f"{prefix}-reserved_price": "2.00",
            f"{prefix}-spot_floor": "1.00", f"{prefix}-listed": "on"}  # fmt: skip
    assert browser.post(f"/provider/pricing/{node.pk}/", form).status_code == 302
    assert Offer.objects.get(node=node).volume_price_micros == 0  # left out: unchanged
    form[f"{prefix}-volume_price"] = "0.0025"
    assert browser.post(f"/provider/pricing/{node.pk}/", form).status_code == 302
    assert Offer.objects.get(node=node).volume_price_micros == 2500
    assert 'value="0.0025"' in browser.get("/provider/pricing/").content.decode()
    form[f"{prefix}-volume_price"] = "-1"
    assert browser.post(f"/provider/pricing/{node.pk}/", form).status_code == 400


def test_a_volume_on_an_offline_node_is_not_billed_until_the_node_is_back():
    from marketplace.services.volumes import volumes_follow_node_liveness
    from marketplace.tasks import mark_lost_jobs

    node = volume_node()
    buyer = funded_buyer(100)
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        volume, _ = volume_create(
            buyer=buyer, request=VolumeRequest(node.pk, "data", 10), idempotency_key="k"
        )
    # The node's last heartbeat is at +1 h; it is found offline at +2 h and back online at +5 h.
    Node.objects.filter(pk=node.pk).update(
        status=NodeStatus.OFFLINE, last_heartbeat_at=start + timedelta(hours=1)
    )
    with time_machine.travel(start + timedelta(hours=2), tick=False):
        mark_lost_jobs()  # the periodic lost-job sweep follows volumes too
    assert Lease.objects.get(pk=volume.lease_id).status == LeaseStatus.PAUSED
    assert volumes_follow_node_liveness(now=start + timedelta(hours=3)) == ([], [])  # again: nothing
    Node.objects.filter(pk=node.pk).update(status=NodeStatus.ONLINE)
    _, resumed = volumes_follow_node_liveness(now=start + timedelta(hours=5))
    assert resumed == [volume.lease_id]
    with time_machine.travel(start + timedelta(hours=6), tick=False):
        volume_delete(volume=volume)
    settle(until=start + timedelta(hours=6, minutes=1))

    # Billed hours: 0-1 and 5-6, i.e. 2 hours x 10 GiB x 0.002.
    assert Lease.objects.get(pk=volume.lease_id).charged_micros == 2 * 10 * VOLUME_PRICE


# --- Storage nobody pays for --------------------------------------------------------------------


def test_an_unpaid_volume_is_flagged_unflagged_when_funded_and_deleted_after_the_grace(settings):
    from marketplace.services.volumes import volumes_follow_funds
    from tests.marketplace.market_helpers import fund

    settings.SUANLI_VOLUME_UNPAID_GRACE_H = 72
    node = volume_node()
    buyer = funded_buyer(1)  # 1.00 pays 50 GiB x 0.002 per GiB-hour for 10 hours
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        volume, _ = volume_create(
            buyer=buyer, request=VolumeRequest(node.pk, "data", 50), idempotency_key="k"
        )
        assert volumes_follow_funds() == []
    volume.refresh_from_db()
    assert volume.unpaid_since is None

    # Ten hours on the wallet is spent: the volume is flagged, and the buyer is told when it goes.
    broke = start + timedelta(hours=10, minutes=5)
    with time_machine.travel(broke, tick=False):
        settle(until=broke)
        assert volumes_follow_funds() == []
        volume.refresh_from_db()
        assert volume.unpaid_since == broke and volume.status == VolumeStatus.READY
        body = api(buyer).get(f"/api/v1/volumes/{volume.pk}").json()
        assert body["unpaid_since"] is not None
        assert body["delete_at"].startswith((broke + timedelta(hours=72)).strftime("%Y-%m-%dT%H:%M"))
        from django.test import Client

        client = Client()
        client.force_login(buyer)
        assert "or it is deleted with its data" in client.get("/volumes/").content.decode()

        # A top-up clears the flag.
        fund(buyer, 10 * MICROS)
        volumes_follow_funds()
    volume.refresh_from_db()
    assert volume.unpaid_since is None

    # Spent again, and left unpaid past the grace: deleted, billing stops.
    later = start + timedelta(hours=220)
    with time_machine.travel(later, tick=False):
        settle(until=later)
        volumes_follow_funds()
    volume.refresh_from_db()
    assert volume.unpaid_since is not None and volume.status == VolumeStatus.READY
    with time_machine.travel(later + timedelta(hours=71), tick=False):
        assert volumes_follow_funds() == []
    with time_machine.travel(later + timedelta(hours=72, minutes=1), tick=False):
        assert volumes_follow_funds() == [volume.pk]
    volume.refresh_from_db()
    assert volume.status == VolumeStatus.DELETED
    assert Lease.objects.get(pk=volume.lease_id).status != LeaseStatus.OPEN


def test_the_volume_list_reads_every_charge_in_one_query(django_assert_max_num_queries):
    node = volume_node(name="many")
    buyer = funded_buyer(100)
    for n in range(6):
        volume_create(buyer=buyer, request=VolumeRequest(node.pk, f"v{n}", 1), idempotency_key=f"k{n}")
    client = api(buyer)
    client.get("/api/v1/volumes")  # warm the auth and throttle paths
    # Before: one lease query per volume (6 more than this bound).
    with django_assert_max_num_queries(4):
        body = client.get("/api/v1/volumes").json()
    from core.money import format_amount

    charged = {
        v.pk: Lease.objects.get(pk=v.lease_id).charged_micros for v in Volume.objects.filter(buyer=buyer)
    }
    assert {v["id"]: v["charged"] for v in body["results"]} == {
        pk: format_amount(c) for pk, c in charged.items()
    }
