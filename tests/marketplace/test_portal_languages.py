"""What the services say reaches a Chinese page in Chinese, and the API keeps its English.

Order reasons are stored as codes and put into words when a page renders; validation messages
follow the request's language (the portal user's, the API caller's Accept-Language).
"""

from __future__ import annotations

import importlib
import re
from datetime import timedelta
from html import escape
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from core.services import apikey_create
from marketplace.labels import JOB_MESSAGE_PREFIXES, JOB_MESSAGES, ORDER_REASON_TEXT, PREEMPTION_LABELS
from marketplace.matching.market import PreemptReason, ReasonCode
from marketplace.models import Job, JobStatus, Offer, Order, OrderReason, OrderStatus
from marketplace.services.matching import matching_run
from marketplace.services.orders import order_cancel
from marketplace.views import REASON_TEXT
from providers.models import Node, NodeStatus
from tests.marketplace.market_helpers import agent_reports, funded_buyer, online_node
from tests.marketplace.test_portal_pages import place
from tests.providers.factories import ProviderFactory, member_of

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]


def zh_client(user) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(user)
    client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/"})
    return client


def en_client(user) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(user)
    return client


# (code, params, the Chinese page text, the API's English)
REASONS = [
    (OrderReason.CANCELLED_BY_BUYER, {}, "已由买家取消", "cancelled by buyer"),
    (OrderReason.STOPPING_FOR_BUYER, {}, "正按买家要求停止", "stopping at the buyer's request"),
    (OrderReason.RESERVED_WINDOW_PASSED, {}, "预留时间窗口结束前未找到可用算力",
     "no capacity was found before the reserved window passed"),
    (OrderReason.REQUEUED_NO_ACK, {}, "已重新排队：节点没有响应", "re-queued: node did not respond"),
    (OrderReason.REQUEUED_NODE_LOST, {}, "节点失联；重新等待算力", "node lost; waiting for capacity again"),
    (OrderReason.RESTART_UNFUNDED, {}, "钱包余额不足以重新启动", "wallet cannot cover a restart"),
    (OrderReason.RETRY_UNFUNDED, {}, "钱包余额不足以重试", "wallet cannot cover a retry"),
    (OrderReason.JOB_EXITED, {"exit_code": 137}, "任务已退出，退出码 137", "job exited with code 137"),
    (OrderReason.JOB_FAILED, {}, "任务失败", "job failed"),
    (OrderReason.JOB_FAILED, {"message": "the node did not acknowledge the job in time"},
     "任务失败：节点未能及时确认该任务", "job failed: the node did not acknowledge the job in time"),
    (OrderReason.JOB_FAILED, {"message": "docker run failed: pull access denied for x"},
     "任务失败：docker 运行失败：pull access denied for x",
     "job failed: docker run failed: pull access denied for x"),
    (OrderReason.JOB_STOPPED, {}, "已停止", "stopped"),
    (OrderReason.JOB_PREEMPTED, {"preemption": "outbid"}, "已被抢占（更高的竞价出价拿走了这些设备）",
     "preempted (a higher spot bid took the devices)"),
    (OrderReason.JOB_PREEMPTED, {"preemption": ""}, "已被抢占（算力被征用）", "preempted (capacity needed)"),
    (OrderReason.NODE_LOST, {}, "节点已离线", "the node went offline"),
]  # fmt: skip


@pytest.mark.parametrize(("code", "params", "chinese", "english"), REASONS)
def test_each_order_reason_reads_in_chinese_on_zh_pages_and_in_english_in_the_api(
    code, params, chinese, english
):
    online_node(name="sh-h100", devices=1)
    buyer = funded_buyer(1000)
    order = place(buyer, "k", devices=4)  # stays open: a one-device node cannot hold it
    status = OrderStatus.OPEN if code.startswith("requeued") else OrderStatus.ENDED
    Order.objects.filter(pk=order.pk).update(status=status, status_reason=code, status_params=params)

    client = zh_client(buyer)
    for page in (f"/orders/{order.pk}/", "/orders/"):
        body = client.get(page).content.decode()
        assert chinese in body, page
        assert escape(english) not in body, page
    assert escape(english) in en_client(buyer).get(f"/orders/{order.pk}/").content.decode()

    key = apikey_create(user=buyer, name="k", scopes=["read"]).secret
    for language in ("zh-hans", "en"):
        api = (
            Client()
            .get(
                f"/api/v1/orders/{order.pk}",
                HTTP_AUTHORIZATION=f"Bearer {key}",
                HTTP_ACCEPT_LANGUAGE=language,
            )
            .json()
        )
        assert api["status_reason"] == english and api["status_reason_code"] == code


