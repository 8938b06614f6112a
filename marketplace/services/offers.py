"""Offers: a node's prices and listing, kept in step with its hardware."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from django.db import transaction
from django.utils.translation import gettext as _

from core.errors import ValidationFailed
from core.money import format_amount
from marketplace.models import MAX_PRICE_MICROS, Offer
from providers.models import Device, Node, NodeStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OfferChange:
    on_demand_price_micros: int | None = None
    reserved_price_micros: int | None = None
    spot_floor_micros: int | None = None
    listed: bool | None = None
    min_rental_minutes: int | None = None
    max_rental_hours: int | None = None


def _primary_accelerator(node: Node) -> tuple[int, int]:
    """The node's accelerator model (the most common among its devices) and its device count."""
    ids = list(Device.objects.filter(node=node).values_list("accelerator_id", flat=True))
    if not ids:
        raise ValidationFailed(
            _("This node reported no devices."), fields={"node": _("This node reported no devices.")}
        )
    accelerator_id, _count = Counter(ids).most_common(1)[0]
    return accelerator_id, len(ids)


def offer_sync(*, node: Node) -> Offer:
    """Create the node's offer (unlisted, zero prices) or refresh its hardware facts."""
    accelerator_id, count = _primary_accelerator(node)
    offer, created = Offer.objects.get_or_create(
        node=node,
        defaults={
            "accelerator_id": accelerator_id,
            "device_count": count,
            "region": node.region,
            "on_demand_price_micros": 0,
            "reserved_price_micros": 0,
            "spot_floor_micros": 0,
            "listed": False,
            "reliability": node.reliability,
        },
    )
    if not created and (offer.accelerator_id, offer.device_count, offer.region) != (
        accelerator_id,
        count,
        node.region,
    ):
        offer.accelerator_id, offer.device_count, offer.region = accelerator_id, count, node.region
        offer.save(update_fields=["accelerator", "device_count", "region", "updated_at"])
    return offer


def offer_update(*, node: Node, change: OfferChange) -> Offer:
    """Set a node's prices and listing.

    Contract: prices are micro-units per device-hour within [0, MAX_PRICE_MICROS]; a listed offer
    must have an on-demand price and a spot floor above zero, a reserved price not above the
    on-demand price, and a spot floor not above the on-demand price; a retired node cannot be
    listed. Field errors name every broken rule. Locks the offer row.
    """
    with transaction.atomic():
        offer_sync(node=node)
        offer = Offer.objects.select_for_update().get(node=node)
        for name, value in vars(change).items():
            if value is not None:
                setattr(offer, name, value)
        errors: dict[str, str] = {}
        for name in ("on_demand_price_micros", "reserved_price_micros", "spot_floor_micros"):
            value = getattr(offer, name)
            if value < 0:
                errors[name.removesuffix("_micros")] = _("Must not be negative.")
            elif value > MAX_PRICE_MICROS:
                errors[name.removesuffix("_micros")] = _("At most %(max)s per device-hour.") % {
                    "max": format_amount(MAX_PRICE_MICROS)
                }
        if offer.min_rental_minutes < 1:
            errors["min_rental_minutes"] = _("At least 1 minute.")
        if offer.max_rental_hours < 1 or offer.max_rental_hours > 24 * 366:
            errors["max_rental_hours"] = _("Between 1 hour and a year.")
        elif offer.min_rental_minutes > offer.max_rental_hours * 60:
            errors["min_rental_minutes"] = _("Longer than the maximum rental.")
        if offer.listed and not errors:
            if offer.on_demand_price_micros == 0:
                errors["on_demand_price"] = _("Set a price before listing.")
            if offer.spot_floor_micros == 0:
                errors["spot_floor"] = _("Set a spot floor before listing.")
            if offer.spot_floor_micros > offer.on_demand_price_micros:
                errors["spot_floor"] = _("The spot floor cannot exceed the on-demand price.")
            if offer.reserved_price_micros > offer.on_demand_price_micros:
                errors["reserved_price"] = _("The reserved price cannot exceed the on-demand price.")
            if node.status == NodeStatus.RETIRED:
                errors["listed"] = _("A retired node cannot be listed.")
        if errors:
            first, message = next(iter(errors.items()))
            raise ValidationFailed(f"{first}: {message}", fields=errors)
        offer.save()
    log.info("offer.updated node_id=%s listed=%s", node.pk, offer.listed)
    return offer
