"""Template context shared by every portal page."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest

from core.nav import nav_sections


def portal(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    signed_in = bool(user is not None and user.is_authenticated)
    return {
        "nav_sections": nav_sections(request) if signed_in else [],
        "currency": settings.SUANLI_CURRENCY,
    }
