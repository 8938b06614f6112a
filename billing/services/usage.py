"""Usage samples: metering evidence from agents, stored idempotently, aggregated per lease."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import connection
from django.utils import timezone

from billing.models import UsageSample
from core.errors import ValidationFailed


@dataclass(frozen=True)
class UsageSampleIn:
    job_id: int
    seq: int
    window_start: datetime
    window_end: datetime
    device_count: int
    utilization_pct: Decimal | None
    memory_used_mib: int | None
    power_w: Decimal | None


@dataclass(frozen=True)
class UsageRecordResult:
    accepted: int
    duplicates: int


_COLUMNS = (
    "job_id",
    "seq",
    "window_start",
    "window_end",
    "device_count",
    "utilization_pct",
    "memory_used_mib",
    "power_w",
    "created_at",
)


def _validate(sample: UsageSampleIn) -> None:
    if sample.window_end < sample.window_start:
        raise ValidationFailed(
            "window_end is before window_start", fields={"window_end": "before window_start"}
        )
    if sample.device_count < 0 or sample.seq < 0:
        raise ValidationFailed("seq and device_count must not be negative")
    if sample.utilization_pct is not None and not Decimal(0) <= sample.utilization_pct <= Decimal(100):
        raise ValidationFailed(
            "utilization_pct must be between 0 and 100", fields={"utilization_pct": "0..100"}
        )
    if sample.power_w is not None and sample.power_w < 0:
        raise ValidationFailed("power_w must not be negative", fields={"power_w": "negative"})


def usage_samples_record(*, samples: Sequence[UsageSampleIn]) -> UsageRecordResult:
    """Store a batch of usage samples in one multi-row ``INSERT ... ON CONFLICT DO NOTHING``.

    Contract: idempotent per ``(job_id, seq)``. A sample already stored (an agent resending its
    spool, or the same seq twice inside one batch) is counted in ``duplicates`` and changes
    nothing; ``accepted + duplicates == len(samples)``. Invalid samples raise ``ValidationFailed``
    and nothing of the batch is stored. Safe to call inside or outside a transaction.
    """
    if not samples:
        return UsageRecordResult(accepted=0, duplicates=0)
    for sample in samples:
        _validate(sample)
    now = timezone.now()
    rows = [
        (
            s.job_id,
            s.seq,
            s.window_start,
            s.window_end,
            s.device_count,
            s.utilization_pct,
            s.memory_used_mib,
            s.power_w,
            now,
        )
        for s in samples
    ]
    table = UsageSample._meta.db_table
    placeholders = ", ".join(["(" + ", ".join(["%s"] * len(_COLUMNS)) + ")"] * len(rows))
    sql = (
        f"INSERT INTO {table} ({', '.join(_COLUMNS)}) VALUES {placeholders} "  # noqa: S608 - constant identifiers
        "ON CONFLICT (job_id, seq) DO NOTHING"
    )
    params = [value for row in rows for value in row]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        accepted = cursor.rowcount
    return UsageRecordResult(accepted=accepted, duplicates=len(samples) - accepted)
