"""Portal forms of billing: a wallet top-up and Stripe Connect onboarding."""

from __future__ import annotations

from decimal import Decimal

from django import forms
from django.conf import settings
from django.utils.translation import gettext_lazy as _

from core.forms import NoLabelSuffix
from core.money import parse_amount


class TopUpForm(NoLabelSuffix, forms.Form):
    amount = forms.DecimalField(
        label=_("Amount"),
        min_value=Decimal("0.01"),
        max_value=Decimal(100_000),
        decimal_places=2,
        help_text=_("Paid by card through Stripe Checkout; your wallet is credited when Stripe confirms."),
    )
    idempotency_key = forms.CharField(
        label=_("Request key"),
        widget=forms.HiddenInput,
        max_length=128,
        error_messages={"required": _("Missing; reload the page and submit the form again.")},
    )

    def clean_amount(self) -> Decimal:
        amount: Decimal = self.cleaned_data["amount"]
        if parse_amount(amount) < settings.BILLING_MIN_TOP_UP_MICROS:
            raise forms.ValidationError(
                _("The smallest top-up is %(amount)s.")
                % {"amount": settings.BILLING_MIN_TOP_UP_MICROS // 1_000_000}
            )
        return amount

    def amount_micros(self) -> int:
        return parse_amount(self.cleaned_data["amount"])


class PayoutOnboardForm(forms.Form):
    provider = forms.IntegerField(widget=forms.HiddenInput, min_value=1)
