"""Orders: placement with money set aside, cancellation, and the order state machine."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from billing.services import hold_place as billing_hold_place
from billing.services import hold_release, reservation_cancel
from billing.services.spend import spend_cap_check
from core.errors import Conflict, InsufficientFunds, InvalidTransition, NotFound, ValidationFailed
from core.money import format_amount
from marketplace.matching.requirements import SoftwareSpecError, parse_software_spec
from marketplace.models import (
    MAX_PRICE_MICROS,
    ORDER_TRANSITIONS,
    Job,
    JobStatus,
    Offer,
    Order,
    OrderReason,
    OrderStatus,
    StopReason,
    Term,
)
from marketplace.services.jobs import JobSpec, job_stop_request
from providers.models import AcceleratorModel, DeviceKind

log = logging.getLogger(__name__)

MAX_DEVICES_PER_NODE = 64
MAX_NODES = 16
MAX_RESERVATION = timedelta(days=31)
# On-demand and spot orders set aside this much of the buyer's wallet at the price limit; the
# settlement loop then charges as time passes, and auto-stop keeps the debt within one interval.
HOLD_HORIZON = timedelta(hours=1)


@dataclass(frozen=True)
class OrderRequest:
    term: str
    devices_per_node: int
    price_limit_micros: int
    job: JobSpec
    node_count: int = 1
    accelerator_ids: tuple[int, ...] = ()
    kind: str = ""
    min_memory_mib: int = 0
    region: str = ""
    software_spec: str = ""
    min_reliability: Decimal = Decimal("0")
    window_start: datetime | None = None
    window_end: datetime | None = None
    offer_id: int | None = None
    restart_on_failure: bool = False

    def fingerprint(self) -> str:
        data = asdict(self)
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def order_transition(*, order: Order, to: str, **changes: Any) -> Order:
    """Move an order along ``ORDER_TRANSITIONS`` with a conditional update (one row or InvalidTransition)."""
    if to not in ORDER_TRANSITIONS[order.status]:
        raise InvalidTransition(f"An order cannot go from {order.status} to {to}.")
    changes["updated_at"] = timezone.now()
    moved = Order.objects.filter(pk=order.pk, status=order.status).update(status=to, **changes)
    if moved != 1:
        raise InvalidTransition(f"Order {order.pk} changed concurrently; it is no longer {order.status}.")
    order.status = to
    for key, value in changes.items():
        setattr(order, key, value)
    return order


def _validate(request: OrderRequest, now: datetime) -> dict[str, str]:
    """Field errors of ``request``, in the active language (the portal's or the API caller's)."""
    errors: dict[str, str] = {}
    if request.term not in Term.values:
        errors["term"] = _("Choose one of %(choices)s.") % {"choices": ", ".join(Term.values)}
    if not 1 <= request.devices_per_node <= MAX_DEVICES_PER_NODE:
        errors["devices_per_node"] = _("Between 1 and %(max)s.") % {"max": MAX_DEVICES_PER_NODE}
    if not 1 <= request.node_count <= MAX_NODES:
        errors["node_count"] = _("Between 1 and %(max)s.") % {"max": MAX_NODES}
    if not 0 < request.price_limit_micros <= MAX_PRICE_MICROS:
        errors["price_limit"] = _("More than 0 and at most %(max)s per device-hour.") % {
            "max": format_amount(MAX_PRICE_MICROS)
        }
    if request.kind and request.kind not in DeviceKind.values:
        errors["kind"] = _("Choose one of %(choices)s.") % {"choices": ", ".join(DeviceKind.values)}
    if request.accelerator_ids:
        known = set(
            AcceleratorModel.objects.filter(pk__in=request.accelerator_ids).values_list("pk", flat=True)
        )
        unknown = [str(a) for a in request.accelerator_ids if a not in known]
        if unknown:
            errors["accelerators"] = _("Unknown accelerator models: %(ids)s.") % {"ids": ", ".join(unknown)}
    if not Decimal(0) <= request.min_reliability <= Decimal(1):
        errors["min_reliability"] = _("A score between 0 and 1.")
    try:
        parse_software_spec(request.software_spec)
    except SoftwareSpecError:
        errors["software"] = _(
            "“%(spec)s” is not a list of requirements like “cuda>=12.1, driver>=550” "
            "(comparisons: >=, >, ==, <=, <)."
        ) % {"spec": request.software_spec}
    if request.term == Term.RESERVED:
        start, end = request.window_start, request.window_end
        if start is None or end is None:
            errors["window"] = _("A reserved order needs window_start and window_end.")
        elif timezone.is_naive(start) or timezone.is_naive(end):
            # Never guess a zone: a naive time read as UTC books the wrong hours.
            name = "window_start" if timezone.is_naive(start) else "window_end"
            errors[name] = window_zone_message()
        elif start < now - timedelta(minutes=1):
            errors["window_start"] = _("The window must start in the future.")
        elif start > now + max_reservation_ahead():
            errors["window_start"] = max_reservation_ahead_message()
        elif end - start < timedelta(seconds=settings.SUANLI_MIN_RESERVATION_S):
            errors["window_end"] = min_reservation_message()
        elif end - start > MAX_RESERVATION:
            errors["window_end"] = _("A reservation lasts at most %(days)s days.") % {
                "days": MAX_RESERVATION.days
            }
    elif request.window_start or request.window_end:
        errors["window"] = _("Only reserved orders take a window.")
    if request.offer_id is not None:
        if request.node_count != 1:
            errors["node_count"] = _("An order for a specific offer is for that one node.")
        offer = Offer.objects.filter(pk=request.offer_id, listed=True).first()
        if offer is None:
            errors["offer"] = _("No such listed offer.")
        elif request.devices_per_node > offer.device_count:
            errors["devices_per_node"] = ngettext(
                "That node has %(count)s device.", "That node has %(count)s devices.", offer.device_count
            ) % {"count": offer.device_count}
    return errors


def max_reservation_ahead() -> timedelta:
    """How far ahead a reserved window may start (``SUANLI_MAX_RESERVATION_AHEAD_DAYS``)."""
    return timedelta(days=settings.SUANLI_MAX_RESERVATION_AHEAD_DAYS)


def max_reservation_ahead_message() -> str:
    days = settings.SUANLI_MAX_RESERVATION_AHEAD_DAYS
    return ngettext(
        "A reservation starts at most %(count)s day from now.",
        "A reservation starts at most %(count)s days from now.",
        days,
    ) % {"count": days}


def window_zone_message() -> str:
    return _("Give a time zone, like 2026-03-02T09:00:00Z or 2026-03-02T17:00:00+08:00.")


def min_reservation_message() -> str:
    """The shortest reservation (``SUANLI_MIN_RESERVATION_S``) in words, in the active language."""
    minimum = settings.SUANLI_MIN_RESERVATION_S
    if minimum % 60 == 0:
        minutes = minimum // 60
        return ngettext(
            "A reservation lasts at least %(count)s minute.",
            "A reservation lasts at least %(count)s minutes.",
            minutes,
        ) % {"count": minutes}
    return ngettext(
        "A reservation lasts at least %(count)s second.",
        "A reservation lasts at least %(count)s seconds.",
        minimum,
    ) % {"count": minimum}


def _hold_amount(request: OrderRequest) -> int:
    devices = request.devices_per_node * request.node_count
    if request.term == Term.RESERVED:
        assert request.window_start is not None and request.window_end is not None
        seconds = Decimal((request.window_end - request.window_start).total_seconds())
    else:
        seconds = Decimal(HOLD_HORIZON.total_seconds())
    # Round up: the hold must cover the worst case at the price limit.
    amount = Decimal(request.price_limit_micros) * devices * seconds / Decimal(3600)
    return int(amount.to_integral_value(rounding="ROUND_CEILING"))


def order_place(*, buyer: User, request: OrderRequest, idempotency_key: str) -> tuple[Order, bool]:
    """Place an order and set its money aside; returns ``(order, created)``.

    Contract: the same ``idempotency_key`` with the same request returns the original order
    (created False); with a different request it is a ``Conflict``. The worst-case cost (one hour
    at the price limit for on-demand and spot, the whole window for reserved) is held in the
    buyer's wallet or ``InsufficientFunds`` is raised and nothing is written. The matcher is
    triggered after commit.
    """
    if not idempotency_key or len(idempotency_key) > 128:
        raise ValidationFailed(
            _("An Idempotency-Key header (at most 128 characters) is required."),
            fields={"idempotency_key": _("Required, at most 128 characters.")},
        )
    fingerprint = request.fingerprint()
    existing = Order.objects.filter(buyer=buyer, idempotency_key=idempotency_key).first()
    if existing is not None:
        if existing.request_hash != fingerprint:
            raise Conflict(_("This Idempotency-Key was used for a different order."))
        return existing, False

    now = timezone.now()
    from marketplace.services.volumes import volumes_lock_for_order, volumes_resolve

    # A job that mounts volumes runs on their node: the order is bound to that node's offer.
    volumes, offer_id = volumes_resolve(
        buyer=buyer, requested=request.job.volumes, offer_id=request.offer_id, node_count=request.node_count
    )
    request = replace(request, offer_id=offer_id)
    errors = _validate(request, now)
    if errors:
        first, message = next(iter(errors.items()))
        raise ValidationFailed(f"{first}: {message}", fields=errors)

    amount = _hold_amount(request)
    try:
        with transaction.atomic():
            # Under the buyer's spend-control lock: a concurrent order's hold counts for this one.
            spend_cap_check(buyer_id=buyer.pk, amount_micros=amount, now=now)
            order = Order.objects.create(
                buyer=buyer,
                term=request.term,
                offer_id=request.offer_id,
                accelerator_ids=list(request.accelerator_ids),
                kind=request.kind,
                min_memory_mib=request.min_memory_mib,
                devices_per_node=request.devices_per_node,
                node_count=request.node_count,
                region=request.region,
                software_spec=request.software_spec,
                min_reliability=request.min_reliability,
                price_limit_micros=request.price_limit_micros,
                window_start=request.window_start,
                window_end=request.window_end,
                image=request.job.image,
                command=list(request.job.command),
                env=dict(request.job.env),
                ports=list(request.job.ports),
                runtime=request.job.runtime,
                restart_on_failure=request.restart_on_failure,
                volumes=volumes,
                idempotency_key=idempotency_key,
                request_hash=fingerprint,
            )
            volumes_lock_for_order(volumes=volumes)
            try:
                hold = billing_hold_place(buyer=buyer, amount_micros=amount, reference=f"order:{order.pk}")
            except InsufficientFunds:
                needs = (
                    _(
                        "This order needs %(amount)s %(currency)s set aside (the whole window at your price "
                        "limit); top up your wallet or lower the price limit."
                    )
                    if request.term == Term.RESERVED
                    else _(
                        "This order needs %(amount)s %(currency)s set aside (one hour at your price limit); "
                        "top up your wallet or lower the price limit."
                    )
                )
                raise InsufficientFunds(
                    needs % {"amount": format_amount(amount), "currency": settings.SUANLI_CURRENCY},
                    fields={"price_limit": _("More than your available balance covers.")},
                ) from None
            order.hold_id = hold.pk
            order.save(update_fields=["hold_id"])
            transaction.on_commit(_trigger_matching)
    except IntegrityError:
        # A concurrent request with the same key won the race: answer as a replay.
        existing = Order.objects.filter(buyer=buyer, idempotency_key=idempotency_key).first()
        if existing is None:
            raise
        if existing.request_hash != fingerprint:
            raise Conflict(_("This Idempotency-Key was used for a different order.")) from None
        return existing, False
    log.info("order.placed order_id=%s term=%s buyer_id=%s", order.pk, order.term, buyer.pk)
    return order, True


def _trigger_matching() -> None:
    from marketplace.tasks import matching_run

    matching_run.delay()


def order_get_for_buyer(*, buyer: User, order_id: int) -> Order:
    order = Order.objects.filter(pk=order_id, buyer=buyer).first()
    if order is None:
        raise NotFound(_("No such order."))
    return order


def order_cancel(*, order: Order) -> Order:
    """Cancel an order: an open one at once (hold released), a running one by stopping its jobs.

    Contract: locks the order. A reserved order cancelled before its window starts is cancelled at
    once: every booking of it is refunded minus the cancellation fee
    (``BILLING_RESERVATION_CANCEL_FEE_BPS``, kept as platform fee), its allocations are released
    (the devices are free for the window again) and its queued jobs end as ``stopped``. After the
    start, cancelling stops its jobs and the booked window stays paid. Ended and cancelled orders
    are returned unchanged, so a second cancel changes nothing.
    """
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order.pk)
        if order.status in (OrderStatus.ENDED, OrderStatus.CANCELLED, OrderStatus.FAILED):
            return order
        now = timezone.now()
        if order.status == OrderStatus.OPEN:
            _mark_cancelled(order, now)
            _release_money(order)
            return order
        jobs = list(Job.objects.filter(order=order).exclude(status__in=list(_ENDED_JOB_STATUSES)))
        if _before_window(order, now):
            _cancel_reservation(order, jobs, now)
            return order
        order.status_reason, order.status_params = OrderReason.STOPPING_FOR_BUYER, {}
        order.save(update_fields=["status_reason", "status_params", "updated_at"])
    for job in jobs:
        job_stop_request(job=job, reason=StopReason.BUYER)
    return order


def _before_window(order: Order, now: datetime) -> bool:
    return order.term == Term.RESERVED and order.window_start is not None and now < order.window_start


def _mark_cancelled(order: Order, now: datetime) -> None:
    order_transition(
        order=order,
        to=OrderStatus.CANCELLED,
        ended_at=now,
        status_reason=OrderReason.CANCELLED_BY_BUYER,
        status_params={},
    )


def _cancel_reservation(order: Order, jobs: list[Job], now: datetime) -> None:
    """Cancel a confirmed reservation before its window (the caller holds the order's lock)."""
    from billing.models import Reservation, ReservationStatus
    from marketplace.services.provisioning import allocations_release

    # The order moves first: its jobs ending below must not end it as "job stopped" (which made
    # the order's own conditional update fail and the whole cancel answer 409).
    _mark_cancelled(order, now)
    # Slots before money, as the matcher takes them (slots, then the buyer's accounts).
    allocations_release(order=order, at=now)
    # One booking per job (a gang has one per node); ``order.reservation_id`` names only the first.
    lease_ids = [i for i in Job.objects.filter(order=order).values_list("lease_id", flat=True) if i]
    for reservation in Reservation.objects.filter(
        lease_id__in=lease_ids, status=ReservationStatus.CONFIRMED
    ).order_by("pk"):
        reservation_cancel(reservation=reservation, at=now)
    for job in jobs:
        # Queued until the window: they end at once, without the agent.
        job_stop_request(job=job, reason=StopReason.BUYER)
    _release_money(order)
    log.info("order.reservation_cancelled order_id=%s lease_ids=%s", order.pk, lease_ids)


def order_job_stop(*, job: Job) -> Job:
    """A buyer stops ``job``: SIGTERM now, SIGKILL after the stop notice (``job_stop_request``).

    Contract: the queued job of a reserved order whose window has not started is not stopped on
    its own: stopping it is a cancellation of the reservation (``order_cancel``: refunded minus
    the cancellation fee, devices released), since a booking without its job would only block
    paid devices. Once the window has started the job just stops and the booking stays paid.
    """
    if job.order_id is not None:
        order = Order.objects.filter(pk=job.order_id).first()
        if (
            order is not None
            and order.status == OrderStatus.ALLOCATED
            and _before_window(order, timezone.now())
        ):
            order_cancel(order=order)
            return Job.objects.get(pk=job.pk)
    return job_stop_request(job=job, reason=StopReason.BUYER)


def order_cancel_fee_micros(*, order: Order) -> int:
    """The fee a reserved order pays (or paid) for cancelling before its window; 0 otherwise."""
    from billing.models import Reservation, ReservationStatus
    from billing.services.reservations import reservation_cancel_fee

    if order.term != Term.RESERVED:
        return 0
    lease_ids = [i for i in Job.objects.filter(order=order).values_list("lease_id", flat=True) if i]
    fee = 0
    for status, amount, paid in Reservation.objects.filter(lease_id__in=lease_ids).values_list(
        "status", "amount_micros", "cancel_fee_micros"
    ):
        fee += paid if status == ReservationStatus.CANCELLED else reservation_cancel_fee(amount_micros=amount)
    return fee


_ENDED_JOB_STATUSES = {
    JobStatus.EXITED,
    JobStatus.FAILED,
    JobStatus.STOPPED,
    JobStatus.PREEMPTED,
    JobStatus.LOST,
}


def _release_money(order: Order) -> None:
    from billing.models import Hold, HoldStatus

    if order.hold_id:
        hold = Hold.objects.filter(pk=order.hold_id).first()
        if hold is not None and hold.status == HoldStatus.OPEN:
            hold_release(hold=hold)


def orders_expire_reserved(*, now: datetime | None = None) -> list[int]:
    """Open reserved orders whose window can no longer be booked fail, and their hold is released.

    Contract: an order expires once less than the minimum reservation remains of its window (the
    matcher books what is left of a window that has started, never less than that). Each order
    moves with a conditional update under its row lock, so a concurrent match wins and a second
    run changes nothing. Returns the ids of the expired orders.
    """
    from django.conf import settings

    now = now or timezone.now()
    cutoff = now + timedelta(seconds=settings.SUANLI_MIN_RESERVATION_S)
    expired: list[int] = []
    for order_id in Order.objects.filter(
        status=OrderStatus.OPEN, term=Term.RESERVED, window_end__lt=cutoff
    ).values_list("pk", flat=True):
        with transaction.atomic():
            order = Order.objects.select_for_update().filter(pk=order_id, status=OrderStatus.OPEN).first()
            if order is None:
                continue
            order_transition(
                order=order, to=OrderStatus.FAILED, ended_at=now,
                status_reason=OrderReason.RESERVED_WINDOW_PASSED, status_params={},
            )  # fmt: skip
            _release_money(order)
        expired.append(order_id)
    if expired:
        log.info("orders.reserved_expired order_ids=%s", expired)
    return expired
