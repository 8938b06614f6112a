"""Test-wide fixtures: real PostgreSQL, real Redis, and a real Celery worker on demand.

With DATABASE_URL / REDIS_URL unset the suite runs on its own embedded PostgreSQL and Redis under
``var/test`` (never the ones `make run` uses).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.worker import CeleryWorker

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("SUANLI_ENV", "test")
    os.environ.setdefault("SUANLI_VAR_DIR", str(ROOT / "var" / "test"))


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: object) -> None:
    """Re-seed the hardware catalog once per session.

    A ``transaction=True`` test truncates every table when it ends, the migration-seeded catalog
    included, and ``--reuse-db`` carries that into the next run.
    """
    from providers.catalog import catalog_sync
    from providers.models import AcceleratorModel

    with django_db_blocker.unblock():  # type: ignore[attr-defined]
        catalog_sync(AcceleratorModel)


@pytest.fixture(autouse=True)
def _default_language() -> Iterator[None]:
    """Each test starts in the default language.

    A request through LocaleMiddleware leaves its language active in the thread afterwards, so a
    test that fetched a Chinese page would make the next test (a template rendered directly, say)
    Chinese too.
    """
    from django.utils import translation

    yield
    translation.deactivate()


@pytest.fixture(autouse=True)
def _clean_redis(settings: object) -> None:
    """Each test starts with an empty Redis database (heartbeats, rate limits, cache)."""
    from core.redis import redis_client

    redis_client().flushdb()


@pytest.fixture(scope="module")
def celery_worker(django_db_setup: None, django_db_blocker: object) -> Iterator[CeleryWorker]:
    """A real `celery worker` process on every queue, pointed at the test database.

    Tests using it must use ``transactional_db`` so the worker sees their committed rows. Module
    scope: a module's tests share one worker, and no worker outlives its module.
    """
    worker = CeleryWorker()
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
