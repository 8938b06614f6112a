"""Offers: a node's prices and listing, kept in step with its hardware."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from core.errors import ValidationFailed
from core.money import format_amount
from marketplace.models import MAX_PRICE_MICROS, SPAN_DEVICE_STRIDE, Offer
from marketplace.selectors import OFFER_CARBON_INDEX_PREFIX, offer_carbon_indexes
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
    volume_price_micros: int | None = None


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
        if not 0 <= offer.volume_price_micros <= MAX_PRICE_MICROS:
            errors["volume_price"] = _("Between 0 (no volumes) and %(max)s per GiB-hour.") % {
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


# --- Stored free-device counts -----------------------------------------------------------------

# Window bounds for "no slot boundary on this side" (epoch seconds; far beyond any real time).
FREE_COUNT_FOREVER = 1 << 62
# One refresh at a time (pg_try_advisory_xact_lock key): two overlapping refreshes could store an
# older snapshot's count after a newer one had cleared the node's change marks.
FREE_COUNT_REFRESH_LOCK = 0x5A4C_F4EE

# The nodes to recount at %(t)s: offers with no stored count or one outside its window, and every
# node a slot or device write marked since.
_STALE_NODES_SQL = """
SELECT o.node_id FROM marketplace_offer o
  LEFT JOIN marketplace_freedevicecount c ON c.node_id = o.node_id
 WHERE c.node_id IS NULL OR c.valid_from > %(t)s OR c.valid_until <= %(t)s
UNION
SELECT node_id FROM marketplace_freedevicechange
"""

# The node's count at %(t)s (marketplace_node_free_devices, migration 0006) and the window around
# %(t)s in which no live slot of the node starts or ends, so the count holds throughout: from the
# last boundary at or before %(t)s to the first after it. Upserted for the nodes that have an offer.
_RECOUNT_SQL = """
INSERT INTO marketplace_freedevicecount (node_id, devices, valid_from, valid_until)
SELECT o.node_id,
       marketplace_node_free_devices(o.node_id, %(t)s),
       coalesce(b.valid_from, -%(forever)s),
       coalesce(b.valid_until, %(forever)s)
  FROM marketplace_offer o
  LEFT JOIN LATERAL (
      SELECT max(GREATEST(CASE WHEN x.lo <= %(t)s THEN x.lo END,
                          CASE WHEN x.hi <= %(t)s THEN x.hi END)) AS valid_from,
             min(LEAST(CASE WHEN x.lo > %(t)s THEN x.lo END,
                       CASE WHEN x.hi > %(t)s THEN x.hi END)) AS valid_until
        FROM providers_device d
        JOIN marketplace_allocationslot s ON s.device_id = d.id AND s.live AND NOT isempty(s.span)
        CROSS JOIN LATERAL (
            SELECT CASE WHEN lower_inf(s.span) THEN -%(forever)s
                        ELSE lower(s.span) - d.id * %(stride)s END AS lo,
                   CASE WHEN upper_inf(s.span) THEN %(forever)s
                        ELSE upper(s.span) - d.id * %(stride)s END AS hi
        ) x
       WHERE d.node_id = o.node_id
  ) b ON true
 WHERE o.node_id = ANY(%(node_ids)s)
ON CONFLICT (node_id) DO UPDATE
   SET devices = EXCLUDED.devices, valid_from = EXCLUDED.valid_from, valid_until = EXCLUDED.valid_until
"""


def offer_free_devices_refresh(*, at: datetime | None = None) -> int:
    """Recount the stored free devices (``FreeDeviceCount``) of every node that needs it at ``at``
    (default now): no stored count, a count whose window a reserved or open slot's start or end has
    left, or a node that a slot or device write marked (``FreeDeviceChange``). Returns how many
    nodes were recounted; a run with nothing to do costs two small queries.

    Contract: the marks it deletes are ones its snapshot sees, and it recounts in a later statement
    (READ COMMITTED: a newer snapshot), so every write whose mark it clears is in the count; marks
    committed meanwhile stay for the next run, and until then readers count those nodes live. It
    takes no lock a slot writer waits on; one refresh runs at a time (a concurrent call returns 0
    at once). Safe to run twice. Runs on the beat (``marketplace-offer-free-devices``), which is
    also where the carbon sort's indexes follow a change of the grid intensities
    (``offer_carbon_indexes_ensure``).
    """
    offer_carbon_indexes_ensure()
    t = int((at or timezone.now()).timestamp())
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [FREE_COUNT_REFRESH_LOCK])
        if not cursor.fetchone()[0]:
            return 0
        cursor.execute(_STALE_NODES_SQL, {"t": t})
        node_ids = [row[0] for row in cursor.fetchall()]
        if not node_ids:
            return 0
        cursor.execute("DELETE FROM marketplace_freedevicechange WHERE node_id = ANY(%s)", [node_ids])
        cursor.execute(
            _RECOUNT_SQL,
            {"t": t, "node_ids": node_ids, "forever": FREE_COUNT_FOREVER, "stride": SPAN_DEVICE_STRIDE},
        )
    log.info("offer.free_devices_refreshed nodes=%s", len(node_ids))
    return len(node_ids)


# --- The carbon sort's indexes ---------------------------------------------------------------------

OFFER_CARBON_INDEX_LOCK = 0x5A4C_CA4B
# The index sets this process has seen in place, by database: the check is one catalog query, made
# once per process and settings (the beat's refresh calls it every few seconds).
_CARBON_INDEXES_SEEN: set[tuple[str, frozenset[str]]] = set()


def offer_carbon_indexes_ensure() -> bool:
    """Build the carbon sort's indexes for the grid intensities in the settings
    (``marketplace.selectors.offer_carbon_indexes``) and drop those built for others. Their
    expression holds the intensities, so a changed ``SUANLI_GRID_INTENSITY`` needs new ones; until
    they exist the carbon sort stays right, only slower. Run after ``migrate`` and by the beat's
    free-count refresh; returns whether it changed anything."""
    wanted = offer_carbon_indexes()
    seen_key = (str(connection.settings_dict["NAME"]), frozenset(wanted))
    if seen_key in _CARBON_INDEXES_SEEN:
        return False
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('marketplace_offercard') IS NOT NULL")
        if not cursor.fetchone()[0]:
            return False
        # One builder at a time (every process calls this after a deploy).
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [OFFER_CARBON_INDEX_LOCK])
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'marketplace_offercard' AND indexname LIKE %s",
            [OFFER_CARBON_INDEX_PREFIX.replace("_", r"\_") + "%"],
        )
        present = {row[0] for row in cursor.fetchall()}
        if present != set(wanted):
            # DDL waits for no deferred check of this transaction's card writes (a caller's open
            # transaction: the checks run now instead of at its commit).
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        for name in sorted(present - set(wanted)):
            cursor.execute(f'DROP INDEX IF EXISTS "{name}"')
        for name in sorted(set(wanted) - present):
            cursor.execute(wanted[name])
    _CARBON_INDEXES_SEEN.add(seen_key)
    changed = present != set(wanted)
    if changed:
        log.info("offer.carbon_indexes_built names=%s", ",".join(sorted(wanted)))
    return changed
