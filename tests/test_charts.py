"""The dashboard's SVG charts: well-formed, escaped, proportional, and fit for a strict CSP."""

import re
import xml.etree.ElementTree as ET

import pytest
from markupsafe import Markup

from api.dashboard.charts import bars, ranking

SVG = "{http://www.w3.org/2000/svg}"
EVIL = "<img src=x onerror=alert(1)>"
ESCAPED = "&lt;img src=x onerror=alert(1)&gt;"
HOURS = [f"{hour % 24:02d}:00" for hour in range(48)]


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def with_class(root: ET.Element, tag: str, name: str) -> list[ET.Element]:
    return [el for el in root.iter(f"{SVG}{tag}") if name in el.get("class", "").split()]


def heights(svg: str) -> dict[str, float]:
    """Each bar's height by its hover text."""
    return {
        "".join(rect.itertext()): float(rect.get("height", "nan"))
        for rect in with_class(parse(svg), "rect", "bar")
    }


def test_a_chart_is_one_scalable_svg_with_its_title_first() -> None:
    svg = bars(["mon", "tue"], [("added", [1, 2])], title="Credits added")
    assert isinstance(svg, Markup)
    root = parse(svg)
    assert root.tag == f"{SVG}svg"
    assert re.fullmatch(r"0 0 \d+(\.\d)? \d+(\.\d)?", root.get("viewBox", ""))
    assert "width" not in root.attrib and "height" not in root.attrib
    assert (root.get("role"), root.get("aria-label"), root.get("class")) == (
        "img",
        "Credits added",
        "chart",
    )
    assert root[0].tag == f"{SVG}title" and root[0].text == "Credits added"
    assert parse(ranking([("a", 1)], title="Top apps"))[0].text == "Top apps"


def test_caller_text_is_escaped_and_reads_back_unchanged() -> None:
    charts = [
        bars([EVIL], [(EVIL, [3]), ("b", [1])], title=EVIL),
        ranking([(EVIL, 3)], title=EVIL),
    ]
    for svg in charts:
        assert "<img" not in svg
        assert ESCAPED in svg
        root = parse(svg)
        assert root.get("aria-label") == EVIL
        texts = [el.text for el in root.iter(f"{SVG}text")]
        assert EVIL in texts
        assert not any(el.tag.endswith("img") for el in root.iter())
    assert f"{EVIL} \u00b7 {EVIL}: 3" in heights(charts[0])


def test_bar_heights_are_proportional_to_the_largest_value_of_any_series() -> None:
    svg = bars(["a", "b", "c"], [("added", [100, 50, 0]), ("deducted", [25, 0, 200])], title="t")
    height = heights(svg)
    tallest = height["c \u00b7 deducted: 200"]
    assert tallest > 0
    assert height["a \u00b7 added: 100"] == pytest.approx(tallest / 2, abs=0.1)
    assert height["b \u00b7 added: 50"] == pytest.approx(tallest / 4, abs=0.1)
    assert height["a \u00b7 deducted: 25"] == pytest.approx(tallest / 8, abs=0.1)
    assert height["c \u00b7 added: 0"] == 0
    rects = with_class(parse(svg), "rect", "bar")
    assert len({round(float(r.get("y", "")) + float(r.get("height", "")), 1) for r in rects}) == 1
    assert {r.get("class") for r in rects} == {"bar s0", "bar s1"}
    assert {r.get("fill") for r in rects} == {"#2f6fdf", "#e0663d"}


def test_numbers_have_thousands_separators() -> None:
    svg = bars(["day"], [("added", [1234567])], title="t")
    assert [el.text for el in with_class(parse(svg), "text", "y-label")] == ["1,234,567"]
    assert list(heights(svg)) == ["day \u00b7 added: 1,234,567"]
    root = parse(ranking([("app", 9876543)], title="t"))
    assert [el.text for el in with_class(root, "text", "value")] == ["9,876,543"]


