"""API test fixtures: the seeded world, fake Stripe, and (for Schemathesis) a live server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.api.world import World, build_world
from tests.billing.conftest import fake_stripe, fake_stripe_server  # noqa: F401 - fixtures
from tests.support.live_server import LiveServer
from tests.support.worker import ROOT


@pytest.fixture
def world(db: None, fake_stripe: Any) -> World:  # noqa: F811
    return build_world()


@pytest.fixture(scope="module")
def live_api(django_db_setup: None, fake_stripe_server: Any) -> Iterator[LiveServer]:  # noqa: F811
    """gunicorn on the test database; rate limits high enough for a fuzzer, fake Stripe."""
    server = LiveServer(
        log_path=ROOT / "var" / "test" / "api-gunicorn.log",
        workers=2,
        threads=4,
        SUANLI_API_RATE="100000/min",
        SUANLI_API_ANON_RATE="100000/min",
        STRIPE_API_BASE=fake_stripe_server.url,
    ).start()
    try:
        yield server
    finally:
        server.stop()
