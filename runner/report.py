"""What a run shows a person: the table of its best students and its plots (written atomically)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from netcomp.files import write_atomic


def best_table(records: list[dict], top: int = 5) -> str:
    """The ``top`` records by reward as a fixed-width table."""
    rows = sorted(records, key=lambda r: r["reward"], reverse=True)[:top]
    lines = [f"{'#':>4} {'reward':>8} {'valid':>5} {'val acc':>8} {'teacher':>8} {'params':>12} {'compr.':>7} "
             f"{'MACs':>14}"]
    for r in rows:
        lines.append(f"{r['index']:>4} {r['reward']:>8.4f} {str(r['valid']):>5} {r['accuracy'] or 0:>8.4f} "
                     f"{r['teacher_accuracy'] or 0:>8.4f} {r['params'] or 0:>12,} {r['compression'] or 0:>7.3f} "
                     f"{r['macs'] or 0:>14,}")
    return "\n".join(lines)


def save_figure(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    write_atomic(path, lambda f: f.write(buffer.getvalue()))


def stage_switches(records: list[dict]) -> list[tuple[int, str, str]]:
    """Where a run moved to another space: (position in ``records``, old space, new space) at each change of
    the records' ``space`` (N2N's removal then shrinkage). Empty for a one-space run."""
    return [(i, a.get("space"), b.get("space")) for i, (a, b) in enumerate(zip(records, records[1:]), 1)
            if a.get("space") != b.get("space")]


def mark_stages(ax: Any, xs: list[float], label: str) -> None:
    """Dotted vertical lines at the ``xs`` where a run switched stage, one legend entry for them all."""
    for i, x in enumerate(sorted(set(xs))):
        ax.axvline(x, color="0.35", linestyle=":", linewidth=1.2, label=label if i == 0 else None, gid="stage")


def run_title(run_dir: Path, records: list[dict]) -> str:
    """A run's plot title: env, agent, fidelity, budget and seed from its config.yaml (the env id of its
    records when that file cannot be read)."""
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    run = config.get("run") or {}
    env = config.get("env") or (records[0].get("replay") or {}).get("env_id", "?")
    budget = (f"budget {run['budget']} evaluations" if run.get("budget") else
              f"budget {run['budget_seconds']} training s" if run.get("budget_seconds") else "")
    parts = [str(env), str(config.get("agent") or ""), f"fidelity {run['fidelity']}" if run.get("fidelity") else "",
             budget, f"seed {run['seed']}" if run.get("seed") is not None else ""]
    return " | ".join(p for p in parts if p)


def reward_figure(records: list[dict], title: str) -> Any:
    """Every evaluation's reward (dots; invalid students as crosses at their penalty), the best so far as a step
    line, and the evaluations where the run switched stage (N2N's removal then shrinkage)."""
    import matplotlib.pyplot as plt

    x = np.arange(1, len(records) + 1)
    rewards = np.array([float(r["reward"]) for r in records])
    valid = np.array([bool(r["valid"]) for r in records])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x[valid], rewards[valid], ".", alpha=0.6, label="reward of a student")
    if (~valid).any():
        ax.plot(x[~valid], rewards[~valid], "x", color="0.5", alpha=0.6, label="invalid student (penalty)")
    ax.step(x, np.maximum.accumulate(rewards), where="post", label="best so far", gid="best_so_far")
    switches = stage_switches(records)
    if switches:
        mark_stages(ax, [i + 0.5 for i, _, _ in switches],
                    "stage switch: " + " then ".join([switches[0][1], *(new for _, _, new in switches)]))
    ax.set(xlabel="evaluation", ylabel="reward", title=title)
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_plots(records: list[dict], run_dir: Path) -> None:
    """reward.png (every reward, the best so far, stage switches, titled with the run's settings) and
    accuracy_vs_params.png (teacher marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not records:
        return
    fig = reward_figure(records, run_title(run_dir, records))
    save_figure(fig, run_dir / "reward.png")
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
    save_figure(fig, run_dir / "accuracy_vs_params.png")
    plt.close(fig)
