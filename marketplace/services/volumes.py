"""Persistent volumes: a buyer's named disk space on one node, billed per GiB-hour until deleted.

A volume is billed through the ledger like a job: a ``Lease`` of kind ``volume`` opened at
creation (``device_count`` is the size in GiB, the rate the offer's ``volume_price_micros``) and
closed at deletion, so settlement, fees and statements treat it like any other lease. It outlives
the jobs that mount it; an order that names a volume is placed on the volume's node only. The
agent keeps the data under its own state directory and mounts it at ``/volumes/<name>``; it learns
of a volume from the job that mounts it and removes it when its poll says it was deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import OuterRef, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext as _

from billing.models import Lease, LeaseKind, LeaseStatus
from billing.services import buyer_accounts, lease_close, lease_open, lease_pause, lease_resume
from billing.services.wallets import available_micros
from core.errors import Conflict, InsufficientFunds, InvalidTransition, NotFound, ValidationFailed
from core.money import format_amount
from marketplace.models import MAX_PRICE_MICROS, Offer, Order, OrderStatus, Volume, VolumeStatus
from marketplace.services.job_spec import VOLUME_MOUNT_ROOT, VOLUME_NAME_RE
from providers.models import Node, NodeStatus

log = logging.getLogger(__name__)

MAX_VOLUME_GIB = 64 * 1024
# A new volume must be affordable for this long (nothing is held: the lease is settled as it runs,
# and the buyer's other jobs are stopped for funds when the wallet runs short).
AFFORD_HORIZON = timedelta(hours=1)
# Orders that may still run a job: a volume they name cannot be deleted.
_LIVE_ORDER = (OrderStatus.OPEN, OrderStatus.ALLOCATED, OrderStatus.RUNNING)


@dataclass(frozen=True)
class VolumeRequest:
    node_id: int
    name: str
    size_gib: int

    def fingerprint(self) -> str:
        body = {"node_id": self.node_id, "name": self.name, "size_gib": self.size_gib}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def volume_price_valid(price_micros: int) -> bool:
    return 0 <= price_micros <= MAX_PRICE_MICROS


def _validate(*, buyer: User, request: VolumeRequest) -> tuple[Node, Offer]:
    errors: dict[str, str] = {}
    if not VOLUME_NAME_RE.match(request.name):
        errors["name"] = _("1 to 63 lower-case letters, digits, - and _ (no / or .).")
    if not 1 <= request.size_gib <= MAX_VOLUME_GIB:
        errors["size_gib"] = _("Between 1 and %(max)s GiB.") % {"max": MAX_VOLUME_GIB}
    node = Node.objects.filter(pk=request.node_id).first()
    offer = Offer.objects.filter(node_id=request.node_id, listed=True).first() if node else None
    if node is None or offer is None or node.status != NodeStatus.ONLINE:
        errors["node"] = _("No such node online with a listed offer.")
    elif offer.volume_price_micros <= 0:
        errors["node"] = _("This node offers no volumes.")
    if errors:
        first, message = next(iter(errors.items()))
        raise ValidationFailed(f"{first}: {message}", fields=errors)
    assert node is not None and offer is not None
    return node, offer


def volume_create(*, buyer: User, request: VolumeRequest, idempotency_key: str) -> tuple[Volume, bool]:
    """Create a volume on a node and start billing it; returns ``(volume, created)``.

    Contract: idempotent per buyer and ``idempotency_key`` (the same request returns the first
    volume, created False; another request with the key is a ``Conflict``). The node must be
    online with a listed offer that prices volumes; the price per GiB-hour is fixed at creation.
    The buyer's live volumes have distinct names. The node's live volumes fit its reported disk
    (when it reported one): checked under the offer's row lock, so two creations cannot both take
    the last space. The wallet must cover an hour of it (``InsufficientFunds``), but nothing is
    held. A ``volume`` lease opens now (GiB as its device count); nothing reaches the agent until a
    job mounts the volume.
    """
    if not idempotency_key or len(idempotency_key) > 128:
        raise ValidationFailed(
            _("An Idempotency-Key header (at most 128 characters) is required."),
            fields={"idempotency_key": _("Required, at most 128 characters.")},
        )
    fingerprint = request.fingerprint()
    existing = Volume.objects.filter(buyer=buyer, idempotency_key=idempotency_key).first()
    if existing is not None:
        if existing.request_hash != fingerprint:
            raise Conflict(_("This Idempotency-Key was used for a different volume."))
        return existing, False
    node, offer = _validate(buyer=buyer, request=request)
    hour = (
        Decimal(offer.volume_price_micros * request.size_gib) * Decimal(AFFORD_HORIZON.total_seconds()) / 3600
    )
    needed = int(hour.to_integral_value(rounding="ROUND_CEILING"))
    if available_micros(buyer_accounts(user_id=buyer.pk).wallet) < needed:
        raise InsufficientFunds(
            _("This volume costs %(amount)s %(currency)s an hour; top up your wallet first.")
            % {"amount": format_amount(needed), "currency": settings.SUANLI_CURRENCY},
            fields={"size_gib": _("More than your available balance covers.")},
        )
    now = timezone.now()
    try:
        with transaction.atomic():
            Offer.objects.select_for_update().filter(pk=offer.pk).first()
            if node.disk_gib:
                used = (
                    Volume.objects.filter(node=node, status=VolumeStatus.READY).aggregate(s=Sum("size_gib"))[
                        "s"
                    ]
                    or 0
                )
                if used + request.size_gib > node.disk_gib:
                    raise ValidationFailed(
                        _("size_gib: the node has %(free)s GiB free for volumes.")
                        % {"free": max(0, node.disk_gib - used)},
                        fields={
                            "size_gib": _("At most %(free)s GiB.") % {"free": max(0, node.disk_gib - used)}
                        },
                    )
            volume = Volume.objects.create(
                buyer=buyer,
                node=node,
                name=request.name,
                size_gib=request.size_gib,
                price_micros=offer.volume_price_micros,
                idempotency_key=idempotency_key,
                request_hash=fingerprint,
            )
            lease = lease_open(
                buyer=buyer,
                provider_id=node.provider_id,
                job_id=None,
                device_count=request.size_gib,
                rate_micros=offer.volume_price_micros,
                started_at=now,
                kind=LeaseKind.VOLUME,
                idempotency_key=f"volume:{volume.pk}",
            )
            volume.lease_id = lease.pk
            volume.save(update_fields=["lease_id"])
    except IntegrityError:
        existing = Volume.objects.filter(buyer=buyer, idempotency_key=idempotency_key).first()
        if existing is None:
            # The other unique constraint: a live volume of this name.
            raise ValidationFailed(
                _("name: you already have a volume named %(name)s.") % {"name": request.name},
                fields={"name": _("Already in use by another of your volumes.")},
            ) from None
        if existing.request_hash != fingerprint:
            raise Conflict(_("This Idempotency-Key was used for a different volume.")) from None
        return existing, False
    log.info("volume.created volume_id=%s node_id=%s size_gib=%s", volume.pk, node.pk, volume.size_gib)
    return volume, True


def volume_delete(*, volume: Volume) -> Volume:
    """Delete a volume: billing stops now and its agent removes the data on its next poll.

    Contract: refused (``Conflict``) while an order that mounts it may still run a job (open,
    allocated or running); deleting a deleted volume changes nothing. Locks the volume row, which
    ``volumes_lock_for_order`` also locks, so an order placed concurrently either sees the volume
    deleted or makes this call refuse.
    """
    from marketplace.services.work import node_nudge

    with transaction.atomic():
        volume = Volume.objects.select_for_update().get(pk=volume.pk)
        if volume.status == VolumeStatus.DELETED:
            return volume
        using = (
            Order.objects.filter(
                buyer_id=volume.buyer_id, status__in=_LIVE_ORDER, volumes__contains=[{"id": volume.pk}]
            )
            .order_by("pk")
            .values_list("pk", flat=True)
            .first()
        )
        if using is not None:
            raise Conflict(
                _("Volume %(name)s is attached to order %(order)s; stop or cancel it first.")
                % {"name": volume.name, "order": using}
            )
        now = timezone.now()
        volume.status = VolumeStatus.DELETED
        volume.deleted_at = now
        volume.save(update_fields=["status", "deleted_at", "updated_at"])
        lease = Lease.objects.filter(pk=volume.lease_id).first() if volume.lease_id else None
        if lease is not None and lease.is_live:
            lease_close(lease=lease, at=max(now, lease.segment_started_at or lease.started_at))
        node_nudge(node_ids=[volume.node_id])
    log.info("volume.deleted volume_id=%s node_id=%s", volume.pk, volume.node_id)
    return volume


def _with_charge(volumes: QuerySet[Volume]) -> QuerySet[Volume]:
    """``charged_micros``: what the volume's lease has been charged, read in the same query."""
    charged = Lease.objects.filter(pk=OuterRef("lease_id")).values("charged_micros")[:1]
    return volumes.select_related("node").annotate(charged_micros=Coalesce(Subquery(charged), 0))


