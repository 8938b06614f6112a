"""The hardware catalog seed: ``fixtures/accelerator_models.json``, one row per model with its source."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

CATALOG_FILE = Path(__file__).resolve().parent / "fixtures" / "accelerator_models.json"
FIELDS = (
    "vendor", "family", "kind", "memory_gib", "fp16_tflops", "int8_tops",
    "memory_bandwidth_gbps", "tdp_watts", "interconnect", "software_stack", "match_names", "source",
)  # fmt: skip


def catalog_rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(CATALOG_FILE.read_text(encoding="utf-8"))
    for row in rows:
        row["fp16_tflops"] = Decimal(str(row["fp16_tflops"]))
        row["int8_tops"] = Decimal(str(row["int8_tops"]))
    return rows


def catalog_sync(model_cls: Any) -> int:
    """Upsert every catalog row by model name (works with a migration's historical model too)."""
    count = 0
    for row in catalog_rows():
        model_cls.objects.update_or_create(
            model=row["model"], defaults={field: row[field] for field in FIELDS}
        )
        count += 1
    return count