def test_every_order_reason_and_preemption_and_unmatched_reason_has_words():
    assert set(ORDER_REASON_TEXT) == set(OrderReason.values)
    assert set(PreemptReason) <= set(PREEMPTION_LABELS)
    assert set(REASON_TEXT) == set(ReasonCode)


def test_the_services_store_codes_a_page_turns_into_chinese():
    online_node(name="sh-h100", devices=2)
    buyer = funded_buyer(1000)
    client = zh_client(buyer)

    # Given an order that exits with code 3, one that fails with the agent's message, one cancelled
    exited = place(buyer, "exit")
    failed = place(buyer, "fail")
    matching_run()
    job = Job.objects.get(order=exited)
    agent_reports(job, "accepted")
    agent_reports(job, "running")
    agent_reports(job, "exited", exit_code=3)
    failing = Job.objects.get(order=failed)
    agent_reports(failing, "accepted")
    from marketplace.services.jobs import JobEventIn, job_event_record

    job_event_record(node=failing.node, job_id=failing.pk, event=JobEventIn(
        seq=99, state="failed", at=timezone.now(), message="job ended while the agent was not watching"))  # fmt: skip
    cancelled = place(buyer, "cancel", devices=2)
    order_cancel(order=cancelled)

    # Then each stores a code with its figures, and the pages say it in Chinese
    exited.refresh_from_db()
    failed.refresh_from_db()
    cancelled.refresh_from_db()
    assert (exited.status_reason, exited.status_params) == (OrderReason.JOB_EXITED, {"exit_code": 3})
    assert failed.status_reason == OrderReason.JOB_FAILED
    assert failed.status_params == {"message": "job ended while the agent was not watching"}
    assert cancelled.status_reason == OrderReason.CANCELLED_BY_BUYER
    listing = client.get("/orders/").content.decode()
    assert "任务已退出，退出码 3" in listing and "已由买家取消" in listing
    assert "任务失败：任务在节点代理未监视时结束" in listing
    job_page = client.get(f"/jobs/{failing.pk}/").content.decode()
    assert "任务在节点代理未监视时结束" in job_page and "not watching" not in job_page
    english = en_client(buyer).get("/orders/").content.decode()
    assert "job failed: job ended while the agent was not watching" in english


def test_a_preemption_notice_names_its_reason_in_chinese():
    online_node(name="sh-h100")
    buyer = funded_buyer(1000)
    order = place(buyer, "k")
    matching_run()
    job = Job.objects.get(order=order)
    agent_reports(job, "accepted")
    agent_reports(job, "running")
    Job.objects.filter(pk=job.pk).update(
        stop_reason="preemption", preemption_reason=PreemptReason.HIGHER_TIER, stop_requested_at=timezone.now(),
        stop_deadline=timezone.now() + timedelta(seconds=120),
    )  # fmt: skip
    client = zh_client(buyer)
    for page in (f"/orders/{order.pk}/", f"/jobs/{job.pk}/"):
        body = client.get(page).content.decode()
        assert "按需或预留订单需要这些设备" in body and "higher_tier" not in body, page


def test_the_agents_fixed_messages_are_the_ones_it_sends():
    """The words above are looked up by the agent's exact text: a change there must show here."""
    sources = "\n".join(
        path.read_text(encoding="utf-8")
        for folder in ("providers/agent", "marketplace/services")
        for path in (ROOT / folder).rglob("*.py")
    )
    for message in JOB_MESSAGES:
        assert message in sources, message
    for prefix in JOB_MESSAGE_PREFIXES:
        assert f'"{prefix}' in sources, prefix


def test_old_english_reasons_become_codes_and_back():
    migration = importlib.import_module("marketplace.migrations.0004_order_status_reason_codes")
    cases = {
        "cancelled by buyer": ("cancelled_by_buyer", {}),
        "job exited with code 0": ("job_exited", {"exit_code": 0}),
        "job exited with code None": ("job_exited", {"exit_code": None}),
        "preempted (outbid)": ("job_preempted", {"preemption": "outbid"}),
        "preempted (capacity needed)": ("job_preempted", {"preemption": ""}),
        "docker run failed: no such image": ("job_failed", {"message": "docker run failed: no such image"}),
        "no capacity was found before the reserved window passed": ("reserved_window_passed", {}),
    }
    for text, expected in cases.items():
        assert migration.to_code(text) == expected, text
        assert migration.to_text(*expected) == text
    assert set(migration.CODES) == set(OrderReason.values)


# --- Validation messages ----------------------------------------------------------------------------


def order_form_data(**changes: str) -> dict[str, str]:
    data = {"term": "on_demand", "devices": "1", "price_limit": "2.50", "runtime": "docker",
            "image": "pytorch/pytorch:2.3", "idempotency_key": "k"}  # fmt: skip
    data.update(changes)
    return data


