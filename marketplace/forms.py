"""Portal forms: market filters, the order form, a node's prices.

Forms turn text into the typed values services take (micro-units, ``JobSpec``, ``OfferFilters``)
and give friendly, translated messages for the common mistakes; the services stay the authority
and their own ``ValidationFailed`` field errors are shown when they refuse.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django import forms
from django.conf import settings
from django.utils import timezone
from django.utils.functional import Promise
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from core.errors import ValidationFailed
from core.forms import NoLabelSuffix
from core.money import parse_amount
from marketplace.models import MAX_PRICE_MICROS, Offer, Term
from marketplace.selectors import OFFER_SORTS, OfferFilters
from marketplace.services.job_spec import job_spec_parse
from marketplace.services.jobs import JobSpec
from marketplace.services.orders import (
    MAX_RESERVATION,
    max_reservation_ahead,
    max_reservation_ahead_message,
    min_reservation_message,
)
from providers.models import DeviceKind, Vendor

TERM_LABELS: dict[str, Promise] = {
    Term.ON_DEMAND: _("On-demand"),
    Term.RESERVED: _("Reserved"),
    Term.SPOT: _("Spot"),
}
SORT_LABELS = {
    "price": _("Price"),
    "price_per_pflop": _("Price per PFLOP-hour"),
    "reliability": _("Reliability"),
    "carbon": _("Carbon"),
}
MAX_PRICE = Decimal(MAX_PRICE_MICROS) / 1_000_000


def micros(value: Decimal | None) -> int | None:
    return None if value is None else parse_amount(value)


class MarketFilterForm(NoLabelSuffix, forms.Form):
    """The market's filters and sort, read from the query string (every field optional)."""

    term = forms.ChoiceField(label=_("Term"), choices=list(TERM_LABELS.items()), required=False)
    kind = forms.ChoiceField(
        label=_("Kind"), choices=[("", _("Any kind")), *DeviceKind.choices], required=False
    )
    vendor = forms.ChoiceField(
        label=_("Vendor"), choices=[("", _("Any vendor")), *Vendor.choices], required=False
    )
    model = forms.CharField(label=_("Model"), max_length=64, required=False)
    min_memory_gib = forms.IntegerField(
        label=_("Memory per device (GiB, at least)"), min_value=1, max_value=4096, required=False
    )
    devices = forms.IntegerField(
        label=_("Free devices (at least)"), min_value=1, max_value=64, required=False
    )
    region = forms.CharField(label=_("Region"), max_length=32, required=False)
    max_price = forms.DecimalField(
        label=_("Max price per device-hour"),
        min_value=Decimal(0),
        max_value=MAX_PRICE,
        decimal_places=6,
        required=False,
    )
    min_reliability = forms.DecimalField(
        label=_("Min reliability (0–1)"),
        min_value=Decimal(0),
        max_value=Decimal(1),
        decimal_places=3,
        required=False,
    )
    verified = forms.BooleanField(label=_("Verified nodes only"), required=False)
    sort = forms.ChoiceField(
        label=_("Sort by"), choices=[(s, SORT_LABELS[s]) for s in OFFER_SORTS], required=False
    )

    def filters(self) -> OfferFilters:
        data = self.cleaned_data if self.is_valid() else {}
        return OfferFilters(
            kind=data.get("kind") or None,
            vendor=data.get("vendor") or None,
            model=(data.get("model") or "").strip() or None,
            min_memory_gib=data.get("min_memory_gib"),
            region=(data.get("region") or "").strip() or None,
            term=data.get("term") or Term.ON_DEMAND,
            max_price_micros=micros(data.get("max_price")),
            min_reliability=data.get("min_reliability"),
            devices=data.get("devices"),
            # Unticked means "any node", not "unverified nodes only".
            verified=True if data.get("verified") else None,
            sort=data.get("sort") or "price",
        )

    def active(self) -> bool:
        """Whether any filter narrows the list (term and sort do not)."""
        data = self.cleaned_data if self.is_valid() else {}
        return any(
            data.get(name) not in (None, "", False) for name in self.fields if name not in ("term", "sort")
        )


# --- Orders -------------------------------------------------------------------------------------

UTC_INPUT_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"]


class UtcDateTimeField(forms.DateTimeField):
    """A ``datetime-local`` input read as UTC (the portal shows every time in UTC)."""

    widget = forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(input_formats=UTC_INPUT_FORMATS, **kwargs)

    def to_python(self, value: Any) -> datetime | None:
        result = super().to_python(value)
        if result is None:
            return None
        return result.replace(tzinfo=UTC) if timezone.is_naive(result) else result.astimezone(UTC)


