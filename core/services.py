"""API key services."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from core.errors import NotFound, ValidationFailed
from core.models import ApiKey, ApiKeyScope


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedApiKey:
    api_key: ApiKey
    secret: str  # shown once, never stored


def apikey_create(*, user: User, name: str, scopes: Iterable[str]) -> IssuedApiKey:
    """Create an API key and return it with its secret, which is not recoverable afterwards."""
    scope_list = sorted(set(scopes))
    unknown = [scope for scope in scope_list if scope not in ApiKeyScope.values]
    if unknown or not scope_list:
        raise ValidationFailed(
            "Unknown or missing scopes.",
            fields={"scopes": f"Choose from {', '.join(ApiKeyScope.values)}."},
        )
    if not name.strip():
        raise ValidationFailed("A key needs a name.", fields={"name": "This field is required."})
    prefix = secrets.token_hex(6)
    secret = f"sk_{prefix}_{secrets.token_urlsafe(32)}"
    api_key = ApiKey.objects.create(
        user=user, name=name.strip()[:100], prefix=prefix, key_hash=hash_secret(secret), scopes=scope_list
    )
    return IssuedApiKey(api_key=api_key, secret=secret)


def apikey_revoke(*, user: User, api_key_id: int) -> ApiKey:
    with transaction.atomic():
        api_key = ApiKey.objects.select_for_update().filter(pk=api_key_id, user=user).first()
        if api_key is None:
            raise NotFound("No such API key.")
        if api_key.revoked_at is None:
            api_key.revoked_at = timezone.now()
            api_key.save(update_fields=["revoked_at", "updated_at"])
    return api_key


def apikey_authenticate(secret: str) -> ApiKey | None:
    """Return the active key matching ``secret`` (recording its use), or None."""
    parts = secret.split("_", 2)
    if len(parts) != 3 or parts[0] != "sk":
        return None
    api_key = ApiKey.objects.select_related("user").filter(prefix=parts[1], revoked_at__isnull=True).first()
    if api_key is None or not secrets.compare_digest(api_key.key_hash, hash_secret(secret)):
        return None
    now = timezone.now()
    # Record use at most once a minute per key: a hot key must not turn every read into a write.
    if api_key.last_used_at is None or (now - api_key.last_used_at).total_seconds() > 60:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now
    return api_key
