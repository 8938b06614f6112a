"""Portal page for a buyer's spend controls and webhooks (issue 13, item 3).

One page, ``/account/spend/``: the monthly spend cap and low-balance threshold with this month's
figures, and the webhook endpoints with their recent deliveries. A new endpoint's signing secret
is rendered in the answer to the POST that created it and never again (no redirect, so it is not
kept in the session or a cookie).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods, require_POST

from billing.services.spend import MAX_LIMIT_MICROS, spend_controls_get, spend_controls_set, spend_figures
from core.errors import NotFound, ValidationFailed
from core.forms import NoLabelSuffix
from core.money import format_amount, parse_amount
from marketplace.models import WebhookDelivery, WebhookEndpoint, WebhookEventType
from marketplace.services.webhooks import MAX_URL_LENGTH, webhook_endpoint_create, webhook_endpoint_delete

MAX_LIMIT = Decimal(MAX_LIMIT_MICROS) / 1_000_000
RECENT_DELIVERIES = 10


class SpendControlsForm(NoLabelSuffix, forms.Form):
    monthly_cap = forms.DecimalField(
        label=gettext_lazy("Monthly spend cap"),
        required=False,
        min_value=Decimal(0),
        max_value=MAX_LIMIT,
        decimal_places=6,
        help_text=gettext_lazy(
            "Orders that would take this month's spending (charges posted since the 1st, UTC, plus money "
            "held or prepaid for open orders) past it are refused. Empty: no cap."
        ),
    )
    low_balance_threshold = forms.DecimalField(
        label=gettext_lazy("E-mail me when my available balance falls below"),
        required=False,
        min_value=Decimal(0),
        max_value=MAX_LIMIT,
        decimal_places=6,
        help_text=gettext_lazy("One e-mail each time it falls below. Empty: no e-mail."),
    )


class WebhookForm(NoLabelSuffix, forms.Form):
    url = forms.CharField(label=gettext_lazy("URL"), max_length=MAX_URL_LENGTH)
    events = forms.MultipleChoiceField(
        label=gettext_lazy("Events"),
        choices=WebhookEventType.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=gettext_lazy("None ticked: all of them."),
    )


def _user(request: HttpRequest) -> User:
    assert isinstance(request.user, User)
    return request.user


def _amount(value: Decimal | None) -> int | None:
    return None if value is None else parse_amount(value)


def _page(
    request: HttpRequest,
    *,
    limits: SpendControlsForm | None = None,
    webhook: WebhookForm | None = None,
    new_secret: str = "",
    status: int = 200,
) -> HttpResponse:
    user = _user(request)
    control = spend_controls_get(user_id=user.pk)
    figures = spend_figures(user_id=user.pk)
    if limits is None:
        initial = {
            "monthly_cap": None
            if control.monthly_cap_micros is None
            else format_amount(control.monthly_cap_micros),
            "low_balance_threshold": None
            if control.low_balance_threshold_micros is None
            else format_amount(control.low_balance_threshold_micros),
        }
        limits = SpendControlsForm(initial=initial, prefix="limits")
    endpoints = list(WebhookEndpoint.objects.filter(buyer=user, active=True).order_by("-id"))
    for endpoint in endpoints:
        endpoint.recent = list(  # type: ignore[attr-defined]
            WebhookDelivery.objects.filter(endpoint=endpoint).order_by("-id")[:RECENT_DELIVERIES]
        )
    context: dict[str, Any] = {
        "limits_form": limits,
        "webhook_form": webhook or WebhookForm(prefix="hook"),
        "figures": {
            "currency": figures.currency,
            "cap": None if figures.cap_micros is None else format_amount(figures.cap_micros),
            "spent": format_amount(figures.spent_micros),
            "charged": format_amount(figures.charged_micros),
            "committed": format_amount(figures.committed_micros),
        },
        "endpoints": endpoints,
        "new_secret": new_secret,
    }
    return render(request, "marketplace/spend_settings.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def spend_settings(request: HttpRequest) -> HttpResponse:
    """The buyer's spend cap and low-balance threshold (POST saves them)."""
    if request.method != "POST":
        return _page(request)
    form = SpendControlsForm(request.POST, prefix="limits")
    if not form.is_valid():
        return _page(request, limits=form, status=400)
    try:
        spend_controls_set(
            user_id=_user(request).pk,
            monthly_cap_micros=_amount(form.cleaned_data["monthly_cap"]),
            low_balance_threshold_micros=_amount(form.cleaned_data["low_balance_threshold"]),
        )
    except ValidationFailed as error:
        for name, problems in error.fields.items():
            form.add_error(name if name in form.fields else None, problems)
        return _page(request, limits=form, status=400)
    messages.success(request, _("Spend controls saved."))
    return redirect("marketplace:spend_settings")


@login_required
@require_POST
def webhook_add(request: HttpRequest) -> HttpResponse:
    form = WebhookForm(request.POST, prefix="hook")
    if not form.is_valid():
        return _page(request, webhook=form, status=400)
    try:
        endpoint = webhook_endpoint_create(
            buyer=_user(request), url=form.cleaned_data["url"], events=form.cleaned_data["events"]
        )
    except ValidationFailed as error:
        for name, problems in error.fields.items():
            form.add_error(name if name in form.fields else None, problems)
        return _page(request, webhook=form, status=400)
    return _page(request, new_secret=endpoint.secret)


@login_required
@require_POST
def webhook_delete(request: HttpRequest, webhook_id: int) -> HttpResponse:
    try:
        webhook_endpoint_delete(buyer=_user(request), endpoint_id=webhook_id)
    except NotFound as error:
        raise Http404(error.message) from error
    messages.success(request, _("Webhook removed."))
    return redirect("marketplace:spend_settings")
