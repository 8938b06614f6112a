"""Portal pages of the marketplace: the market, offers, orders and jobs (buyers), and the nodes
and prices of a provider's members (sellers; here because they show marketplace and billing facts
about providers' nodes, and only this app may read all three).

Views are thin: read through selectors, write through services, render. Every read is scoped to
the signed-in user; anyone else's object is a 404.
"""

from __future__ import annotations

import json
import shlex
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.functional import Promise
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from billing.selectors import wallet_get
from core.errors import NotFound, SuanliError, ValidationFailed
from core.money import format_amount
from core.services import buyer_ssh_key_get
from core.templatetags.money import format_money
from marketplace import selectors
from marketplace.forms import TERM_LABELS, MarketFilterForm, OfferPriceForm, OrderForm, order_estimate
from marketplace.labels import (
    JOB_STATUS_LABELS,
    NODE_STATUS_LABELS,
    ORDER_STATUS_LABELS,
    RUNTIME_LABELS,
    STOP_REASON_LABELS,
    job_message_text,
    order_reason_text,
    preemption_label,
)
from marketplace.matching.market import Reason, ReasonCode
from marketplace.models import JOB_ENDED, Job, JobStatus, Offer, Order, OrderStatus, StopReason, Term
from marketplace.services.matching import order_explain
from marketplace.services.offers import OfferChange, offer_update
from marketplace.services.orders import (
    OrderRequest,
    order_cancel,
    order_cancel_fee_micros,
    order_job_stop,
    order_place,
)
from marketplace.services.volumes import volumes_for_buyer
from providers.services import heartbeat_latest
from providers.verification import verification_rows

ORDERS_PER_PAGE = 20
MARKET_ROWS = 100

# Badge colour per status: "" (green), "warn", "muted", "danger".
STATUS_TONES = {
    "open": "warn", "allocated": "", "running": "", "ended": "muted", "cancelled": "muted", "failed": "danger",
    "queued": "warn", "assigned": "warn", "starting": "warn", "exited": "muted", "stopped": "muted",
    "preempted": "danger", "lost": "danger", "pending": "warn", "online": "", "suspect": "warn",
    "offline": "danger", "draining": "warn", "retired": "muted",
}  # fmt: skip


def _user(request: HttpRequest) -> User:
    assert isinstance(request.user, User)
    return request.user


def _not_found(error: NotFound) -> Http404:
    return Http404(error.message)


# --- Market ------------------------------------------------------------------------------------


def _empty_reasons(form: MarketFilterForm) -> list[str]:
    """Why a filtered market is empty, in words, from the filters in force."""
    if not form.is_valid():
        return [_("Some filters are not valid; correct them and search again.")]
    if not form.active():
        return [
            _(
                "No listed node has a free device right now. Providers' nodes appear here as soon as they are online and listed."
            )
        ]
    data = form.cleaned_data
    reasons = [_("No online, listed node with a free device matches every filter at once.")]
    if data.get("max_price") is not None:
        reasons.append(_("Your maximum price may be below every provider's price for this term."))
    if data.get("min_reliability") is not None:
        reasons.append(_("New nodes start at a reliability of 0.600; a high minimum leaves them out."))
    if data.get("devices"):
        reasons.append(_("Nodes with fewer free devices than you asked for are left out."))
    if data.get("verified"):
        reasons.append(_("Nodes whose hardware has not passed verification are left out."))
    if data.get("region") or data.get("model"):
        reasons.append(
            _("Model and region must match exactly (the model also matches the names vendor tools print).")
        )
    return reasons


@require_GET
def market(request: HttpRequest) -> HttpResponse:
    """Offers with free capacity now, filtered and sorted; an empty result says why."""
    form = MarketFilterForm(request.GET or None)
    filters = form.filters()
    offers = list(selectors.offers_list(filters=filters)[:MARKET_ROWS])
    context = {
        "form": form,
        "offers": offers,
        "term": filters.term,
        "term_label": TERM_LABELS.get(filters.term, ""),
        "sort": filters.sort,
        "empty_reasons": [] if offers else _empty_reasons(form),
        "query": request.GET.urlencode(),
    }
    return render(request, "marketplace/market.html", context)