def volumes_for_buyer(*, buyer: User, include_deleted: bool = False) -> QuerySet[Volume]:
    volumes = _with_charge(Volume.objects.filter(buyer=buyer))
    return volumes if include_deleted else volumes.filter(status=VolumeStatus.READY)


def volume_get_for_buyer(*, buyer: User, volume_id: int) -> Volume:
    # Another buyer's volume is "not found", never "forbidden": ids reveal nothing.
    volume = _with_charge(Volume.objects.filter(pk=volume_id, buyer=buyer)).first()
    if volume is None:
        raise NotFound(_("No such volume."))
    return volume


def volumes_resolve(
    *, buyer: User, requested: list[dict[str, Any]], offer_id: int | None, node_count: int
) -> tuple[list[dict[str, Any]], int | None]:
    """The buyer's live volumes a job spec names, as stored on the order
    (``[{"id", "name", "size_gib"}]``), and the offer the order must then use: the one of the
    volumes' node. Field errors for unknown volumes, volumes on different nodes, a gang, or an
    offer on another node."""
    if not requested:
        return [], offer_id
    live = Volume.objects.filter(buyer=buyer, status=VolumeStatus.READY)
    out: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    node_ids: set[int] = set()
    for n, item in enumerate(requested):
        volume = (
            live.filter(name=item["name"]).first() if "name" in item else live.filter(pk=item["id"]).first()
        )
        if volume is None:
            errors[f"job.volumes.{n}"] = _("You have no such volume.")
            continue
        if "mount" in item and item["mount"] != f"{VOLUME_MOUNT_ROOT}/{volume.name}":
            errors[f"job.volumes.{n}"] = _("Volumes are mounted at %(path)s only.") % {
                "path": f"{VOLUME_MOUNT_ROOT}/{volume.name}"
            }
            continue
        if any(v["id"] == volume.pk for v in out):
            errors[f"job.volumes.{n}"] = _("The same volume twice.")
            continue
        out.append({"id": volume.pk, "name": volume.name, "size_gib": volume.size_gib})
        node_ids.add(volume.node_id)
    if not errors:
        if len(node_ids) > 1:
            errors["job.volumes"] = _("A job's volumes must all be on one node.")
        elif node_count != 1:
            errors["node_count"] = _("An order with volumes runs on the volumes' node only.")
        else:
            (node_id,) = node_ids
            offer = Offer.objects.filter(node_id=node_id).values_list("pk", flat=True).first()
            if offer_id is not None and offer_id != offer:
                errors["offer"] = _("The job's volumes are on another node.")
            offer_id = offer
    if errors:
        first, message = next(iter(errors.items()))
        raise ValidationFailed(f"{first}: {message}", fields=errors)
    return out, offer_id


