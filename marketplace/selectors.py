"""Marketplace reads."""

from __future__ import annotations

import functools
import hashlib
import json
import re
import weakref
from dataclasses import dataclass
from datetime import UTC, date, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import connection
from django.db.models import (
    Case,
    Count,
    DecimalField,
    Exists,
    ExpressionWrapper,
    F,
    Func,
    IntegerField,
    OrderBy,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Value,
    When,
    Window,
)
from django.db.models.functions import Coalesce, NullIf, RowNumber, TruncDate
from django.utils import timezone
from django.utils.translation import gettext as _

from billing.selectors import UsagePoint, usage_series
from core.errors import NotFound, ValidationFailed
from marketplace.models import (
    FreeDeviceChange,
    Job,
    JobLogChunk,
    JobStatus,
    Offer,
    Order,
    SpotPrice,
)
from providers.models import Device, Node, NodeStatus

LOG_READ_MAX_BYTES = 1024 * 1024


def job_get_for_buyer(*, user: AbstractBaseUser | AnonymousUser, job_id: int) -> Job:
    """The user's own job; anyone else's (or none) is ``NotFound``."""
    job = Job.objects.filter(pk=job_id, buyer_id=user.pk).first() if user.pk is not None else None
    if job is None:
        raise NotFound(_("No such job."))
    return job


@dataclass(frozen=True)
class LogSlice:
    offset: int  # where ``data`` starts (later than asked when older bytes were dropped)
    next_offset: int
    data: str
    log_size: int
    log_start: int


def job_log_read(*, job: Job, offset: int, limit: int = LOG_READ_MAX_BYTES) -> LogSlice:
    """Up to ``limit`` bytes of the log from ``offset`` (a cheap indexed range read)."""
    limit = max(1, min(limit, LOG_READ_MAX_BYTES))
    start = max(offset, job.log_start, 0)
    if start >= job.log_size:
        return LogSlice(offset=min(start, job.log_size), next_offset=min(start, job.log_size), data="",
                        log_size=job.log_size, log_start=job.log_start)  # fmt: skip
    pieces: list[bytes] = []
    taken = 0
    chunks = JobLogChunk.objects.filter(job=job, end_offset__gt=start, offset__lt=start + limit).order_by(
        "offset"
    )
    for chunk_offset, chunk_data in chunks.values_list("offset", "data").iterator(chunk_size=64):
        piece = bytes(chunk_data)[max(0, start - chunk_offset) :]
        piece = piece[: limit - taken]
        pieces.append(piece)
        taken += len(piece)
        if taken >= limit:
            break
    raw = b"".join(pieces)
    return LogSlice(
        offset=start,
        next_offset=start + len(raw),
        # A slice may start or end inside a multi-byte character; show it, do not fail.
        data=raw.decode("utf-8", "replace"),
        log_size=job.log_size,
        log_start=job.log_start,
    )


# --- Offers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OfferFilters:
    kind: str | None = None
    vendor: str | None = None
    model: str | None = None
    min_memory_gib: int | None = None
    region: str | None = None
    term: str = "on_demand"
    max_price_micros: int | None = None
    min_reliability: Decimal | None = None
    devices: int | None = None
    # True: only nodes whose hardware passed verification; False: only those that did not.
    verified: bool | None = None
    sort: str = "price"


TERM_PRICE_FIELD = {
    "on_demand": "on_demand_price_micros",
    "reserved": "reserved_price_micros",
    "spot": "spot_floor_micros",
}
OFFER_SORTS = ("price", "price_per_pflop", "reliability", "carbon")


def epoch_now() -> int:
    return int(timezone.now().timestamp())


def free_devices_expression(now_epoch: int) -> Case:
    """The offer's free devices at ``now_epoch``: the node's stored count when ``now_epoch`` is in
    its window and no slot or device write has marked the node since, else counted from the rows
    (``marketplace_node_free_devices``, the refresh's own definition, migration 0006).

    Exact at every moment, between refreshes too: a write's mark commits with the write, so a
    reader sees both or neither; only the nodes changed since the last refresh cost a count.
    """
    stored = Q(
        node__free_device_count__valid_from__lte=now_epoch,
        node__free_device_count__valid_until__gt=now_epoch,
    ) & ~Exists(FreeDeviceChange.objects.filter(node_id=OuterRef("node_id")))
    counted = Func(
        F("node_id"), Value(now_epoch), function="marketplace_node_free_devices", output_field=IntegerField()
    )
    return Case(
        When(stored, then=F("node__free_device_count__devices")), default=counted, output_field=IntegerField()
    )