@require_GET
def offer_detail(request: HttpRequest, offer_id: int) -> HttpResponse:
    """One offer: node facts, devices, software, reliability history, the pool's spot prices."""
    try:
        offer = selectors.offer_get_public(offer_id=offer_id)
    except NotFound as error:
        raise _not_found(error) from error
    node = offer.node
    devices = list(node.devices.select_related("accelerator").order_by("index"))
    history = selectors.spot_price_history(accelerator_id=offer.accelerator_id, region=offer.region)
    outcomes = selectors.node_job_outcomes(node_id=node.pk, days=30)
    context = {
        "offer": offer,
        "node": node,
        "devices": devices,
        "software": sorted((node.software or {}).items()),
        "spot_points": [(p.round_at.strftime("%m-%d %H:%M"), p.price_micros) for p in history],
        "spot_last": history[-1].price_micros if history else None,
        "outcome_points": [(o.day.strftime("%m-%d"), o.succeeded + o.failed) for o in outcomes],
        "succeeded": sum(o.succeeded for o in outcomes),
        "failed": sum(o.failed for o in outcomes),
        "terms": [(value, label, _offer_price(offer, value)) for value, label in TERM_LABELS.items()],
        "status_label": NODE_STATUS_LABELS.get(node.status, node.status),
        "status_tone": STATUS_TONES.get(node.status, ""),
    }
    return render(request, "marketplace/offer_detail.html", context)


def _offer_price(offer: Offer, term: str) -> int:
    return {
        Term.ON_DEMAND: offer.on_demand_price_micros,
        Term.RESERVED: offer.reserved_price_micros,
        Term.SPOT: offer.spot_floor_micros,
    }[Term(term)]


def _estimate_text(estimate: Any) -> str:
    hourly = format_money(estimate.hourly_micros)
    available = format_money(estimate.available_micros)
    if estimate.total_micros is not None:
        text = _(
            "This reservation will cost about %(total)s (%(hourly)s per hour for %(hours)s hours); "
            "your available balance is %(available)s."
        ) % {"total": format_money(estimate.total_micros), "hourly": hourly, "hours": estimate.hours,
             "available": available}  # fmt: skip
    elif estimate.covered_hours is not None:
        text = _("This order will cost about %(hourly)s per hour; your balance covers %(covered)s hours.") % {
            "hourly": hourly,
            "covered": estimate.covered_hours,
        }
    else:
        text = _("This order will cost about %(hourly)s per hour.") % {"hourly": hourly}
    if not estimate.covered:
        text += " " + _(
            "Top up your wallet first: one hour (the whole window for a reservation) is set aside when you order."
        )
    return text


def _form_estimate(form: OrderForm, offer: Offer, available: int, spot_now: int | None) -> Any:
    data = form.cleaned_data if hasattr(form, "cleaned_data") else {}
    term = data.get("term") or form["term"].value() or Term.ON_DEMAND
    try:
        devices = int(data.get("devices") or form["devices"].value() or 1)
    except (TypeError, ValueError):
        devices = 1
    return order_estimate(
        offer=offer,
        term=term if term in Term.values else Term.ON_DEMAND,
        devices=max(1, min(devices, max(offer.device_count, 1))),
        available_micros=available,
        window_start=data.get("window_start"),
        window_end=data.get("window_end"),
        spot_now=spot_now,
    )


def _order_form_options(user: Any, offer: Offer) -> dict[str, Any]:
    """What the order form offers this buyer: their profile SSH key and their volumes on the node."""
    return {
        "profile_ssh_public_key": buyer_ssh_key_get(user=user),
        "volume_choices": list(
            volumes_for_buyer(buyer=user)
            .filter(node_id=offer.node_id)
            .order_by("name")
            .values_list("pk", "name")
        ),
    }


