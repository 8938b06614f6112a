import pytest
from django.test import override_settings

pytestmark = pytest.mark.django_db


# This test runs before the module's worker fixture starts (no worker outlives its module).
def test_healthz_503_when_no_worker_was_seen(client):
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["celery"] == "no worker seen in the last minute"
    assert body["database"] == "ok" and body["redis"] == "ok"


def test_healthz_ok_with_a_live_worker(client, celery_worker):
    response = client.get("/healthz")
    assert response.status_code == 200, response.json()
    assert response.json() == {"status": "ok", "database": "ok", "redis": "ok", "celery": "ok"}


def test_healthz_503_when_redis_is_unreachable(client, celery_worker):
    # Port 1 on loopback refuses connections: Redis is down from the app's point of view,
    # even though a worker is running.
    with override_settings(REDIS_URL="redis://127.0.0.1:1/0"):
        response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["redis"] == "unavailable"
    assert body["database"] == "ok"
