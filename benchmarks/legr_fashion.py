"""LeGR against its floors on real Fashion-MNIST: legr, l2-global, uniform and random, the same fine-tune.

Each agent runs on the ranking-affine env (``ranking-affine-ARCH-fashionmnist``, FLOPs target ``--target``,
the ``fast`` fidelity: its fitness is minus the validation loss after the fidelity's short distillation) through
``run_agent.py`` in this process, in ``--out/AGENT``:
- ``legr``: ``--budget`` candidates of regularised evolution (population and tournament from the command line);
- ``random``: ``--budget`` uniform actions of the same space (the best by reward is kept);
- ``l2-global`` and ``uniform``: one evaluation each (no search).
Every agent's chosen student is then fine-tuned with the same LeGR schedule (SGD Nesterov lr 0.01, the lr
times 0.2 at 30/60/80% of ``--epochs`` epochs over the first ``--train-max`` training images), and its
accuracy on the whole TEST split is reported. The search selects on the validation split only.
Usage: ``python -m benchmarks.legr_fashion [--budget 24] [--epochs 3] [--out runs/legr-fashion]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from baselines.legr import DeployConfig, finetune_report
from runner.recorder import read_records

AGENTS = ("legr", "l2-global", "uniform", "random")


def run_config(args: argparse.Namespace, agent: str) -> dict:
    """The --config of one agent's run: the same env, fidelity and fine-tune for all."""
    finetune = {"targets": [args.target], "final_epochs": args.epochs, "final_train_max": args.train_max,
                "final_follow_fidelity": False}
    agent_config = {"legr": {**finetune, "population": args.population, "sample": args.sample,
                             "candidates": args.budget},
                    "l2-global": finetune, "uniform": finetune, "random": {}}[agent]
    return {"run": {"fidelity": args.fidelity, "seed": args.seed, "env_kwargs": {"flops_target": args.target},
                    "save_best": False}, "agent_config": agent_config}


def run_agent(args: argparse.Namespace, agent: str) -> Path:
    """One agent's run in ``--out/AGENT`` (a finished run is read back, not rerun)."""
    import run_agent as cli

    out = Path(args.out) / agent
    if (out / "summary.json").exists():
        return out
    config = Path(args.out) / f"{agent}.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(run_config(args, agent)))
    budget = args.budget if agent in ("legr", "random") else 1
    code = cli.main(["--env", f"ranking-affine-{args.arch}-fashionmnist", "--agent", agent, "--budget", str(budget),
                     "--config", str(config), "--out", str(out)])
    if code != 0:
        raise SystemExit(f"{agent} failed ({code})")
    return out


def random_final(args: argparse.Namespace, out: Path) -> dict:
    """Random search's best student, fine-tuned with LeGR's schedule as the others are."""
    from envs.ranking_affine import RankingAffineEnv

    saved = out / "final.json"
    if saved.exists():
        return json.loads(saved.read_text())
    records = read_records(out / "evaluations.jsonl")
    best = max((r for r in records if r["valid"]), key=lambda r: r["reward"])
    env = RankingAffineEnv(arch=args.arch, dataset="fashionmnist", fidelity=args.fidelity, flops_target=args.target)
    config = DeployConfig(**run_config(args, "l2-global")["agent_config"])
    _, report = finetune_report(env, env.student_for(best["action"]), config, seed=args.seed)
    final = {**report, "index": best["index"], "search_reward": best["reward"],
             "macs_ratio": report["macs"] / env.evaluator.teacher_macs}
    saved.write_text(json.dumps(final, default=str))
    return final


def row(agent: str, out: Path, final: dict, seconds: float) -> str:
    records = read_records(out / "evaluations.jsonl")
    best = next(r for r in records if r["index"] == final["index"])
    return (f"| {agent} | {len(records)} | {best['reward']:.4f} | {best['accuracy']:.4f} | {final['macs_ratio']:.3f} | "
            f"{final['params']:,} | {final['val_accuracy']:.4f} | {final['test_accuracy']:.4f} | {seconds:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--fidelity", default="fast")
    parser.add_argument("--target", type=float, default=0.5, help="kept fraction of the teacher's MACs")
    parser.add_argument("--budget", type=int, default=24, help="evaluations of legr and random")
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--sample", type=int, default=3)
    parser.add_argument("--epochs", type=float, default=3.0, help="fine-tune epochs")
    parser.add_argument("--train-max", type=int, default=8192, help="fine-tune on the first N training images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/legr-fashion")
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), choices=AGENTS)
    args = parser.parse_args()
    lines = ["| agent | evaluations | best search reward (-val loss) | its val acc (search) | MACs / teacher | "
             "params | val acc (fine-tuned) | test acc (fine-tuned) | wall s |", "|---" * 9 + "|"]
    finals = {}
    for agent in args.agents:
        out = run_agent(args, agent)
        summary = json.loads((out / "summary.json").read_text())
        final = random_final(args, out) if agent == "random" else summary["best_student"]
        finals[agent] = final
        # the run's wall time (search and, but for random, the fine-tune) plus random's separate fine-tune
        seconds = summary["wall_seconds"] + (final["seconds"] if agent == "random" else 0.0)
        lines.append(row(agent, out, final, seconds))
        print("\n".join(lines), flush=True)
    teacher = next(iter(finals.values()))
    print(f"\nteacher test accuracy {teacher['teacher_test_accuracy']:.4f} on {teacher['test_images']} test images, "
          f"{teacher['teacher_params']:,} params")
    (Path(args.out) / "table.json").write_text(json.dumps(finals, indent=1, default=str))


if __name__ == "__main__":
    main()
