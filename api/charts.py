"""Bar charts drawn on the server as inline SVG geometry (no script, no chart library, no CDN).

:func:`bar_chart` turns labelled integer amounts (minor units) into rectangles, axis ticks and
labels in a fixed coordinate system (the SVG ``viewBox``); the template only writes them out, and
Jinja escapes every label. Colours come from the page's stylesheet through classes, because the
pages' CSP (``style-src 'self'``) forbids inline ``style`` attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from billing import currency_exponent

__all__ = ["Bar", "BarChart", "Tick", "bar_chart", "display_amount"]

_PLOT_TOP = 16
_PLOT_HEIGHT = 200
_AXIS_WIDTH = 84
_LABEL_SPACE = 44
_SLOT = 64
_MIN_PLOT_WIDTH = 560
_BAR_SHARE = 0.62


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    amount: int
    text: str  # the amount as shown (and read by screen readers)
    short: str  # whole currency units, grouped, for the label above the bar
    folded: bool  # the ``other`` row that small cells were folded into
    x: float
    y: float
    width: float
    height: float
    label_x: float
    label_y: float
    value_y: float


@dataclass(frozen=True, slots=True)
class Tick:
    y: float
    text: str


@dataclass(frozen=True, slots=True)
class BarChart:
    title: str
    currency: str
    width: int
    height: int
    plot_left: int
    plot_right: int
    baseline: float
    bars: tuple[Bar, ...]
    ticks: tuple[Tick, ...]

    @property
    def description(self) -> str:
        return "; ".join(f"{bar.label}: {bar.text}" for bar in self.bars)


def display_amount(amount: int, currency: str, *, decimals: bool = True) -> str:
    """``12,345.67 EUR`` — grouped thousands, the currency's decimals (or none)."""
    exponent = currency_exponent(currency)
    sign = "-" if amount < 0 else ""
    major, minor = divmod(abs(amount), 10**exponent)
    if exponent == 0 or not decimals:
        return f"{sign}{major:,} {currency}"
    return f"{sign}{major:,}.{minor:0{exponent}d} {currency}"


def _nice_step(top: int, exponent: int) -> int:
    """A round tick step (1, 2 or 5 times a power of ten, in whole units) giving at most 5 intervals."""
    unit = int(10**exponent)
    rough = max(top / 5, 1)
    step = unit
    while step * 10 <= rough:
        step *= 10
    for multiple in (1, 2, 5, 10):
        if step * multiple >= rough:
            return step * multiple
    return step * 10  # pragma: no cover - the loop always returns


def bar_chart(
    title: str,
    currency: str,
    items: Sequence[tuple[str, int]],
    *,
    folded_label: str = "other",
    min_plot_width: int = _MIN_PLOT_WIDTH,
) -> BarChart:
    """A vertical bar chart of ``items`` (label, amount in minor units), in the given order.

    Negative amounts are drawn as empty bars on the baseline (their text still says the amount).
    The bar labelled ``folded_label`` is marked ``folded``: the small cells that suppression folded.
    The plot is ``min_plot_width`` wide at least (64 units per bar beyond that), so that a chart
    drawn for a given column of the page keeps its text at about the stylesheet's size.
    """
    exponent = currency_exponent(currency)
    largest = max((amount for _, amount in items), default=0)
    step = _nice_step(max(largest, 1), exponent)
    top = max(step, -(-largest // step) * step)
    plot_width = max(min_plot_width, _SLOT * len(items))
    width = _AXIS_WIDTH + plot_width + 16
    baseline = _PLOT_TOP + _PLOT_HEIGHT
    bars = []
    for index, (label, amount) in enumerate(items):
        slot_x = _AXIS_WIDTH + index * (plot_width / max(len(items), 1))
        slot_width = plot_width / max(len(items), 1)
        bar_width = min(slot_width * _BAR_SHARE, 56)
        height = _PLOT_HEIGHT * max(amount, 0) / top
        x = slot_x + (slot_width - bar_width) / 2
        bars.append(
            Bar(
                label=label,
                amount=amount,
                text=display_amount(amount, currency),
                short=display_amount(amount, currency, decimals=False).rsplit(" ", 1)[0],
                folded=label == folded_label,
                x=round(x, 2),
                y=round(baseline - height, 2),
                width=round(bar_width, 2),
                height=round(height, 2),
                label_x=round(slot_x + slot_width / 2, 2),
                label_y=baseline + 18,
                value_y=round(baseline - height - 6, 2),
            )
        )
    ticks = tuple(
        Tick(
            y=round(baseline - _PLOT_HEIGHT * value / top, 2),
            text=display_amount(value, currency, decimals=False),
        )
        for value in range(0, top + 1, step)
    )
    return BarChart(
        title=title,
        currency=currency,
        width=int(width),
        height=baseline + _LABEL_SPACE,
        plot_left=_AXIS_WIDTH,
        plot_right=int(_AXIS_WIDTH + plot_width),
        baseline=baseline,
        bars=tuple(bars),
        ticks=ticks,
    )
