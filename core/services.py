"""Core services: API keys and idempotent requests."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from core.errors import Conflict, NotFound, ValidationFailed
from core.models import ApiKey, ApiKeyScope, BuyerProfile, IdempotentRequest
from core.ssh_keys import ssh_public_key_problem

IDEMPOTENCY_KEY_MAX = 128
# A request still "in progress" after this long crashed mid-way; a retry may take its key over.
# The creating services behind idempotent views are themselves safe to call again (orders and
# top-ups carry the key into their own unique constraints), so a takeover never doubles money.
IDEMPOTENCY_STALE_AFTER = timedelta(minutes=2)
# Completed requests are replayable for this long, then purged.
IDEMPOTENCY_RETENTION = timedelta(hours=24)


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
            _("Unknown or missing scopes."),
            fields={"scopes": _("Choose one of %(choices)s.") % {"choices": ", ".join(ApiKeyScope.values)}},
        )
    if not name.strip():
        raise ValidationFailed(_("A key needs a name."), fields={"name": _("A key needs a name.")})
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
            raise NotFound(_("No such API key."))
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


# --- Idempotent requests -------------------------------------------------------------------------


def idempotent_request_begin(
    *, user: Any, key: str, method: str, path: str, body_hash: str
) -> IdempotentRequest | None:
    """Reserve ``key`` for this request, or return the completed earlier request to replay.

    Contract: returns None when the caller should run the request (the key is now reserved and
    must be settled with ``idempotent_request_finish`` or ``idempotent_request_abandon``); returns
    the earlier request when the same key was used for the same method, path and body and
    completed; raises ``Conflict`` when the key was used for a different request, or when the
    earlier one is still running. Must run outside a transaction so the reservation is visible to
    concurrent retries at once.
    """
    if not key or len(key) > IDEMPOTENCY_KEY_MAX or not key.isprintable():
        raise ValidationFailed(
            _("The Idempotency-Key header must be 1 to %(max)s printable characters.")
            % {"max": IDEMPOTENCY_KEY_MAX},
            fields={
                "Idempotency-Key": _("1 to %(max)s printable characters.") % {"max": IDEMPOTENCY_KEY_MAX}
            },
        )
    now = timezone.now()
    try:
        with transaction.atomic():
            IdempotentRequest.objects.create(
                user=user, key=key, method=method, path=path[:255], body_hash=body_hash, started_at=now
            )
        return None
    except IntegrityError:
        pass
    earlier = IdempotentRequest.objects.filter(user=user, key=key).first()
    if earlier is None:  # purged between the insert and the read: try once more
        return idempotent_request_begin(user=user, key=key, method=method, path=path, body_hash=body_hash)
    if (earlier.method, earlier.path, earlier.body_hash) != (method, path[:255], body_hash):
        raise Conflict(
            _("This Idempotency-Key was already used for a different request."),
            code="idempotency_key_reused",
            fields={"Idempotency-Key": _("Already used for a different request; use a new key.")},
        )
    if earlier.status_code is not None:
        return earlier
    # In progress: either running right now (answer 409, retry later) or crashed (take it over).
    taken = 0
    if earlier.started_at < now - IDEMPOTENCY_STALE_AFTER:
        taken = IdempotentRequest.objects.filter(
            pk=earlier.pk, status_code__isnull=True, started_at=earlier.started_at
        ).update(started_at=now)
    if taken != 1:
        raise Conflict(
            _("A request with this Idempotency-Key is still in progress; retry in a few seconds."),
            code="idempotency_in_progress",
        )
    return None


def idempotent_request_finish(*, user: Any, key: str, status_code: int, response_body: Any) -> None:
    """Record the successful response of a reserved request, for replay."""
    IdempotentRequest.objects.filter(user=user, key=key, status_code__isnull=True).update(
        status_code=status_code, response_body=response_body, completed_at=timezone.now()
    )


def idempotent_request_abandon(*, user: Any, key: str) -> None:
    """Free a reserved key whose request failed, so the client may retry with it."""
    IdempotentRequest.objects.filter(user=user, key=key, status_code__isnull=True).delete()


def idempotent_requests_purge(*, now: Any = None) -> int:
    """Delete requests completed (or abandoned mid-way) longer than the retention period ago."""
    cutoff = (now or timezone.now()) - IDEMPOTENCY_RETENTION
    deleted, _by_model = IdempotentRequest.objects.filter(started_at__lt=cutoff).delete()
    return deleted


def buyer_ssh_key_set(*, user: User, ssh_public_key: str) -> BuyerProfile:
    """Store (or, with "", clear) the buyer's SSH public key; raises ``ValidationFailed`` for
    anything but one OpenSSH ed25519/ECDSA/RSA public key line. Jobs already ordered keep the
    key they were ordered with."""
    key = ssh_public_key.strip() if isinstance(ssh_public_key, str) else ssh_public_key
    if key and (problem := ssh_public_key_problem(key)) is not None:
        raise ValidationFailed(problem, fields={"ssh_public_key": problem})
    profile, _created = BuyerProfile.objects.update_or_create(user=user, defaults={"ssh_public_key": key})
    return profile


def buyer_ssh_key_get(*, user: Any) -> str:
    """The buyer's profile SSH public key ("" when none)."""
    if user is None or getattr(user, "pk", None) is None:
        return ""
    key = BuyerProfile.objects.filter(user_id=user.pk).values_list("ssh_public_key", flat=True).first()
    return key or ""
