"""A reserved window must carry its time zone and start within ``SUANLI_MAX_RESERVATION_AHEAD_DAYS``.

A window without a zone was booked as UTC (a buyer in UTC+8 got the wrong eight hours); a window in
year 9999 was accepted. Both are field-level 400s through the API and form errors in the portal.
"""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from marketplace.models import Offer, Order
from tests.marketplace.market_helpers import funded_buyer, online_node

pytestmark = pytest.mark.django_db

JOB = {"image": "nvcr.io/nvidia/pytorch:24.05-py3", "command": ["python", "train.py"]}


def post_reserved(client: APIClient, start: str, end: str, key: str = "k") -> Any:
    return client.post(
        "/api/v1/orders",
        {
            "term": "reserved",
            "devices_per_node": 1,
            "price_limit": "3.00",
            "window_start": start,
            "window_end": end,
            "job": JOB,
        },
        format="json",
        HTTP_IDEMPOTENCY_KEY=key,
    )


@pytest.fixture
def api() -> APIClient:
    online_node(name="n")
    client = APIClient()
    client.force_authenticate(funded_buyer(1000))
    return client


def naive(hours: int) -> str:
    return (timezone.now() + timedelta(hours=hours)).replace(microsecond=0, tzinfo=None).isoformat()


@pytest.mark.parametrize(
    ("start", "end", "field"),
    [
        (naive(1), naive(2), "window_start"),
        (naive(1) + "Z", naive(2), "window_end"),
        (naive(1), naive(2) + "+08:00", "window_start"),
    ],
)
def test_a_window_without_a_time_zone_is_refused_on_its_field(api, start, end, field):
    response = post_reserved(api, start, end)

    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert field in error["fields"]
    assert "time zone" in error["fields"][field][0]
    assert not Order.objects.exists()


def test_a_window_with_an_offset_is_booked_at_that_instant(api):
    start = (timezone.now() + timedelta(hours=10)).replace(microsecond=0, tzinfo=None)
    response = post_reserved(
        api, start.isoformat() + "+08:00", (start + timedelta(hours=1)).isoformat() + "+08:00"
    )

    assert response.status_code == 201, response.json()
    order = Order.objects.get()
    assert order.window_start == start.replace(tzinfo=UTC) - timedelta(hours=8)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("9999-12-31T00:00:00Z", "9999-12-31T01:00:00Z"),
        ("9999-12-31T23:00:00-05:00", "9999-12-31T23:30:00-05:00"),  # past year 9999 in UTC
        ("0001-01-01T00:00:00+14:00", "0001-01-01T01:00:00+14:00"),  # before year 1 in UTC
    ],
)
def test_absurd_years_are_a_field_error_not_a_500(api, start, end):
    response = post_reserved(api, start, end)

    assert response.status_code == 400, response.content
    assert "window_start" in response.json()["error"]["fields"]
    assert not Order.objects.exists()


def test_a_window_may_start_at_most_the_configured_days_ahead(api, settings):
    # Default: one year ahead
    assert settings.SUANLI_MAX_RESERVATION_AHEAD_DAYS == 365
    far = timezone.now() + timedelta(days=366)
    refused = post_reserved(api, far.isoformat(), (far + timedelta(hours=1)).isoformat(), key="far")
    assert refused.status_code == 400, refused.json()
    assert refused.json()["error"]["fields"]["window_start"] == [
        "A reservation starts at most 365 days from now."
    ]

    near = timezone.now() + timedelta(days=364)
    booked = post_reserved(api, near.isoformat(), (near + timedelta(hours=1)).isoformat(), key="near")
    assert booked.status_code == 201, booked.json()

    # Configurable
    settings.SUANLI_MAX_RESERVATION_AHEAD_DAYS = 30
    month = timezone.now() + timedelta(days=31)
    again = post_reserved(api, month.isoformat(), (month + timedelta(hours=1)).isoformat(), key="month")
    assert again.status_code == 400
    assert again.json()["error"]["fields"]["window_start"] == [
        "A reservation starts at most 30 days from now."
    ]
    assert Order.objects.count() == 1


def test_the_portal_order_form_refuses_a_window_too_far_ahead():
    offer = Offer.objects.get(node=online_node(name="n"))
    client = Client()
    client.force_login(funded_buyer(1000))
    start = timezone.now() + timedelta(days=400)
    form = {
        "term": "reserved", "devices": "1", "price_limit": "2.00", "runtime": "docker",
        "image": "pytorch/pytorch:2.3", "idempotency_key": "k",
        "window_start": start.strftime("%Y-%m-%dT%H:%M"),
        "window_end": (start + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
    }  # fmt: skip

    check = client.post(f"/market/offers/{offer.pk}/order/", {**form, "validate": "1"}).json()
    assert check["valid"] is False
    assert check["errors"]["window_start"] == ["A reservation starts at most 365 days from now."]

    page = client.post(f"/market/offers/{offer.pk}/order/", form)
    assert page.status_code == 200
    assert "A reservation starts at most 365 days from now." in page.content.decode()
    assert not Order.objects.exists()

    # Year 9999 is the same form error, not a 500
    late = {**form, "window_start": "9999-12-31T00:00", "window_end": "9999-12-31T01:00"}
    assert client.post(f"/market/offers/{offer.pk}/order/", late).status_code == 200
    assert not Order.objects.exists()