def grid_intensity_expression() -> Case:
    table = settings.SUANLI_GRID_INTENSITY
    return Case(
        *[When(region=region, then=Value(Decimal(str(value)))) for region, value in table.items()],
        default=Value(Decimal(str(table.get("default", 0.48)))),
        output_field=DecimalField(max_digits=8, decimal_places=4),
    )


def device_power_expression() -> Coalesce:
    """Watts one device of the offer draws: the node's measured power under load
    (``Node.measured_power_w``, kept by the heartbeat flush) once its agent has reported one, else
    the catalog TDP. A stored column, so the offer search reads it like any other node field."""
    return Coalesce(
        F("node__measured_power_w"),
        F("accelerator__tdp_watts"),
        output_field=DecimalField(max_digits=9, decimal_places=1),
    )


def tops_per_watt_expression() -> Case:
    """Dense INT8 TOPS per watt of ``device_power_expression``; NULL where the catalog has no INT8
    figure, and (not a division error) for a row without a TDP, the generic CPU."""
    return Case(
        When(
            accelerator__int8_tops__gt=0,
            then=F("accelerator__int8_tops") / NullIf(device_power_expression(), Value(0)),
        ),
        default=None,
        output_field=DecimalField(max_digits=12, decimal_places=4),
    )


def offers_list(*, filters: OfferFilters) -> QuerySet[Offer]:
    """Listed offers on online nodes with at least one free device, filtered and sorted.

    Annotates ``free_devices``, ``term_price_micros``, ``price_per_pflop_micros`` (the term price
    per dense FP16 PFLOP-hour), ``kg_co2e_per_device_hour`` (device power x PUE x grid intensity,
    the power measured or else the TDP: ``device_power_expression``) and ``tops_per_watt`` (dense
    INT8 TOPS per watt of that power; None where the catalog has no INT8 figure).
    """
    price_field = TERM_PRICE_FIELD.get(filters.term, "on_demand_price_micros")
    # The stored count (offer_free_devices_refresh) makes this a plain scan of offers; only nodes
    # changed since the last refresh fall back to counting their rows.
    qs = (
        Offer.objects.filter(listed=True, node__status=NodeStatus.ONLINE)
        .select_related("node", "node__provider", "accelerator")
        .annotate(
            term_price_micros=F(price_field),
            free_devices=free_devices_expression(epoch_now()),
        )
        .annotate(
            price_per_pflop_micros=Case(
                When(
                    accelerator__fp16_tflops__gt=0,
                    then=F(price_field) * Value(Decimal(1000)) / F("accelerator__fp16_tflops"),
                ),
                default=None,
                output_field=DecimalField(max_digits=30, decimal_places=4),
            ),
            kg_co2e_per_device_hour=ExpressionWrapper(
                device_power_expression()
                * F("node__pue")
                * grid_intensity_expression()
                / Value(Decimal(1000)),
                output_field=DecimalField(max_digits=12, decimal_places=4),
            ),
            tops_per_watt=tops_per_watt_expression(),
        )
        # One comparison, not "> 0" and ">= devices": each copy of the expression is compiled and
        # evaluated again.
        .filter(free_devices__gte=max(1, filters.devices or 1))
    )
    if filters.kind:
        qs = qs.filter(accelerator__kind=filters.kind)
    if filters.vendor:
        qs = qs.filter(accelerator__vendor=filters.vendor)
    if filters.model:
        qs = qs.filter(
            Q(accelerator__model__iexact=filters.model)
            | Q(accelerator__match_names__contains=[filters.model])
        )
    if filters.min_memory_gib:
        qs = qs.filter(accelerator__memory_gib__gte=filters.min_memory_gib)
    if filters.region:
        qs = qs.filter(region=filters.region)
    if filters.max_price_micros is not None:
        qs = qs.filter(**{f"{price_field}__lte": filters.max_price_micros})
    if filters.min_reliability is not None:
        qs = qs.filter(reliability__gte=filters.min_reliability)
    if filters.verified is not None:
        qs = qs.filter(node__verified_at__isnull=not filters.verified)
    orderings: dict[str, tuple[str | OrderBy, ...]] = {
        "price": ("term_price_micros", "id"),
        "price_per_pflop": (F("price_per_pflop_micros").asc(nulls_last=True), "id"),
        "reliability": ("-reliability", "term_price_micros", "id"),
        "carbon": ("kg_co2e_per_device_hour", "term_price_micros", "id"),
    }
    return qs.order_by(*orderings[filters.sort if filters.sort in OFFER_SORTS else "price"])


