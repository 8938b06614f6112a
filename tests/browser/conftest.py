"""Browser tests: Playwright driving Debian's headless Chromium against a live gunicorn.

Fixtures:

* ``portal_server`` (session): a real ``gunicorn config.wsgi`` subprocess on a free port, pointed at
  the test database and Redis through ``tests.support.worker.child_env()``, and at the local fake
  Stripe ``portal_fake_stripe`` (``tests/support/fake_stripe.py``). Its URL is
  ``portal_server.url``. Tests that use it must use ``transactional_db`` so the server sees
  their committed rows (and the rows the server writes are flushed after each test).
* ``browser_context``: a fresh persistent Chromium profile per test (``/usr/bin/chromium``, never a
  downloaded browser), ``base_url`` set to the server; ``page`` is a tab in it. Use
  ``browser_context_args`` (parametrize indirectly, or override the fixture) for other viewports
  or locales.
* ``screenshot(page, name)``: saves ``var/screenshots/<name>.png`` (full page).

When ``/usr/bin/chromium`` is missing, only these tests are skipped, with a reason that says how to
install it; ``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_stripe import FakeStripe
from tests.support.worker import child_env

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "var" / "screenshots"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Playwright's sync API runs an event loop in this thread; Django's ORM (used by fixtures and by
# assertions on the database) would refuse to run "in an async context" without this.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@dataclass
class PortalServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def portal_fake_stripe() -> Iterator[FakeStripe]:
    """The local fake Stripe the portal's gunicorn talks to (``STRIPE_API_BASE``), for the session."""
    server = FakeStripe().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def portal_server(
    django_db_setup: None, django_db_blocker: Any, portal_fake_stripe: FakeStripe
) -> Iterator[PortalServer]:
    """gunicorn serving the portal from the test database, for the whole session (Stripe calls go
    to ``portal_fake_stripe``)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = ROOT / "var" / "test" / "portal-gunicorn.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", "config.wsgi", "-b", f"127.0.0.1:{port}",
            "-w", "1", "--threads", "4", "--access-logfile", "-", "--graceful-timeout", "5",
        ],
        cwd=ROOT,
        env=child_env(SUANLI_SITE_URL=url, DATABASE_CONN_MAX_AGE="0", STRIPE_API_BASE=portal_fake_stripe.url),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited early; see {log_path}")
            try:
                with urllib.request.urlopen(f"{url}/accounts/login/", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not answer within 60s; see {log_path}")
            time.sleep(0.2)
        yield PortalServer(url=url, process=process, log_path=log_path)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 15)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()
        log.close()


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    if not CHROMIUM.exists():
        pytest.skip("Chromium not found at /usr/bin/chromium: apt-get install chromium")
    return str(CHROMIUM)


@pytest.fixture(scope="session")
def playwright_driver(chromium_executable: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture
def browser_context_args() -> dict[str, Any]:
    """Overridable per module or test: viewport, locale, ... (Playwright context options)."""
    return {"viewport": {"width": 1280, "height": 800}, "locale": "en-US"}


@pytest.fixture
def browser_context(
    playwright_driver: Any,
    chromium_executable: str,
    portal_server: PortalServer,
    browser_context_args: dict[str, Any],
    tmp_path: Path,
) -> Iterator[Any]:
    """A fresh Chromium profile (its own user-data-dir) for one test."""
    context = playwright_driver.chromium.launch_persistent_context(
        user_data_dir=str(tmp_path / "chromium-profile"),
        executable_path=chromium_executable,
        headless=True,
        args=CHROMIUM_ARGS,
        base_url=portal_server.url,
        **browser_context_args,
    )
    context.set_default_timeout(15_000)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(browser_context: Any) -> Any:
    return browser_context.pages[0] if browser_context.pages else browser_context.new_page()


@pytest.fixture(scope="session")
def screenshot() -> Callable[[Any, str], Path]:
    """``screenshot(page, "keys-created")`` saves var/screenshots/keys-created.png (full page)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def save(page: Any, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return save
