"""Charts drawn on the server as SVG: no JavaScript library, no CDN, nothing to build.

:func:`line_chart` draws one or more per-minute series; its ``<svg>`` carries ``data-chart``
(its name), ``data-total`` (the sum of every point) and ``data-last`` (the last point of the
first series), which tests and curious operators can read.  Every text is escaped.
"""
from __future__ import annotations

import time
from typing import Sequence

from markupsafe import Markup, escape

__all__ = ["line_chart", "PALETTE"]

#: Series colours (colour-blind-safe Okabe-Ito hues).
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#f0e442", "#000000")

WIDTH, HEIGHT = 640, 170
LEFT, RIGHT, TOP, BOTTOM = 46, 10, 12, 24


def _nice_max(value: float) -> float:
    """A round axis maximum at or above ``value``."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10.0 * magnitude


def _label(value: float, unit: str) -> str:
    if unit == "s" and value >= 120:
        return f"{value / 60:g} min"
    return f"{value:g}{' ' + unit if unit else ''}"


def line_chart(name: str, title: str, times: Sequence[float], series: dict[str, Sequence[float]],
               unit: str = "") -> Markup:
    """An SVG chart of ``series`` (label -> one value per time of ``times``).

    :param name: a short identifier (``data-chart``).
    :param times: the end of each minute (epoch seconds), for the x axis labels.
    :param unit: shown on the y axis (``"s"`` for seconds).
    """
    count = len(times)
    values = [v for s in series.values() for v in s]
    top = _nice_max(max(values, default=0.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + (plot_w * i / max(1, count - 1))

    def y(v: float) -> float:
        return TOP + plot_h - (plot_h * v / top)

    first = next(iter(series.values()), [])
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'data-chart="{escape(name)}" data-total="{sum(values):g}" data-last="{(first[-1] if first else 0):g}">',
        f"<title>{escape(title)}</title>",
    ]
    for fraction in (0, 0.5, 1):  # grid lines and y labels
        gy = y(top * fraction)
        parts.append(f'<line class="grid" x1="{LEFT}" y1="{gy:.1f}" x2="{WIDTH - RIGHT}" y2="{gy:.1f}"/>')
        parts.append(f'<text class="axis" x="{LEFT - 4}" y="{gy + 4:.1f}" text-anchor="end">'
                     f"{escape(_label(top * fraction, unit))}</text>")
    if count:
        for i in (0, count // 2, count - 1):  # x labels: clock times, UTC
            anchor = "start" if i == 0 else "end" if i == count - 1 else "middle"
            parts.append(f'<text class="axis" x="{x(i):.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}">'
                         f'{time.strftime("%H:%M", time.gmtime(times[i]))}</text>')
    for n, (label, points) in enumerate(series.items()):
        colour = PALETTE[n % len(PALETTE)]
        coords = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(points))
        parts.append(f'<polyline class="series" fill="none" stroke="{colour}" stroke-width="2" '
                     f'data-series="{escape(label)}" points="{coords}"><title>{escape(label)}</title></polyline>')
    if not values or not any(values):
        parts.append(f'<text class="empty" x="{LEFT + plot_w / 2:.0f}" y="{TOP + plot_h / 2:.0f}" '
                     'text-anchor="middle">nothing in the last hour</text>')
    parts.append("</svg>")
    legend = "".join(f'<li><span class="swatch swatch-{n % len(PALETTE)}"></span>{escape(label)}</li>'
                     for n, label in enumerate(series))
    return Markup(f'<figure class="chart-box"><figcaption>{escape(title)}</figcaption>{"".join(parts)}'
                  f'<ul class="legend">{legend}</ul></figure>')
