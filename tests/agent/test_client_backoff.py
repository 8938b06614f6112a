"""The agent against an exchange that is briefly unavailable (issue #11, item 12).

The exchange answers 503 with ``Retry-After`` while its Redis is down; the agent waits at least
that long (jittered exponential backoff otherwise, capped), logs one line per retry and carries on.
"""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from providers.agent.client import (
    MAX_RETRY_AFTER_S,
    AgentClient,
    ApiError,
    Backoff,
    Unreachable,
    retry_after_seconds,
)
from providers.agent.simulate import SimulatedTelemetry
from tests.agent.fakes import FakeExchange
from tests.agent.test_daemon import make_agent, wait_for


def test_a_503_is_unreachable_with_the_servers_retry_after(exchange: FakeExchange) -> None:
    exchange.fail_next["/heartbeat"] = [503]
    exchange.retry_after = "7"

    with pytest.raises(Unreachable) as info:
        AgentClient(exchange.url, exchange.credential).heartbeat(running_jobs=[], devices=[])

    assert info.value.retry_after == 7.0
    assert "HTTP 503" in str(info.value) and "fake 503" in str(info.value)


def test_a_429_keeps_its_retry_after(exchange: FakeExchange) -> None:
    exchange.fail_next["/work"] = [429]
    exchange.retry_after = "3"
    with pytest.raises(ApiError) as info:
        AgentClient(exchange.url, exchange.credential).work(running=[], wait=0)
    assert info.value.status == 429 and info.value.retryable and info.value.retry_after == 3.0


def test_a_503_without_retry_after_has_none(exchange: FakeExchange) -> None:
    exchange.fail_next["/heartbeat"] = [503]
    with pytest.raises(Unreachable) as info:
        AgentClient(exchange.url, exchange.credential).heartbeat(running_jobs=[], devices=[])
    assert info.value.retry_after is None


def test_retry_after_spellings() -> None:
    now = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    assert retry_after_seconds("5") == 5.0
    assert retry_after_seconds(" 0 ") == 0.0
    assert retry_after_seconds("-3") == 0.0
    assert retry_after_seconds("1e9") == MAX_RETRY_AFTER_S
    assert (
        retry_after_seconds(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now.timestamp())
        == 30.0
    )
    assert (
        retry_after_seconds(format_datetime(now - timedelta(hours=1), usegmt=True), now=now.timestamp())
        == 0.0
    )
    for garbage in (None, "", "soon", "nan", "Mon, 99 Foo 2026"):
        assert retry_after_seconds(garbage) is None


def test_backoff_is_jittered_exponential_and_capped() -> None:
    random.seed(11)
    backoff = Backoff(base=1.0, cap=60.0)
    delays = [backoff.next_delay() for _ in range(12)]
    for n, delay in enumerate(delays, start=1):
        ceiling = min(60.0, 2.0 ** (n - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert len(set(delays)) == len(delays)  # jittered, not a fixed ladder
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_backoff_never_retries_before_retry_after_and_jitters_it() -> None:
    random.seed(12)
    delays = [Backoff().next_delay(retry_after=7.0) for _ in range(50)]
    assert all(7.0 <= d <= 7.0 * 1.2 for d in delays)
    assert len(set(delays)) > 40
    # A later failure whose own backoff is longer than Retry-After keeps the longer wait.
    backoff = Backoff(cap=60.0)
    for _ in range(7):
        backoff.next_delay()
    assert backoff.next_delay(retry_after=1.0) >= 32.0
    # An absurd Retry-After is capped.
    assert Backoff().next_delay(retry_after=1e9) <= MAX_RETRY_AFTER_S * 1.2


def test_the_heartbeat_loop_honours_retry_after_logs_one_line_and_recovers(
    tmp_path: Path, exchange: FakeExchange, caplog: pytest.LogCaptureFixture
) -> None:
    exchange.fail_next["/heartbeat"] = [503, 503]
    exchange.retry_after = "1"
    agent = make_agent(tmp_path, exchange)
    caplog.set_level(logging.INFO, logger="suanli_agent")
    agent.start()
    try:
        wait_for(lambda: len(exchange.paths("/heartbeat")) >= 4, timeout=20)
        heartbeat_thread = next(t for t in agent.threads if t.name == "suanli-heartbeat")
        assert heartbeat_thread.is_alive()
    finally:
        agent.stop()

    beats = exchange.paths("/heartbeat")
    # Each retry after a 503 waited at least the server's Retry-After (1 s), although the
    # agent's own first backoff step is under a second and its interval is 0.2 s.
    assert beats[1].at - beats[0].at >= 1.0
    assert beats[2].at - beats[1].at >= 1.0
    assert beats[3].at - beats[2].at < 1.0  # back to the normal interval once it succeeded
    lines = [r for r in caplog.records if r.getMessage().startswith("heartbeat.unreachable")]
    assert len(lines) == 2
    assert all(r.exc_info is None and "HTTP 503" in r.getMessage() for r in lines)


def test_the_work_loop_honours_retry_after(tmp_path: Path, exchange: FakeExchange) -> None:
    exchange.fail_next["/work"] = [503]
    exchange.retry_after = "1"
    agent = make_agent(tmp_path, exchange)
    agent.start()
    try:
        wait_for(lambda: len(exchange.paths("/work")) >= 2, timeout=20)
    finally:
        agent.stop()
    polls = exchange.paths("/work")
    assert polls[1].at - polls[0].at >= 1.0


class FailingOnceTelemetry(SimulatedTelemetry):
    """The hardware tool crashes on the first read (a vendor CLI printing garbage, say)."""

    def __init__(self) -> None:
        super().__init__("h100x8", "node-a")
        self.failed = False

    def read(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed:
            self.failed = True
            raise RuntimeError("telemetry exploded")
        return super().read(*args, **kwargs)


def test_an_unexpected_error_does_not_end_the_heartbeat_thread(
    tmp_path: Path, exchange: FakeExchange, caplog: pytest.LogCaptureFixture
) -> None:
    agent = make_agent(tmp_path, exchange)
    agent.telemetry = FailingOnceTelemetry()
    agent.start()
    try:
        wait_for(lambda: len(exchange.paths("/heartbeat")) >= 1, timeout=20)
    finally:
        agent.stop()
    assert any(r.getMessage().startswith("heartbeat.error") for r in caplog.records)
