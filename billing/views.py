"""Non-API HTTP endpoints: the Stripe webhook, statement downloads, and the portal's wallet and
earnings pages."""

from __future__ import annotations

import csv
import io
import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.functional import Promise
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from billing import selectors, services
from billing.forms import PayoutOnboardForm, TopUpForm
from billing.models import Statement, StatementKind, TopUpStatus
from core.api import error_body
from core.errors import SuanliError
from core.money import format_amount
from core.templatetags.money import format_money


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    """Stripe calls this; authenticity comes from the ``Stripe-Signature`` header alone."""
    try:
        event = services.webhook_receive(
            payload=request.body, signature=request.headers.get("Stripe-Signature")
        )
    except SuanliError as exc:
        return JsonResponse(error_body(exc.code, exc.message, exc.fields), status=exc.status_code)
    return JsonResponse(
        {"received": True, "event_id": event.event_id, "processed": event.processed_at is not None}
    )


def _statement(request: HttpRequest, pk: int) -> Statement:
    statement = selectors.statements_visible_to(user=request.user).filter(pk=pk).first()
    if statement is None:
        raise Http404("No such statement.")
    return statement


CSV_COLUMNS = ["type", "lease_id", "job_id", "date", "device_hours", "rate", "gross", "fee", "amount"]


@login_required
@require_GET
def statement_csv(request: HttpRequest, pk: int) -> HttpResponse:
    statement = _statement(request, pk)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for line in statement.lines:
        writer.writerow(line)
    writer.writerow({"type": "total", "amount": format_amount(statement.total_micros)})
    response = HttpResponse(out.getvalue(), content_type="text/csv; charset=utf-8")
    name = statement.number or f"draft-{statement.pk}"
    response["Content-Disposition"] = f'attachment; filename="{name}.csv"'
    return response


STATEMENT_KIND_LABELS: dict[str, Promise] = {
    StatementKind.BUYER_INVOICE: gettext_lazy("Invoice"),
    StatementKind.PROVIDER_EARNINGS: gettext_lazy("Earnings statement"),
}
# The ``type`` of a statement line (``billing.services.statements``); the CSV keeps the codes.
STATEMENT_LINE_LABELS: dict[str, Promise] = {
    "lease": gettext_lazy("Device time"),
    "top_up": gettext_lazy("Top-up"),
    "refund": gettext_lazy("Refund"),
    "cancellation_fee": gettext_lazy("Cancellation fee"),
    "payout": gettext_lazy("Payout"),
    "payout_reversal": gettext_lazy("Payout reversed"),
}


@login_required
@require_GET
def statement_html(request: HttpRequest, pk: int) -> HttpResponse:
    statement = _statement(request, pk)
    lines = [{**line, "type_label": STATEMENT_LINE_LABELS.get(line.get("type", ""), line.get("type", ""))}
             for line in statement.lines]  # fmt: skip
    context = {
        "statement": statement,
        "kind_label": STATEMENT_KIND_LABELS.get(statement.kind, statement.kind),
        "total": format_amount(statement.total_micros),
        "lines": lines,
    }
    return render(request, "billing/statement.html", context)


# --- Portal pages: the buyer's wallet and the provider's earnings --------------------------------

# ``Payout.failure_reason`` is stored as written by ``billing.services.payouts`` and the Stripe
# gateway (in English, by the payout task); the portal shows it in the reader's language. Stripe's
# own explanation, after the prefix, is Stripe's words.
PAYOUT_FAILURES: dict[str, Promise] = {"transfer reversed": gettext_lazy("transfer reversed")}
PAYOUT_FAILURE_PREFIXES: dict[str, Promise] = {
    "Stripe rejected the request: ": gettext_lazy("Stripe rejected the request: %(detail)s"),
}


def payout_failure_text(reason: str) -> str:
    """Why a payout failed, in the active language as far as its words are known."""
    if reason in PAYOUT_FAILURES:
        return str(PAYOUT_FAILURES[reason])
    for prefix, text in PAYOUT_FAILURE_PREFIXES.items():
        if reason.startswith(prefix):
            return str(text) % {"detail": reason.removeprefix(prefix)}
    return reason


