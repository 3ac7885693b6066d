"""The comparison lines of the terminal summary."""

from __future__ import annotations

from pytest_perfreplay.replay.report import comparison_line
from pytest_perfreplay.replay.stats import Comparison


def comparison(ratio: float, low: float, high: float, p: float, significant: bool) -> Comparison:
    verdict = ("faster" if ratio > 1 else "slower") if significant else "no change"
    return Comparison(
        ratio=ratio, low=low, high=high, p_value=p, significant=significant,
        verdict=verdict, confidence=0.95, min_effect=0.01, method="test",
    )  # fmt: skip


def test_significant_speedup_and_slowdown_read_as_factors() -> None:
    assert (
        comparison_line(comparison(1.32, 1.29, 1.35, 1e-9, True), None)
        == "1.32x faster [1.29-1.35] vs previous, significant"
    )
    line = comparison_line(comparison(0.5, 0.48, 0.52, 1e-9, True), None)
    assert line == "2x slower [1.92-2.08] vs previous, significant"


def test_a_fired_test_inside_the_dead_band_says_why_it_is_no_change() -> None:
    line = comparison_line(comparison(0.942, 0.891, 0.997, 0.038, False), None)
    assert line == (
        "no significant change vs previous (0.942x [0.891-0.997], p=0.038, "
        "not surely beyond the 1% minimum effect)"
    )
    quiet = comparison_line(None, comparison(1.0, 0.95, 1.06, 0.94, False))
    assert quiet == "no significant change vs first (1x [0.95-1.06], p=0.94)"
