"""What a run shows a person: the table of its best students and its plots (written atomically)."""

from __future__ import annotations

import io
from pathlib import Path

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