class OrderForm(NoLabelSuffix, forms.Form):
    """One order for one offer: term, devices, price limit, a reserved window and the job spec."""

    term = forms.ChoiceField(label=_("Term"), choices=list(TERM_LABELS.items()), widget=forms.RadioSelect)
    devices = forms.IntegerField(label=_("Devices"), min_value=1, max_value=64)
    price_limit = forms.DecimalField(
        label=_("Price limit per device-hour"),
        help_text=_(
            "On-demand and reserved: the most you accept to pay. Spot: your bid; you pay the clearing price."
        ),
        min_value=Decimal("0.000001"),
        max_value=MAX_PRICE,
        decimal_places=6,
    )
    window_start = UtcDateTimeField(label=_("Reserved from (UTC)"), required=False)
    window_end = UtcDateTimeField(label=_("Reserved until (UTC)"), required=False)
    runtime = forms.ChoiceField(
        label=_("Runtime"),
        choices=[("docker", _("Docker container")), ("process", _("Process (nodes that allow it)"))],
    )
    image = forms.CharField(
        label=_("Image"),
        max_length=255,
        required=False,
        widget=forms.TextInput(
            attrs={"placeholder": "nvcr.io/nvidia/pytorch:24.05-py3", "spellcheck": "false"}
        ),
    )
    command = forms.CharField(
        label=_("Command"),
        max_length=16 * 1024,
        required=False,
        help_text=_("Split like a shell does: python train.py --epochs 3"),
        widget=forms.TextInput(attrs={"spellcheck": "false"}),
    )
    env = forms.CharField(
        label=_("Environment variables"),
        required=False,
        help_text=_("One NAME=value per line."),
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}),
    )
    ports = forms.CharField(
        label=_("Ports"), required=False, max_length=200, help_text=_("Comma-separated, e.g. 8888, 6006")
    )
    ssh = forms.BooleanField(
        label=_("Open an SSH port"),
        required=False,
        help_text=_("The job is reachable by ssh with the public key saved in your profile."),
    )
    volumes = forms.MultipleChoiceField(
        label=_("Volumes"),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=_("Your volumes on this node, mounted at /volumes/<name>."),
    )
    idempotency_key = forms.CharField(
        label=_("Request key"),
        widget=forms.HiddenInput,
        max_length=128,
        error_messages={"required": _("Missing; reload the page and submit the form again.")},
    )

    def __init__(
        self,
        *args: Any,
        offer: Offer,
        profile_ssh_public_key: str = "",
        volume_choices: Any = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.offer = offer
        self.profile_ssh_public_key = profile_ssh_public_key
        self.fields["volumes"].choices = [(str(pk), name) for pk, name in volume_choices]  # type: ignore[attr-defined]
        if not volume_choices:
            del self.fields["volumes"]
        self.fields["devices"].widget.attrs.update({"max": offer.device_count, "min": 1})
        self.job_spec: JobSpec | None = None

    def clean_command(self) -> list[str]:
        try:
            return shlex.split(self.cleaned_data.get("command") or "")
        except ValueError:
            raise forms.ValidationError(_("Unbalanced quotes in the command.")) from None

    def clean_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for number, line in enumerate((self.cleaned_data.get("env") or "").splitlines(), start=1):
            if not line.strip():
                continue
            name, sep, value = line.partition("=")
            if not sep or not name.strip():
                raise forms.ValidationError(_("Line %(number)s is not NAME=value.") % {"number": number})
            env[name.strip()] = value
        return env

    def clean_ports(self) -> list[int]:
        ports: list[int] = []
        for part in (self.cleaned_data.get("ports") or "").replace(" ", "").split(","):
            if not part:
                continue
            if not part.isdigit() or not 1 <= int(part) <= 65535:
                raise forms.ValidationError(_("Ports are whole numbers between 1 and 65535."))
            ports.append(int(part))
        return ports

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        term = data.get("term")
        devices = data.get("devices")
        if devices is not None and devices > self.offer.device_count:
            self.add_error(
                "devices",
                ngettext(
                    "This node has %(count)s device.",
                    "This node has %(count)s devices.",
                    self.offer.device_count,
                )
                % {"count": self.offer.device_count},
            )
        if term == Term.RESERVED:
            start, end = data.get("window_start"), data.get("window_end")
            if start is None:
                self.add_error("window_start", _("A reservation needs a start."))
            if end is None:
                self.add_error("window_end", _("A reservation needs an end."))
            if start is not None and end is not None:
                if start < timezone.now() - timedelta(minutes=1):
                    self.add_error("window_start", _("The window must start in the future."))
                elif start > timezone.now() + max_reservation_ahead():
                    self.add_error("window_start", max_reservation_ahead_message())
                elif end - start < timedelta(seconds=settings.SUANLI_MIN_RESERVATION_S):
                    self.add_error("window_end", min_reservation_message())
                elif end - start > MAX_RESERVATION:
                    self.add_error(
                        "window_end",
                        gettext("A reservation lasts at most %(days)s days.")
                        % {"days": MAX_RESERVATION.days},
                    )
        else:
            data["window_start"] = data["window_end"] = None
        if not any(
            name in self.errors for name in ("runtime", "image", "command", "env", "ports", "volumes")
        ):
            raw = {
                "runtime": data.get("runtime", "docker"),
                "image": (data.get("image") or "").strip(),
                "command": data.get("command", []),
                "env": data.get("env", {}),
                "ports": data.get("ports", []),
            }
            if data.get("ssh"):
                raw["ssh"] = True
            if data.get("volumes"):
                raw["volumes"] = [{"id": int(pk)} for pk in data["volumes"]]
            if raw["runtime"] == "process" and not raw["image"]:
                raw.pop("image")
            try:
                self.job_spec = job_spec_parse(raw, profile_ssh_public_key=self.profile_ssh_public_key)
            except ValidationFailed as error:
                for field, messages in error.fields.items():
                    name = field.removeprefix("job.")
                    self.add_error(name if name in self.fields else None, messages)
        return data

    def price_limit_micros(self) -> int:
        return parse_amount(self.cleaned_data["price_limit"])


@dataclass(frozen=True)
class Estimate:
    """What the order is likely to cost at the offer's price for its term."""

    term: str
    unit_micros: int  # per device-hour
    hourly_micros: int  # all devices
    total_micros: int | None  # reserved: the whole window
    hours: Decimal | None  # reserved: the window's length
    available_micros: int
    covered_hours: Decimal | None  # on-demand / spot: how long the available balance lasts
    covered: bool


def offer_unit_price(offer: Offer, term: str, spot_now: int | None = None) -> int:
    if term == Term.RESERVED:
        return offer.reserved_price_micros
    if term == Term.SPOT:
        return max(offer.spot_floor_micros, spot_now or 0)
    return offer.on_demand_price_micros


def order_estimate(
    *,
    offer: Offer,
    term: str,
    devices: int,
    available_micros: int,
    window_start: datetime | None = None,
    window_end: datetime | None = None,
    spot_now: int | None = None,
) -> Estimate:
    unit = offer_unit_price(offer, term, spot_now)
    hourly = unit * max(devices, 1)
    total: int | None = None
    hours: Decimal | None = None
    covered_hours: Decimal | None = None
    if term == Term.RESERVED and window_start and window_end and window_end > window_start:
        hours = (Decimal((window_end - window_start).total_seconds()) / Decimal(3600)).quantize(
            Decimal("0.01")
        )
        total = int((Decimal(hourly) * hours).to_integral_value())
        covered = available_micros >= total
    else:
        if hourly > 0:
            covered_hours = (Decimal(max(available_micros, 0)) / Decimal(hourly)).quantize(Decimal("0.1"))
        covered = available_micros >= hourly
    return Estimate(term, unit, hourly, total, hours, available_micros, covered_hours, covered)


# --- Pricing ------------------------------------------------------------------------------------


class OfferPriceForm(NoLabelSuffix, forms.Form):
    """A node's prices per device-hour and whether it is listed."""

    on_demand_price = forms.DecimalField(
        label=_("On-demand price"), min_value=Decimal(0), max_value=MAX_PRICE, decimal_places=6
    )
    reserved_price = forms.DecimalField(
        label=_("Reserved price"), min_value=Decimal(0), max_value=MAX_PRICE, decimal_places=6
    )
    spot_floor = forms.DecimalField(
        label=_("Spot floor"), min_value=Decimal(0), max_value=MAX_PRICE, decimal_places=6
    )
    listed = forms.BooleanField(label=_("Listed on the market"), required=False)
    # Empty leaves it as it is (a form from before volumes existed changes nothing).
    volume_price = forms.DecimalField(
        label=_("Volume price per GiB-hour"),
        required=False,
        min_value=Decimal(0),
        max_value=MAX_PRICE,
        decimal_places=6,
        help_text=_("Persistent volumes buyers keep on this node; 0 offers none."),
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        on_demand, reserved, floor = (
            data.get(n) for n in ("on_demand_price", "reserved_price", "spot_floor")
        )
        if data.get("listed") and None not in (on_demand, reserved, floor):
            if not on_demand:
                self.add_error("on_demand_price", _("Set a price before listing."))
            if not floor:
                self.add_error("spot_floor", _("Set a spot floor before listing."))
            elif on_demand and floor > on_demand:
                self.add_error("spot_floor", _("The spot floor cannot exceed the on-demand price."))
            if on_demand and reserved > on_demand:
                self.add_error("reserved_price", _("The reserved price cannot exceed the on-demand price."))
        return data

    def micros(self, name: str) -> int:
        return parse_amount(self.cleaned_data[name])
