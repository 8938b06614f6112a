"""Base models and the API key."""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models


class TimeStampedModel(models.Model):
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class ApiKeyScope(models.TextChoices):
    READ = "read", "read"
    TRADE = "trade", "trade"
    PROVIDER = "provider", "provider"


class ApiKey(TimeStampedModel):
    """A hashed, scoped API key. The secret is shown once at creation; only its hash is kept.

    The full key reads ``sk_<prefix>_<secret>``; ``prefix`` finds the row, the SHA-256 of the whole
    key (high-entropy, so no slow hash is needed) authenticates it.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64)
    scopes = ArrayField(models.CharField(max_length=16, choices=ApiKeyScope.choices), default=list)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.name} (sk_{self.prefix}_…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class IdempotentRequest(models.Model):
    """A creating POST made with an ``Idempotency-Key``, and the response it got.

    The row is written (without a response) before the request runs, so a concurrent retry with
    the same key sees it in progress; the unique ``(user, key)`` makes that race impossible to
    lose twice. Only successful responses are kept: a failed request frees its key.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=128)
    method = models.CharField(max_length=8)
    path = models.CharField(max_length=255)
    body_hash = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)  # null while in progress
    response_body = models.JSONField(null=True, blank=True)
    started_at = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "key"], name="core_idempotent_request_user_key"),
        ]

    def __str__(self) -> str:
        return f"{self.method} {self.path} ({self.key})"


class BuyerProfile(TimeStampedModel):
    """Per-user settings of a buyer; created on first save (most users never need one)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="buyer_profile"
    )
    # One OpenSSH public key line (core.ssh_keys), used by jobs ordered with `ssh: true`.
    ssh_public_key = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"profile of user {self.user_id}"
