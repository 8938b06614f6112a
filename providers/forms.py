"""Portal forms of providers: start selling, a node's join token, and a node's settings."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from core.forms import NoLabelSuffix
from providers.models import PUE_MAX, PUE_MIN, Provider


class ProviderCreateForm(NoLabelSuffix, forms.Form):
    name = forms.CharField(
        label=_("Organisation name"),
        max_length=128,
        help_text=_("Buyers see it on your offers, e.g. “Huaxia Compute”."),
    )


class JoinTokenForm(NoLabelSuffix, forms.Form):
    provider = forms.ModelChoiceField(label=_("Provider"), queryset=Provider.objects.none(), empty_label=None)
    region = forms.CharField(
        label=_("Region"),
        max_length=32,
        required=False,
        help_text=_("Where the node is, e.g. cn-east. Buyers filter by it."),
    )
    cluster = forms.CharField(
        label=_("Cluster"),
        max_length=64,
        required=False,
        help_text=_("Nodes sharing a fast fabric share a cluster name (multi-node jobs stay inside one)."),
    )

    def __init__(self, *args: Any, providers: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["provider"]
        assert isinstance(field, forms.ModelChoiceField)
        field.queryset = providers
        if len(providers) == 1:
            field.widget = forms.HiddenInput()
            field.initial = providers[0].pk


class NodeSettingsForm(NoLabelSuffix, forms.Form):
    pue = forms.DecimalField(
        label=_("PUE (power usage effectiveness)"),
        min_value=PUE_MIN,
        max_value=PUE_MAX,
        max_digits=5,
        decimal_places=2,
        # The bounds written out: a lazy string formatted here would be translated at import.
        help_text=_(
            "The site's total power divided by the power of its IT equipment, from 1.00 to 3.00 "
            "(e.g. 1.25). It scales the carbon estimate buyers see on your offer."
        ),
    )
