"""Portal pages of providers: start selling (create a provider), join a node (a one-time token
and the one-line install command) and a node's settings (its PUE). The nodes themselves are shown
by the marketplace, which also knows their offers, reliability and usage."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.cache import add_never_cache_headers
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods

from core.errors import NotFound, ValidationFailed
from providers.forms import JoinTokenForm, NodeSettingsForm, ProviderCreateForm
from providers.selectors import node_get_for_member, providers_of_member
from providers.services import join_token_create, node_pue_set, provider_create


def _user(request: HttpRequest) -> User:
    assert isinstance(request.user, User)
    return request.user


@login_required
@require_http_methods(["GET", "POST"])
def provider_start(request: HttpRequest) -> HttpResponse:
    """Create a provider organisation owned by the user."""
    user = _user(request)
    form = ProviderCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            provider = provider_create(owner=user, name=form.cleaned_data["name"])
        except ValidationFailed as error:
            form.add_error("name", error.fields.get("name") or error.message)
        else:
            messages.success(
                request,
                _("%(name)s is ready to sell compute. Join your first node.") % {"name": provider.name},
            )
            return redirect("providers:join")
    return render(request, "providers/start.html", {"form": form})


@login_required
@require_http_methods(["GET", "POST"])
def join(request: HttpRequest) -> HttpResponse:
    """Issue a one-time join token; its secret and install command are shown once, never stored."""
    user = _user(request)
    providers = list(providers_of_member(user=user))
    if not providers:
        return redirect("providers:start")
    form = JoinTokenForm(request.POST or None, providers=providers_of_member(user=user))
    if len(providers) == 1 and not form.is_bound:
        form.fields["provider"].initial = providers[0].pk
    if request.method == "POST" and form.is_valid():
        try:
            issued = join_token_create(
                provider=form.cleaned_data["provider"],
                created_by=user,
                region=form.cleaned_data["region"],
                cluster=form.cleaned_data["cluster"],
            )
        except ValidationFailed as error:
            for field, errors in error.fields.items():
                form.add_error(field if field in form.fields else None, errors)
        else:
            response = render(request, "providers/join_created.html", {"issued": issued})
            add_never_cache_headers(response)
            return response
    return render(request, "providers/join.html", {"form": form, "providers": providers})


@login_required
@require_http_methods(["GET", "POST"])
def node_settings(request: HttpRequest, node_id: int) -> HttpResponse:
    """A member's node settings: the declared PUE behind its offer's carbon estimate."""
    try:
        node = node_get_for_member(user=_user(request), node_id=node_id)
    except NotFound as error:
        raise Http404(error.message) from error
    form = NodeSettingsForm(request.POST or None, initial={"pue": node.pue})
    if request.method == "POST" and form.is_valid():
        try:
            node_pue_set(node=node, pue=form.cleaned_data["pue"])
        except ValidationFailed as error:
            form.add_error("pue", error.fields.get("pue") or error.message)
        else:
            messages.success(
                request, _("%(name)s now declares a PUE of %(pue)s.") % {"name": node.name, "pue": node.pue}
            )
            return redirect("marketplace:node_detail", node_id=node.pk)
    return render(request, "providers/node_settings.html", {"node": node, "form": form})
