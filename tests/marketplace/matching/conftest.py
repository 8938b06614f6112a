"""Matching tests are pure: no Django, database or Redis. They run with `-p no:django`."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _clean_redis() -> None:
    """Overrides the repository-wide Redis flush: the matching engine never talks to Redis."""
    return None