def volumes_lock_for_order(*, volumes: list[dict[str, Any]]) -> None:
    """Inside the order's transaction: lock the order's volumes and check they are still live,
    so ``volume_delete`` (which locks them too) cannot slip between validation and the order."""
    ids = sorted(v["id"] for v in volumes)
    if not ids:
        return
    live = list(
        Volume.objects.select_for_update()
        .filter(pk__in=ids, status=VolumeStatus.READY)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    if live != ids:
        raise Conflict(_("A volume of this job was deleted meanwhile."))


def volumes_follow_node_liveness(*, now: datetime | None = None) -> tuple[list[int], list[int]]:
    """Stop billing volumes on nodes that went offline (or were retired), from the node's last
    heartbeat, and bill them again from ``now`` once their node is back online: a buyer never pays
    for disk on a dead host. Returns the ids of the leases paused and resumed.

    Contract: each lease moves under its own lock (``lease_pause`` / ``lease_resume``); a lease a
    concurrent deletion closed is skipped; a second run changes nothing. Runs with the lost-job
    sweep (``marketplace.provisioning.mark_lost_jobs``).
    """
    now = now or timezone.now()
    live = Volume.objects.filter(status=VolumeStatus.READY, lease_id__isnull=False)
    gone = dict(
        live.filter(node__status__in=[NodeStatus.OFFLINE, NodeStatus.RETIRED]).values_list(
            "lease_id", "node__last_heartbeat_at"
        )
    )
    back = live.filter(node__status=NodeStatus.ONLINE).values_list("lease_id", flat=True)
    paused: list[int] = []
    for lease in Lease.objects.filter(pk__in=list(gone), status=LeaseStatus.OPEN).order_by("pk"):
        # From the last heartbeat, never before the current segment (lease_pause refuses that).
        start = lease.segment_started_at or lease.started_at
        try:
            lease_pause(lease=lease, at=max(min(gone[lease.pk] or now, now), start))
        except InvalidTransition:
            continue
        paused.append(lease.pk)
    resumed: list[int] = []
    for lease in Lease.objects.filter(pk__in=list(back), status=LeaseStatus.PAUSED).order_by("pk"):
        try:
            lease_resume(lease=lease, at=now)
        except InvalidTransition:
            continue
        resumed.append(lease.pk)
    if paused or resumed:
        log.info("volume.leases_followed_nodes paused=%s resumed=%s", paused, resumed)
    return paused, resumed


def volumes_follow_funds(*, now: datetime | None = None) -> list[int]:
    """Delete the volumes whose buyer has not covered their storage for the grace period.

    Contract: a ready volume whose lease is among the leases the buyer cannot pay for (the same
    test that stops jobs for funds) is marked ``unpaid_since`` (once); a marked volume whose
    buyer can pay again is unmarked; one marked for ``SUANLI_VOLUME_UNPAID_GRACE_H`` hours or more
    is deleted (billing stops, the agent removes the data), unless a live order still mounts it
    (its job is being stopped for the same funds; the next run deletes it). Returns the ids deleted.
    """
    from billing.services.settlement import leases_unable_to_pay

    now = now or timezone.now()
    short = {s.lease_id for s in leases_unable_to_pay(at=now) if s.job_id is None}
    ready = Volume.objects.filter(status=VolumeStatus.READY)
    newly = ready.filter(unpaid_since__isnull=True, lease_id__in=short).update(unpaid_since=now)
    if newly:
        log.warning("volumes.unpaid count=%s", newly)
    ready.filter(unpaid_since__isnull=False).exclude(lease_id__in=short).update(unpaid_since=None)
    grace = timedelta(hours=settings.SUANLI_VOLUME_UNPAID_GRACE_H)
    deleted: list[int] = []
    for volume in ready.filter(unpaid_since__lte=now - grace).order_by("pk"):
        try:
            volume_delete(volume=volume)
        except Conflict:
            continue
        deleted.append(volume.pk)
    if deleted:
        log.warning("volumes.deleted_unpaid volume_ids=%s", deleted)
    return deleted


def volume_unpaid_delete_at(volume: Volume) -> datetime | None:
    """When an unpaid volume will be deleted (None while it is paid for)."""
    if volume.unpaid_since is None or volume.status != VolumeStatus.READY:
        return None
    return volume.unpaid_since + timedelta(hours=settings.SUANLI_VOLUME_UNPAID_GRACE_H)
