"""Inline SVG charts for the design report: a horizontal bar chart (the funnel) and overlaid histograms.

Hand-written SVG, so the report needs no plotting library and renders offline; every text is
escaped. Charts scale with their container (``viewBox``, no fixed pixel size); colours and fonts come
from the report's stylesheet through class names (``cf-bar``, ``cf-axis``, ``cf-window``, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

import numpy as np

WIDTH, HEIGHT = 560.0, 260.0
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 52.0, 16.0, 14.0, 44.0


@dataclass(frozen=True)
class Series:
    """One histogram's values, its legend label and its colour (any CSS colour)."""

    label: str
    values: Sequence[float]
    colour: str


def _num(x: float) -> str:
    """A coordinate with two decimals (short, and stable in tests)."""
    return f"{x:.2f}"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (steps of 1, 2 or 5 × 10^k) covering ``[low, high]``."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low] if math.isfinite(low) else []
    raw = (high - low) / max(count, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1.0, 2.0, 5.0, 10.0) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + 1e-9 * step:
        ticks.append(round(value, 12) + 0.0)  # + 0.0 turns -0.0 into 0.0
        value += step
    return ticks


def _tick_label(value: float) -> str:
    return f"{value:.4g}"


def bar_chart(items: Sequence[tuple[str, int]], *, label: str) -> str:
    """Horizontal bars, one per ``(name, count)``, longest = the largest count; ``label`` names the chart."""
    row, gap, name_width, count_width = 26.0, 6.0, 110.0, 60.0
    height = MARGIN_TOP / 2 + len(items) * (row + gap)
    span = WIDTH - name_width - count_width
    largest = max((count for _, count in items), default=0) or 1
    parts = [_open(WIDTH, height, label)]
    for i, (name, count) in enumerate(items):
        y = MARGIN_TOP / 2 + i * (row + gap)
        length = max(span * count / largest, 1.0 if count else 0.0)
        parts.append(
            f'<text class="cf-label" x="{_num(name_width - 8)}" y="{_num(y + row * 0.68)}" '
            f'text-anchor="end">{escape(name)}</text>'
            f'<rect class="cf-bar" x="{_num(name_width)}" y="{_num(y)}" width="{_num(length)}" '
            f'height="{_num(row)}"><title>{escape(name)}: {count}</title></rect>'
            f'<text class="cf-count" x="{_num(name_width + length + 6)}" y="{_num(y + row * 0.68)}">{count}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _open(width: float, height: float, label: str) -> str:
    return (
        f'<svg class="cf-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_num(width)} {_num(height)}" '
        f'role="img" aria-label="{escape(label)}"><title>{escape(label)}</title>'
    )


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray([float(v) for v in values], dtype=np.float64)
    return array[np.isfinite(array)]


def histogram(
    series: Sequence[Series],
    *,
    xlabel: str,
    window: tuple[float | None, float | None] | None = None,
    lines: Sequence[tuple[float, str]] = (),
    bins: int = 30,
    clip: tuple[float | None, float | None] = (None, None),
) -> str | None:
    """Overlaid histograms on shared bins, with a shaded target ``window`` and vertical ``lines``.

    ``window`` is ``(low, high)`` (either may be None: open on that side); ``lines`` are
    ``(x, label)``; ``clip`` bounds the axis, values beyond it are counted in the outermost bin (the
    axis label says so). Returns None when no series has a finite value.
    """
    data = [(s, _finite(s.values)) for s in series]
    if not any(values.size for _, values in data):
        return None
    everything = np.concatenate([values for _, values in data])
    low, high = float(everything.min()), float(everything.max())
    marks = [x for x, _ in lines] + [x for x in (window or (None, None)) if x is not None]
    low, high = min([low, *marks]), max([high, *marks])
    if clip[0] is not None and low < clip[0]:
        low = clip[0]
    if clip[1] is not None and high > clip[1]:
        high = clip[1]
    clipped = int(((everything < low) | (everything > high)).sum())
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    pad = 0.02 * (high - low)
    low, high = low - pad, high + pad
    edges = np.linspace(low, high, bins + 1)
    counts = [np.histogram(np.clip(values, low, high), bins=edges)[0] for _, values in data]
    top = max(int(c.max()) for c in counts) or 1
    margin_top = MARGIN_TOP + 14.0 * len(data)
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - margin_top - MARGIN_BOTTOM

    def x_of(value: float) -> float:
        return MARGIN_LEFT + plot_w * (value - low) / (high - low)

    def y_of(count: float) -> float:
        return margin_top + plot_h * (1.0 - count / top)

    name = f"histogram of {xlabel}"
    parts = [_open(WIDTH, HEIGHT, name)]
    if window is not None:
        w_low = low if window[0] is None else max(window[0], low)
        w_high = high if window[1] is None else min(window[1], high)
        if w_high > w_low:
            parts.append(
                f'<rect class="cf-window" x="{_num(x_of(w_low))}" y="{_num(margin_top)}" '
                f'width="{_num(x_of(w_high) - x_of(w_low))}" height="{_num(plot_h)}">'
                "<title>target window</title></rect>"
            )
    for (s, _), count in zip(data, counts, strict=True):
        for i, c in enumerate(count):
            if c:
                x0, x1 = x_of(edges[i]), x_of(edges[i + 1])
                parts.append(
                    f'<rect class="cf-hist" fill="{escape(s.colour)}" x="{_num(x0)}" y="{_num(y_of(c))}" '
                    f'width="{_num(max(x1 - x0 - 0.5, 0.5))}" height="{_num(y_of(0) - y_of(c))}">'
                    f"<title>{escape(s.label)}: {int(c)} in [{edges[i]:.4g}, {edges[i + 1]:.4g})</title></rect>"
                )
    for x, text in lines:
        if low <= x <= high:
            parts.append(
                f'<line class="cf-line" x1="{_num(x_of(x))}" x2="{_num(x_of(x))}" y1="{_num(margin_top)}" '
                f'y2="{_num(y_of(0))}"/><text class="cf-line-label" x="{_num(x_of(x) + 4)}" '
                f'y="{_num(margin_top + 12)}">{escape(text)}</text>'
            )
    parts.append(_axes(low, high, top, x_of, y_of))
    caption = xlabel if not clipped else f"{xlabel} ({clipped} beyond the axis, counted in the end bins)"
    parts.append(
        f'<text class="cf-axis-label" x="{_num(MARGIN_LEFT + plot_w / 2)}" y="{_num(HEIGHT - 6)}" '
        f'text-anchor="middle">{escape(caption)}</text>'
    )
    parts.append(_legend([(s.label, s.colour, int(v.size)) for s, v in data]))
    parts.append("</svg>")
    return "".join(parts)


def _axes(low: float, high: float, top: int, x_of: Callable[[float], float], y_of: Callable[[float], float]) -> str:
    """The x and y axes with ticks (``x_of``/``y_of`` map data to SVG coordinates)."""
    base, left = y_of(0), MARGIN_LEFT
    right = WIDTH - MARGIN_RIGHT
    parts = [
        f'<line class="cf-axis" x1="{_num(left)}" x2="{_num(right)}" y1="{_num(base)}" y2="{_num(base)}"/>',
        f'<line class="cf-axis" x1="{_num(left)}" x2="{_num(left)}" y1="{_num(y_of(top))}" y2="{_num(base)}"/>',
    ]
    for tick in nice_ticks(low, high):
        x = x_of(tick)
        parts.append(
            f'<line class="cf-axis" x1="{_num(x)}" x2="{_num(x)}" y1="{_num(base)}" y2="{_num(base + 4)}"/>'
            f'<text class="cf-tick" x="{_num(x)}" y="{_num(base + 16)}" text-anchor="middle">{_tick_label(tick)}</text>'
        )
    for tick in nice_ticks(0, top, 4):
        if tick != int(tick):
            continue
        y = y_of(tick)
        parts.append(
            f'<line class="cf-axis" x1="{_num(left - 4)}" x2="{_num(left)}" y1="{_num(y)}" y2="{_num(y)}"/>'
            f'<text class="cf-tick" x="{_num(left - 7)}" y="{_num(y + 4)}" text-anchor="end">{int(tick)}</text>'
        )
    return "".join(parts)


def _legend(entries: Sequence[tuple[str, str, int]]) -> str:
    parts = []
    for i, (label, colour, n) in enumerate(entries):
        y = 8 + 14 * i
        x = MARGIN_LEFT
        parts.append(
            f'<rect x="{_num(x)}" y="{_num(y)}" width="10" height="10" fill="{escape(colour)}" class="cf-hist"/>'
            f'<text class="cf-legend" x="{_num(x + 14)}" y="{_num(y + 9)}">{escape(label)} (n={n})</text>'
        )
    return "".join(parts)
