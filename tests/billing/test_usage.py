from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing.models import UsageSample
from billing.services import UsageSampleIn, usage_samples_record
from core.errors import ValidationFailed

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def sample(job_id: int, seq: int, **overrides: object) -> UsageSampleIn:
    values: dict[str, object] = {
        "job_id": job_id,
        "seq": seq,
        "window_start": T0 + timedelta(seconds=30 * seq),
        "window_end": T0 + timedelta(seconds=30 * (seq + 1)),
        "device_count": 2,
        "utilization_pct": Decimal("87.50"),
        "memory_used_mib": 40_000,
        "power_w": Decimal("350.0"),
    }
    values.update(overrides)
    return UsageSampleIn(**values)  # type: ignore[arg-type]


def test_batch_is_stored_and_resend_counts_duplicates() -> None:
    batch = [sample(7, seq) for seq in range(5)]

    first = usage_samples_record(samples=batch)
    again = usage_samples_record(samples=batch)

    assert (first.accepted, first.duplicates) == (5, 0)
    assert (again.accepted, again.duplicates) == (0, 5)
    assert UsageSample.objects.filter(job_id=7).count() == 5


def test_partial_overlap_and_duplicate_inside_one_batch() -> None:
    usage_samples_record(samples=[sample(7, 0), sample(7, 1)])

    result = usage_samples_record(samples=[sample(7, 1), sample(7, 2), sample(7, 2), sample(8, 1)])

    assert (result.accepted, result.duplicates) == (2, 2)
    assert sorted(UsageSample.objects.values_list("job_id", "seq")) == [(7, 0), (7, 1), (7, 2), (8, 1)]


def test_first_write_wins_on_resend_with_other_values() -> None:
    usage_samples_record(samples=[sample(7, 0, utilization_pct=Decimal("10.00"))])
    usage_samples_record(samples=[sample(7, 0, utilization_pct=Decimal("99.00"))])

    assert UsageSample.objects.get(job_id=7, seq=0).utilization_pct == Decimal("10.00")


def test_nullable_metrics_are_stored_as_null() -> None:
    usage_samples_record(samples=[sample(9, 0, utilization_pct=None, memory_used_mib=None, power_w=None)])

    row = UsageSample.objects.get(job_id=9, seq=0)
    assert (row.utilization_pct, row.memory_used_mib, row.power_w) == (None, None, None)


def test_empty_batch_is_a_no_op() -> None:
    assert usage_samples_record(samples=[]).accepted == 0


def test_invalid_sample_rejects_the_whole_batch() -> None:
    bad = sample(7, 1, window_end=T0 - timedelta(seconds=1))

    with pytest.raises(ValidationFailed):
        usage_samples_record(samples=[sample(7, 0), bad])

    assert not UsageSample.objects.exists()


def test_one_insert_statement_per_batch(django_assert_num_queries) -> None:  # type: ignore[no-untyped-def]
    with django_assert_num_queries(1):
        usage_samples_record(samples=[sample(5, seq) for seq in range(50)])
