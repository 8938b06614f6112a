"""Billing models: the ledger, wallets, holds, leases, usage evidence, Stripe records, statements.

All money is integer micro-units (``*_micros``) with a currency code. Models hold fields,
constraints and cheap predicates only; every write goes through ``billing.services``.
"""

from __future__ import annotations

from django.db import models


class UsageSample(models.Model):
    """Metering evidence posted by an agent: one window of one job. ``(job_id, seq)`` is unique,
    so a resent batch (the agent spools and resends until acknowledged) changes nothing."""

    job_id = models.BigIntegerField()
    seq = models.BigIntegerField()
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    device_count = models.PositiveIntegerField()
    utilization_pct = models.DecimalField(max_digits=5, decimal_places=2, null=True, blank=True)
    memory_used_mib = models.BigIntegerField(null=True, blank=True)
    power_w = models.DecimalField(max_digits=8, decimal_places=1, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job_id", "seq"], name="usage_sample_job_seq_unique"),
            models.CheckConstraint(
                condition=models.Q(window_end__gte=models.F("window_start")),
                name="usage_sample_window_ordered",
            ),
        ]
        indexes = [models.Index(fields=["job_id", "window_start"], name="usage_sample_job_window")]

    def __str__(self) -> str:
        return f"usage job={self.job_id} seq={self.seq}"
