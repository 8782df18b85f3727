"""Server-side SVG charts for the dashboard, drawn for a page whose CSP forbids inline styles.

Only presentation attributes and classes, never `style=`: the page's Content-Security-Policy
would drop inline styles, and its own CSS can still override attributes through the classes.
"""

import re
from collections.abc import Sequence
from math import ceil

from markupsafe import Markup, escape

_PALETTE = ("#2f6fdf", "#e0663d", "#2e9d6a")
_WIDTH = 640.0
# Room for the max-value label on the left, the legend above and the x labels below.
_LEFT, _RIGHT, _TOP, _BOTTOM = 56.0, 8.0, 24.0, 24.0
_PLOT_HEIGHT = 160.0
# About 60 px per label at the viewBox width: more would overlap.
_MAX_X_LABELS = 10
_NAME_LIMIT = 32
_NAME_WIDTH, _VALUE_WIDTH, _ROW = 232.0, 72.0, 24.0
_FONT = 'font-family="system-ui, sans-serif" font-size="11" fill="#444"'
# XML 1.0 forbids these even as character references; one would make the SVG ill-formed.
_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _text(value: str) -> str:
    return str(escape(_ILLEGAL.sub("", value)))


def _n(x: float) -> str:
    return f"{x:.1f}".removesuffix(".0")


def _check(values: Sequence[int]) -> None:
    if any(value < 0 for value in values):
        raise ValueError(f"charts draw values >= 0, got {min(values)}")


def _svg(height: float, title: str, body: Sequence[str]) -> Markup:
    label = _text(title)
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_n(_WIDTH)} {_n(height)}"'
        f' preserveAspectRatio="xMidYMid meet" role="img" aria-label="{label}" class="chart">'
        f"<title>{label}</title>{''.join(body)}</svg>"
    )


def bars(
    labels: Sequence[str], series: Sequence[tuple[str, Sequence[int]]], *, title: str
) -> Markup:
    """A vertical bar chart: one group of bars per label (a day, an hour), one bar per series
    (up to 3 series, e.g. ("added", [...]), ("deducted", [...])), values >= 0 integers."""
    if not 1 <= len(series) <= len(_PALETTE):
        raise ValueError(f"bars() draws 1 to {len(_PALETTE)} series, got {len(series)}")
    for name, values in series:
        if len(values) != len(labels):
            raise ValueError(f"series {name!r} has {len(values)} values for {len(labels)} labels")
        _check(values)
    top = max((value for _, values in series for value in values), default=0)
    base = _TOP + _PLOT_HEIGHT
    body = [
        f'<line class="axis" x1="{_n(_LEFT)}" y1="{_n(base)}" x2="{_n(_WIDTH - _RIGHT)}"'
        f' y2="{_n(base)}" stroke="#888" stroke-width="1"/>',
        f'<text class="y-label" x="{_n(_LEFT - 6)}" y="{_n(_TOP + 4)}" text-anchor="end"'
        f" {_FONT}>{top:,}</text>",
    ]
    if len(series) > 1:
        x = _LEFT
        for index, (name, _) in enumerate(series):
            body.append(
                f'<rect class="legend s{index}" x="{_n(x)}" y="6" width="10" height="10"'
                f' fill="{_PALETTE[index]}"/><text class="legend" x="{_n(x + 14)}" y="15"'
                f" {_FONT}>{_text(name)}</text>"
            )
            # A rough text width: the legend only needs to not overlap itself.
            x += 30 + 7 * len(name)
    slot = (_WIDTH - _LEFT - _RIGHT) / max(len(labels), 1)
    width = slot * 0.8 / len(series)
    step = ceil(len(labels) / _MAX_X_LABELS)
    for i, label in enumerate(labels):
        for index, (name, values) in enumerate(series):
            height = values[i] / top * _PLOT_HEIGHT if top else 0.0
            x = _LEFT + i * slot + slot * 0.1 + index * width
            body.append(
                f'<rect class="bar s{index}" x="{_n(x)}"'
                f' y="{_n(base - height)}" width="{_n(width)}" height="{_n(height)}"'
                f' fill="{_PALETTE[index]}"><title>{_text(label)} \u00b7 {_text(name)}:'
                f" {values[i]:,}</title></rect>"
            )
        if i % step == 0:
            body.append(
                f'<text class="x-label" x="{_n(_LEFT + (i + 0.5) * slot)}" y="{_n(base + 16)}"'
                f' text-anchor="middle" {_FONT}>{_text(label)}</text>'
            )
    return _svg(base + _BOTTOM, title, body)


def ranking(rows: Sequence[tuple[str, int]], *, title: str) -> Markup:
    """Horizontal bars, one row per (name, value), longest first as given (caller sorts)."""
    _check([value for _, value in rows])
    top = max((value for _, value in rows), default=0)
    room = _WIDTH - _NAME_WIDTH - _VALUE_WIDTH
    body = []
    for i, (name, value) in enumerate(rows):
        y = 4 + i * _ROW
        # Truncated before escaping, so an entity is never cut in half or counted as characters.
        shown = name if len(name) <= _NAME_LIMIT else name[: _NAME_LIMIT - 1] + "\u2026"
        width = value / top * room if top else 0.0
        body.append(
            f'<text class="name" x="0" y="{_n(y + 16)}" {_FONT}>{_text(shown)}</text>'
            f'<rect class="bar s0" x="{_n(_NAME_WIDTH)}" y="{_n(y + 4)}" width="{_n(width)}"'
            f' height="{_n(_ROW - 8)}" fill="{_PALETTE[0]}"><title>{_text(name)}: {value:,}</title>'
            f'</rect><text class="value" x="{_n(_WIDTH)}" y="{_n(y + 16)}" text-anchor="end"'
            f" {_FONT}>{value:,}</text>"
        )
    return _svg(8 + max(len(rows), 1) * _ROW, title, body)
