"""Server-drawn bar charts: geometry proportional to the amounts, round ticks, the folded bar marked."""

from __future__ import annotations

import pytest

from api.charts import bar_chart, display_amount


def test_bars_are_proportional_and_share_one_baseline() -> None:
    chart = bar_chart("Net", "EUR", [("Jan 2026", 120_000), ("Feb 2026", 60_000), ("Other", 30_000)])
    jan, feb, other = chart.bars
    assert feb.height == pytest.approx(jan.height / 2)
    assert other.height == pytest.approx(jan.height / 4)
    assert {bar.y + bar.height for bar in chart.bars} == {chart.baseline}
    assert jan.x < feb.x < other.x
    assert (jan.folded, other.folded) == (False, False)
    assert bar_chart("Net", "EUR", [("a", 1), ("other", 1)]).bars[1].folded
    assert jan.text == "1,200.00 EUR" and jan.short == "1,200"
    assert chart.description == "Jan 2026: 1,200.00 EUR; Feb 2026: 600.00 EUR; Other: 300.00 EUR"


def test_ticks_are_round_and_cover_the_largest_bar() -> None:
    chart = bar_chart("Net", "EUR", [("a", 123_456)])
    values = [tick.text for tick in chart.ticks]
    assert values == ["0 EUR", "500 EUR", "1,000 EUR", "1,500 EUR"]
    assert chart.ticks[-1].y <= chart.bars[0].y
    assert [t.text for t in bar_chart("Net", "JPY", [("a", 7)]).ticks] == [
        "0 JPY",
        "2 JPY",
        "4 JPY",
        "6 JPY",
        "8 JPY",
    ]


def test_empty_zero_and_negative_amounts_draw_nothing_below_the_baseline() -> None:
    assert bar_chart("Net", "EUR", []).bars == ()
    zero, negative = bar_chart("Net", "EUR", [("z", 0), ("n", -500)]).bars
    assert zero.height == negative.height == 0
    assert negative.text == "-5.00 EUR"


def test_many_bars_widen_the_plot_instead_of_crowding_it() -> None:
    few = bar_chart("Net", "EUR", [(str(i), 100) for i in range(3)], min_plot_width=300)
    many = bar_chart("Net", "EUR", [(str(i), 100) for i in range(24)], min_plot_width=300)
    assert few.width < many.width
    assert many.bars[1].x - many.bars[0].x == pytest.approx(64)


def test_display_amount_groups_thousands_with_the_currencys_decimals() -> None:
    assert display_amount(123_456_789, "EUR") == "1,234,567.89 EUR"
    assert display_amount(1234, "JPY") == "1,234 JPY"
    assert display_amount(1234, "KWD") == "1.234 KWD"
    assert display_amount(-5, "EUR") == "-0.05 EUR"