@login_required
@require_http_methods(["GET", "POST"])
def order_new(request: HttpRequest, offer_id: int) -> HttpResponse:
    """The order form for one offer. ``POST`` with ``validate=1`` only checks it and answers JSON
    (the page's live validation); a plain ``POST`` places the order."""
    user = _user(request)
    try:
        offer = selectors.offer_get_public(offer_id=offer_id)
    except NotFound as error:
        raise _not_found(error) from error
    wallet = wallet_get(user=user)
    history = selectors.spot_price_history(accelerator_id=offer.accelerator_id, region=offer.region, limit=1)
    spot_now = history[-1].price_micros if history else None
    if request.method == "POST":
        form = OrderForm(request.POST, offer=offer, **_order_form_options(user, offer))
        valid = form.is_valid()
        if request.POST.get("validate") == "1":
            estimate = _form_estimate(form, offer, wallet.available_micros, spot_now)
            return JsonResponse(
                {
                    "valid": valid,
                    "errors": {field: [str(m) for m in errors] for field, errors in form.errors.items()},
                    "estimate": _estimate_text(estimate),
                    "covered": estimate.covered,
                }
            )
        if valid and form.job_spec is not None:
            data = form.cleaned_data
            try:
                order, _created = order_place(
                    buyer=user,
                    request=OrderRequest(
                        term=data["term"],
                        devices_per_node=data["devices"],
                        price_limit_micros=form.price_limit_micros(),
                        job=form.job_spec,
                        window_start=data["window_start"],
                        window_end=data["window_end"],
                        offer_id=offer.pk,
                    ),
                    idempotency_key=data["idempotency_key"],
                )
            except SuanliError as error:
                _service_errors(form, error)
            else:
                messages.success(
                    request,
                    _("Order %(id)s is placed. It starts as soon as the matcher places it.")
                    % {"id": order.pk},
                )
                return redirect("marketplace:order_detail", order_id=order.pk)
    else:
        term = str(request.GET.get("term")) if request.GET.get("term") in Term.values else Term.ON_DEMAND
        price = _offer_price(offer, term)
        if term == Term.SPOT and spot_now:
            price = max(price, spot_now)
        form = OrderForm(
            offer=offer,
            **_order_form_options(user, offer),
            initial={
                "term": term,
                "devices": 1,
                "price_limit": format_amount(price) if price else "",
                "runtime": "docker",
                "idempotency_key": uuid.uuid4().hex,
            },
        )
    estimate = _form_estimate(form, offer, wallet.available_micros, spot_now)
    context = {
        "offer": offer,
        "form": form,
        "wallet": wallet,
        "estimate_text": _estimate_text(estimate),
        "estimate": estimate,
        "prices": {value: _offer_price(offer, value) for value in Term.values},
        "default_limits_json": json.dumps(
            {
                value: format_amount(
                    max(_offer_price(offer, value), spot_now or 0)
                    if value == Term.SPOT
                    else _offer_price(offer, value)
                )
                for value in Term.values
            }
        ),
        "spot_now": spot_now,
    }
    return render(request, "marketplace/order_form.html", context)


def _service_errors(form: Any, error: SuanliError) -> None:
    """Show a service's refusal on the form: field errors where a field matches, else on top."""
    aliases = {"devices_per_node": "devices", "window": "window_start", "price_limit": "price_limit"}
    placed = False
    for field, field_errors in error.fields.items():
        name = aliases.get(field, field)
        if name in form.fields and name not in form.errors:
            form.add_error(name, field_errors)
            placed = True
    if not placed or error.code == "insufficient_funds":
        form.add_error(None, error.message)


# --- Orders and jobs ---------------------------------------------------------------------------


def _decorate_order(order: Order) -> Order:
    order.status_label = ORDER_STATUS_LABELS.get(order.status, order.status)  # type: ignore[attr-defined]
    order.status_tone = STATUS_TONES.get(order.status, "")  # type: ignore[attr-defined]
    order.term_label = TERM_LABELS.get(order.term, order.term)  # type: ignore[attr-defined]
    reason = order_reason_text(code=order.status_reason, params=order.status_params)
    order.reason_text = reason  # type: ignore[attr-defined]
    order.runtime_label = RUNTIME_LABELS.get(order.runtime, order.runtime)  # type: ignore[attr-defined]
    for job in order.jobs.all():
        _decorate_job(job)
    return order