def offer_get_listed(*, offer_id: int) -> Offer:
    offer = offers_list(filters=OfferFilters()).filter(pk=offer_id).first()
    if offer is None:
        raise NotFound(_("No such offer, or it has no free capacity now."))
    return offer


# --- Offer search: one hand-written query per API page -----------------------------------------
#
# ``GET /api/v1/offers`` answers from ``offer_search_page``: one query that filters, orders by the
# page's keyset and stops after ``limit + 1`` rows (an index scan for the price sorts, migration
# 0009), and that returns each offer's JSON, byte for byte what ``OfferSerializer`` and DRF's
# compact JSON renderer make of the ``offers_list`` queryset: the stored ``OfferCard`` fragments
# (migration 0012, kept by triggers) around the figures no row write changes. Building the page
# through the ORM cost ~12 ms of Python per request (query compilation, model instances,
# serialising) for ~1 ms of query. ``offers_list`` stays the reference: the portal reads it, and
# tests/marketplace/test_offer_search_fast_path.py compares the two on random markets, filters,
# sorts, cursors and writes. A change to either (a field, a filter, a formula) must be made to
# both, and to the card (a new migration replacing ``marketplace_offer_cards_write``).


def _half_even_sql(value: str, places: int) -> str:
    """``f"{Decimal(value):.{places}f}"`` as SQL text (``marketplace_half_even``, migration 0012:
    Python rounds half to even, PostgreSQL's round() half away from zero)."""
    return f"marketplace_half_even({value}, {int(places)})"


def _sql_string(text: str) -> str:
    """A constant from the settings as a standard SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _grid_case(region: str) -> str:
    """``offers_list``'s grid intensity CASE on ``region``, as SQL."""
    grid = settings.SUANLI_GRID_INTENSITY
    cases = " ".join(f"WHEN {_sql_string(name)} THEN {Decimal(str(value))}" for name, value in grid.items())
    default = Decimal(str(grid.get("default", 0.48)))
    return f"CASE {region} {cases} ELSE {default} END" if cases else f"{default}"


def offer_card_carbon_sql(card: str = "cd") -> str:
    """An offer's ``kg_co2e_per_device_hour`` from its card (``card``: the card table's alias, or
    "" for its bare columns): ``offers_list``'s product, with the card's stored power x PUE (the
    same digits: an unconstrained numeric) and the grid intensities of the settings."""
    prefix = f"{card}." if card else ""
    return f"(({prefix}power_pue * {_grid_case(prefix + 'region')}) / 1000)"


OFFER_CARBON_INDEX_PREFIX = "offercard_carbon_"


def offer_carbon_indexes() -> dict[str, str]:
    """The carbon sort's indexes for the grid intensities now in the settings, by name: one per
    term, on the card's carbon figure, the term price and the offer, over listed offers. The
    name carries a digest of the figure's SQL, so indexes built for other intensities are told
    apart (``marketplace.services.offers.offer_carbon_indexes_ensure`` replaces them). Without a
    matching index the carbon sort is still right, only a sort of every candidate."""
    key = offer_card_carbon_sql("")
    digest = hashlib.blake2b(key.encode(), digest_size=6).hexdigest()
    return {
        f"{OFFER_CARBON_INDEX_PREFIX}{term}_{digest}": (
            f"CREATE INDEX IF NOT EXISTS {OFFER_CARBON_INDEX_PREFIX}{term}_{digest}"
            f" ON marketplace_offercard ({key}, {price}, offer_id) WHERE listed"
        )
        for term, price in TERM_PRICE_FIELD.items()
    }


def _free_devices_sql(node_id: str, unmarked: str) -> str:
    """``free_devices_expression`` in SQL for the node ``node_id``: its stored count ``c`` while
    ``%(t)s`` is in the count's window and ``unmarked`` (no write marked the node since), else
    counted from the rows."""
    return (
        f"CASE WHEN c.valid_from <= %(t)s::bigint AND c.valid_until > %(t)s::bigint AND {unmarked}"
        f" THEN c.devices ELSE marketplace_node_free_devices({node_id}, %(t)s::bigint) END"
    )


