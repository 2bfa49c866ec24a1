"""Policy transfer to a larger teacher: does a policy trained on one teacher find better students sooner on a
bigger one than the same agent starting from scratch?

For each agent and seed: a *source* run on the smaller teacher saves its policy (``policy.pt``); then two runs
on the larger teacher with the same budget, one starting from that policy (``--load-policy``: *transferred*)
and one from scratch. Every run is an ordinary run directory made by ``run_agent.py`` (a killed study resumes:
a finished run is skipped, an unfinished one is resumed)::

    DIR/<agent>/source-s<seed>/   DIR/<agent>/transferred-s<seed>/   DIR/<agent>/scratch-s<seed>/

and the study writes ``DIR/transfer.md`` (per agent: the final best of each arm, mean ± sample std over seeds,
the difference in units of scratch's seed std, the one-sided Mann-Whitney and Welch p-values that transfer's
final best is higher (:func:`benchmarks.beats_random.versus`, scratch in the place of random search),
the evaluations and training seconds each run took to reach scratch's mean final best, and what the source
training cost) and ``DIR/<agent>_best_so_far.png`` (the comparison harness's best-so-far figure with
"transferred" and "scratch" as its two agents).

The agents (``--agents``): ``ppo`` (SB3 PPO in sequential mode on the channel-ratio space; its source can be
trained on a table, ``--ppo-source-fidelity table``), ``n2n`` (both stages: removal then shrinkage; its two
LSTM policies transfer) and ``esnac`` (the learned architecture embedding, reused with no fitting).

    python -m benchmarks.transfer_study --out runs/transfer --source lenet5 --target lenet5caffe \\
        --dataset fashionmnist --seeds 3 --ppo-source-fidelity table
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from benchmarks.beats_random import versus
from runner.compare import best_so_far
from runner.plots import best_so_far_figure
from runner.recorder import read_records
from runner.report import save_figure

ROOT = Path(__file__).resolve().parent.parent
ARMS = ("transferred", "scratch")


@dataclass(frozen=True)
class Plan:
    """How one agent is trained on the source teacher and run on the target teacher."""

    space: str                      # the env space of both teachers
    source_budget: int              # evaluations of the source run
    target_budget: int              # evaluations of each target run (both arms)
    mode: str | None = None         # the env mode (None: the agent's default)
    agent_config: dict | None = None  # keys layered over configs/<agent>.yaml (--config)


#: The study's agents. PPO updates every 64 steps (16 four-layer episodes); N2N samples 5 students per policy
#: epoch and gives half of its budget to each stage; ESNAC asks 8 kernels per step. None trains a final student
#: of its own: the study compares searches.
PLANS = {
    "ppo": Plan("channel-ratio", source_budget=1000, target_budget=100, mode="sequential"),
    "n2n": Plan("removal", source_budget=100, target_budget=100, agent_config={"finetune": False}),
    "esnac": Plan("edit", source_budget=48, target_budget=48, agent_config={"candidates": 200, "top_k": 0}),
}


def run_dir(out: Path, agent: str, arm: str, seed: int) -> Path:
    """Where one run of the study lives."""
    return out / agent / f"{arm}-s{seed}"


def run_once(directory: Path, env: str, agent: str, plan: Plan, budget: int, seed: int, fidelity: str,
             policy: Path | None, extra_config: Path | None) -> None:
    """One run_agent.py run into ``directory``: skipped when finished, resumed when a kill left it unfinished."""
    if (directory / "summary.json").exists():
        return
    command = [sys.executable, str(ROOT / "run_agent.py"), "--agent", agent, "--threads", "1"]
    if (directory / "config.yaml").exists():  # the policy file is named in its config.yaml
        command += ["--resume", str(directory)]
    else:
        command += ["--env", env, "--budget", str(budget), "--seed", str(seed), "--fidelity", fidelity,
                    "--out", str(directory)]
        command += ["--mode", plan.mode] if plan.mode else []
        command += ["--load-policy", str(policy)] if policy else []
        command += ["--config", str(layered_config(directory.parent, agent, plan, extra_config))]
    print(" ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def layered_config(folder: Path, agent: str, plan: Plan, extra: Path | None) -> Path:
    """The --config file of an agent's runs: ``extra`` (e.g. a test's data), the plan's agent keys, and no
    final training or export of a best student (the study compares searches, not finished students)."""
    config = yaml.safe_load(extra.read_text()) if extra else {}
    config["run"] = {**config.get("run", {}), "save_best": False, "export": False}
    config["agent_config"] = {**config.get("agent_config", {}), **(plan.agent_config or {})}
    path = folder / f"{agent}.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_study(args: argparse.Namespace) -> None:
    """Every source run, then both target arms of every agent and seed."""
    for agent in args.agents:
        plan = PLANS[agent]
        source_fidelity = (args.ppo_source_fidelity or args.fidelity) if agent == "ppo" else args.fidelity
        for seed in range(args.seeds):
            source = run_dir(args.out, agent, "source", seed)
            env = f"{plan.space}-{args.source}-{args.dataset}"
            run_once(source, env, agent, plan, args.source_budget or plan.source_budget, seed, source_fidelity,
                     None, args.config)
            for arm in ARMS:
                policy = source / "policy.pt" if arm == "transferred" else None
                run_once(run_dir(args.out, agent, arm, seed), f"{plan.space}-{args.target}-{args.dataset}", agent,
                         plan, args.target_budget or plan.target_budget, seed, args.fidelity, policy, args.config)


def records_of(directory: Path) -> list[dict]:
    """A run's records (a multi-fidelity agent's lower rungs too: they spend seconds, but never count as a
    best: :func:`runner.compare.best_so_far`)."""
    return read_records(directory / "evaluations.jsonl")


def training_seconds(directory: Path) -> float:
    """What a finished run spent: its students' training seconds (simulated on a table) and its own."""
    summary = json.loads((directory / "summary.json").read_text())
    return float(summary["eval_seconds"]) + float(summary["charged_seconds"])


