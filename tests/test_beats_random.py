"""benchmarks/beats_random.py: the per-agent test against random search's seeds."""

import json

import numpy as np
import pytest
import yaml

from benchmarks.beats_random import evaluations_to, read_runs, report, to_optimum, versus, write_figure


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


# ---------------------------------------------------------------- several folders of one comparison, on a table
OPTIMUM = 1.0


def _spec(agents: list[str], budget: int = 4) -> dict:
    return {"env": "removal-resnet20-fashionmnist", "agents": agents, "seeds": [0, 1], "preset": None,
            "run": {"budget": budget, "budget_seconds": None, "fidelity": "table", "device": None, "data_root": None,
                    "download": False, "teacher": None, "workers": None, "ray_address": None, "threads": 1,
                    "export": True, "teacher_model": None, "env_kwargs": {"granularity": "block"}},
            "agent_sources": {}, "agent_configs": {}}


def _folder(root, name: str, runs: dict[tuple[str, int], list[float]], budget: int = 4):
    out = root / name
    out.mkdir()
    (out / "compare.yaml").write_text(yaml.safe_dump(_spec(sorted({a for a, _ in runs}), budget)))
    for (agent, seed), rewards in runs.items():
        run = out / f"{agent}-s{seed}"
        run.mkdir()
        lines = [{"index": i, "action": [i % 2, seed], "reward": r, "valid": True, "eval_seconds": 1.0}
                 for i, r in enumerate(rewards)]
        (run / "evaluations.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        (run / "summary.json").write_text(json.dumps({"table_optimum": OPTIMUM}))
    return out


RANDOM = {("random", 0): [0.1, 0.5, 0.9, 1.0], ("random", 1): [0.2, 0.3, 0.4, 0.8]}


def test_folders_of_one_comparison_are_read_as_one_with_the_optimums_figures(tmp_path):
    first = _folder(tmp_path, "a", {**RANDOM, ("ppo", 0): [0.5, 0.6, 0.7, 0.8], ("ppo", 1): [0.6, 0.6, 0.6, 0.6]})
    later = _folder(tmp_path, "b", {**RANDOM, ("n2n", 0): [0.3, 1.0, 0.2, 0.2], ("n2n", 1): [1.0, 0.1, 0.1, 0.1],
                                    ("esnac", 0): [0.2, 0.3], ("esnac", 1): [1.0, 1.0, 1.0, 1.0]})
    runs = read_runs([first, later])
    assert list(runs.records) == ["ppo", "random", "esnac", "n2n"] and runs.optimum == OPTIMUM
    assert list(runs.records["esnac"]) == [1]
    assert list(runs.left_out.values()) == [f"esnac seed 0: 2 of 4 evaluations ({later / 'esnac-s0'})"]
    # a run unfinished in one folder and finished in a later one is read from the later one, not left out
    again = read_runs([later, _folder(tmp_path, "c", {**RANDOM, ("esnac", 0): [0.2, 0.3, 1.0, 0.4]})])
    assert list(again.records["esnac"]) == [1, 0] and not again.left_out
    assert evaluations_to(runs.records["n2n"][0], OPTIMUM) == 2
    assert evaluations_to(runs.records["random"][1], OPTIMUM) is None
    n2n = to_optimum(runs.records["n2n"], runs.records["random"], OPTIMUM)
    assert n2n["found"] == 2 and n2n["median"] == 1.5 and n2n["regret_mean"] == 0.0
    # random needed 4 and 5 (never: the budget + 1) evaluations, n2n 2 and 1: every pair favours n2n, 1 of C(4, 2)
    assert n2n["fewer_p"] == pytest.approx(1 / 6)
    ppo = to_optimum(runs.records["ppo"], runs.records["random"], OPTIMUM)
    assert ppo["found"] == 0 and ppo["median"] is None and ppo["regret_mean"] == pytest.approx(0.3)
    text = report(runs)
    assert "| n2n | 2 | 1.0000 | 0.9000 |" in text and "| 0.0000 ± 0.0000 | 2 | 1.5 | 0.1667 |" in text
    write_figure(runs, tmp_path / "regret.png")
    assert (tmp_path / "regret.png").stat().st_size > 10_000


def test_folders_that_are_not_one_comparison_are_refused(tmp_path):
    first = _folder(tmp_path, "a", dict(RANDOM))
    other_budget = _folder(tmp_path, "b", dict(RANDOM), budget=3)
    with pytest.raises(SystemExit, match="budget differ"):
        read_runs([first, other_budget])
    other_draws = _folder(tmp_path, "c", {**RANDOM, ("random", 1): [0.2, 0.3, 0.4, 0.7]})
    with pytest.raises(SystemExit, match="random seed 1 .* differs"):
        read_runs([first, other_draws])
