"""One place for the checks every environment must pass (Gymnasium's and SB3's checkers)."""

import numpy as np
from gymnasium.utils.env_checker import check_env as gym_check_env
from hypothesis import strategies as st
from stable_baselines3.common.env_checker import check_env as sb3_check_env


def run_checkers(env, recwarn) -> None:
    """Both checkers pass, and neither warns about the spaces."""
    gym_check_env(env)
    sb3_check_env(env, warn=True)
    assert not [w for w in recwarn if "space" in str(w.message).lower()]


def action_cases(n: int) -> st.SearchStrategy:
    """(action, is_valid): points of Box(-1, 1, (n,)) in several forms, and many kinds of malformed input."""
    unit = st.floats(-1.0, 1.0, allow_nan=False)
    vec = st.lists(unit, min_size=n, max_size=n)
    valid = st.one_of(vec.map(lambda v: np.array(v, np.float32)), vec,
                      st.lists(st.integers(-1, 1), min_size=n, max_size=n).map(np.array))
    bad_value = st.one_of(st.sampled_from([np.nan, np.inf, -np.inf]), st.floats(1.001, 1e30), st.floats(-1e30, -1.001))
    injected = st.tuples(vec, st.integers(0, n - 1), bad_value).map(
        lambda t: np.array(t[0][: t[1]] + [t[2]] + t[0][t[1] + 1:], np.float64))
    wrong_shape = st.one_of(
        st.integers(0, 3 * n + 2).filter(lambda k: k != n).map(lambda k: np.zeros(k, np.float32)),
        st.tuples(st.integers(1, 3), st.integers(1, n + 1)).map(lambda s: np.zeros(s, np.float32)),  # any 2-D
    )
    non_numeric = st.one_of(st.text(max_size=4), st.none(), st.dictionaries(st.text(max_size=2), unit, max_size=2),
                            st.lists(st.text(max_size=2), min_size=n, max_size=n),
                            st.just(np.ones(n, bool)), st.just(np.zeros(n, complex)),
                            st.just([None] * n), st.just([[0.1], [0.2, 0.3]]))
    kinds = {"valid": valid, "injected": injected, "wrong_shape": wrong_shape, "non_numeric": non_numeric}
    # a uniform choice of kind keeps the valid (costly: a KD step each) cases to about a quarter
    return st.sampled_from(sorted(kinds)).flatmap(lambda k: kinds[k].map(lambda a, k=k: (a, k == "valid")))
