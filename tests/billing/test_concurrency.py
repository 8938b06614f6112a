"""Several real processes settle and place holds on the same wallet at once (PostgreSQL)."""

import subprocess
import sys
from datetime import timedelta

import pytest
from django.db.models import Sum

from billing.models import AccountKind, Entry, Hold, HoldStatus, Lease, TransactionKind
from billing.services import lease_charge_until, lease_open, ledger_reconcile
from billing.services.ledger import account_get
from tests.billing.conftest import T0, fund, make_user
from tests.support.worker import ROOT, child_env

pytestmark = pytest.mark.django_db(transaction=True)


def test_concurrent_settlers_and_holds_never_overdraw_or_double_post() -> None:
    # Given one wallet of 30.00 and 12 leases of 2 devices at 9.00/h (0.30 per lease-minute, 3.60
    # a minute together), far more than the wallet covers over the 10 minutes settled.
    buyer = make_user()
    fund(buyer, 30_000_000)
    leases = [
        lease_open(
            buyer=buyer,
            provider_id=500 + i % 3,
            job_id=i,
            device_count=2,
            rate_micros=9_000_000,
            started_at=T0,
            idempotency_key=f"conc-{i}",
        )
        for i in range(12)
    ]

    # When three settlers (the same minutes, racing) and three hold placers run at once
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.billing.concurrent_worker", role, str(buyer.pk), "10", str(seed)],
            cwd=ROOT,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for seed, role in enumerate(["settle", "hold", "settle", "hold", "settle", "hold"])
    ]
    outputs = [p.communicate(timeout=180)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs

    # Then the wallet never went below zero and every posting happened once
    wallet = account_get(kind=AccountKind.BUYER_WALLET, user_id=buyer.pk)
    holds = account_get(kind=AccountKind.BUYER_HOLDS, user_id=buyer.pk)
    assert wallet.balance_micros >= 0
    assert ledger_reconcile().ok
    open_holds = (
        Hold.objects.filter(buyer=buyer, status=HoldStatus.OPEN).aggregate(t=Sum("amount_micros"))["t"] or 0
    )
    assert holds.balance_micros == open_holds
    charged = 0
    for lease in Lease.objects.filter(pk__in=[le.pk for le in leases]):
        posted = -sum(
            Entry.objects.filter(
                lease_id=lease.pk,
                transaction__kind=TransactionKind.SETTLEMENT,
                account__kind=AccountKind.BUYER_WALLET,
            ).values_list("amount_micros", flat=True)
        )
        assert posted == lease.charged_micros
        assert lease.charged_micros <= lease_charge_until(lease, T0 + timedelta(minutes=10))
        charged += lease.charged_micros
    # money is conserved: what left the wallet went to charges and open holds
    assert 30_000_000 - wallet.balance_micros == charged + open_holds
    assert charged > 0
