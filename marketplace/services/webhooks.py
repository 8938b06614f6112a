"""Outgoing webhooks: buyers hear about their jobs (issue 13, item 3).

Events: ``job.started`` (the job reported running), ``job.ended`` (any end: exited, failed,
stopped, preempted, lost; ``data.status`` says which), ``job.preempted`` and
``job.stopped_for_funds`` (the stop notice was given: ``data.deadline`` is the SIGKILL time).

Body: JSON ``{"id": "evt_...", "type": ..., "created": <unix seconds>, "data": {...}}``.
Header ``Suanli-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the
endpoint's secret>`` (Stripe's scheme: the receiver recomputes it and rejects old timestamps).

Delivery: rows are written in the transaction of the change that caused them (one per endpoint
and event, unique, so a re-run adds nothing) and a Celery task posts each after commit, outside
any transaction. A 2xx answer delivers it; anything else is retried with exponential backoff
(``SUANLI_WEBHOOK_RETRY_BASE_S`` x 2^n) up to ``SUANLI_WEBHOOK_MAX_ATTEMPTS`` attempts, then the
delivery is ``failed``. Redirects are not followed. Every attempt is on the delivery log.

SSRF guard: URLs are http(s) only; unless ``SUANLI_WEBHOOK_ALLOW_PRIVATE`` (on outside
production), a URL whose host resolves to a loopback, private, link-local, multicast or reserved
address is refused at registration and again at each delivery (DNS may change in between).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from core.errors import NotFound, ValidationFailed
from marketplace.models import (
    Job,
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookEndpoint,
    WebhookEventType,
)

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Suanli-Signature"
MAX_ENDPOINTS_PER_BUYER = 10
MAX_URL_LENGTH = 500


# --- Endpoints ---------------------------------------------------------------------------------


def _address_is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return ip.is_global and not ip.is_multicast


def webhook_url_check(url: str) -> str:
    """Validate a webhook URL (scheme, host, length, and the SSRF guard); returns it stripped."""
    url = (url or "").strip()
    field = "url"
    if not url or len(url) > MAX_URL_LENGTH or any(ch in url for ch in "\x00\r\n \t"):
        raise ValidationFailed(_("Enter a valid URL."), fields={field: _("Enter a valid URL.")})
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        message = _("Only http:// and https:// URLs can receive webhooks.")
        raise ValidationFailed(message, fields={field: message})
    try:
        port = parts.port
    except ValueError:
        raise ValidationFailed(_("Enter a valid URL."), fields={field: _("Invalid port.")}) from None
    if settings.SUANLI_WEBHOOK_ALLOW_PRIVATE:
        return url
    try:
        infos = socket.getaddrinfo(parts.hostname, port or 443, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        message = _("This host name does not resolve.")
        raise ValidationFailed(message, fields={field: message}) from None
    if not infos or not all(_address_is_public(str(info[4][0])) for info in infos):
        message = _("Webhook URLs must reach a public address (not loopback or a private network).")
        raise ValidationFailed(message, fields={field: message})
    return url


def webhook_endpoint_create(*, buyer: User, url: str, events: list[str] | None = None) -> WebhookEndpoint:
    """Register ``url`` for the buyer's job events; the returned endpoint carries its new secret.

    Contract: the URL passes ``webhook_url_check``; ``events`` are known types (empty: all); at
    most ``MAX_ENDPOINTS_PER_BUYER`` active endpoints (``ValidationFailed``). The secret
    (``whsec_`` + 32 random bytes) is shown to the buyer once, in this call's answer.
    """
    url = webhook_url_check(url)
    events = list(dict.fromkeys(events or []))
    unknown = [e for e in events if e not in WebhookEventType.values]
    if unknown:
        message = _("Unknown event %(event)s; choose from %(choices)s.") % {
            "event": repr(str(unknown[0])[:40]),
            "choices": ", ".join(WebhookEventType.values),
        }
        raise ValidationFailed(message, fields={"events": message})
    with transaction.atomic():
        User.objects.select_for_update().filter(pk=buyer.pk).first()  # one count check at a time
        if WebhookEndpoint.objects.filter(buyer=buyer, active=True).count() >= MAX_ENDPOINTS_PER_BUYER:
            message = _("At most %(count)s webhook endpoints.") % {"count": MAX_ENDPOINTS_PER_BUYER}
            raise ValidationFailed(message, fields={"url": message})
        endpoint = WebhookEndpoint.objects.create(
            buyer=buyer, url=url, events=events, secret=f"whsec_{secrets.token_urlsafe(32)}"
        )
    log.info("webhook.endpoint_created endpoint_id=%s buyer_id=%s", endpoint.pk, buyer.pk)
    return endpoint


def webhook_endpoint_get(*, buyer: User, endpoint_id: int) -> WebhookEndpoint:
    endpoint = WebhookEndpoint.objects.filter(pk=endpoint_id, buyer=buyer, active=True).first()
    if endpoint is None:
        raise NotFound(_("No such webhook endpoint."))
    return endpoint


def webhook_endpoint_delete(*, buyer: User, endpoint_id: int) -> None:
    """Deactivate an endpoint: no new deliveries; pending ones are dropped as failed."""
    endpoint = webhook_endpoint_get(buyer=buyer, endpoint_id=endpoint_id)
    with transaction.atomic():
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(active=False)
        endpoint.deliveries.filter(status=WebhookDeliveryStatus.PENDING).update(
            status=WebhookDeliveryStatus.FAILED, last_error="endpoint deleted", next_attempt_at=None
        )


# --- Events ------------------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def job_event_data(job: Job) -> dict[str, Any]:
    return {
        "job": {
            "id": job.pk,
            "order_id": job.order_id,
            "node_id": job.node_id,
            "status": job.status,
            "exit_code": job.exit_code,
            "stop_reason": job.stop_reason or None,
            "preemption_reason": job.preemption_reason or None,
            "started_at": _iso(job.started_at),
            "ended_at": _iso(job.ended_at),
            "stop_deadline": _iso(job.stop_deadline),
        }
    }


def webhook_event_emit(
    *, buyer_id: int | None, event_type: str, data: dict[str, Any], dedupe_key: str
) -> int:
    """Queue ``event_type`` for every active endpoint of the buyer subscribed to it.

    Contract: writes the delivery rows in the caller's transaction (they vanish if it rolls
    back) and dispatches their delivery after it commits; the same ``dedupe_key`` for an
    endpoint adds nothing. Returns how many deliveries were queued.
    """
    if buyer_id is None:
        return 0
    endpoints = [
        e
        for e in WebhookEndpoint.objects.filter(buyer_id=buyer_id, active=True).order_by("pk")
        if not e.events or event_type in e.events
    ]
    if not endpoints:
        return 0
    created = time.time()
    event_id = f"evt_{uuid.uuid4().hex}"
    body = json.dumps(
        {"id": event_id, "type": event_type, "created": int(created), "data": data},
        separators=(",", ":"),
        sort_keys=True,
    )
    queued: list[int] = []
    for endpoint in endpoints:
        try:
            with transaction.atomic():
                delivery = WebhookDelivery.objects.create(
                    endpoint=endpoint,
                    event_id=event_id,
                    event_type=event_type,
                    dedupe_key=dedupe_key[:120],
                    body=body,
                    next_attempt_at=timezone.now(),
                )
        except IntegrityError:
            continue  # already emitted for this endpoint
        queued.append(delivery.pk)
    if queued:
        transaction.on_commit(lambda: _dispatch(queued))
    return len(queued)


def _dispatch(delivery_ids: list[int], countdown: float = 0) -> None:
    from marketplace.tasks import webhook_deliver

    for delivery_id in delivery_ids:
        try:
            webhook_deliver.apply_async(args=[delivery_id], countdown=countdown)
        except Exception:  # the broker is down: webhooks_retry_due picks it up
            log.warning("webhook.dispatch_failed delivery_id=%s", delivery_id, exc_info=True)


def job_webhook_on_status(*, job: Job, old: str) -> None:
    """Emit the webhook of a job status change (called in the transaction of the change)."""
    from marketplace.models import JOB_ENDED, JobStatus

    if job.status == JobStatus.RUNNING and old != JobStatus.RUNNING:
        event = WebhookEventType.JOB_STARTED
    elif job.status in JOB_ENDED and old not in JOB_ENDED:
        event = WebhookEventType.JOB_ENDED
    else:
        return
    webhook_event_emit(
        buyer_id=job.buyer_id, event_type=event, data=job_event_data(job), dedupe_key=f"{event}:{job.pk}"
    )


def job_webhook_on_stop_notice(*, job: Job) -> None:
    """Emit ``job.preempted`` / ``job.stopped_for_funds`` when such a stop notice is given."""
    from marketplace.models import StopReason

    event = {
        StopReason.PREEMPTION: WebhookEventType.JOB_PREEMPTED,
        StopReason.FUNDS: WebhookEventType.JOB_STOPPED_FOR_FUNDS,
    }.get(job.stop_reason)  # type: ignore[call-overload]
    if event is None:
        return
    webhook_event_emit(
        buyer_id=job.buyer_id, event_type=event, data=job_event_data(job), dedupe_key=f"{event}:{job.pk}"
    )


# --- Delivery ----------------------------------------------------------------------------------


def webhook_signature(*, secret: str, timestamp: int, body: str) -> str:
    """The ``Suanli-Signature`` header value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx is an answer (a failed attempt), never followed: it could point inward


