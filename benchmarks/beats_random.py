"""Does an agent beat random search beyond the seed spread? A comparison's best rewards, tested per agent.

For each agent of a comparison (``python run_agent.py ... --seeds N --out DIR``) against its ``random`` runs
(the same budget, env and fidelity): the mean best reward of each, the difference in units of random search's
seed std, and two one-sided tests over the seeds that the agent's best reward is higher: Mann-Whitney U (no
normality assumed) and Welch's t. With 10 seeds, p < 0.05 is a difference the seed spread does not explain.

On a table the optimum is known, and the table adds: the regret (optimum - best reward), how many seeds found
the optimum, the median evaluation at which they did, and a one-sided Mann-Whitney test that the agent needed
fewer evaluations than random search (a seed that never found it counts as the budget + 1).

Several folders of one comparison (an agent run later with the same env, budget, fidelity and seeds, e.g.
``--agent random,esnac --out runs/x-esnac``) are read as one: each agent's runs come from the first folder
that has them, and random search's runs in a later folder must equal those of the first (else the merged
tests would set an agent against other draws). A run with fewer evaluations than the budget (still running,
or killed) and found finished in no folder is left out and named. ``--figure PATH`` draws the merged regret
figure (best reward so far without a table) of every agent:

    python -m benchmarks.beats_random runs/table-lenet-200
    python -m benchmarks.beats_random runs/table-block-1000 runs/table-block-1000-n2n --figure regret.png
"""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from runner.compare import best_so_far, mean_std, read_spec, run_label
from runner.recorder import best, read_records

#: The settings of compare.yaml's ``run`` that must agree for two folders to be one comparison.
SAME_RUN = ("budget", "budget_seconds", "fidelity", "env_kwargs", "dataset_kwargs", "teacher", "teacher_model")
#: Two rewards of one table entry are equal; the slack only absorbs a float printed and read back.
AT_OPTIMUM = 1e-9


@dataclass
class Runs:
    """The finished runs of one or more comparison folders: agent -> seed -> records, and what was left out."""

    spec: dict
    records: dict[str, dict[int, list[dict]]] = field(default_factory=dict)
    optimum: float | None = None
    left_out: dict[tuple[str, int], str] = field(default_factory=dict)


def read_runs(outs: list[Path]) -> Runs:
    """Every finished run of the folders (see the module docstring); SystemExit when they are not one
    comparison, or when a later folder's runs of an agent differ from the first folder's."""
    runs = Runs(read_spec(outs[0]))
    for out in outs:
        spec = read_spec(out) if out != outs[0] else runs.spec
        _check_same(runs.spec, spec, outs[0], out)
        for agent in spec["agents"]:
            for seed in spec["seeds"]:
                _add_run(runs, agent, seed, out / run_label(agent, seed))
    for agent, seed in [key for key in runs.left_out if key[1] in runs.records.get(key[0], {})]:
        del runs.left_out[agent, seed]  # finished in another folder
    return runs


def _check_same(first: dict, other: dict, first_out: Path, out: Path) -> None:
    differ = [key for key in SAME_RUN if first["run"].get(key) != other["run"].get(key)]
    if first["env"] != other["env"]:
        differ.insert(0, "env")
    if differ:
        raise SystemExit(f"{out} is not the same comparison as {first_out}: its {', '.join(differ)} differ")


def _add_run(runs: Runs, agent: str, seed: int, run_dir: Path) -> None:
    records = read_records(run_dir / "evaluations.jsonl")
    budget = runs.spec["run"].get("budget")
    if not records or (budget is not None and len(records) < budget):
        done = f"{len(records)} of {budget} evaluations" if records else "not run"
        runs.left_out.setdefault((agent, seed), f"{agent} seed {seed}: {done} ({run_dir})")
        return
    known = runs.records.setdefault(agent, {}).get(seed)
    if known is not None:
        if [(r.get("action"), r["reward"]) for r in known] != [(r.get("action"), r["reward"]) for r in records]:
            raise SystemExit(f"{agent} seed {seed} in {run_dir} differs from the same run read before it: the "
                             f"folders' {agent} runs are not the same draws, so they are not one comparison")
        return
    runs.records[agent][seed] = records
    summary = run_dir / "summary.json"
    optimum = json.loads(summary.read_text()).get("table_optimum") if summary.exists() else None
    if optimum is not None:
        if runs.optimum is not None and float(optimum) != runs.optimum:
            raise SystemExit(f"{run_dir} was run on a table whose optimum is {optimum}, not {runs.optimum}")
        runs.optimum = float(optimum)


def best_rewards(records: dict[int, list[dict]]) -> np.ndarray:
    """The best reward of each run (seed order)."""
    return np.array([best(records[s])["reward"] for s in sorted(records)], np.float64)


def evaluations_to(records: list[dict], optimum: float) -> int | None:
    """The evaluation (1-based) at which a run first scored the optimum; None when it never did."""
    return next((i + 1 for i, value in enumerate(best_so_far(records)[0]) if value >= optimum - AT_OPTIMUM), None)