def _offer_search_expressions(price: str) -> dict[str, str]:
    """The SQL of ``offers_list``'s annotations that choose a page (the same expressions, so the
    same numbers), for the term price column ``price``; constants are written in as the ORM's
    parameters render them (decimal literals)."""
    return {
        "term_price": f"o.{price}",
        # ch: the marked nodes, joined (see offer_search_page).
        "free": _free_devices_sql("o.node_id", "ch.node_id IS NULL"),
        "pflop": f"CASE WHEN a.fp16_tflops > 0 THEN ((o.{price} * 1000) / a.fp16_tflops) ELSE NULL END",
    }


def _offer_json_sql(term: str) -> tuple[str, str, str]:
    """An offer's JSON as three SQL text expressions over its card ``cd``, the page row ``k``
    (``k.free``: its free devices) and ``x.kg`` (its carbon figure): before the node's
    ``software`` (a jsonb, whose text PostgreSQL spaces differently: Python renders it,
    ``_software_json``), the software's jsonb text, and the rest."""
    pflop = f"cd.pflop_{term if term in TERM_PRICE_FIELD else 'on_demand'}"
    tail = (
        "cd.mid || k.free || cd.body || %(currency)s::text"
        f" || ',\"price_per_pflop_hour\":' || {pflop}"
        f" || ',\"kg_co2e_per_device_hour\":' || coalesce('\"' || {_half_even_sql('x.kg', 3)} || '\"', 'null')"
        " || cd.tail"
        ' || to_char(cd.updated_at AT TIME ZONE %(tz)s::text, \'YYYY-MM-DD"T"HH24:MI:SS.US"Z"\') || \'"}\''
    )
    return "cd.head", "cd.software", tail


# Per sort: the keyset (see core.api.KeysetPagination), as (expression name or SQL, descending,
# type of the cursor value). The API's OFFER_KEYSETS, in SQL.
OFFER_SEARCH_KEYSETS: dict[str, tuple[tuple[str, bool, type], ...]] = {
    "price": (("term_price", False, int), ("o.id", False, int)),
    "price_per_pflop": (("pflop_sort", False, Decimal), ("o.id", False, int)),
    "reliability": (("o.reliability", True, Decimal), ("term_price", False, int), ("o.id", False, int)),
    "carbon": (("kg", False, Decimal), ("term_price", False, int), ("o.id", False, int)),
}
# A price per PFLOP-hour sorts after every real one when the model has no FP16 figure.
NO_PFLOP_PRICE = Decimal("1e20")
_BIGINT = 2**63


@dataclass(frozen=True)
class OfferPage:
    # Each offer as compact JSON text, in order: the API's OfferSerializer shape.
    offers_json: list[str]
    # The keyset values of the page's last row when more rows follow (the next cursor), else None.
    next_values: list[Any] | None


def offer_search_cursor(*, sort: str, values: list[Any]) -> list[int | Decimal]:
    """The values of a decoded cursor, checked against the sort's keyset: whole numbers in the
    bigint range for integer keys, finite decimals (a string, as the next link writes them, or a
    number) for decimal keys. Anything else is ``ValidationFailed`` on ``cursor``, never a query
    error."""
    keys = OFFER_SEARCH_KEYSETS[sort if sort in OFFER_SEARCH_KEYSETS else "price"]
    out: list[int | Decimal] = []
    for (_name, _desc, kind), value in zip(keys, values, strict=True):
        checked: int | Decimal | None = None
        if isinstance(value, bool):
            checked = None
        elif kind is int and isinstance(value, int) and -_BIGINT <= value < _BIGINT:
            checked = value
        elif kind is Decimal and isinstance(value, int | float | str):
            try:
                number = Decimal(value if isinstance(value, str) else str(value))
            except ArithmeticError:
                number = None
            # Within PostgreSQL numeric's range by far; beyond it a cursor is a forgery anyway.
            if number is not None and number.is_finite() and abs(number.adjusted()) < 1000:
                checked = number
        if checked is None:
            raise ValidationFailed(_("Invalid cursor."), fields={"cursor": _("Use the next link as given.")})
        out.append(checked)
    return out


