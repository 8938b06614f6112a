"""Operational endpoints (healthz) and the portal's own pages: accounts, home, API keys."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.contrib.auth.views import LoginView, LogoutView
from django.core.paginator import Paginator
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import add_never_cache_headers
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods

from config.celery_app import WORKER_SEEN_KEY, app
from core.errors import NotFound, ValidationFailed
from core.forms import ApiKeyCreateForm, LoginForm, SignUpForm, SshKeyForm
from core.models import ApiKey
from core.redis import HEARTBEAT_FLUSH_STALL_S, HEARTBEAT_PENDING_SINCE_KEY, redis_client
from core.services import apikey_create, apikey_revoke, buyer_ssh_key_get, buyer_ssh_key_set

log = logging.getLogger("suanli.portal")

WORKER_FRESH_S = 60.0
KEYS_PER_PAGE = 50


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)
    except Exception:  # noqa: BLE001 - any failure means "not ok"
        return False


def _celery_ok(client: object | None) -> bool:
    """A worker answered within the last minute: its liveness stamp, else a short ping."""
    if client is None:
        return False
    try:
        seen = client.get(WORKER_SEEN_KEY)  # type: ignore[attr-defined]
        if seen is not None and time.time() - float(seen) < WORKER_FRESH_S:
            return True
        replies = app.control.ping(timeout=1.0)
        if replies:
            client.set(WORKER_SEEN_KEY, f"{time.time():.3f}", ex=120)  # type: ignore[attr-defined]
            return True
    except Exception:  # noqa: BLE001
        return False
    return False


def _heartbeat_flush_lag(client: object) -> float | None:
    """Seconds the oldest unflushed heartbeat has waited, or None when nothing waits."""
    try:
        since = client.get(HEARTBEAT_PENDING_SINCE_KEY)  # type: ignore[attr-defined]
        return None if since is None else max(0.0, time.time() - float(since))
    except Exception:  # noqa: BLE001 - unknown is not "stalled"; redis is reported on its own
        return None


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    database = _database_ok()
    client = redis_client()
    try:
        redis_ok = bool(client.ping())
    except Exception:  # noqa: BLE001
        redis_ok = False
    celery = _celery_ok(client if redis_ok else None)
    # A worker can be alive while every heartbeat flush fails (node liveness frozen): report it,
    # only then, so a healthy body keeps its shape.
    lag = _heartbeat_flush_lag(client) if redis_ok else None
    flush_stalled = lag is not None and lag > HEARTBEAT_FLUSH_STALL_S
    healthy = database and redis_ok and celery and not flush_stalled
    body = {
        "status": "ok" if healthy else "degraded",
        "database": "ok" if database else "unavailable",
        "redis": "ok" if redis_ok else "unavailable",
        "celery": "ok" if celery else "no worker seen in the last minute",
    }
    if flush_stalled:
        body["heartbeats"] = f"not flushed for {int(lag or 0)} s"
    return JsonResponse(body, status=200 if healthy else 503)


# --- Portal: accounts, home, API keys -----------------------------------------------------------


def _signed_in_user(request: HttpRequest) -> User:
    """The request's user on a ``login_required`` view."""
    assert isinstance(request.user, User)
    return request.user


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """The dashboard for a signed-in user; the landing page (the pitch, sign up, log in) otherwise."""
    if not request.user.is_authenticated:
        return render(request, "core/landing.html")
    user = _signed_in_user(request)
    active_keys = ApiKey.objects.filter(user=user, revoked_at__isnull=True).count()
    return render(request, "core/dashboard.html", {"active_key_count": active_keys})


def _safe_next(request: HttpRequest) -> str | None:
    target = request.POST.get("next") or request.GET.get("next")
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return None


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    """Create an account (username = email) and log it in."""
    if request.user.is_authenticated:
        return redirect("home")
    form = SignUpForm(request.POST) if request.method == "POST" else SignUpForm()
    if request.method == "POST" and form.is_valid():
        user = form.save()
        if user is not None:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            log.info("auth.signup user_id=%s", user.pk)
            messages.success(request, _("Welcome to Suanli Exchange. Your account is ready."))
            return redirect(_safe_next(request) or "home")
    return render(request, "registration/signup.html", {"form": form, "next": _safe_next(request) or ""})