_opener = urllib.request.build_opener(_NoRedirect)


def _post(url: str, body: str, signature: str) -> tuple[int | None, str]:
    # The scheme is http(s), checked by webhook_url_check just before.
    request = urllib.request.Request(  # noqa: S310
        url,
        data=body.encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "Suanli-Webhooks/1",
            SIGNATURE_HEADER: signature,
        },
    )
    try:
        with _opener.open(request, timeout=settings.SUANLI_WEBHOOK_TIMEOUT_S) as response:
            return int(response.status), ""
    except urllib.error.HTTPError as exc:
        return int(exc.code), f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"[:300]


def retry_delay(attempts: int) -> timedelta:
    """The wait before attempt ``attempts + 1``: base x 2^(attempts-1) (10 s, 20 s, 40 s...)."""
    return timedelta(seconds=settings.SUANLI_WEBHOOK_RETRY_BASE_S * 2 ** max(attempts - 1, 0))


def webhook_delivery_attempt(*, delivery_id: int, now: datetime | None = None) -> float | None:
    """Make one attempt at a pending delivery; returns the seconds until the next one, or None.

    Contract: the attempt is claimed first with a conditional update of ``attempts`` (two
    concurrent runs cannot both post it), then the POST happens outside any transaction, then
    the outcome is recorded: 2xx delivered; else pending with ``next_attempt_at`` after the
    backoff, or ``failed`` once ``SUANLI_WEBHOOK_MAX_ATTEMPTS`` attempts were made. A delivery
    not pending, or not due yet, is left alone (safe to run twice).
    """
    now = now or timezone.now()
    delivery = WebhookDelivery.objects.select_related("endpoint").filter(pk=delivery_id).first()
    if delivery is None or delivery.status != WebhookDeliveryStatus.PENDING:
        return None
    if delivery.next_attempt_at is not None and delivery.next_attempt_at > now + timedelta(seconds=1):
        return (delivery.next_attempt_at - now).total_seconds()
    attempt = delivery.attempts + 1
    claimed = WebhookDelivery.objects.filter(
        pk=delivery.pk, status=WebhookDeliveryStatus.PENDING, attempts=delivery.attempts
    ).update(attempts=attempt, next_attempt_at=now + retry_delay(attempt))
    if claimed != 1:
        return None
    endpoint = delivery.endpoint
    try:
        url = webhook_url_check(endpoint.url)
    except ValidationFailed:
        code, error = None, "refused: the URL no longer resolves to a public address"
    else:
        timestamp = int(time.time())
        code, error = _post(
            url,
            delivery.body,
            webhook_signature(secret=endpoint.secret, timestamp=timestamp, body=delivery.body),
        )
    done = code is not None and 200 <= code < 300
    changes: dict[str, Any] = {
        "last_status_code": code,
        "last_error": "" if done else error or f"HTTP {code}",
    }
    if done:
        changes.update(
            status=WebhookDeliveryStatus.DELIVERED, delivered_at=timezone.now(), next_attempt_at=None
        )
    elif attempt >= settings.SUANLI_WEBHOOK_MAX_ATTEMPTS:
        changes.update(status=WebhookDeliveryStatus.FAILED, next_attempt_at=None)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(**changes)
    log.info(
        "webhook.attempt delivery_id=%s endpoint_id=%s attempt=%s status_code=%s delivered=%s",
        delivery.pk,
        endpoint.pk,
        attempt,
        code,
        done,
    )
    if done or attempt >= settings.SUANLI_WEBHOOK_MAX_ATTEMPTS:
        return None
    return retry_delay(attempt).total_seconds()


def webhooks_retry_due(*, now: datetime | None = None) -> list[int]:
    """Dispatch pending deliveries whose next attempt is overdue by a minute (their task was lost:
    a broker outage, a worker killed mid-retry). Returns their ids."""
    now = now or timezone.now()
    due = list(
        WebhookDelivery.objects.filter(
            status=WebhookDeliveryStatus.PENDING, next_attempt_at__lte=now - timedelta(seconds=60)
        )
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:500]
    )
    _dispatch(due)
    return due