def _decorate_job(job: Job) -> Job:
    job.status_label = JOB_STATUS_LABELS.get(job.status, job.status)  # type: ignore[attr-defined]
    job.status_tone = STATUS_TONES.get(job.status, "")  # type: ignore[attr-defined]
    job.stop_reason_label = STOP_REASON_LABELS.get(job.stop_reason, "")  # type: ignore[attr-defined]
    job.preempting = (  # type: ignore[attr-defined]
        job.stop_reason == StopReason.PREEMPTION and job.status not in JOB_ENDED
    )
    job.preemption_label = preemption_label(job.preemption_reason)  # type: ignore[attr-defined]
    job.message_text = job_message_text(job.message)  # type: ignore[attr-defined]
    return job


@login_required
@require_GET
def orders(request: HttpRequest) -> HttpResponse:
    """The user's orders with their jobs, newest first."""
    page = Paginator(selectors.orders_for_buyer(user=_user(request)), ORDERS_PER_PAGE).get_page(
        request.GET.get("page")
    )
    for order in page.object_list:
        _decorate_order(order)
    return render(request, "marketplace/orders.html", {"page": page, "orders": page.object_list})


@dataclass(frozen=True)
class TimelineEvent:
    at: datetime
    label: str
    detail: str = ""
    tone: str = ""


def _timeline(order: Order, jobs: list[Job]) -> list[TimelineEvent]:
    events = [TimelineEvent(order.created_at, _("Order placed"), str(TERM_LABELS.get(order.term, "")))]
    if order.matched_at:
        events.append(TimelineEvent(order.matched_at, _("Matched to capacity")))
    for job in jobs:
        node = job.node.name
        if job.assigned_at:
            events.append(
                TimelineEvent(
                    job.assigned_at, _("Job %(id)s assigned to %(node)s") % {"id": job.pk, "node": node}
                )
            )
        if job.accepted_at:
            events.append(
                TimelineEvent(job.accepted_at, _("Job %(id)s accepted by the node's agent") % {"id": job.pk})
            )
        if job.started_at:
            events.append(
                TimelineEvent(job.started_at, _("Job %(id)s running; billing started") % {"id": job.pk})
            )
        if job.stop_requested_at:
            events.append(
                TimelineEvent(
                    job.stop_requested_at,
                    _("Stop requested for job %(id)s") % {"id": job.pk},
                    str(STOP_REASON_LABELS.get(job.stop_reason, "")),
                    "warn",
                )
            )
        if job.ended_at:
            detail = str(JOB_STATUS_LABELS.get(job.status, job.status))
            if job.exit_code is not None:
                detail += " · " + _("exit code %(code)s") % {"code": job.exit_code}
            events.append(TimelineEvent(job.ended_at, _("Job %(id)s ended") % {"id": job.pk}, detail,
                                        "danger" if job.status in (JobStatus.FAILED, JobStatus.LOST, JobStatus.PREEMPTED) else ""))  # fmt: skip
    if order.ended_at:
        label = ORDER_END_LABELS.get(order.status, ORDER_END_LABELS[OrderStatus.ENDED])
        events.append(TimelineEvent(order.ended_at, str(label)))
    return sorted(events, key=lambda event: event.at)


ORDER_END_LABELS: dict[str, Promise] = {
    OrderStatus.ENDED: gettext_lazy("Order ended"),
    OrderStatus.CANCELLED: gettext_lazy("Order cancelled"),
    OrderStatus.FAILED: gettext_lazy("Order failed"),
}