def offer_search_page(
    *, filters: OfferFilters, model: str | None = None, after: list[Any] | None = None, limit: int = 50
) -> OfferPage:
    """One page of ``offers_list(filters=filters)`` ordered by the sort's keyset, after the cursor
    values ``after`` (checked by ``offer_search_cursor``), as the API renders it: the same rows,
    order and JSON, in one query. ``model`` matches like the API's ``model`` parameter (a catalog
    model, a name vendor tools print, or a model prefix, case-insensitively)."""
    sort = filters.sort if filters.sort in OFFER_SEARCH_KEYSETS else "price"
    price = TERM_PRICE_FIELD.get(filters.term, "on_demand_price_micros")
    e = _offer_search_expressions(price)
    e["pflop_sort"] = f"COALESCE({e['pflop']}, {NO_PFLOP_PRICE})"
    # The carbon sort walks the cards in carbon order (offer_carbon_indexes), reading the figure,
    # the term price, the region and the model as the card holds them (the offer's, kept by the
    # triggers), so an offer the region or model filter drops costs no read of the offer.
    offers = "marketplace_offer o"
    accelerator_of, region = "o.accelerator_id", "o.region"
    if sort == "carbon":
        e.update(kg=offer_card_carbon_sql("cd"), term_price=f"cd.{price}")
        offers = "marketplace_offercard cd JOIN marketplace_offer o ON o.id = cd.offer_id"
        accelerator_of, region = "cd.accelerator_id", "cd.region"
    params: dict[str, Any] = {
        "t": epoch_now(),
        "currency": json.dumps(str(settings.SUANLI_CURRENCY), ensure_ascii=False),
        "tz": settings.TIME_ZONE,
        "min_free": max(1, filters.devices or 1),
        "online": NodeStatus.ONLINE.value,
    }
    # Every value from the request is a parameter, cast to its column's type (the statement is
    # prepared: ``_offer_search_execute``). The offer's and its model's conditions (``where``), then
    # its node's: a sort that reads every candidate (price per PFLOP) checks the node and the free
    # devices only for the page's few.
    where = ["cd.listed", "o.listed"] if sort == "carbon" else ["o.listed"]
    where_node = ["n.status = %(online)s::text"]
    if filters.kind:
        where.append("a.kind = %(kind)s::text")
        params["kind"] = filters.kind
    if filters.vendor:
        where.append("a.vendor = %(vendor)s::text")
        params["vendor"] = filters.vendor
    # Django's iexact and istartswith escape LIKE wildcards in the value (even for "="): so here.
    if filters.model:
        where.append(
            "(UPPER(a.model::text) = UPPER(%(fmodel)s::text)"
            " OR a.match_names @> (ARRAY[%(fmodel_raw)s::text])::varchar(64)[])"
        )
        params["fmodel"] = connection.ops.prep_for_like_query(filters.model)
        params["fmodel_raw"] = filters.model
    if model:
        where.append(
            "(UPPER(a.model::text) = UPPER(%(model)s::text)"
            " OR a.match_names @> (ARRAY[%(model_raw)s::text])::varchar(64)[]"
            " OR UPPER(a.model::text) LIKE UPPER(%(model_prefix)s::text))"
        )
        escaped = connection.ops.prep_for_like_query(model)
        params.update(model=escaped, model_raw=model, model_prefix=f"{escaped}%")
    if filters.min_memory_gib:
        where.append("a.memory_gib >= %(min_memory_gib)s::bigint")
        params["min_memory_gib"] = filters.min_memory_gib
    if filters.region:
        where.append(f"{region} = %(region)s::text")
        params["region"] = filters.region
    if filters.max_price_micros is not None:
        where.append(f"{e['term_price']} <= %(max_price)s::bigint")
        # Prices are at most MAX_PRICE_MICROS: clamping a bound beyond bigint changes no result.
        params["max_price"] = max(-_BIGINT, min(filters.max_price_micros, _BIGINT - 1))
    if filters.min_reliability is not None:
        where.append("o.reliability >= %(min_reliability)s::numeric")
        params["min_reliability"] = filters.min_reliability
    if filters.verified is not None:
        where_node.append(f"n.verified_at IS {'NOT ' if filters.verified else ''}NULL")
    keys = OFFER_SEARCH_KEYSETS[sort]
    key_sql = [e.get(name, name) for name, _desc, _kind in keys]
    if after is not None:
        bounds = []
        for i, (value, (_name, _desc, kind)) in enumerate(zip(after, keys, strict=True)):
            params[f"after{i}"] = value
            bounds.append(f"%(after{i})s::{'bigint' if kind is int else 'numeric'}")
        if not any(desc for _name, desc, _kind in keys):
            # One direction: a row comparison, which an index on the keys can start from.
            where.append(f"({', '.join(key_sql)}) > ({', '.join(bounds)})")
        else:
            # KeysetPagination._after's condition: a key beyond the cursor, every earlier one equal.
            steps = []
            for i, (_name, desc, _kind) in enumerate(keys):
                equal = [f"{key_sql[j]} = {bounds[j]}" for j in range(i)]
                steps.append(" AND ".join([*equal, f"{key_sql[i]} {'<' if desc else '>'} {bounds[i]}"]))
            where.append("(" + " OR ".join(f"({step})" for step in steps) + ")")
    keys_out = ", ".join(f"{sql} AS k{i}" for i, sql in enumerate(key_sql))
    order_in = ", ".join(
        f"{sql} {'DESC' if desc else 'ASC'}" for sql, (_n, desc, _k) in zip(key_sql, keys, strict=True)
    )
    order_out = ", ".join(f"k.k{i} {'DESC' if desc else 'ASC'}" for i, (_n, desc, _k) in enumerate(keys))
    # The limit written in (a whole number from the paginator), not a parameter: a prepared
    # statement's generic plan would assume a tenth of the rows and hash-join them all.
    page = f"LIMIT {int(limit) + 1}"
    if sort == "price_per_pflop":
        # No index holds this order (a price over the model's FLOPS): sort the candidates that the
        # offer's and model's columns admit (one narrow scan), then walk them in order, reading
        # each one's node and free devices, until the page is full.
        found = (
            f"SELECT s.offer_id, f.free, {', '.join(f's.k{i}' for i in range(len(keys)))}"  # noqa: S608
            f" FROM (SELECT o.id AS offer_id, o.node_id, {keys_out} FROM marketplace_offer o"
            " JOIN providers_acceleratormodel a ON a.id = o.accelerator_id"
            # OFFSET 0: sorted here, before the probes below (not flattened into one join).
            f" WHERE {' AND '.join(where)} ORDER BY {order_in} OFFSET 0) s"
            " CROSS JOIN LATERAL (SELECT "
            + _free_devices_sql(
                "s.node_id",
                "NOT EXISTS (SELECT FROM marketplace_freedevicechange ch WHERE ch.node_id = s.node_id)",
            )
            + " AS free FROM (SELECT) one LEFT JOIN marketplace_freedevicecount c ON c.node_id = s.node_id OFFSET 0) f"
            f" WHERE EXISTS (SELECT FROM providers_node n WHERE n.id = s.node_id AND {' AND '.join(where_node)})"
            " AND f.free >= %(min_free)s::bigint"
            f" ORDER BY {', '.join(f's.k{i}' for i in range(len(keys)))} {page}"
        )
    else:
        free_enough = f"({e['free']}) >= %(min_free)s::bigint"
        # The other sorts walk an index in the page's order, checking each offer in full as they
        # go (a few more rows than the page).
        found = (
            f"SELECT o.id AS offer_id, ({e['free']}) AS free, {keys_out}"  # noqa: S608
            f" FROM {offers}"
            " JOIN providers_node n ON n.id = o.node_id"
            f" JOIN providers_acceleratormodel a ON a.id = {accelerator_of}"
            " LEFT JOIN marketplace_freedevicecount c ON c.node_id = o.node_id"
            # free_devices_expression's NOT EXISTS, as a join: the planner priced that subquery
            # per row as an index probe and chose to hash-join and sort every offer instead of
            # walking an index in the page's order (the marks are few; this is one small hash).
            " LEFT JOIN (SELECT DISTINCT node_id FROM marketplace_freedevicechange) ch ON ch.node_id = o.node_id"
            f" WHERE {' AND '.join([*where, *where_node, free_enough])}"
            f" ORDER BY {order_in} {page}"
        )
    # Two levels: the inner query finds the page's offers carrying only the columns that filter and
    # order them; the outer one joins those few rows' cards.
    head, software, tail = _offer_json_sql(filters.term)
    sql = (
        # Only constant SQL is formatted in; every value from the request is a parameter.
        f"SELECT {', '.join(f'k.k{i}' for i in range(len(keys)))}, {head}, {software}, {tail}"  # noqa: S608
        f" FROM ({found}) k"
        # Each page row's card by primary key (OFFSET 0 keeps the planner from flattening it into
        # a hash join that scans every card for the page's few).
        " CROSS JOIN LATERAL (SELECT * FROM marketplace_offercard WHERE offer_id = k.offer_id OFFSET 0) cd"
        # The carbon figure once per row (OFFSET 0: not pulled up into the JSON, which spells it
        # several times over to round it).
        f" CROSS JOIN LATERAL (SELECT {offer_card_carbon_sql('cd')} AS kg OFFSET 0) x"
        f" ORDER BY {order_out}"
    )
    rows = _offer_search_execute(sql, params)
    n_keys = len(keys)
    next_values = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_values = [str(v) if isinstance(v, Decimal) else v for v in rows[-1][:n_keys]]
    return OfferPage(
        offers_json=[f"{row[n_keys]}{_software_json(row[n_keys + 1])}{row[n_keys + 2]}" for row in rows],
        next_values=next_values,
    )


