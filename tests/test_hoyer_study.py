"""benchmarks/hoyer_fashion.py: regularisers compared at matched MACs by interpolating each seed's curve."""

import pytest

from benchmarks.hoyer_fashion import at_macs, matched_table


def _curve(*points):
    return [{"macs": m, "test_accuracy": a} for m, a in points]


def test_accuracy_is_interpolated_between_the_points_around_a_level_and_never_extrapolated():
    curve = _curve((500, 0.80), (900, 0.90), (700, None))  # an invalid point (no test accuracy) is left out
    assert at_macs(curve, 1000, 0.7) == pytest.approx(0.85)
    assert at_macs(curve, 1000, 0.5) == pytest.approx(0.80) and at_macs(curve, 1000, 0.9) == pytest.approx(0.90)
    assert at_macs(curve, 1000, 0.4) is None and at_macs(curve, 1000, 0.95) is None


def test_the_matched_table_gives_mean_std_and_the_seeds_that_span_each_level():
    curves = {"ghs": [_curve((500, 0.8), (900, 0.9)), _curve((500, 0.7), (900, 0.9))],
              "gl": [_curve((800, 0.85), (900, 0.9))]}
    table = matched_table(curves, 1000, [0.7, 0.85])
    # by hand: at 70% the seeds give 0.85 and 0.80; at 85% 0.8875 and 0.875
    assert "| ghs | 0.8250 ± 0.0354 (n=2) | 0.8812 ± 0.0088 (n=2) |" in table
    assert "| gl | not spanned | 0.8750 (n=1) |" in table