def reach(records: list[dict], threshold: float) -> tuple[int | None, float | None]:
    """The evaluations and training seconds a run took until its best reward so far reached ``threshold``."""
    best, seconds = best_so_far(records)
    for i, value in enumerate(best):
        if value >= threshold:
            return i + 1, seconds[i]
    return None, None


def agent_result(out: Path, agent: str, seeds: int) -> dict:
    """The figures of one agent's rows in transfer.md."""
    runs = {arm: [records_of(run_dir(out, agent, arm, s)) for s in range(seeds)] for arm in ARMS}
    finals = {arm: np.array([best_so_far(recs)[0][-1] for recs in runs[arm]]) for arm in ARMS}
    threshold = float(finals["scratch"].mean())
    sources = [records_of(run_dir(out, agent, "source", s)) for s in range(seeds)]
    return {
        "runs": runs, "finals": finals, "threshold": threshold,
        "test": versus(finals["transferred"], finals["scratch"]),
        "reach": {arm: [reach(recs, threshold) for recs in runs[arm]] for arm in ARMS},
        "source_evaluations": [len(r) for r in sources],
        "source_seconds": [training_seconds(run_dir(out, agent, "source", s)) for s in range(seeds)],
        "target_evaluations": [len(r) for r in runs["scratch"]],
    }


def _mean_std(values: np.ndarray | list[float]) -> str:
    """``mean ± sample std`` of a table cell."""
    values = np.asarray(values, np.float64)
    std = values.std(ddof=1) if len(values) > 1 else float("nan")
    return f"{values.mean():.4f} ± {std:.4f}"


def _reached(pairs: list[tuple[int | None, float | None]]) -> str:
    """Each seed's (evaluations, seconds) to reach the threshold, or ``never``, as a table cell."""
    return ", ".join("never" if n is None else f"{n} ({s:.0f} s)" for n, s in pairs)


def report(out: Path, agents: list[str], seeds: int, title: str) -> str:
    """transfer.md's table and each agent's best-so-far figure."""
    lines = [f"# {title}", "",
             "| agent | source: evaluations, training s (mean) | transferred: final best | scratch: final best "
             "| difference / scratch's std | Mann-Whitney p | Welch p | transferred reaches scratch's mean "
             "best at evaluation (training s), per seed | scratch reaches it at |",
             "|---|---|---|---|---|---|---|---|---|"]
    for agent in agents:
        r = agent_result(out, agent, seeds)
        lines.append(
            f"| {agent} | {np.mean(r['source_evaluations']):.0f}, {np.mean(r['source_seconds']):.0f} "
            f"| {_mean_std(r['finals']['transferred'])} | {_mean_std(r['finals']['scratch'])} "
            f"| {r['test']['in_random_stds']:+.1f} | {r['test']['mann_whitney_p']:.3f} | {r['test']['welch_p']:.3f} "
            f"| {_reached(r['reach']['transferred'])} "
            f"| {_reached(r['reach']['scratch'])} |")
        figure = best_so_far_figure(r["runs"], f"{title}: {agent}, {seeds} seeds, "
                                               f"{r['target_evaluations'][0]} evaluations each")
        save_figure(figure, out / f"{agent}_best_so_far.png")
    text = "\n".join(lines) + "\n"
    (out / "transfer.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the study's folder (a rerun resumes it)")
    parser.add_argument("--source", default="lenet5", help="the smaller teacher's arch")
    parser.add_argument("--target", default="lenet5caffe", help="the larger teacher's arch")
    parser.add_argument("--dataset", default="fashionmnist")
    parser.add_argument("--agents", type=lambda s: s.split(","), default=list(PLANS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--fidelity", default="rank", help="the fidelity of every live run")
    parser.add_argument("--ppo-source-fidelity",
                        help="PPO's source runs' fidelity (default: --fidelity); 'table' trains it on the source's "
                             "shipped table")
    parser.add_argument("--source-budget", type=int, help="every source run's evaluations (default: the plan's)")
    parser.add_argument("--target-budget", type=int, help="every target run's evaluations (default: the plan's)")
    parser.add_argument("--config", type=Path, help="a --config YAML layered under every run's agent keys")
    args = parser.parse_args(argv)
    unknown = [a for a in args.agents if a not in PLANS]
    if unknown:
        parser.error(f"unknown agent(s) {unknown}: the study knows {', '.join(PLANS)}")
    run_study(args)
    print(report(args.out, args.agents, args.seeds,
                 f"Transfer {args.source} -> {args.target} on {args.dataset}"))


if __name__ == "__main__":
    main()
