"""The ``money`` template filter: micro-units, localized grouping, the currency per language."""

from decimal import Decimal

import pytest
from django.template import Context, Template
from django.utils import translation

from core.templatetags.money import format_money, money


@pytest.mark.parametrize(
    ("micros", "currency", "en", "zh"),
    [
        (1_234_500_000, "USD", "$1,234.50", "US$1,234.50"),
        (0, "USD", "$0.00", "US$0.00"),
        (-5_000_000, "USD", "-$5.00", "-US$5.00"),
        (2_456_700, "USD", "$2.4567", "US$2.4567"),  # finer precision is kept, never rounded away
        (1, "USD", "$0.000001", "US$0.000001"),
        (1_234_567_890_000, "CNY", "CN¥1,234,567.89", "¥1,234,567.89"),
        (12_000_000, "EUR", "€12.00", "€12.00"),
        (1_234_500_000, "HKD", "1,234.50 HKD", "1,234.50 HKD"),
        (1_234_500_000, "usd", "$1,234.50", "US$1,234.50"),
    ],
)
def test_money_formats_per_language(micros, currency, en, zh):
    with translation.override("en"):
        assert format_money(micros, currency) == en
    with translation.override("zh-hans"):
        assert format_money(micros, currency) == zh


def test_default_currency_comes_from_settings(settings):
    settings.SUANLI_CURRENCY = "CNY"
    with translation.override("zh-hans"):
        assert money(99_500_000) == "¥99.50"


@pytest.mark.parametrize("value", [None, "", "abc", 1.5, True])
def test_money_renders_nothing_for_non_amounts(value):
    assert money(value) == ""


def test_money_accepts_integer_strings_and_decimals():
    with translation.override("en"):
        assert money("1500000", "USD") == "$1.50"
        assert money(Decimal(2_000_000), "USD") == "$2.00"


def test_money_in_a_template():
    template = Template('{% load money %}{{ amount|money }} / {{ amount|money:"CNY" }}')
    with translation.override("en"):
        assert template.render(Context({"amount": 10_000_000})) == "$10.00 / CN¥10.00"


def test_dates_follow_the_language():
    import datetime

    when = datetime.date(2025, 9, 5)
    template = Template("{{ when|date }}")
    with translation.override("en"):
        assert template.render(Context({"when": when})) == "Sept. 5, 2025"
    with translation.override("zh-hans"):
        assert template.render(Context({"when": when})) == "2025年9月5日"
