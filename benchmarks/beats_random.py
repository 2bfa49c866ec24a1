"""Does an agent beat random search beyond the seed spread? A comparison folder's best rewards, tested per agent.

For each agent of a comparison (``python run_agent.py ... --seeds N --out DIR``) against its ``random`` runs
(the same budget, env and fidelity): the mean best reward of each, the difference in units of random search's
seed std, and two one-sided tests over the seeds that the agent's best reward is higher: Mann-Whitney U (no
normality assumed) and Welch's t. With 10 seeds, p < 0.05 is a difference the seed spread does not explain.

    python -m benchmarks.beats_random runs/table-lenet-200
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import stats

from runner.compare import read_spec, run_label, run_result


def best_rewards(out: Path, agent: str, seeds: list[int]) -> np.ndarray:
    """The best reward of each of the agent's runs in the comparison folder (seeds with no record skipped)."""
    results = (run_result(agent, seed, out / run_label(agent, seed)) for seed in seeds)
    return np.array([r.best_reward for r in results if r is not None], np.float64)


def versus(agent: np.ndarray, random: np.ndarray) -> dict:
    """Means, the difference over random's seed std, and the one-sided p-values that ``agent`` is higher."""
    # equal rewards (every seed found the optimum) have no spread; np.std of them is rounding, not zero
    spread = float(np.std(random, ddof=1)) if len(random) > 1 and np.ptp(random) > 0 else float("nan")
    return {"n": len(agent), "mean": float(agent.mean()), "random_mean": float(random.mean()),
            "in_random_stds": (float(agent.mean() - random.mean()) / spread) if spread > 0 else float("nan"),
            "mann_whitney_p": float(stats.mannwhitneyu(agent, random, alternative="greater").pvalue),
            "welch_p": float(stats.ttest_ind(agent, random, equal_var=False, alternative="greater").pvalue)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a comparison folder holding random's runs")
    parser.add_argument("--baseline", default="random", help="the agent to beat (default: random)")
    args = parser.parse_args(argv)
    spec = read_spec(args.out)
    if args.baseline not in spec["agents"]:
        raise SystemExit(f"{args.out} has no {args.baseline!r} runs; its agents are {', '.join(spec['agents'])}")
    random = best_rewards(args.out, args.baseline, spec["seeds"])
    print(f"| agent | seeds | mean best reward | {args.baseline} | difference / {args.baseline}'s std "
          f"| Mann-Whitney p | Welch p | beyond the spread (p < 0.05) |")
    print("|---|---|---|---|---|---|---|---|")
    for agent in spec["agents"]:
        if agent == args.baseline:
            continue
        r = versus(best_rewards(args.out, agent, spec["seeds"]), random)
        stds = "-" if np.isnan(r["in_random_stds"]) else f"{r['in_random_stds']:+.1f}"
        print(f"| {agent} | {r['n']} | {r['mean']:.4f} | {r['random_mean']:.4f} | {stds} "
              f"| {r['mann_whitney_p']:.4f} | {r['welch_p']:.4f} | {'yes' if r['mann_whitney_p'] < 0.05 else 'no'} |")


if __name__ == "__main__":
    main()
