"""Non-API HTTP endpoints: the Stripe webhook and statement downloads."""

from __future__ import annotations

import csv
import io

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from billing import selectors, services
from billing.models import Statement
from core.api import error_body
from core.errors import SuanliError
from core.money import format_amount


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


@login_required
@require_GET
def statement_html(request: HttpRequest, pk: int) -> HttpResponse:
    statement = _statement(request, pk)
    return render(
        request,
        "billing/statement.html",
        {"statement": statement, "total": format_amount(statement.total_micros), "lines": statement.lines},
    )
