"""``{% line_chart points title=... %}`` and ``{% bar_chart ... %}``: inline SVG from ``core.charts``.

``format="money"`` prints axis ticks and tooltips with the ``money`` filter (values are then
micro-units, in ``currency`` or ``SUANLI_CURRENCY``); anything else prints plain localized numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

from django import template
from django.utils.safestring import SafeString

from core import charts
from core.templatetags.money import format_money

register = template.Library()


def _value_format(fmt: str, currency: str | None) -> charts.ValueFormat:
    if fmt == "money":
        return lambda value: format_money(int(value), currency)
    return charts.default_format


@register.simple_tag
def line_chart(
    points: Sequence[charts.Point],
    title: str,
    description: str = "",
    format: str = "",
    currency: str | None = None,
    chart_id: str | None = None,
) -> SafeString:
    return charts.line_chart(
        points,
        title=str(title),
        description=str(description),
        value_format=_value_format(format, currency),
        chart_id=chart_id,
    )


@register.simple_tag
def bar_chart(
    points: Sequence[charts.Point],
    title: str,
    description: str = "",
    format: str = "",
    currency: str | None = None,
    chart_id: str | None = None,
) -> SafeString:
    return charts.bar_chart(
        points,
        title=str(title),
        description=str(description),
        value_format=_value_format(format, currency),
        chart_id=chart_id,
    )
