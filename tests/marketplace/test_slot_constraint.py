"""The database itself forbids two live slots on one device at overlapping times (invariant 1)."""

from datetime import UTC, datetime

import pytest
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from psycopg2.extras import NumericRange

from marketplace.models import SPAN_DEVICE_STRIDE, Allocation, AllocationSlot, Order
from providers.models import AcceleratorModel, Device, Node, Provider

pytestmark = pytest.mark.django_db

T0 = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp())


def span(device: Device, start: int, end: int) -> NumericRange:
    base = device.pk * SPAN_DEVICE_STRIDE
    return NumericRange(base + start, base + end, "[)")


@pytest.fixture
def allocation_and_devices():
    provider = Provider.objects.create(name="P", slug="p")
    node = Node.objects.create(provider=provider, name="n1", region="cn-east")
    h100 = AcceleratorModel.objects.get(match_names__contains=["NVIDIA H100 80GB HBM3"])
    devices = [Device.objects.create(node=node, accelerator=h100, index=i, uuid=f"GPU-{i}") for i in range(2)]
    buyer = User.objects.create_user("b")
    order = Order.objects.create(
        buyer=buyer,
        term="on_demand",
        devices_per_node=1,
        price_limit_micros=1,
        image="x",
        idempotency_key="k",
    )
    allocation = Allocation.objects.create(
        order=order,
        node=node,
        term="on_demand",
        unit_price_micros=1,
        starts_at=datetime(2026, 12, 1, tzinfo=UTC),
    )
    return allocation, devices


def test_overlapping_live_slots_on_one_device_are_rejected(allocation_and_devices):
    allocation, (d0, _d1) = allocation_and_devices
    AllocationSlot.objects.create(allocation=allocation, device=d0, span=span(d0, T0, T0 + 3600))
    with pytest.raises(IntegrityError), transaction.atomic():
        AllocationSlot.objects.create(allocation=allocation, device=d0, span=span(d0, T0 + 3599, T0 + 7200))


def test_adjacent_slots_other_devices_and_released_slots_are_allowed(allocation_and_devices):
    allocation, (d0, d1) = allocation_and_devices
    AllocationSlot.objects.create(allocation=allocation, device=d0, span=span(d0, T0, T0 + 3600))
    # Half-open ranges: the next slot may start the second the previous one ends.
    AllocationSlot.objects.create(allocation=allocation, device=d0, span=span(d0, T0 + 3600, T0 + 7200))
    # The same times on another device do not collide.
    AllocationSlot.objects.create(allocation=allocation, device=d1, span=span(d1, T0, T0 + 7200))
    # A released slot no longer blocks its device.
    AllocationSlot.objects.create(allocation=allocation, device=d0, span=span(d0, T0, T0 + 60), live=False)
    assert AllocationSlot.objects.filter(live=True).count() == 3
