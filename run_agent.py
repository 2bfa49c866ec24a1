"""Run a compression agent on an environment: ``python run_agent.py --env ENV --agent AGENT``.

Configs are layered: built-in defaults < configs/<agent>.yaml < --config YAML < command-line flags. The run
directory holds config.yaml (the resolved config), evaluations.jsonl (one line per reward evaluation,
written as it happens), cache.jsonl (scored students, so a resumed run never retrains one), checkpoint.pt
(agent state), summary.json, TensorBoard events (tb/), two plots and the best student (best_student.pt:
weights plus the spec to rebuild it). ``--resume DIR`` continues a killed run to the same budget.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

DEFAULTS: dict[str, Any] = {
    "env": None,
    "agent": None,
    "run": {
        "budget": 20,            # reward evaluations (None with a seconds-only budget)
        "budget_seconds": None,  # training seconds (evaluations' training plus white-box agents' own)
        "fidelity": "fast",      # configs/fidelity.yaml preset
        "mode": None,            # None: the agent's first supported mode
        "seed": 0,
        "device": None,          # None: cuda if available, else cpu
        "data_root": None,
        "download": False,
        "dataset_kwargs": {},    # e.g. synthetic sizes
        "env_kwargs": {},        # passed to gymnasium.make
        "load_policy": None,
        "save_best": True,       # retrain and save the best student when the agent did not
    },
    "agent_config": {},
}


# ---------------------------------------------------------------------------- configuration
def merge(base: dict, over: dict) -> dict:
    """Recursive dict merge: values in ``over`` win."""
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def agent_yaml(agent: str, preset: str | None) -> dict:
    """configs/<agent>.yaml as {run, agent_config}; a named preset section is merged on top."""
    path = Path(__file__).resolve().parent / "configs" / f"{agent}.yaml"
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    presets = data.pop("presets", {}) or {}
    out = {"run": data.pop("run", {}) or {}, "agent_config": data.pop("agent", data) or {}}
    if preset:
        if preset not in presets:
            raise ValueError(f"unknown preset {preset!r} for {agent}; {path.name} has {', '.join(presets) or 'none'}")
        section = presets[preset] or {}
        out = merge(out, {"run": section.get("run", {}), "agent_config": section.get("agent", {})})
    return out


def resolve_config(args: argparse.Namespace) -> dict:
    """defaults < configs/<agent>.yaml < --config < flags."""
    config = copy.deepcopy(DEFAULTS)
    user = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    agent = args.agent or (user or {}).get("agent")
    if agent:
        config = merge(config, agent_yaml(agent, args.preset or (user or {}).get("preset")))
    config = merge(config, user or {})
    flags = {"env": args.env, "agent": args.agent}
    config.update({k: v for k, v in flags.items() if v is not None})
    for key in ("budget", "budget_seconds", "fidelity", "mode", "seed", "device", "data_root", "load_policy"):
        value = getattr(args, key)
        if value is not None:
            config["run"][key] = value
    if args.budget_seconds is not None and args.budget is None:
        config["run"]["budget"] = None  # a seconds-only budget
    if args.download:
        config["run"]["download"] = True
    if not config.get("env") or not config.get("agent"):
        raise SystemExit("error: --env and --agent are required (or --resume DIR, or --list)")
    return config


# ---------------------------------------------------------------------------- building the run
def make_env(config: dict, run_dir: Path, space: str | None = None, **overrides: Any):
    """The environment of a run (or another space on the same teacher/data/fidelity)."""
    import gymnasium as gym

    import envs

    env_id = envs.parse_env_id(config["env"])
    if space is not None:
        _, _, rest = env_id.removeprefix("netcomp/").partition(config["env_space"] + "-")
        env_id = f"netcomp/{space}-{rest}"
    run = config["run"]
    kwargs = {"fidelity": run["fidelity"], "mode": config["mode"], "device": run["device"],
              "data_root": run["data_root"], "download": run["download"],
              "dataset_kwargs": run["dataset_kwargs"], "cache_path": str(run_dir / "cache.jsonl"),
              **run["env_kwargs"], **overrides}
    env = gym.make(env_id, disable_env_checker=True, **kwargs)
    env.reset(seed=run["seed"])
    return env


def build(config: dict, run_dir: Path, log) -> tuple[Any, Any]:
    """(recorder-wrapped env, agent) for a resolved config."""
    import envs
    from agents import get_agent
    from agents.base import Recorder, check_budget_units, check_compatible, make_config

    agent_cls = get_agent(config["agent"])
    env_id = envs.parse_env_id(config["env"])
    space = next(s for s in envs.SPACES if env_id.startswith(f"netcomp/{s}-"))
    config["env_space"] = space
    config["mode"] = config["run"]["mode"] or agent_cls.modes[0]
    check_compatible(agent_cls, space, config["mode"])  # a clear error before any teacher is trained
    check_budget_units(agent_cls, log.budget)
    agent_config = make_config(agent_cls.Config, config["agent_config"])

    def make_other(space_name: str, mode: str = "oneshot", **kwargs: Any) -> Recorder:
        other = dict(config, mode=mode)
        return Recorder(make_env(other, run_dir, space=space_name, **kwargs), log)

    env = Recorder(make_env(config, run_dir), log)
    agent = agent_cls(env, agent_config, seed=config["run"]["seed"], run_dir=run_dir, make_env=make_other)
    if config["run"]["load_policy"]:
        if not hasattr(agent, "load_policy"):
            raise SystemExit(f"error: agent {config['agent']!r} has no policy to load")
        agent.load_policy(config["run"]["load_policy"])
    return env, agent


def save_checkpoint(agent: Any, run_dir: Path) -> None:
    """Agent state, the evaluation count and the seconds the agent charged, written atomically."""
    from agents.base import save_atomic

    save_atomic({"agent": agent.state(), "evaluations": agent.budget.used,
                 "charged_seconds": agent.budget.charged_seconds}, run_dir / "checkpoint.pt")


# ---------------------------------------------------------------------------- reporting
def best_table(records: list[dict], top: int = 5) -> str:
    rows = sorted(records, key=lambda r: r["reward"], reverse=True)[:top]
    lines = [f"{'#':>4} {'reward':>8} {'valid':>5} {'val acc':>8} {'teacher':>8} {'params':>12} {'compr.':>7} "
             f"{'MACs':>14}"]
    for r in rows:
        lines.append(f"{r['index']:>4} {r['reward']:>8.4f} {str(r['valid']):>5} {r['accuracy'] or 0:>8.4f} "
                     f"{r['teacher_accuracy'] or 0:>8.4f} {r['params'] or 0:>12,} {r['compression'] or 0:>7.3f} "
                     f"{r['macs'] or 0:>14,}")
    return "\n".join(lines)


def write_plots(records: list[dict], run_dir: Path) -> None:
    """reward.png (reward over evaluations, best so far) and accuracy_vs_params.png (teacher marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not records:
        return
    rewards = [r["reward"] for r in records]
    best = [max(rewards[: i + 1]) for i in range(len(rewards))]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(rewards, ".", alpha=0.6, label="reward")
    ax.plot(best, "-", label="best so far")
    ax.set_xlabel("evaluation")
    ax.set_ylabel("reward")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "reward.png", dpi=100)
    plt.close(fig)
    valid = [r for r in records if r["valid"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([r["params"] for r in valid], [r["accuracy"] for r in valid], s=12, label="students")
    first = records[0]
    ax.scatter([first["teacher_params"]], [first["teacher_accuracy"]], marker="*", s=150, c="red", label="teacher")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("validation accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "accuracy_vs_params.png", dpi=100)
    plt.close(fig)


def save_best_student(env: Any, records: list[dict], run_dir: Path) -> dict | None:
    """Retrain the best valid student at the run's fidelity and save weights plus its spec."""
    from netcomp.surgery import save_student

    valid = [r for r in records if r["valid"] and r.get("space") == env.unwrapped.space]
    if not valid:
        return None
    best = max(valid, key=lambda r: r["reward"])
    base = env.unwrapped
    arch = base.student_for(best["action"])
    model, report = base.evaluator.train_final(arch, seed=base.train_seed)
    meta = {"index": best["index"], "reward": best["reward"], "search_val_accuracy": best["accuracy"], **report}
    save_student(run_dir / "best_student.pt", arch, model, meta)
    return meta


# ---------------------------------------------------------------------------- main
def list_everything() -> None:
    import envs
    from agents import AGENTS, get_agent
    from netcomp.data import DATASETS
    from netcomp.zoo import ARCHS

    print("Environments: netcomp/{space}-{arch}-{dataset}-v0 (short form space-arch-dataset)")
    print(f"  spaces:   {', '.join(envs.SPACES)}")
    print(f"  archs:    {', '.join(ARCHS)}")
    print(f"  datasets: {', '.join(DATASETS)}")
    print("\nAgents:")
    for name in AGENTS:
        cls = get_agent(name)
        print(f"  {name:<8} {cls.kind:<9} spaces: {', '.join(cls.spaces):<52} modes: {', '.join(cls.modes)}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", help="environment, e.g. removal-resnet18-cifar10 (or netcomp/...-v0)")
    p.add_argument("--agent", help="agent name (see --list)")
    p.add_argument("--budget", type=int, help="reward evaluations to spend")
    p.add_argument("--budget-seconds", dest="budget_seconds", type=float,
                   help="training seconds to spend (students' training plus white-box agents' own)")
    p.add_argument("--fidelity", help="smoke | fast | paper | esnac (configs/fidelity.yaml)")
    p.add_argument("--mode", choices=("oneshot", "sequential"), help="env mode (default: the agent's)")
    p.add_argument("--preset", help="a presets: section of configs/<agent>.yaml (e.g. fast)")
    p.add_argument("--config", help="a YAML file layered over the defaults")
    p.add_argument("--out", help="run directory (default runs/<env>-<agent>-<time>)")
    p.add_argument("--resume", help="continue the run in this directory")
    p.add_argument("--load-policy", dest="load_policy", help="start from a policy saved by another run")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--seed", type=int)
    p.add_argument("--data-root", dest="data_root", help="folder with the datasets (torchvision layout)")
    p.add_argument("--download", action="store_true", help="let torchvision download the dataset")
    p.add_argument("--list", action="store_true", help="list environments and agents")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        list_everything()
        return 0
    from tqdm import tqdm

    from agents.base import Budget, RunLog, read_records

    checkpoint = None
    if args.resume:
        run_dir = Path(args.resume)
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        if args.device:
            config["run"]["device"] = args.device
        if (run_dir / "checkpoint.pt").exists():
            checkpoint = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    else:
        config = resolve_config(args)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(args.out or f"runs/{config['env']}-{config['agent']}-{stamp}")
        if (run_dir / "evaluations.jsonl").exists():
            raise SystemExit(f"error: {run_dir} already holds a run; use --resume {run_dir} or another --out")
        run_dir.mkdir(parents=True, exist_ok=True)

    on_disk = read_records(run_dir / "evaluations.jsonl")
    done = checkpoint["evaluations"] if checkpoint else 0
    run = config["run"]
    budget = Budget(None if run["budget"] is None else int(run["budget"]), run.get("budget_seconds"), used=done,
                    charged_seconds=float(checkpoint.get("charged_seconds", 0.0)) if checkpoint else 0.0)
    log = RunLog(budget, run_dir / "evaluations.jsonl", records=on_disk[:done], skip_until=len(on_disk))
    if not args.resume or checkpoint is None:
        # a run killed before its first checkpoint restarts; the evaluation cache keeps its students
        log.records, log.skip_until, budget.used = [], len(on_disk), 0
    env, agent = build(config, run_dir, log)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if checkpoint:
        agent.load_state(checkpoint["agent"])
    agent.checkpoint = lambda: save_checkpoint(agent, run_dir)

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir / "tb"))
    bar = tqdm(total=budget.evaluations, initial=budget.used, desc=f"{config['agent']} on {config['env']}",
               unit="eval", disable=None)

    def on_evaluation(record: dict) -> None:
        writer.add_scalar("reward", record["reward"], record["index"])
        writer.add_scalar("accuracy", record["accuracy"] or 0.0, record["index"])
        writer.add_scalar("compression", record["compression"] or 0.0, record["index"])
        bar.update(1)
        bar.set_postfix(best=f"{max(r['reward'] for r in log.records):.4f}")

    log.callbacks.append(on_evaluation)
    start = time.perf_counter()
    agent.run()
    bar.close()
    writer.close()
    agent.checkpoint()
    records = read_records(run_dir / "evaluations.jsonl")
    best_meta = agent.notes.get("final")
    if best_meta is None and config["run"]["save_best"]:
        best_meta = save_best_student(env, records, run_dir)
    write_plots(records, run_dir)
    summary = {
        "env": config["env"], "agent": config["agent"], "budget": budget.evaluations,
        "budget_seconds": budget.seconds, "evaluations": len(records),
        "trained": sum(1 for r in records if not r.get("cached")), "eval_seconds": budget.eval_seconds,
        "charged_seconds": budget.charged_seconds,
        "wall_seconds": time.perf_counter() - start, "resumed": bool(args.resume),
        "best": max(records, key=lambda r: r["reward"], default=None), "best_student": best_meta,
        "notes": {k: v for k, v in agent.notes.items() if k != "final"},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"\nBest students ({len(records)} evaluations, run directory {run_dir}):")
    print(best_table(records))
    if best_meta:
        print("\nbest student:", json.dumps({k: v for k, v in best_meta.items() if k != "arch"}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
