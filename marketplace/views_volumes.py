"""Portal page for a buyer's persistent volumes (issue 13, item 2): list, create, delete.

``/volumes/``: the buyer's live volumes with what each has cost, a form to create one on a node
that offers volumes, and a delete button per volume (refused, with the reason, while an order
mounts it). The create form carries a fresh idempotency key, so a double submit creates one volume.
"""

from __future__ import annotations

import uuid
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

from core.errors import Conflict, InsufficientFunds, NotFound, ValidationFailed
from core.forms import NoLabelSuffix
from core.money import format_amount
from marketplace.models import Offer
from marketplace.services.job_spec import VOLUME_MOUNT_ROOT
from marketplace.services.volumes import (
    MAX_VOLUME_GIB,
    VolumeRequest,
    volume_create,
    volume_delete,
    volume_get_for_buyer,
    volume_unpaid_delete_at,
    volumes_for_buyer,
)
from providers.models import NodeStatus


def _node_choices() -> list[tuple[int, str]]:
    offers = (
        Offer.objects.filter(listed=True, volume_price_micros__gt=0, node__status=NodeStatus.ONLINE)
        .select_related("node")
        .order_by("volume_price_micros", "node_id")[:200]
    )
    return [
        (
            o.node_id,
            _("%(node)s (%(region)s) · %(price)s per GiB-hour")
            % {"node": o.node.name, "region": o.region, "price": format_amount(o.volume_price_micros)},
        )
        for o in offers
    ]


class VolumeForm(NoLabelSuffix, forms.Form):
    node = forms.TypedChoiceField(label=gettext_lazy("Node"), coerce=int)
    name = forms.CharField(
        label=gettext_lazy("Name"),
        max_length=63,
        help_text=gettext_lazy("Lower-case letters, digits, - and _. Jobs see it at /volumes/<name>."),
    )
    size_gib = forms.IntegerField(label=gettext_lazy("Size (GiB)"), min_value=1, max_value=MAX_VOLUME_GIB)
    idempotency_key = forms.CharField(widget=forms.HiddenInput, max_length=128)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["node"].choices = _node_choices()  # type: ignore[attr-defined]


def _user(request: HttpRequest) -> User:
    assert isinstance(request.user, User)
    return request.user


def _page(request: HttpRequest, form: VolumeForm | None = None, status: int = 200) -> HttpResponse:
    volumes = list(volumes_for_buyer(buyer=_user(request)).order_by("-id"))
    for volume in volumes:
        volume.mount = f"{VOLUME_MOUNT_ROOT}/{volume.name}"  # type: ignore[attr-defined]
        volume.charged = format_amount(volume.charged_micros)  # type: ignore[attr-defined]
        volume.price = format_amount(volume.price_micros)  # type: ignore[attr-defined]
        volume.delete_at = volume_unpaid_delete_at(volume)  # type: ignore[attr-defined]
    form = form or VolumeForm(initial={"idempotency_key": uuid.uuid4().hex})
    return render(request, "marketplace/volumes.html", {"volumes": volumes, "form": form}, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def volumes(request: HttpRequest) -> HttpResponse:
    """The buyer's volumes; POST creates one."""
    if request.method != "POST":
        return _page(request)
    form = VolumeForm(request.POST)
    if not form.is_valid():
        return _page(request, form, status=400)
    data = form.cleaned_data
    try:
        volume, _created = volume_create(
            buyer=_user(request),
            request=VolumeRequest(node_id=data["node"], name=data["name"], size_gib=data["size_gib"]),
            idempotency_key=data["idempotency_key"],
        )
    except (ValidationFailed, InsufficientFunds, Conflict) as error:
        for name, problems in error.fields.items():
            form.add_error(name if name in form.fields else None, problems)
        if not error.fields:
            form.add_error(None, error.message)
        return _page(request, form, status=400)
    messages.success(request, _("Volume %(name)s created.") % {"name": volume.name})
    return redirect("marketplace:volumes")


@login_required
@require_POST
def volume_delete_view(request: HttpRequest, volume_id: int) -> HttpResponse:
    try:
        volume = volume_get_for_buyer(buyer=_user(request), volume_id=volume_id)
        volume_delete(volume=volume)
    except NotFound as error:
        raise Http404(error.message) from error
    except Conflict as error:
        messages.error(request, error.message)
        return redirect("marketplace:volumes")
    messages.success(request, _("Volume %(name)s deleted.") % {"name": volume.name})
    return redirect("marketplace:volumes")