REASON_TEXT: dict[str, Promise] = {
    ReasonCode.SOFTWARE_SPEC_INVALID: gettext_lazy("The software requirement cannot be read."),
    ReasonCode.WINDOW_NOT_STARTED: gettext_lazy("The reserved window has not started yet."),
    ReasonCode.WINDOW_ENDED: gettext_lazy("The reserved window has already ended."),
    ReasonCode.NO_NODE_OF_MODEL_IN_REGION: gettext_lazy(
        "No online node has the requested model in the requested region."
    ),
    ReasonCode.MEMORY_BELOW_MIN: gettext_lazy("%(nodes)s node(s) have less device memory than required."),
    ReasonCode.SOFTWARE_UNSATISFIED: gettext_lazy("%(nodes)s node(s) lack the required software."),
    ReasonCode.RELIABILITY_BELOW_MIN: gettext_lazy("%(nodes)s node(s) are below the minimum reliability."),
    ReasonCode.WINDOW_SHORTER_THAN_MIN_RENTAL: gettext_lazy(
        "%(nodes)s node(s) do not rent for a window this short (their minimum rental is longer)."
    ),
    ReasonCode.WINDOW_LONGER_THAN_MAX_RENTAL: gettext_lazy(
        "%(nodes)s node(s) do not rent for a window this long (their maximum rental is shorter)."
    ),
    ReasonCode.NODE_TOO_SMALL: gettext_lazy("%(nodes)s node(s) have fewer devices than requested."),
    ReasonCode.PRICE_LIMIT_BELOW_FLOOR: gettext_lazy(
        "Your price limit is below the lowest provider price (%(price)s)."
    ),
    ReasonCode.NO_CLUSTER_FITS_GANG: gettext_lazy(
        "No cluster has enough free nodes for all of them at once."
    ),
    ReasonCode.CAPACITY_BUSY: gettext_lazy(
        "Every matching device is busy now, or went to orders ahead of yours this round (a higher"
        " price limit, or the same limit placed earlier; waiting raises your place in line)."
    ),
    ReasonCode.OUTBID: gettext_lazy("Outbid: the pool's last clearing price was %(price)s."),
}


def _reason_text(reason: Reason) -> str:
    price = (
        reason.lowest_floor_micros if reason.lowest_floor_micros is not None else reason.clearing_price_micros
    )
    text = str(REASON_TEXT.get(reason.code, reason.code)) % {
        "nodes": reason.nodes,
        "price": format_money(price) if price is not None else "",
    }
    if reason.frees_at is not None:
        text += " " + _("The first frees at %(time)s UTC.") % {
            "time": reason.frees_at.strftime("%Y-%m-%d %H:%M")
        }
    return text


