"""Agent tests need no Django, database or Redis: they run with `-p no:django`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.fakes import FakeBin, FakeExchange


@pytest.fixture(autouse=True)
def _clean_redis() -> None:
    """Overrides the repository-wide Redis flush: the agent never talks to Redis."""
    return None


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeBin:
    """PATH holds only the fake tools; vendor install roots point at empty temp dirs."""
    fb = FakeBin(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(fb.root))
    monkeypatch.setenv("SUANLI_AGENT_NO_NVML", "1")
    monkeypatch.setenv("SUANLI_AGENT_TOOL_TIMEOUT", "1")
    for var in ("ASCEND_TOOLKIT_HOME", "ROCM_PATH", "NEUWARE_HOME"):
        d = tmp_path / var.lower()
        d.mkdir()
        monkeypatch.setenv(var, str(d))
    return fb


@pytest.fixture
def exchange() -> Iterator[FakeExchange]:
    ex = FakeExchange()
    yield ex
    ex.close()
