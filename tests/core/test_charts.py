"""Server-side SVG charts: structure, accessibility, escaping, axis ticks."""

import xml.etree.ElementTree as ET
from decimal import Decimal

import pytest
from django.template import Context, Template
from django.utils import translation

from core.charts import bar_chart, line_chart, nice_ticks

SVG = "{http://www.w3.org/2000/svg}"
POINTS = [("Mon", 3), ("Tue", 7), ("Wed", 0), ("Thu", 12)]


def parse(svg):
    return ET.fromstring(str(svg))


@pytest.mark.parametrize(
    ("low", "high", "ticks"),
    [
        (0, 12, [0, 5, 10, 15]),
        (3, 7, [0, 2, 4, 6, 8]),
        (0, 0, [0, Decimal("0.5"), 1]),
        (-4, 9, [-5, 0, 5, 10]),
        (0, 1_234_500_000, [0, 500_000_000, 1_000_000_000, 1_500_000_000]),
        (0, Decimal("0.8"), [0, Decimal("0.2"), Decimal("0.4"), Decimal("0.6"), Decimal("0.8")]),
    ],
)
def test_nice_ticks(low, high, ticks):
    assert nice_ticks(low, high) == ticks


def test_line_chart_is_an_accessible_svg():
    root = parse(line_chart(POINTS, title="Device-hours per day"))
    assert root.tag == f"{SVG}svg"
    assert root.get("role") == "img"
    title_id, desc_id = root.get("aria-labelledby").split()
    title = root.find(f"{SVG}title")
    desc = root.find(f"{SVG}desc")
    assert (title.get("id"), title.text) == (title_id, "Device-hours per day")
    assert desc.get("id") == desc_id
    assert desc.text == "4 points from Mon to Thu; lowest 0, highest 12."
    assert root.find(f"{SVG}polyline") is not None
    markers = root.findall(f"{SVG}circle")
    assert [m.find(f"{SVG}title").text for m in markers] == ["Mon: 3", "Tue: 7", "Wed: 0", "Thu: 12"]
    labels = [t.text for t in root.findall(f"{SVG}text")]
    assert labels == ["0", "5", "10", "15", "Mon", "Tue", "Wed", "Thu"]


def test_line_chart_geometry_puts_higher_values_higher():
    root = parse(line_chart(POINTS, title="t"))
    ys = {m.find(f"{SVG}title").text.split(":")[0]: float(m.get("cy")) for m in root.findall(f"{SVG}circle")}
    assert ys["Thu"] < ys["Tue"] < ys["Mon"] < ys["Wed"]


def test_bar_chart_has_one_bar_per_point_from_zero():
    root = parse(bar_chart(POINTS, title="Jobs"))
    bars = root.findall(f"{SVG}rect")
    assert [b.find(f"{SVG}title").text for b in bars] == ["Mon: 3", "Tue: 7", "Wed: 0", "Thu: 12"]
    bottoms = {round(float(b.get("y")) + float(b.get("height")), 1) for b in bars}
    assert len(bottoms) == 1  # every bar stands on the zero line
    heights = [float(b.get("height")) for b in bars]
    assert heights[3] == max(heights) and heights[2] == 0


def test_negative_bars_hang_below_zero():
    root = parse(bar_chart([("a", 5), ("b", -5)], title="Net"))
    a, b = root.findall(f"{SVG}rect")
    assert float(a.get("y")) + float(a.get("height")) == pytest.approx(float(b.get("y")))


def test_text_is_escaped():
    evil = '<script>alert("x")</script> & co'
    svg = str(bar_chart([(evil, 1)], title=evil, description=evil))
    assert "<script>" not in svg
    root = parse(svg)  # still well-formed XML
    assert root.find(f"{SVG}title").text == evil


def test_empty_chart_says_so():
    root = parse(line_chart([], title="Nothing"))
    assert root.find(f"{SVG}desc").text == "No data yet."


def test_many_points_thin_out_the_category_labels():
    points = [(f"d{i}", i) for i in range(30)]
    root = parse(line_chart(points, title="Month"))
    category_labels = [t.text for t in root.findall(f"{SVG}text") if t.text.startswith("d")]
    assert 4 <= len(category_labels) <= 8
    assert len(root.findall(f"{SVG}circle")) == 30


def test_output_is_deterministic():
    assert str(line_chart(POINTS, title="t")) == str(line_chart(POINTS, title="t"))


def test_template_tags_with_money_format():
    template = Template(
        '{% load charts %}{% bar_chart points title="Spend" format="money" currency="USD" chart_id="spend" %}'
    )
    with translation.override("en"):
        svg = template.render(Context({"points": [("Jan", 1_500_000), ("Feb", 2_250_000)]}))
    root = parse(svg)
    assert root.get("aria-labelledby") == "spend-title spend-desc"
    assert [b.find(f"{SVG}title").text for b in root.findall(f"{SVG}rect")] == ["Jan: $1.50", "Feb: $2.25"]
    assert [t.text for t in root.findall(f"{SVG}text")][:4] == ["$0.00", "$1.00", "$2.00", "$3.00"]
    tag = Template('{% load charts %}{% line_chart points title="Hours" %}')
    assert parse(tag.render(Context({"points": POINTS}))).get("class") == "chart chart-line"