def _user(request: HttpRequest) -> User:
    assert isinstance(request.user, User)
    return request.user


@login_required
@require_GET
def wallet(request: HttpRequest) -> HttpResponse:
    """Balance, held and available money; top-up; usage per day and per job; invoices."""
    user = _user(request)
    view = selectors.wallet_get(user=user)
    top_up_id = request.GET.get("top_up", "")
    if top_up_id.isdigit():
        top_up = selectors.topup_for_buyer(user=user, top_up_id=int(top_up_id))
        if top_up is not None and top_up.status == TopUpStatus.COMPLETED:
            messages.success(
                request,
                _("Your top-up of %(amount)s is in your wallet.")
                % {"amount": format_money(top_up.credited_micros, top_up.currency)},
            )
        elif top_up is not None:
            messages.info(
                request,
                _(
                    "Thank you. Your wallet is credited as soon as Stripe confirms the payment; refresh in a moment."
                ),
            )
    daily = selectors.usage_daily_for_buyer(user=user, days=14)
    per_job = selectors.usage_per_job_for_buyer(user=user, limit=20)
    invoices = list(selectors.invoices_for(user=user).order_by("-period_start", "-id")[:24])
    context = {
        "wallet": view,
        "form": TopUpForm(initial={"amount": "50.00", "idempotency_key": uuid.uuid4().hex}),
        "hours_points": [(d.day.strftime("%m-%d"), d.device_hours) for d in daily],
        "cost_points": [(d.day.strftime("%m-%d"), d.cost_micros) for d in daily],
        "has_usage": any(d.device_hours or d.cost_micros for d in daily),
        "per_job": per_job,
        "invoices": invoices,
    }
    return render(request, "billing/wallet.html", context)


@login_required
@require_POST
def topup(request: HttpRequest) -> HttpResponse:
    """Start a top-up: create the Stripe Checkout Session and send the browser there."""
    user = _user(request)
    form = TopUpForm(request.POST)
    if form.is_valid():
        try:
            top_up = services.topup_create(
                buyer=user,
                amount_micros=form.amount_micros(),
                client_key=form.cleaned_data["idempotency_key"],
            )
        except SuanliError as error:
            messages.error(request, error.message)
        else:
            return redirect(top_up.checkout_url)
    else:
        for errors in form.errors.values():
            for error_text in errors:
                messages.error(request, str(error_text))
    return redirect("billing:wallet")


@login_required
@require_GET
def earnings(request: HttpRequest) -> HttpResponse:
    """Per provider the user belongs to: payable, in transit, paid; payouts; monthly statements."""
    user = _user(request)
    names = selectors.provider_names_for(user=user)
    connected = selectors.payout_accounts_for(provider_ids=list(names))
    rows = []
    for provider_id, name in names.items():
        row = selectors.provider_earnings(provider_id=provider_id)
        rows.append({**row, "name": name, "connected": provider_id in connected})
    payouts = list(selectors.payouts_for(user=user).order_by("-created_at", "-id")[:50])
    for payout in payouts:
        payout.failure_text = payout_failure_text(payout.failure_reason)  # type: ignore[attr-defined]
    statements = list(selectors.provider_statements_for(user=user)[:48])
    context = {
        "rows": rows,
        "names": names,
        "payouts": payouts,
        "statements": statements,
        "refreshed": request.GET.get("refresh") == "1",
    }
    return render(request, "billing/earnings.html", context)


@login_required
@require_POST
def payout_onboard(request: HttpRequest) -> HttpResponse:
    """Start (or resume) Stripe Connect onboarding for one of the user's providers."""
    user = _user(request)
    form = PayoutOnboardForm(request.POST)
    if not form.is_valid() or form.cleaned_data["provider"] not in selectors.provider_ids_for(user):
        raise Http404("No such provider.")
    earnings_url = request.build_absolute_uri(reverse("billing:earnings"))
    try:
        url = services.payout_account_onboard(
            provider_id=form.cleaned_data["provider"],
            refresh_url=f"{earnings_url}?refresh=1",
            return_url=earnings_url,
        )
    except SuanliError as error:
        messages.error(request, error.message)
        return redirect("billing:earnings")
    return redirect(url)
