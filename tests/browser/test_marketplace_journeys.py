"""The buyer and provider journeys in a real browser, against a live gunicorn, a real Celery worker
and real `suanli-agent` processes on simulated H100 nodes, in English and in 简体中文.

Buyer: signs up, tops up through the fake Stripe server and its signed webhook, places an on-demand
order on a simulated node, watches it run and its log stream in, stops it, and sees the charge on
the billing page. Provider: becomes a provider, generates a join token, a real agent joins with it
and runs, the node shows online, the provider sets prices and sees them on the market.

Heartbeats are flushed and settlement is run from the test (beat would do both in `make run`).
Screenshots of each page land in var/screenshots/.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone
from playwright.sync_api import expect

from billing.models import Lease, TopUp
from billing.services import settle
from core.money import parse_amount
from marketplace.models import Job, JobStatus, Offer
from marketplace.services.offers import OfferChange, offer_update
from providers.models import Node, NodeStatus
from providers.services import heartbeats_flush, join_token_create
from tests.providers.factories import ProviderFactory, ensure_catalog
from tests.support.fake_stripe import event_payload, sign_event
from tests.support.live import Agent, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.usefixtures("transactional_db")]

PASSWORD = "violet-lantern-harbour-58"
# One line: the order form's command field is a single line, split like a shell does.
TICKER = "import time; [(print(f'tick {i:03d}', flush=True), time.sleep(0.5)) for i in range(600)]"

TEXT = {
    "en": {
        "switch": "English",
        "email": "Email",
        "password": "Password",
        "confirm": "Confirm password",
        "sign_up": "Sign up",
        "billing": "Billing",
        "amount": "Amount",
        "pay": "Pay with Stripe",
        "credited": "is in your wallet",
        "market": "Market",
        "runtime": "Runtime",
        "command": "Command",
        "devices": "Devices",
        "place": "Place order",
        "covers": "your balance covers",
        "stop_job": "Stop job",
        "stopped": "Stopped",
        "nodes": "Nodes",
        "become": "Become a provider",
        "org": "Organisation name",
        "create_provider": "Create provider",
        "region": "Region",
        "generate": "Generate join token",
        "online": "Online",
        "pricing": "Pricing",
        "on_demand": "On-demand price",
        "reserved": "Reserved price",
        "floor": "Spot floor",
        "listed": "Listed on the market",
        "save": "Save",
        "saved": "are saved and it is listed",
    },
    "zh-hans": {
        "switch": "简体中文",
        "email": "电子邮箱",
        "password": "密码",
        "confirm": "确认密码",
        "sign_up": "注册",
        "billing": "账单",
        "amount": "金额",
        "pay": "通过 Stripe 支付",
        "credited": "已到账",
        "market": "市场",
        "runtime": "运行方式",
        "command": "命令",
        "devices": "设备",
        "place": "提交订单",
        "covers": "您的余额可支付",
        "stop_job": "停止任务",
        "stopped": "已停止",
        "nodes": "节点",
        "become": "成为提供方",
        "org": "机构名称",
        "create_provider": "创建提供方",
        "region": "地区",
        "generate": "生成接入令牌",
        "online": "在线",
        "pricing": "定价",
        "on_demand": "按需价格",
        "reserved": "预留价格",
        "floor": "竞价底价",
        "listed": "在市场上架",
        "save": "保存",
        "saved": "的价格已保存并已上架",
    },
}


@pytest.fixture
def agents(portal_server: Any, tmp_path: Path) -> Iterator[Callable[[str], Agent]]:
    started: list[Agent] = []

    def make(name: str) -> Agent:
        agent = Agent(portal_server.url, tmp_path / f"agent-{name}", name)
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.stop()
        agent.kill_jobs()


def node_online(node_id: int) -> bool:
    heartbeats_flush()
    return Node.objects.filter(pk=node_id, status=NodeStatus.ONLINE).exists()


def switch_language(page: Any, language: str) -> None:
    page.goto("/")
    if language != "en":
        page.get_by_role("button", name=TEXT[language]["switch"]).click()
    expect(page.locator("html")).to_have_attribute("lang", "zh-Hans" if language == "zh-hans" else "en")


def sign_up(page: Any, t: dict[str, str], email: str) -> None:
    page.goto("/accounts/signup/")
    page.get_by_label(t["email"]).fill(email)
    page.get_by_label(t["password"], exact=True).fill(PASSWORD)
    page.get_by_label(t["confirm"]).fill(PASSWORD)
    page.get_by_role("button", name=t["sign_up"], exact=True).click()
    expect(page.locator(".account-email")).to_have_text(email)


@pytest.mark.parametrize("language", ["en", "zh-hans"])
def test_buyer_tops_up_orders_watches_logs_stops_and_sees_the_charge(
    page: Any, portal_server: Any, portal_fake_stripe: Any, celery_worker: Any, agents: Any, screenshot: Any,
    language: str,
) -> None:  # fmt: skip
    t = TEXT[language]
    prefix = f"{language}-buyer"
    # Given a provider's simulated H100 node, joined by a real agent, online and listed at 2.50.
    ensure_catalog()
    agent = agents(f"buyer-node-{language}")
    node_id = agent.join(
        join_token_create(provider=ProviderFactory(), created_by=None, region="cn-east").token
    )
    agent.start()
    wait_for("the node online", lambda: node_online(node_id), timeout=60)
    offer_update(
        node=Node.objects.get(pk=node_id),
        change=OfferChange(on_demand_price_micros=2_500_000, reserved_price_micros=2_000_000,
                           spot_floor_micros=1_000_000, listed=True),
    )  # fmt: skip

    # A visitor signs up, in the chosen language.
    switch_language(page, language)
    email = f"buyer-{language}@example.com"
    sign_up(page, t, email)

    # They top up 50.00: the portal sends them to Stripe Checkout (the fake's page), Stripe's
    # signed webhook credits the wallet, and Checkout returns them to the wallet page.
    page.route("https://checkout.stripe.test/**", lambda route: route.fulfill(
        status=200, content_type="text/html", body="<h1>Fake Stripe Checkout</h1>"))  # fmt: skip
    page.get_by_role("navigation").get_by_role("link", name=t["billing"]).click()
    screenshot(page, f"{prefix}-01-wallet-empty")
    page.get_by_label(t["amount"]).fill("50.00")
    page.get_by_role("button", name=t["pay"]).click()
    expect(page.get_by_role("heading", name="Fake Stripe Checkout")).to_be_visible()
    top_up = TopUp.objects.get(buyer__username=email)
    session = dict(portal_fake_stripe.objects[top_up.stripe_session_id])
    session.update(status="complete", payment_status="paid", payment_intent=f"pi_{language}")
    payload = event_payload("checkout.session.completed", session)
    request = urllib.request.Request(
        f"{portal_server.url}/billing/stripe/webhook", data=payload, method="POST",
        headers={"Content-Type": "application/json",
                 "Stripe-Signature": sign_event(payload, settings.STRIPE_WEBHOOK_SECRET)},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert json.loads(reply.read())["processed"] is True
    page.goto(f"/wallet?top_up={top_up.pk}")
    expect(page.get_by_role("status")).to_contain_text(t["credited"])
    expect(page.locator("[data-wallet-available]")).to_contain_text("50.00")
    screenshot(page, f"{prefix}-02-wallet-topped-up")

    # They find the node on the market and order one device on demand, running a process.
    page.get_by_role("navigation").get_by_role("link", name=t["market"]).click()
    expect(page.locator("tbody tr")).to_have_count(1)
    screenshot(page, f"{prefix}-03-market")
    page.locator("tbody tr").first.locator("a.btn:not(.btn-secondary)").click()
    page.get_by_label(t["runtime"]).select_option("process")
    page.get_by_label(t["command"]).fill(f'{sys.executable} -c "{TICKER}"')
    page.get_by_label(t["devices"], exact=True).fill("1")
    # Live validation: the estimate follows the form (2.50 an hour; 50.00 covers 20 hours).
    expect(page.locator("[data-estimate]")).to_contain_text(t["covers"])
    expect(page.locator("[data-estimate]")).to_contain_text("20.0")
    screenshot(page, f"{prefix}-04-order-form")
    page.get_by_role("button", name=t["place"]).click()
    expect(page).to_have_url(re.compile(r"/orders/\d+/$"))
    screenshot(page, f"{prefix}-05-order-placed")

    # The worker matches it and the agent starts it; the order page links the job.
    job = wait_for("the job running", lambda: Job.objects.filter(
        buyer__username=email, status=JobStatus.RUNNING).first(), timeout=60)  # fmt: skip
    page.reload()
    page.locator(f'a[href="/jobs/{job.pk}/"]').first.click()
    log = page.locator("[data-log]")
    expect(log).to_contain_text("tick 000", timeout=30_000)
    seen = log.inner_text()
    # New lines arrive without reloading the page.
    expect(log).to_contain_text("tick 012", timeout=30_000)
    assert "tick 012" not in seen or "tick 000" in seen
    screenshot(page, f"{prefix}-06-job-log-streaming")

    # They stop it, after a confirmation; the agent stops it and billing ends.
    page.get_by_role("link", name=t["stop_job"]).click()
    screenshot(page, f"{prefix}-07-stop-confirm")
    page.get_by_role("button", name=t["stop_job"]).click()
    expect(page.locator("[data-job-status]")).to_contain_text(t["stopped"], timeout=45_000)
    screenshot(page, f"{prefix}-08-job-stopped")
    page.goto(f"/orders/{job.order_id}/")
    screenshot(page, f"{prefix}-09-order-timeline")

    # Settlement posts the charge (beat runs it every minute in `make run`).
    settle(until=timezone.now())
    lease = Lease.objects.get(job_id=job.pk)
    assert lease.charged_micros > 0
    page.get_by_role("navigation").get_by_role("link", name=t["billing"]).click()
    row = page.locator("tr", has=page.locator(f'a[href="/jobs/{job.pk}/"]'))
    expect(row.locator("[data-charged]")).not_to_have_text(re.compile(r"^\D*0\.00$"))
    expect(page.locator("[data-wallet-available]")).not_to_contain_text("50.00")
    screenshot(page, f"{prefix}-10-billing-charged")


@pytest.mark.parametrize("language", ["en", "zh-hans"])
def test_provider_joins_a_node_with_a_real_agent_and_prices_it_onto_the_market(
    page: Any, browser_context: Any, portal_server: Any, agents: Any, screenshot: Any, language: str
) -> None:
    t = TEXT[language]
    prefix = f"{language}-provider"
    ensure_catalog()
    switch_language(page, language)
    sign_up(page, t, f"provider-{language}@example.com")

    # They become a provider and generate a join token with its one-line install command.
    page.get_by_role("navigation").get_by_role("link", name=t["nodes"]).click()
    screenshot(page, f"{prefix}-01-nodes-empty")
    page.get_by_role("link", name=t["become"]).click()
    page.get_by_label(t["org"]).fill(f"Huaxia Compute {language}")
    page.get_by_role("button", name=t["create_provider"]).click()
    page.get_by_label(t["region"]).fill("cn-east")
    screenshot(page, f"{prefix}-02-join-form")
    page.get_by_role("button", name=t["generate"]).click()
    command = page.locator("#install-command").input_value()
    assert f"suanli-agent join --server {portal_server.url} --token jt_" in command
    screenshot(page, f"{prefix}-03-join-token")
    token = re.search(r"--token (\S+)", command).group(1)  # type: ignore[union-attr]

    # A real agent joins with it and runs; its first flushed heartbeat brings the node online.
    agent = agents(f"provider-node-{language}")
    node_id = agent.join(token)
    agent.start()
    wait_for("the node online", lambda: node_online(node_id), timeout=60)
    page.get_by_role("navigation").get_by_role("link", name=t["nodes"]).click()
    row = page.locator("tr", has_text=agent.name)
    expect(row).to_contain_text(t["online"])
    screenshot(page, f"{prefix}-04-node-online")
    row.get_by_role("link", name=agent.name).click()
    expect(page.locator("h1")).to_contain_text(t["online"])
    screenshot(page, f"{prefix}-05-node-detail")

    # They set prices and list the node; it appears on the market at those prices.
    page.get_by_role("navigation").get_by_role("link", name=t["pricing"]).click()
    page.get_by_label(t["on_demand"]).fill("3.20")
    page.get_by_label(t["reserved"]).fill("2.80")
    page.get_by_label(t["floor"]).fill("1.10")
    page.get_by_label(t["listed"]).check()
    page.get_by_role("button", name=t["save"]).click()
    expect(page.get_by_role("status")).to_contain_text(t["saved"])
    screenshot(page, f"{prefix}-06-pricing-saved")
    offer = Offer.objects.get(node_id=node_id)
    assert offer.listed and offer.on_demand_price_micros == parse_amount("3.20")
    page.get_by_role("navigation").get_by_role("link", name=t["market"]).click()
    market_row = page.locator("tr", has_text=agent.name)
    for price in ("3.20", "2.80", "1.10"):
        expect(market_row).to_contain_text(price)
    screenshot(page, f"{prefix}-07-market-listed")


@pytest.mark.parametrize(
    "browser_context_args",
    [{"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "locale": "en-US"}],
)
def test_every_portal_page_fits_a_phone(page: Any, screenshot: Any) -> None:
    """Seeded through the services (no agents): each page renders without horizontal scrolling."""
    from django.contrib.auth.models import User

    from marketplace.services.jobs import JobSpec
    from marketplace.services.matching import matching_run
    from marketplace.services.orders import OrderRequest, order_place
    from tests.billing.conftest import fund
    from tests.marketplace.market_helpers import online_node
    from tests.providers.factories import member_of

    provider = ProviderFactory(name="Huaxia Compute")
    node = online_node(provider, name="hx-sh-h100-01", devices=8)
    user = User.objects.create_user(
        username="phone@example.com", email="phone@example.com", password=PASSWORD
    )
    member_of(provider, user)
    fund(user, 500_000_000)
    order, _ = order_place(
        buyer=user,
        request=OrderRequest(term="on_demand", devices_per_node=2, price_limit_micros=3_000_000,
                             job=JobSpec(image="nvcr.io/nvidia/pytorch:24.05-py3", command=["python", "train.py"]),
                             offer_id=node.offer.pk),
        idempotency_key="phone",
    )  # fmt: skip
    # The module's Celery worker may run the round the order triggered first (it holds the
    # matching lock meanwhile): either way the job appears.
    matching_run()
    job = wait_for("the job", lambda: Job.objects.filter(order=order).first(), timeout=30)
    page.goto("/accounts/login/")
    page.get_by_label("Email").fill(user.username)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Log in", exact=True).click()
    pages = {
        "market": "/market/", "offer": f"/market/offers/{node.offer.pk}/",
        "order-form": f"/market/offers/{node.offer.pk}/order/", "orders": "/orders/",
        "order": f"/orders/{order.pk}/", "job": f"/jobs/{job.pk}/", "wallet": "/wallet/",
        "nodes": "/provider/nodes/", "node": f"/provider/nodes/{node.pk}/", "pricing": "/provider/pricing/",
        "join": "/provider/nodes/join/", "earnings": "/provider/payouts/",
    }  # fmt: skip
    for name, path in pages.items():
        page.goto(path)
        expect(page.locator("h1")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), name
        screenshot(page, f"phone-portal-{name}")