def test_all_zero_and_empty_inputs_render() -> None:
    svg = bars(["a", "b"], [("added", [0, 0]), ("deducted", [0, 0])], title="t")
    assert set(heights(svg).values()) == {0.0}
    assert len(heights(svg)) == 4
    assert [el.text for el in with_class(parse(svg), "text", "y-label")] == ["0"]
    root = parse(ranking([("a", 0), ("b", 0)], title="t"))
    assert {r.get("width") for r in with_class(root, "rect", "bar")} == {"0"}
    assert heights(bars([], [("added", [])], title="t")) == {}
    assert list(parse(ranking([], title="t")).iter(f"{SVG}rect")) == []


def test_x_labels_are_thinned_so_they_do_not_overlap() -> None:
    hourly = parse(bars(HOURS, [("added", list(range(48)))], title="t"))
    shown = [el.text for el in with_class(hourly, "text", "x-label")]
    assert 5 <= len(shown) <= 12
    assert shown[0] == "00:00"
    assert len(heights(bars(HOURS, [("added", list(range(48)))], title="t"))) == 48
    days = [f"d{day}" for day in range(30)]
    daily = parse(bars(days, [("added", [1] * 30)], title="t"))
    assert [el.text for el in with_class(daily, "text", "x-label")] == days[::3]
    few = parse(bars(["a", "b", "c"], [("added", [1, 2, 3])], title="t"))
    assert [el.text for el in with_class(few, "text", "x-label")] == ["a", "b", "c"]


def test_a_legend_names_the_series_only_when_there_are_several() -> None:
    one = parse(bars(["a"], [("added", [1])], title="t"))
    assert with_class(one, "text", "legend") == []
    three = parse(bars(["a"], [("added", [1]), ("deducted", [2]), ("expired", [3])], title="t"))
    assert [el.text for el in with_class(three, "text", "legend")] == [
        "added",
        "deducted",
        "expired",
    ]


def test_output_is_fit_for_a_strict_csp_and_deterministic() -> None:
    charts = [
        bars(HOURS, [("added", list(range(48))), ("deducted", [7] * 48)], title="t"),
        ranking([("a" * 50, 3), ("b", 1)], title="t"),
    ]
    for svg in charts:
        assert "style" not in svg.lower()
        assert "<script" not in svg.lower()
        assert "href" not in svg and "url(" not in svg
        assert not any(" on" in attr for el in parse(svg).iter() for attr in el.attrib)
        for name in ("x", "y", "width", "height", "x1", "y1", "x2", "y2"):
            for el in parse(svg).iter():
                if name in el.attrib:
                    assert re.fullmatch(r"\d+(\.\d)?", el.attrib[name]), (name, el.attrib)
    assert charts[0] == bars(HOURS, [("added", list(range(48))), ("deducted", [7] * 48)], title="t")


def test_ranking_truncates_long_names_before_escaping() -> None:
    exact = "n" * 32
    rows = [("x" * 40, 1000), (exact, 500), ("&" * 40, 250)]
    root = parse(ranking(rows, title="t"))
    names = [el.text for el in with_class(root, "text", "name")]
    assert names == ["x" * 31 + "\u2026", exact, "&" * 31 + "\u2026"]
    assert all(len(name or "") == 32 for name in names)
    widths = [float(r.get("width", "nan")) for r in with_class(root, "rect", "bar")]
    assert widths[1] == pytest.approx(widths[0] / 2, abs=0.1)
    assert widths[2] == pytest.approx(widths[0] / 4, abs=0.1)
    assert [el.text for el in with_class(root, "text", "value")] == ["1,000", "500", "250"]
    # The hover text keeps the whole name.
    assert "".join(with_class(root, "rect", "bar")[0].itertext()) == "x" * 40 + ": 1,000"


def test_misuse_is_refused() -> None:
    with pytest.raises(ValueError, match="series"):
        bars(["a"], [(str(i), [1]) for i in range(4)], title="t")
    with pytest.raises(ValueError, match="values for"):
        bars(["a", "b"], [("added", [1])], title="t")
    with pytest.raises(ValueError, match=">= 0"):
        bars(["a"], [("added", [-1])], title="t")
    with pytest.raises(ValueError, match=">= 0"):
        ranking([("a", -5)], title="t")