class PortalLoginView(LoginView):
    """Django's log-in view with the rate-limited form; a blocked attempt answers 429."""

    form_class = LoginForm
    template_name = "registration/login.html"
    redirect_authenticated_user = True

    def form_invalid(self, form: Any) -> HttpResponse:
        response = super().form_invalid(form)
        if getattr(form, "rate_limited", False):
            response.status_code = 429
        return response


class PortalLogoutView(LogoutView):
    """POST only (Django's default); says goodbye on the landing page."""

    next_page = "home"

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = super().post(request, *args, **kwargs)
        messages.info(request, _("You have logged out."))
        return response


@login_required
@require_http_methods(["GET", "POST"])
def apikey_list(request: HttpRequest) -> HttpResponse:
    """The user's API keys, and the form that creates one.

    A created key's secret is shown once, in the response to the creating POST itself: it is never
    written to the session, the database or a log, and the page is marked ``no-store``.
    """
    user = _signed_in_user(request)
    if request.method == "POST":
        form = ApiKeyCreateForm(request.POST)
        if form.is_valid():
            try:
                issued = apikey_create(
                    user=user, name=form.cleaned_data["name"], scopes=form.cleaned_data["scopes"]
                )
            except ValidationFailed as error:
                for field, field_errors in error.fields.items():
                    form.add_error(field if field in form.fields else None, field_errors)
            else:
                log.info("apikey.created api_key_id=%s user_id=%s", issued.api_key.pk, user.pk)
                response = render(
                    request, "core/apikey_created.html", {"api_key": issued.api_key, "secret": issued.secret}
                )
                add_never_cache_headers(response)
                return response
    else:
        form = ApiKeyCreateForm()
    keys = ApiKey.objects.filter(user=user).only(
        "id", "name", "prefix", "scopes", "created_at", "last_used_at", "revoked_at"
    )
    page = Paginator(keys, KEYS_PER_PAGE).get_page(request.GET.get("page"))
    return render(request, "core/apikey_list.html", {"form": form, "page": page, "keys": page.object_list})


@login_required
@require_http_methods(["GET", "POST"])
def apikey_revoke_view(request: HttpRequest, api_key_id: int) -> HttpResponse:
    """Confirm (GET), then revoke (POST) one of the user's own keys; anyone else's is a 404."""
    user = _signed_in_user(request)
    api_key = get_object_or_404(ApiKey, pk=api_key_id, user=user)
    if request.method == "POST":
        try:
            apikey_revoke(user=user, api_key_id=api_key.pk)
        except NotFound as error:
            raise Http404(error.message) from error
        log.info("apikey.revoked api_key_id=%s user_id=%s", api_key.pk, user.pk)
        messages.success(
            request,
            _("The key “%(name)s” is revoked: requests that use it are refused from now on.")
            % {"name": api_key.name},
        )
        return redirect("apikey_list")
    if not api_key.is_active:
        messages.info(request, _("The key “%(name)s” is already revoked.") % {"name": api_key.name})
        return redirect("apikey_list")
    return render(request, "core/apikey_revoke.html", {"api_key": api_key})


@login_required
@require_http_methods(["GET", "POST"])
def ssh_key(request: HttpRequest) -> HttpResponse:
    """The buyer's SSH public key (the profile key of SSH-mode jobs): show and replace it."""
    user = _signed_in_user(request)
    if request.method == "POST":
        form = SshKeyForm(request.POST)
        if form.is_valid():
            try:
                buyer_ssh_key_set(user=user, ssh_public_key=form.cleaned_data["ssh_public_key"])
            except ValidationFailed as error:
                for field_errors in error.fields.values():
                    form.add_error("ssh_public_key", field_errors)
            else:
                messages.success(request, _("Your SSH public key is saved."))
                return redirect("ssh_key")
    else:
        form = SshKeyForm(initial={"ssh_public_key": buyer_ssh_key_get(user=user)})
    return render(request, "core/ssh_key.html", {"form": form})