def test_order_form_errors_from_the_form_and_the_services_are_chinese_on_a_zh_page():
    offer = Offer.objects.get(node=online_node(name="sh-h100", devices=2))
    client = zh_client(funded_buyer(1))
    url = f"/market/offers/{offer.pk}/order/"

    # The job spec service: the image is required.
    body = client.post(url, order_form_data(image="")).content.decode()
    assert "需要填写镜像地址，例如 nvcr.io/nvidia/pytorch:24.05-py3。" in body
    assert "An image reference is required" not in body
    # The order service: the wallet cannot cover the hold.
    body = client.post(url, order_form_data()).content.decode()
    assert "此订单需要冻结 2.50 USD（按您的价格上限计算一小时）；请为钱包充值或降低价格上限。" in body
    assert "超出了您的可用余额。" in body and "set aside" not in body
    # Live validation answers in the same language.
    check = client.post(url, order_form_data(validate="1", devices="5", image="bad image!")).json()
    assert check["errors"]["devices"] == ["该节点只有 2 个设备。"]
    assert check["errors"]["image"] == ["不是有效的镜像地址（registry/name:tag 或 name@sha256:...）。"]
    assert not Order.objects.exists()


def test_pricing_refused_by_the_service_is_chinese_on_a_zh_page():
    provider = ProviderFactory()
    member = member_of(provider)
    node = online_node(provider, name="sh-h100")
    Node.objects.filter(pk=node.pk).update(status=NodeStatus.RETIRED)
    prefix = f"node-{node.pk}"
    response = zh_client(member).post(
        f"/provider/pricing/{node.pk}/",
        {f"{prefix}-on_demand_price": "3.00", f"{prefix}-reserved_price": "2.50", f"{prefix}-spot_floor": "1.20",
         f"{prefix}-listed": "on"},
    )  # fmt: skip
    body = response.content.decode()
    assert response.status_code == 400 and "已退役的节点不能上架。" in body and "retired node" not in body


def test_api_validation_follows_accept_language_and_defaults_to_english():
    buyer = funded_buyer(1000)
    key = apikey_create(user=buyer, name="k", scopes=["read", "trade"]).secret
    order = {"term": "reserved", "devices_per_node": 1, "price_limit": "2.00",
             "window_start": (timezone.now() + timedelta(hours=1)).isoformat(),
             "window_end": (timezone.now() + timedelta(hours=1, minutes=5)).isoformat(),
             "job": {"image": "pytorch/pytorch:2.3"}}  # fmt: skip

    def post(key_suffix: str, **headers: str) -> dict:  # type: ignore[type-arg]
        return Client().post("/api/v1/orders", order, content_type="application/json",
                             HTTP_AUTHORIZATION=f"Bearer {key}", HTTP_IDEMPOTENCY_KEY=key_suffix, **headers).json()  # fmt: skip

    english = post("a")["error"]
    assert english["fields"]["window_end"] == ["A reservation lasts at least 10 minutes."]
    chinese = post("b", HTTP_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9")["error"]
    assert chinese["fields"]["window_end"] == ["预留时长至少 10 分钟。"]
    assert chinese["message"] == "window_end: 预留时长至少 10 分钟。"
    assert Client().get("/api/v1/orders/999999", HTTP_AUTHORIZATION=f"Bearer {key}",
                        HTTP_ACCEPT_LANGUAGE="zh-hans").json()["error"]["message"] == "没有这个订单。"  # fmt: skip


def test_vendor_names_read_in_chinese_on_the_market():
    online_node(name="sh-h100")
    body = Client().get("/market/", HTTP_ACCEPT_LANGUAGE="zh-CN").content.decode()
    options = re.findall(r'<option value="(\w+)">([^<]+)</option>', body)
    labels = dict(options)
    assert labels["huawei"] == "华为" and labels["cambricon"] == "寒武纪" and labels["hygon"] == "海光"
    assert labels["generic"] == "通用" and labels["nvidia"] == "NVIDIA"


def test_a_job_status_label_the_agent_echoes_is_translated():
    """A stopped job's message is the stop reason the server sent the agent ("buyer")."""
    online_node(name="sh-h100")
    buyer = funded_buyer(1000)
    order = place(buyer, "k")
    matching_run()
    job = Job.objects.get(order=order)
    Job.objects.filter(pk=job.pk).update(status=JobStatus.STOPPED, message="buyer", ended_at=timezone.now())
    body = zh_client(buyer).get(f"/jobs/{job.pk}/").content.decode()
    assert '<p class="alert alert-info">由您停止</p>' in body