def versus(agent: np.ndarray, random: np.ndarray) -> dict:
    """Means, the difference over random's seed std, and the one-sided p-values that ``agent`` is higher."""
    # equal rewards (every seed found the optimum) have no spread; np.std of them is rounding, not zero
    spread = float(np.std(random, ddof=1)) if len(random) > 1 and np.ptp(random) > 0 else float("nan")
    with warnings.catch_warnings():  # equal values (seeds at the optimum): scipy warns, the p is still defined
        warnings.simplefilter("ignore", RuntimeWarning)
        welch = float(stats.ttest_ind(agent, random, equal_var=False, alternative="greater").pvalue)
    return {"n": len(agent), "mean": float(agent.mean()), "random_mean": float(random.mean()),
            "in_random_stds": (float(agent.mean() - random.mean()) / spread) if spread > 0 else float("nan"),
            "mann_whitney_p": float(stats.mannwhitneyu(agent, random, alternative="greater").pvalue),
            "welch_p": welch}


def to_optimum(agent: dict[int, list[dict]], random: dict[int, list[dict]], optimum: float) -> dict:
    """Regret, the seeds that found the optimum, their median evaluation to it, and the one-sided Mann-Whitney
    p that the agent needed fewer evaluations than random search (a seed that never found it: budget + 1)."""
    def evaluations(runs: dict[int, list[dict]]) -> list[int]:
        return [evaluations_to(r, optimum) or len(r) + 1 for r in runs.values()]

    regret_mean, regret_std, _ = mean_std(list(optimum - best_rewards(agent)))
    found = [e for r in agent.values() if (e := evaluations_to(r, optimum)) is not None]
    return {"regret_mean": regret_mean, "regret_std": regret_std, "found": len(found),
            "median": float(np.median(found)) if found else None,
            "fewer_p": float(stats.mannwhitneyu(evaluations(agent), evaluations(random), alternative="less").pvalue)}


def report(runs: Runs, baseline: str = "random") -> str:
    """The Markdown table of every agent against ``baseline`` (see the module docstring)."""
    base = runs.records.get(baseline)
    if not base:
        raise SystemExit(f"no finished {baseline!r} runs; the agents are {', '.join(runs.records) or 'none'}")
    table = runs.optimum is not None
    head = (f"| agent | seeds | mean best reward | {baseline} | difference / {baseline}'s std | Mann-Whitney p "
            f"| Welch p | beyond the spread (p < 0.05) |")
    rule = "|---|---|---|---|---|---|---|---|"
    if table:
        head += (" regret (mean ± std) | seeds that found the optimum | evaluations to it (median) "
                 "| p, fewer evaluations |")
        rule += "---|---|---|---|"
    lines = [head, rule]
    for agent, records in runs.records.items():
        if agent == baseline and not table:
            continue
        line = (f"| {agent} | {len(records)} | {best_rewards(records).mean():.4f} | - | - | - | - | - |"
                if agent == baseline else _versus_cells(agent, best_rewards(records), best_rewards(base)))
        if table:
            o = to_optimum(records, base, runs.optimum)
            median = "-" if o["median"] is None else f"{o['median']:g}"
            fewer = "-" if agent == baseline else f"{o['fewer_p']:.4f}"
            line += f" {o['regret_mean']:.4f} ± {o['regret_std']:.4f} | {o['found']} | {median} | {fewer} |"
        lines.append(line)
    return "\n".join(lines)


def _versus_cells(agent: str, mine: np.ndarray, base: np.ndarray) -> str:
    """The first eight cells of an agent's row: its best rewards against the baseline's (:func:`versus`)."""
    r = versus(mine, base)
    stds = "-" if np.isnan(r["in_random_stds"]) else f"{r['in_random_stds']:+.1f}"
    return (f"| {agent} | {r['n']} | {r['mean']:.4f} | {r['random_mean']:.4f} | {stds} | {r['mann_whitney_p']:.4f} "
            f"| {r['welch_p']:.4f} | {'yes' if r['mann_whitney_p'] < 0.05 else 'no'} |")


def write_figure(runs: Runs, path: Path) -> None:
    """The merged regret figure (on a table) or best-reward-so-far figure of every agent's finished runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from runner.plots import best_so_far_figure, comparison_title, regret_figure
    from runner.report import save_figure

    curves = {agent: [records[s] for s in sorted(records)] for agent, records in runs.records.items()}
    title = comparison_title(runs.spec)
    fig = (regret_figure(curves, dict.fromkeys(curves, runs.optimum), title) if runs.optimum is not None
           else best_so_far_figure(curves, title))
    save_figure(fig, path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outs", type=Path, nargs="+", help="comparison folders of one comparison, the first "
                                                           "holding random's runs")
    parser.add_argument("--baseline", default="random", help="the agent to beat (default: random)")
    parser.add_argument("--figure", type=Path, help="write the merged regret (or best-so-far) figure here")
    args = parser.parse_args(argv)
    runs = read_runs(args.outs)
    print(report(runs, args.baseline))
    for line in runs.left_out.values():
        print(f"left out (unfinished): {line}")
    if args.figure is not None:
        write_figure(runs, args.figure)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
