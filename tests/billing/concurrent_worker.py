"""A child process for the concurrency test: settles or places holds against the test database.

Run as ``python -m tests.billing.concurrent_worker settle|hold <user_id> <rounds> <seed>``.
"""

from __future__ import annotations

import os
import random
import sys
from datetime import timedelta


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    from billing.services import hold_place, hold_release, settle
    from core.errors import InsufficientFunds, InvalidTransition
    from tests.billing.conftest import T0

    role, user_id, rounds, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(seed)
    buyer = get_user_model().objects.get(pk=user_id)
    for i in range(rounds):
        if role == "settle":
            settle(until=T0 + timedelta(seconds=60 * (i + 1)), chunk_size=7)
        else:
            try:
                hold = hold_place(
                    buyer=buyer, amount_micros=rng.randrange(100_000, 2_000_000), reference=f"c-{seed}-{i}"
                )
            except InsufficientFunds:
                continue
            if rng.random() < 0.5:
                try:
                    hold_release(hold=hold)
                except InvalidTransition:
                    pass
    print("done", role, flush=True)


if __name__ == "__main__":
    main()
