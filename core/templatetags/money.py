"""``{{ amount_micros|money }}``: micro-unit integers as localized money.

Choice (documented here, used everywhere in the portal): a currency with a well-known symbol is
written symbol first, the rest with the ISO code after the number. The symbol depends on the
language, as a reader of that language expects it to be unambiguous:

============  ===============  ================
currency      English          简体中文
============  ===============  ================
USD           ``$1,234.50``    ``US$1,234.50``
CNY           ``CN¥1,234.50``  ``¥1,234.50``
EUR           ``€1,234.50``    ``€1,234.50``
other (HKD)   ``1,234.50 HKD`` ``1,234.50 HKD``
============  ===============  ================

Digits are grouped in threes with the active locale's separators
(``django.utils.formats.number_format`` with ``force_grouping``; zh_Hans grouping comes from
``core/formats``). At least two decimals are shown, and any finer precision the amount really has
is kept (a rate of 2.4567 per hour reads ``$2.4567``): money is never silently rounded for
display. Negative amounts read ``-$5.00``.
"""

from __future__ import annotations

from decimal import Decimal

from django import template
from django.conf import settings
from django.utils import translation
from django.utils.formats import number_format

from core.money import MICROS_PER_UNIT

register = template.Library()

# currency -> (English symbol, Chinese symbol)
SYMBOLS: dict[str, tuple[str, str]] = {
    "USD": ("$", "US$"),
    "CNY": ("CN¥", "¥"),
    "EUR": ("€", "€"),
    "GBP": ("£", "£"),
}


def format_money(micros: int, currency: str | None = None, *, min_places: int = 2) -> str:
    code = (currency or settings.SUANLI_CURRENCY).upper()
    value = Decimal(int(micros)) / MICROS_PER_UNIT
    exponent = value.normalize().as_tuple().exponent
    places = max(min_places, -exponent if isinstance(exponent, int) else 0)
    digits = number_format(abs(value), decimal_pos=places, force_grouping=True)
    sign = "-" if value < 0 else ""
    symbols = SYMBOLS.get(code)
    if symbols is None:
        return f"{sign}{digits} {code}"
    chinese = (translation.get_language() or "").lower().startswith("zh")
    return f"{sign}{symbols[1] if chinese else symbols[0]}{digits}"


@register.filter
def money(micros: object, currency: str | None = None) -> str:
    """Micro-units as money in ``currency`` (default ``SUANLI_CURRENCY``); "" for no amount."""
    # Floats are refused on purpose: money never passes through one.
    if isinstance(micros, bool) or not isinstance(micros, int | str | Decimal):
        return ""
    try:
        amount = int(micros)
    except (TypeError, ValueError):
        return ""
    return format_money(amount, currency)