@login_required
@require_GET
def order_detail(request: HttpRequest, order_id: int) -> HttpResponse:
    """One order: its status timeline, why it is not matched yet, its jobs with their logs."""
    try:
        order = selectors.order_get_for_buyer_page(user=_user(request), order_id=order_id)
    except NotFound as error:
        raise _not_found(error) from error
    _decorate_order(order)
    jobs = list(order.jobs.all())
    reasons = (
        [_reason_text(r) for r in order_explain(order=order)] if order.status == OrderStatus.OPEN else []
    )
    context = {
        "order": order,
        "jobs": jobs,
        "timeline": _timeline(order, jobs),
        "reasons": reasons,
        "cancellable": order.status in (OrderStatus.OPEN, OrderStatus.ALLOCATED, OrderStatus.RUNNING),
        "job_spec_command": shlex.join(order.command),
    }
    return render(request, "marketplace/order_detail.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def order_cancel_view(request: HttpRequest, order_id: int) -> HttpResponse:
    """Confirm (GET), then cancel (POST) one of the user's orders."""
    try:
        order = selectors.order_get_for_buyer_page(user=_user(request), order_id=order_id)
    except NotFound as error:
        raise _not_found(error) from error
    if request.method == "POST":
        try:
            order = order_cancel(order=order)
        except SuanliError as error:  # e.g. the matcher or an agent moved it at the same moment
            messages.error(request, error.message)
            return redirect("marketplace:order_detail", order_id=order.pk)
        fee = order_cancel_fee_micros(order=order) if order.status == OrderStatus.CANCELLED else 0
        if fee:
            messages.success(
                request,
                _(
                    "Order %(id)s is cancelled; the booked amount is back in your wallet, less the "
                    "cancellation fee of %(fee)s."
                )
                % {"id": order.pk, "fee": format_money(fee)},
            )
        elif order.status == OrderStatus.CANCELLED:
            messages.success(
                request,
                _("Order %(id)s is cancelled; the money set aside is back in your wallet.")
                % {"id": order.pk},
            )
        else:
            messages.info(
                request, _("Order %(id)s is stopping: its jobs get a stop signal now.") % {"id": order.pk}
            )
        return redirect("marketplace:order_detail", order_id=order.pk)
    _decorate_order(order)
    # A booked reservation whose window has not started is cancelled, not stopped (order_cancel).
    reservation_before_window = (
        order.term == Term.RESERVED
        and order.status == OrderStatus.ALLOCATED
        and order.window_start is not None
        and timezone.now() < order.window_start
    )
    context = {
        "order": order,
        "reservation_before_window": reservation_before_window,
        "cancel_fee": format_money(order_cancel_fee_micros(order=order)) if reservation_before_window else "",
    }
    return render(request, "marketplace/order_cancel.html", context)


@login_required
@require_GET
def job_detail(request: HttpRequest, job_id: int) -> HttpResponse:
    """One job: status, the tail of its log (updated live by portal.js), stop button."""
    try:
        job = selectors.job_get_for_buyer_page(user=_user(request), job_id=job_id)
    except NotFound as error:
        raise _not_found(error) from error
    _decorate_job(job)
    piece = selectors.job_log_read(job=job, offset=selectors.log_tail_offset(job=job))
    context = {
        "job": job,
        "log": piece,
        "log_truncated": piece.offset > job.log_start,
        "log_url": reverse("job-logs", kwargs={"job_id": job.pk}),
        "status_labels": {key: str(value) for key, value in JOB_STATUS_LABELS.items()},
        "ended": job.status in JOB_ENDED,
    }
    return render(request, "marketplace/job_detail.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def job_stop_view(request: HttpRequest, job_id: int) -> HttpResponse:
    """Confirm (GET), then stop (POST) one of the user's jobs: SIGTERM now, SIGKILL after 30 s."""
    try:
        job = selectors.job_get_for_buyer_page(user=_user(request), job_id=job_id)
    except NotFound as error:
        raise _not_found(error) from error
    if request.method == "POST":
        order_id = job.order_id
        try:
            # Before a reserved window this cancels the reservation (order_job_stop).
            job = order_job_stop(job=job)
        except SuanliError as error:
            messages.error(request, error.message)
            return redirect("marketplace:job_detail", job_id=job.pk)
        cancelled = (
            order_id is not None
            and Order.objects.filter(pk=order_id, status=OrderStatus.CANCELLED, term=Term.RESERVED).exists()
        )
        if cancelled:
            messages.success(
                request,
                _(
                    "Job %(id)s is stopped and its reservation cancelled; the booked amount is back in "
                    "your wallet, less the cancellation fee."
                )
                % {"id": job.pk},
            )
        else:
            messages.success(
                request,
                _("Job %(id)s is stopping; billing ends when its agent reports it stopped.") % {"id": job.pk},
            )
        return redirect("marketplace:job_detail", job_id=job.pk)
    if job.status in JOB_ENDED:
        messages.info(request, _("Job %(id)s has already ended.") % {"id": job.pk})
        return redirect("marketplace:job_detail", job_id=job.pk)
    _decorate_job(job)
    return render(request, "marketplace/job_stop.html", {"job": job})


# --- Sellers: nodes and prices -----------------------------------------------------------------


def _decorate_node(node: Any) -> Any:
    node.status_label = NODE_STATUS_LABELS.get(node.status, node.status)
    node.status_tone = STATUS_TONES.get(node.status, "")
    devices = list(node.devices.all())
    models = sorted({str(d.accelerator.model) for d in devices})
    node.device_summary = f"{len(devices)} × {', '.join(models)}" if devices else ""
    return node


@login_required
@require_GET
def nodes(request: HttpRequest) -> HttpResponse:
    """The nodes of every provider the user belongs to: status, heartbeat, devices, reliability."""
    user = _user(request)
    rows = [_decorate_node(node) for node in selectors.nodes_with_offers_for_member(user=user)]
    from providers.selectors import providers_of_member

    providers = list(providers_of_member(user=user))
    return render(request, "marketplace/nodes.html", {"nodes": rows, "providers": providers})


@login_required
@require_GET
def node_detail(request: HttpRequest, node_id: int) -> HttpResponse:
    """One node: facts, devices with their latest readings, utilisation and power charts."""
    try:
        node = selectors.node_get_for_member_page(user=_user(request), node_id=node_id)
    except NotFound as error:
        raise _not_found(error) from error
    _decorate_node(node)
    latest = heartbeat_latest(node_id=node.pk) or {}
    readings = {int(d.get("index", -1)): d for d in latest.get("devices", [])}
    devices = []
    for device in node.devices.all():
        reading = readings.get(device.index, {})
        devices.append({"device": device, "utilization": reading.get("utilization_pct"), "power": reading.get("power_w"),
                        "memory_used": reading.get("memory_used_mib"), "temperature": reading.get("temperature_c")})  # fmt: skip
    usage = selectors.node_usage(node=node)
    outcomes = selectors.node_job_outcomes(node_id=node.pk, days=30)
    context = {
        "node": node,
        "devices": devices,
        "software": sorted((node.software or {}).items()),
        "verification": verification_rows(node.verification or {}),
        "verification_passed": bool((node.verification or {}).get("passed")),
        "verification_checked_at": parse_datetime(str((node.verification or {}).get("checked_at") or "")),
        "util_points": [
            (p.bucket.strftime("%H:%M"), p.utilization_pct) for p in usage if p.utilization_pct is not None
        ],
        "power_points": [(p.bucket.strftime("%H:%M"), p.power_w) for p in usage if p.power_w is not None],
        "outcome_points": [(o.day.strftime("%m-%d"), o.succeeded + o.failed) for o in outcomes],
        "succeeded": sum(o.succeeded for o in outcomes),
        "failed": sum(o.failed for o in outcomes),
        "last_seen": datetime.fromtimestamp(latest["last_seen"], tz=UTC) if latest.get("last_seen") else None,
    }
    return render(request, "marketplace/node_detail.html", context)


def _price_form(node: Any, data: Any = None) -> OfferPriceForm:
    offer = getattr(node, "offer", None)
    initial = {}
    if offer is not None:
        initial = {
            "on_demand_price": format_amount(offer.on_demand_price_micros),
            "reserved_price": format_amount(offer.reserved_price_micros),
            "spot_floor": format_amount(offer.spot_floor_micros),
            "listed": offer.listed,
            "volume_price": format_amount(offer.volume_price_micros),
        }
    return OfferPriceForm(data, initial=initial, prefix=f"node-{node.pk}")


def _pricing_page(request: HttpRequest, bound: dict[int, OfferPriceForm] | None = None) -> HttpResponse:
    user = _user(request)
    rows = [_decorate_node(node) for node in selectors.nodes_with_offers_for_member(user=user)]
    pools = [(n.offer.accelerator_id, n.offer.region) for n in rows if getattr(n, "offer", None) is not None]
    recent = selectors.spot_prices_recent(pools=pools)
    entries = []
    for node in rows:
        offer = getattr(node, "offer", None)
        form = (bound or {}).get(node.pk) or _price_form(node)
        pool = (offer.accelerator_id, offer.region) if offer is not None else None
        entries.append(
            {"node": node, "offer": offer, "form": form, "recent": recent.get(pool, []) if pool else []}
        )
    return render(request, "marketplace/pricing.html", {"entries": entries})


@login_required
@require_GET
def pricing(request: HttpRequest) -> HttpResponse:
    """Prices per node, the pool's recent clearing prices beside each spot floor."""
    return _pricing_page(request)


@login_required
@require_POST
def pricing_update(request: HttpRequest, node_id: int) -> HttpResponse:
    """Set one node's prices and listing through ``offer_update``."""
    try:
        node = selectors.node_get_for_member_page(user=_user(request), node_id=node_id)
    except NotFound as error:
        raise _not_found(error) from error
    form = _price_form(node, request.POST)
    if form.is_valid():
        try:
            offer_update(
                node=node,
                change=OfferChange(
                    on_demand_price_micros=form.micros("on_demand_price"),
                    reserved_price_micros=form.micros("reserved_price"),
                    spot_floor_micros=form.micros("spot_floor"),
                    listed=form.cleaned_data["listed"],
                    volume_price_micros=(
                        None if form.cleaned_data.get("volume_price") is None else form.micros("volume_price")
                    ),
                ),
            )
        except ValidationFailed as error:
            _service_errors(form, error)
        else:
            if form.cleaned_data["listed"]:
                messages.success(
                    request, _("Prices for %(node)s are saved and it is listed.") % {"node": node.name}
                )
            else:
                messages.success(
                    request, _("Prices for %(node)s are saved; it is not listed.") % {"node": node.name}
                )
            return redirect(f"{reverse('marketplace:pricing')}#node-{node.pk}")
    response = _pricing_page(request, bound={node.pk: form})
    response.status_code = 400
    return response
