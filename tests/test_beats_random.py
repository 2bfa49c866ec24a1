"""benchmarks/beats_random.py: the per-agent test against random search's seeds."""

import numpy as np
import pytest

from benchmarks.beats_random import versus


def test_a_clear_win_is_beyond_the_spread_and_a_loss_is_not():
    random = np.array([0.0, 1.0, 2.0, 1.0])
    win = versus(np.array([5.0, 6.0, 7.0, 6.0]), random)
    assert win["in_random_stds"] == pytest.approx(5.0 / np.std(random, ddof=1))
    assert win["mann_whitney_p"] < 0.05 and win["welch_p"] < 0.05 and win["n"] == 4
    lose = versus(np.array([-3.0, -2.0, -1.0, -2.0]), random)
    assert lose["mann_whitney_p"] > 0.5 and lose["in_random_stds"] < 0


def test_the_exact_mann_whitney_p_of_three_against_three():
    # every one of the agent's 3 values above random's 3: 1 of the C(6, 3) = 20 orderings
    assert versus(np.array([4.0, 5.0, 6.0]), np.array([1.0, 2.0, 3.0]))["mann_whitney_p"] == pytest.approx(1 / 20)


def test_a_random_search_without_spread_gives_no_ratio_not_a_huge_one():
    """Every random seed found the same optimum: the std is rounding noise, so the ratio is undefined."""
    optimum = np.full(10, -1.1453817069)
    r = versus(np.full(10, -1.15), optimum)
    assert np.isnan(r["in_random_stds"])
