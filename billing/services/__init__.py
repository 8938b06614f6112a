"""Billing write services. Import from here: ``from billing.services import lease_open``."""

from billing.services.usage import UsageRecordResult, UsageSampleIn, usage_samples_record

__all__ = [
    "UsageRecordResult",
    "UsageSampleIn",
    "usage_samples_record",
]
