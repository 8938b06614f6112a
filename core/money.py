"""Money: integer micro-units (1e-6 of the currency unit) and the one rounding rule.

Amounts live in ``BigIntegerField``s as micro-units; ``Decimal`` is for intermediate arithmetic
only; ``float`` never appears. ``round_micros`` (ROUND_HALF_EVEN) is applied at the moment an
amount is booked.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

MICROS_PER_UNIT = 1_000_000
_MICRO = Decimal(MICROS_PER_UNIT)


class MoneyFormatError(ValueError):
    pass


def round_micros(amount: Decimal) -> int:
    """Round a Decimal amount of micro-units to an integer, half to even."""
    return int(amount.to_integral_value(rounding=ROUND_HALF_EVEN))


def parse_amount(text: str | Decimal | int, *, max_places: int = 6) -> int:
    """Parse a decimal money string (``"50.00"``) into micro-units, rejecting anything inexact."""
    if isinstance(text, float):
        raise MoneyFormatError("money must not be a float")
    try:
        value = Decimal(str(text).strip())
    except (InvalidOperation, ValueError):
        raise MoneyFormatError(f"{text!r} is not a decimal amount") from None
    if not value.is_finite():
        raise MoneyFormatError(f"{text!r} is not a finite amount")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > max_places:
        raise MoneyFormatError(f"{text!r} has more than {max_places} decimal places")
    return int(value * _MICRO)


def format_amount(micros: int, *, places: int = 2) -> str:
    """Format micro-units as a decimal string with at least ``places`` decimals.

    Extra precision is kept (never rounded away) so an API client can reconcile to the micro-unit:
    ``format_amount(1_234_500) == "1.2345"``, ``format_amount(50_000_000) == "50.00"``.
    """
    value = Decimal(micros) / _MICRO
    text = f"{value:.6f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(places, '0')}"


def to_minor_units(micros: int, *, exponent: int = 2) -> int:
    """Micro-units to a payment processor's minor units (cents for exponent 2), exactly or not at all."""
    factor = 10 ** (6 - exponent)
    if micros % factor:
        raise MoneyFormatError(f"{micros} micro-units is not a whole number of minor units")
    return micros // factor


def from_minor_units(minor: int, *, exponent: int = 2) -> int:
    return minor * 10 ** (6 - exponent)
