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
