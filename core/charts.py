"""Server-side SVG charts: no JavaScript, no network, nothing to vendor.

``line_chart`` and ``bar_chart`` take a list of ``(label, value)`` points and return an inline
``<svg role="img">`` with a ``<title>`` and a ``<desc>`` (its accessible name and summary), a
value axis with round ticks, category labels, and a ``<title>`` on every point or bar (a tooltip
and a text alternative). All text is escaped. Values may be ints (micro-units for money) or
Decimals; they become floats only for pixel positions, never for the numbers printed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from decimal import Decimal

from django.utils.formats import number_format
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext as _

Number = int | Decimal
Point = tuple[str, Number]
ValueFormat = Callable[[Number], str]

ACCENT = "#1d4ed8"
ACCENT_FILL = "#dbeafe"
INK = "#1f2937"
MUTED = "#6b7280"
GRID = "#e5e7eb"

MARGIN_LEFT = 64
MARGIN_RIGHT = 16
MARGIN_TOP = 12
MARGIN_BOTTOM = 32
MAX_X_LABELS = 8


def default_format(value: Number) -> str:
    if isinstance(value, Decimal) and value != value.to_integral_value():
        return str(number_format(value.normalize(), force_grouping=True))
    return str(number_format(int(value), force_grouping=True))


def nice_ticks(low: Number, high: Number, *, target: int = 5) -> list[Decimal]:
    """Round tick values (steps of 1, 2 or 5 x 10^k) covering ``[low, high]`` and zero."""
    lo = min(Decimal(low), Decimal(0))
    hi = max(Decimal(high), Decimal(0))
    if lo == hi:
        hi = lo + 1
    raw = (hi - lo) / (target - 1)
    magnitude = Decimal(10) ** math.floor(raw.log10())
    step = next(m * magnitude for m in (1, 2, 5, 10) if raw <= m * magnitude)
    start = (lo / step).to_integral_value(rounding="ROUND_FLOOR") * step
    ticks = [start]
    while ticks[-1] < hi:
        ticks.append(ticks[-1] + step)
    return ticks


def _chart_id(kind: str, title: str, points: Sequence[Point]) -> str:
    digest = hashlib.sha256(repr((kind, title, [(str(k), str(v)) for k, v in points])).encode())
    return f"chart-{digest.hexdigest()[:10]}"


class _Frame:
    """Pixel geometry shared by both chart kinds."""

    def __init__(self, points: Sequence[Point], width: int, height: int) -> None:
        self.width, self.height = width, height
        self.left, self.right = MARGIN_LEFT, width - MARGIN_RIGHT
        self.top, self.bottom = MARGIN_TOP, height - MARGIN_BOTTOM
        values = [Decimal(value) for _label, value in points]
        self.ticks = nice_ticks(min(values), max(values))
        self.lo, self.hi = float(self.ticks[0]), float(self.ticks[-1])

    def y(self, value: Number | Decimal) -> float:
        share = (float(value) - self.lo) / (self.hi - self.lo)
        return round(self.bottom - share * (self.bottom - self.top), 2)

    def axes(self, value_format: ValueFormat) -> list[str]:
        parts = []
        for tick in self.ticks:
            y = self.y(tick)
            parts.append(
                f'<line x1="{self.left}" y1="{y}" x2="{self.right}" y2="{y}" stroke="{GRID}" stroke-width="1"/>'
            )
            parts.append(
                f'<text x="{self.left - 8}" y="{y}" text-anchor="end" dominant-baseline="middle" '
                f'fill="{MUTED}">{escape(value_format(tick))}</text>'
            )
        parts.append(
            f'<line x1="{self.left}" y1="{self.bottom}" x2="{self.right}" y2="{self.bottom}" '
            f'stroke="{MUTED}" stroke-width="1"/>'
        )
        return parts

    def x_label(self, x: float, label: str, anchor: str = "middle") -> str:
        return f'<text x="{x}" y="{self.bottom + 18}" text-anchor="{anchor}" fill="{MUTED}">{escape(label)}</text>'


def _x_label_stride(count: int) -> int:
    return max(1, math.ceil(count / MAX_X_LABELS))


def _svg(
    kind: str,
    points: Sequence[Point],
    *,
    title: str,
    description: str,
    width: int,
    height: int,
    body: list[str],
    chart_id: str | None,
) -> SafeString:
    ident = chart_id or _chart_id(kind, title, points)
    return mark_safe(  # noqa: S308 - every interpolated text was escaped above or here
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart chart-{kind}" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'aria-labelledby="{ident}-title {ident}-desc" font-size="12" font-family="inherit">'
        f'<title id="{ident}-title">{escape(title)}</title>'
        f'<desc id="{ident}-desc">{escape(description)}</desc>' + "".join(body) + "</svg>"
    )


def _summary(points: Sequence[Point], value_format: ValueFormat) -> str:
    values = [value for _label, value in points]
    return _("%(count)d points from %(first)s to %(last)s; lowest %(low)s, highest %(high)s.") % {
        "count": len(points),
        "first": points[0][0],
        "last": points[-1][0],
        "low": value_format(min(values)),
        "high": value_format(max(values)),
    }


def _empty(kind: str, *, title: str, width: int, height: int, chart_id: str | None) -> SafeString:
    message = _("No data yet.")
    body = [
        f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="{MUTED}">{escape(message)}</text>'
    ]
    return _svg(
        kind, [], title=title, description=message, width=width, height=height, body=body, chart_id=chart_id
    )


def line_chart(
    points: Sequence[Point],
    *,
    title: str,
    description: str = "",
    value_format: ValueFormat = default_format,
    width: int = 640,
    height: int = 240,
    chart_id: str | None = None,
) -> SafeString:
    """A line over evenly spaced categories (for example days), with a marker per point."""
    points = [(str(label), value) for label, value in points]
    if not points:
        return _empty("line", title=title, width=width, height=height, chart_id=chart_id)
    frame = _Frame(points, width, height)
    span = frame.right - frame.left
    count = len(points)
    xs = [round(frame.left + (span * i / (count - 1) if count > 1 else span / 2), 2) for i in range(count)]
    ys = [frame.y(value) for _label, value in points]
    body = frame.axes(value_format)
    coords = " ".join(f"{x},{y}" for x, y in zip(xs, ys, strict=True))
    baseline = frame.y(max(Decimal(0), Decimal(frame.ticks[0])))
    if count > 1:
        body.append(
            f'<polygon points="{xs[0]},{baseline} {coords} {xs[-1]},{baseline}" fill="{ACCENT_FILL}" '
            'fill-opacity="0.6" stroke="none"/>'
        )
    body.append(
        f'<polyline points="{coords}" fill="none" stroke="{ACCENT}" stroke-width="2" '
        'stroke-linejoin="round" stroke-linecap="round"/>'
    )
    stride = _x_label_stride(count)
    for i, ((label, value), x, y) in enumerate(zip(points, xs, ys, strict=True)):
        body.append(
            f'<circle cx="{x}" cy="{y}" r="3" fill="{ACCENT}">'
            f"<title>{escape(label)}: {escape(value_format(value))}</title></circle>"
        )
        if i % stride == 0:
            # The outermost labels sit on the plot's edges: anchor them inwards so none is clipped.
            anchor = "start" if i == 0 and count > 1 else "end" if i == count - 1 and count > 1 else "middle"
            body.append(frame.x_label(x, label, anchor))
    return _svg(
        "line",
        points,
        title=title,
        description=description or _summary(points, value_format),
        width=width,
        height=height,
        body=body,
        chart_id=chart_id,
    )


def bar_chart(
    points: Sequence[Point],
    *,
    title: str,
    description: str = "",
    value_format: ValueFormat = default_format,
    width: int = 640,
    height: int = 240,
    chart_id: str | None = None,
) -> SafeString:
    """One bar per category, from zero (bars of negative values hang below the zero line)."""
    points = [(str(label), value) for label, value in points]
    if not points:
        return _empty("bar", title=title, width=width, height=height, chart_id=chart_id)
    frame = _Frame(points, width, height)
    band = (frame.right - frame.left) / len(points)
    bar_width = round(max(1.0, band * 0.7), 2)
    zero = frame.y(0)
    body = frame.axes(value_format)
    stride = _x_label_stride(len(points))
    for i, (label, value) in enumerate(points):
        center = frame.left + band * (i + 0.5)
        y = frame.y(value)
        top, bar_height = min(y, zero), round(abs(zero - y), 2)
        body.append(
            f'<rect x="{round(center - bar_width / 2, 2)}" y="{top}" width="{bar_width}" '
            f'height="{bar_height}" fill="{ACCENT}" rx="2">'
            f"<title>{escape(label)}: {escape(value_format(value))}</title></rect>"
        )
        if i % stride == 0:
            body.append(frame.x_label(round(center, 2), label))
    return _svg(
        "bar",
        points,
        title=title,
        description=description or _summary(points, value_format),
        width=width,
        height=height,
        body=body,
        chart_id=chart_id,
    )
