"""Settlement throughput: N open leases settled in one run, against PostgreSQL's raw insert rate.

Creates a scratch database (``<DATABASE_TEST_NAME or bench>_settlement``), migrates it, opens N
leases (spread over N/10 buyers and 100 providers, 1-8 devices, rates 0.50-4.00 per device-hour),
then times one ``settle(until=...)`` run that posts every lease (one transaction of three entries
each: wallet, provider payable, platform fee; deferred balance trigger included).

* ``leases_per_s`` / ``entries_per_s``: leases settled and entry rows posted per second.
* ``baseline_rows_per_s``: PostgreSQL's raw multi-row ``INSERT`` rate for the same number of rows of
  the same shape (batches of 2,000, one transaction, a plain table with only a primary key),
  measured in the same run on the same database.
* ``ratio`` = entries_per_s / baseline_rows_per_s.

Prints one JSON line: {"leases", "leases_per_s", "entries_per_s", "baseline_rows_per_s", "ratio"}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("SUANLI_ENV", "test")
os.environ["DATABASE_TEST_NAME"] = "bench_settlement"

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def build_market(n: int, seed: int = 1) -> None:
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from billing.models import AccountKind, Lease, LeaseSegment, TransactionKind
    from billing.services import Posting, account_get, accounts_lock, posting_write

    rng = random.Random(seed)
    users = get_user_model().objects.bulk_create(
        [get_user_model()(username=f"bench-buyer-{i}") for i in range(max(1, n // 10))]
    )
    clearing = account_get(kind=AccountKind.STRIPE_CLEARING)
    with transaction.atomic():
        for user in users:
            wallet = account_get(kind=AccountKind.BUYER_WALLET, user_id=user.pk)
            accounts_lock([wallet.pk, clearing.pk])
            posting = Posting(TransactionKind.TOP_UP, f"bench-fund-{user.pk}", wallet.currency)
            posting.add(clearing.pk, -1_000_000_000)
            posting.add(wallet.pk, 1_000_000_000)
            posting_write(posting)
        for user in users:
            account_get(kind=AccountKind.RESERVATION_ESCROW, user_id=user.pk)
        for provider_id in range(1, 101):
            account_get(kind=AccountKind.PROVIDER_PAYABLE, provider_id=provider_id)
        account_get(kind=AccountKind.PLATFORM_FEE)
    leases = []
    for i in range(n):
        started = T0 + timedelta(seconds=rng.randrange(0, 1800))
        leases.append(
            Lease(
                buyer=users[i % len(users)],
                provider_id=1 + i % 100,
                job_id=i + 1,
                device_count=rng.choice([1, 1, 2, 4, 8]),
                rate_micros=(rate := rng.randrange(500_000, 4_000_001, 1_000)),
                opening_rate_micros=rate,
                started_at=started,
                segment_started_at=started,
                currency="USD",
                fee_bps=1000,
                idempotency_key=f"bench-lease-{i}",
            )
        )
    Lease.objects.bulk_create(leases, batch_size=2000)
    LeaseSegment.objects.bulk_create(
        [
            LeaseSegment(
                lease=lease,
                rate_micros=lease.rate_micros,
                device_count=lease.device_count,
                started_at=lease.started_at,
            )
            for lease in leases
        ],
        batch_size=2000,
    )


def baseline_rows_per_s(rows: int) -> float:
    from django.db import connection, transaction

    batch = 2000
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_baseline_entry")
        cursor.execute(
            "CREATE TABLE bench_baseline_entry (id bigserial PRIMARY KEY, transaction_id bigint NOT NULL, "
            "account_id bigint NOT NULL, amount_micros bigint NOT NULL, lease_id bigint)"
        )
    started = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        for start in range(0, rows, batch):
            count = min(batch, rows - start)
            values = ", ".join(["(%s, %s, %s, %s)"] * count)
            params = []
            for i in range(start, start + count):
                params += [i // 3 + 1, i % 1000 + 1, (i % 7) - 3, i // 3 + 1]
            cursor.execute(
                f"INSERT INTO bench_baseline_entry (transaction_id, account_id, amount_micros, lease_id) VALUES {values}",
                params,
            )
    elapsed = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE bench_baseline_entry")
    return rows / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, default=10_000)
    args = parser.parse_args()

    import django

    django.setup()
    from django.db import connection

    from billing.services import ledger_reconcile, settle

    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    try:
        build_market(args.leases)
        started = time.perf_counter()
        result = settle(until=T0 + timedelta(hours=1))
        elapsed = time.perf_counter() - started
        assert result.leases == args.leases, result
        assert ledger_reconcile().ok
        baseline = baseline_rows_per_s(result.entries)
        entries_per_s = result.entries / elapsed
        print(
            json.dumps(
                {
                    "leases": result.leases,
                    "leases_per_s": round(result.leases / elapsed, 1),
                    "entries_per_s": round(entries_per_s, 1),
                    "baseline_rows_per_s": round(baseline, 1),
                    "ratio": round(entries_per_s / baseline, 3),
                }
            )
        )
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