_PLACEHOLDER = re.compile(r"%\((\w+)\)s")
# Statements prepared on each database connection (a connection's are gone with it).
_PREPARED: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
# Each combination of filters, sort and cursor is its own statement: a few dozen in practice. Past
# this many on one connection, the rest run unprepared rather than pile up in the server.
PREPARED_PER_CONNECTION = 256


def _offer_search_execute(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Run ``sql`` (``%(name)s`` placeholders) as a prepared statement of this connection.

    Planning the search took as long as running it (1-5 ms: a wide select list, five tables);
    a prepared statement is planned once per connection, or re-planned per call only while
    PostgreSQL finds custom plans cheaper. Values go in ``EXECUTE``'s arguments, typed by the
    casts in ``sql``."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    statement = _PLACEHOLDER.sub(number, sql)
    name = "offer_search_" + hashlib.blake2b(statement.encode(), digest_size=12).hexdigest()
    with connection.cursor() as cursor:
        prepared = _PREPARED.setdefault(connection.connection, set())
        if name not in prepared:
            if len(prepared) >= PREPARED_PER_CONNECTION:
                cursor.execute(sql, params)
                return cursor.fetchall()
            if not prepared:
                # Plan each statement once. Left to choose, PostgreSQL re-planned the carbon search
                # at every call (~2.5 ms, longer than running it): its generic plan's estimate was
                # a little above the custom plans', though both walk the same index. Each filter
                # combination is its own statement and the limit is written in, so a generic plan
                # differs from a custom one only in what the values select. Only prepared
                # statements follow this setting; nothing else on the connection prepares.
                cursor.execute("SET plan_cache_mode = force_generic_plan")
            cursor.execute(f"PREPARE {name} AS {statement}")
            prepared.add(name)
        cursor.execute(f"EXECUTE {name}({', '.join(['%s'] * len(names))})", [params[n] for n in names])
        return cursor.fetchall()


@functools.lru_cache(maxsize=1024)
def _software_json(text: str) -> str:
    """A node's ``software`` (jsonb text) as the API renders it: read as Django's JSONField reads
    it, written as DRF's compact renderer writes it. Cached: most nodes report the same few."""
    return json.dumps(json.loads(text), ensure_ascii=False, separators=(",", ":"))


# --- Portal reads ------------------------------------------------------------------------------


def offer_get_public(*, offer_id: int) -> Offer:
    """A listed offer for its detail page, with ``free_devices`` and the other ``offers_list``
    annotations when it has free capacity now, else ``free_devices = 0`` (still shown: a full node
    is worth knowing about). ``NotFound`` when it is not listed."""
    offer = offers_list(filters=OfferFilters()).filter(pk=offer_id).first()
    if offer is not None:
        return offer
    offer = (
        Offer.objects.filter(pk=offer_id, listed=True)
        .select_related("node", "node__provider", "accelerator")
        .annotate(
            free_devices=Value(0, output_field=IntegerField()), tops_per_watt=tops_per_watt_expression()
        )
        .first()
    )
    if offer is None:
        raise NotFound(_("No such offer."))
    return offer


def spot_price_history(*, accelerator_id: int, region: str, limit: int = 120) -> list[SpotPrice]:
    """The pool's last ``limit`` clearing prices, oldest first."""
    rows = list(
        SpotPrice.objects.filter(accelerator_id=accelerator_id, region=region).order_by("-round_at")[:limit]
    )
    rows.reverse()
    return rows


def spot_prices_recent(
    *, pools: list[tuple[int, str]], per_pool: int = 5
) -> dict[tuple[int, str], list[int]]:
    """The last ``per_pool`` clearing prices (newest first) of each (accelerator, region) pool, in
    one query however many pools."""
    if not pools:
        return {}
    condition = Q()
    for accelerator_id, region in set(pools):
        condition |= Q(accelerator_id=accelerator_id, region=region)
    ranked = (
        SpotPrice.objects.filter(condition)
        .annotate(
            rank=Window(
                RowNumber(), partition_by=[F("accelerator_id"), F("region")], order_by=F("round_at").desc()
            )
        )
        .filter(rank__lte=per_pool)
        .order_by("accelerator_id", "region", "-round_at")
        .values_list("accelerator_id", "region", "price_micros")
    )
    out: dict[tuple[int, str], list[int]] = {pool: [] for pool in pools}
    for accelerator_id, region, price in ranked:
        out.setdefault((accelerator_id, region), []).append(price)
    return out


@dataclass(frozen=True)
class DayOutcomes:
    day: date
    succeeded: int
    failed: int


def node_job_outcomes(*, node_id: int, days: int = 30) -> list[DayOutcomes]:
    """Jobs that ended on the node per UTC day over the last ``days`` days (every day present):
    exited or stopped count as succeeded, failed or lost as failed (the reliability score's job
    term; preempted jobs count for neither). One query."""
    today = timezone.now().astimezone(UTC).date()
    first = today - timedelta(days=days - 1)
    rows = (
        Job.objects.filter(node_id=node_id, ended_at__date__gte=first)
        .annotate(day=TruncDate("ended_at", tzinfo=UTC))
        .values("day")
        .annotate(
            ok=Count("id", filter=Q(status__in=[JobStatus.EXITED, JobStatus.STOPPED])),
            bad=Count("id", filter=Q(status__in=[JobStatus.FAILED, JobStatus.LOST])),
        )
        .values_list("day", "ok", "bad")
    )
    by_day = {day: (ok, bad) for day, ok, bad in rows}
    return [
        DayOutcomes(day=d, succeeded=by_day.get(d, (0, 0))[0], failed=by_day.get(d, (0, 0))[1])
        for d in (first + timedelta(days=i) for i in range(days))
    ]


def orders_for_buyer(*, user: AbstractBaseUser | AnonymousUser) -> QuerySet[Order]:
    """The user's orders, newest first, with their jobs (one extra query per page)."""
    return (
        Order.objects.filter(buyer_id=user.pk)
        .select_related("offer__node", "offer__accelerator")
        .prefetch_related(Prefetch("jobs", queryset=Job.objects.select_related("node").order_by("id")))
        .order_by("-id")
    )


def order_get_for_buyer_page(*, user: AbstractBaseUser | AnonymousUser, order_id: int) -> Order:
    """One of the user's orders with its jobs and allocations; ``NotFound`` for anyone else's."""
    order = (
        orders_for_buyer(user=user).prefetch_related("allocations__node").filter(pk=order_id).first()
        if user.pk is not None
        else None
    )
    if order is None:
        raise NotFound(_("No such order."))
    return order


def job_get_for_buyer_page(*, user: AbstractBaseUser | AnonymousUser, job_id: int) -> Job:
    """One of the user's jobs with its node and order; ``NotFound`` for anyone else's."""
    job = (
        Job.objects.select_related("node", "order", "node__provider")
        .filter(pk=job_id, buyer_id=user.pk)
        .first()
        if user.pk is not None
        else None
    )
    if job is None:
        raise NotFound(_("No such job."))
    return job


def log_tail_offset(*, job: Job, max_bytes: int = 64 * 1024) -> int:
    """Where to start reading so a page shows at most the last ``max_bytes`` of the log."""
    return max(job.log_start, job.log_size - max_bytes)


def nodes_with_offers_for_member(*, user: AbstractBaseUser | AnonymousUser) -> QuerySet[Node]:
    """The nodes of every provider the user belongs to, with their offer, devices and provider
    (three queries however many nodes)."""
    return (
        Node.objects.filter(provider__memberships__user_id=user.pk or 0)
        .select_related("provider", "offer", "offer__accelerator")
        .prefetch_related(Prefetch("devices", queryset=Device.objects.select_related("accelerator")))
        .annotate(device_total=Count("devices", distinct=True))
        .order_by("provider__name", "name", "id")
    )


def node_get_for_member_page(*, user: AbstractBaseUser | AnonymousUser, node_id: int) -> Node:
    node = nodes_with_offers_for_member(user=user).filter(pk=node_id).first() if user.pk is not None else None
    if node is None:
        raise NotFound(_("No such node."))
    return node


def node_usage(*, node: Node, hours: int = 24, bucket_seconds: int = 600) -> list[UsagePoint]:
    """Utilisation, power and device-hours of the node's jobs over the last ``hours`` hours, from
    the agents' usage samples (two queries)."""
    since = timezone.now() - timedelta(hours=hours)
    job_ids = list(
        Job.objects.filter(node=node, started_at__isnull=False)
        .filter(Q(ended_at__isnull=True) | Q(ended_at__gte=since))
        .values_list("pk", flat=True)[:1000]
    )
    return usage_series(job_ids=job_ids, since=since, bucket_seconds=bucket_seconds)
