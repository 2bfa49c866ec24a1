"""A comparison's plots: best_so_far.png, pareto.png and (on a table) regret.png.

Each figure says what it compares in its title (env, fidelity, budget, seeds) and names its axes in words with
units, so it reads without the command that made it:

- ``best_so_far.png``: per agent, the mean best reward so far over its seeds (a step line) and the min-max band,
  against evaluations and against training seconds; where a run switched stage (N2N: removal, then
  shrinkage) a dotted line;
- ``pareto.png``: accuracy against parameters and MACs (log axes, labelled at 1-2-3-5 where they fit): every
  valid student, each agent's non-dominated front over its seeds (:func:`netcomp.pareto.pareto_front`) as a
  step line, its best-reward student ringed, each run's best student after the shared final training (test
  accuracy) with a line from where the search scored it, and the teacher: a star and a line at its accuracy on
  the validation images the students are scored on, and a dashed line at its fully trained test accuracy
  when known, so short-trained students are set against the teacher measured the same way;
- ``regret.png``: on a tabular benchmark, the table's best reward minus the best so far.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from netcomp.pareto import pareto_front
from runner.compare import best_so_far, run_label
from runner.recorder import best, full_fidelity, read_records
from runner.report import mark_stages, save_figure, stage_switches

#: The size axes of pareto.png: record key and its name in words.
SIZES = (("params", "parameters"), ("macs", "MACs"))
#: Units a size axis may be written in: (divisor, word).
UNITS = ((1e9, "billions"), (1e6, "millions"), (1e3, "thousands"), (1.0, ""))


def write_comparison_plots(out: Path, spec: dict[str, Any]) -> None:
    """best_so_far.png, pareto.png and, when the runs know their table's optimum, regret.png of a comparison."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {agent: [recs for seed in spec["seeds"] if (recs := read_records(out / run_label(agent, seed) /
                                                                           "evaluations.jsonl"))]
            for agent in spec["agents"]}
    summaries = {agent: [_summary(out / run_label(agent, seed)) for seed in spec["seeds"]] for agent in spec["agents"]}
    optima = {agent: float(s["table_optimum"]) for agent, sums in summaries.items() for s in sums
              if s.get("table_optimum") is not None}
    title = comparison_title(spec)
    figures = {"best_so_far.png": best_so_far_figure(runs, title, simulated=bool(optima)),
               "pareto.png": pareto_figure(runs, summaries, title, scored_at(runs, spec))}
    if optima:
        figures["regret.png"] = regret_figure(runs, optima, title)
    for name, fig in figures.items():
        save_figure(fig, out / name)
        plt.close(fig)


def _summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


def scored_at(runs: dict[str, list[list[dict]]], spec: dict[str, Any]) -> str:
    """The fidelity the students' accuracies come from: the run's, or on a table the one it was scored at."""
    asked = str(spec["run"].get("fidelity"))
    recorded = next(((r[0].get("replay") or {}).get("fidelity") for seeds in runs.values() for r in seeds), None)
    return f"{recorded} fidelity (from the table)" if asked == "table" and recorded else f"{asked} fidelity"


def comparison_title(spec: dict[str, Any]) -> str:
    """env | fidelity | budget | seeds, from compare.yaml's spec."""
    run, seeds = spec["run"], spec["seeds"]
    budget = " + ".join(part for part in (f"{run['budget']} evaluations" if run.get("budget") else "",
                                          f"{run['budget_seconds']:g} training s" if run.get("budget_seconds")
                                          else "") if part)
    return (f"{spec['env']} | fidelity {run.get('fidelity')} | budget {budget} per run | "
            f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))})")


# ---------------------------------------------------------------------------- best so far, regret
def best_so_far_figure(runs: dict[str, list[list[dict]]], title: str, simulated: bool = False) -> Any:
    """Best reward so far against evaluations and training seconds, a band over seeds per agent, and each
    agent's stage switches."""
    import matplotlib.pyplot as plt

    fig, (by_evals, by_seconds) = plt.subplots(1, 2, figsize=(12, 4.5))
    for agent, seeds in runs.items():
        if not seeds:
            continue
        curves = [best_so_far(r) for r in seeds]
        _band(by_evals, agent, [np.arange(1, len(r) + 1) for r in seeds], [c[0] for c in curves])
        _band(by_seconds, agent, [c[1] for c in curves], [c[0] for c in curves])
        _stage_lines(by_evals, by_seconds, agent, seeds, curves)
    seconds = "training seconds (simulated: the table's recorded trainings)" if simulated else "training seconds"
    for ax, label in ((by_evals, "evaluations"), (by_seconds, seconds)):
        ax.set(xlabel=label, ylabel="best reward so far")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _stage_lines(by_evals: Any, by_seconds: Any, agent: str, seeds: list[list[dict]], curves: list) -> None:
    """Mark where an agent's runs switched stage: between two evaluations, and at the seconds spent by then."""
    at_evals, at_seconds, names = [], [], ""
    for records, (_, seconds) in zip(seeds, curves):
        for i, old, new in stage_switches(records):
            at_evals.append(i + 0.5)
            at_seconds.append(seconds[i - 1])
            names = f"{agent}: {old} then {new}"
    if at_evals:
        mark_stages(by_evals, at_evals, names)
        mark_stages(by_seconds, at_seconds, names)


def regret_figure(runs: dict[str, list[list[dict]]], optima: dict[str, float], title: str) -> Any:
    """The table's best reward minus the best so far, against evaluations and (simulated) training seconds."""
    import matplotlib.pyplot as plt

    fig, (by_evals, by_seconds) = plt.subplots(1, 2, figsize=(12, 4.5))
    drawn: list[float] = []
    for agent, seeds in runs.items():
        if seeds and agent in optima:
            curves = [best_so_far(r) for r in seeds]
            regrets = [[optima[agent] - v for v in c[0]] for c in curves]
            drawn += [v for r in regrets for v in r if math.isfinite(v)]
            _band(by_evals, agent, [np.arange(1, len(r) + 1) for r in seeds], regrets)
            _band(by_seconds, agent, [c[1] for c in curves], regrets)
    for ax, label in ((by_evals, "evaluations"), (by_seconds, "training seconds (simulated on a table)")):
        ax.set(xlabel=label, ylabel="regret: table optimum - best reward so far")
        log_axis(ax)
        regret_axis(ax, drawn)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def regret_axis(ax: Any, regrets: list[float]) -> None:
    """A symmetric-log y axis: logarithmic down to the smallest positive regret drawn (so the small regrets
    that separate good searches late in a run stay apart), linear from there to 0 (a found optimum)."""
    positive = [v for v in regrets if v > 0]
    if positive:
        ax.set_yscale("symlog", linthresh=max(min(positive), max(positive) * 1e-6))
        ax.set_ylim(bottom=0.0)


def _band(ax: Any, label: str, xs: list, ys: list) -> None:
    """The mean best-so-far curve of the seeds and their min-max band, on a common x grid (step functions),
    drawn from the first point where every seed has a value."""
    grid = np.unique(np.concatenate([np.asarray(x, dtype=float) for x in xs]))
    values = np.array([_step_at(np.asarray(x, float), np.asarray(y, float), grid) for x, y in zip(xs, ys)])
    every = np.isfinite(values).all(axis=0)  # from the point where every seed has a value (not only lower rungs)
    grid, values = grid[every], values[:, every]
    line = ax.step(grid, values.mean(axis=0), where="post", label=f"{label} (mean of {len(xs)})", gid=label)[0]
    ax.fill_between(grid, values.min(axis=0), values.max(axis=0), step="post", alpha=0.2, color=line.get_color())


def _step_at(x: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """A best-so-far curve read at ``grid``: the value after the last evaluation at or before each point
    (NaN before the first), the last value after the run's end."""
    index = np.searchsorted(x, grid, side="right") - 1
    return np.where(index >= 0, y[np.clip(index, 0, len(y) - 1)], np.nan)


# ---------------------------------------------------------------------------- the Pareto plot
def pareto_figure(runs: dict[str, list[list[dict]]], summaries: dict[str, list[dict]], title: str,
                  fidelity: str) -> Any:
    """Accuracy against parameters (left) and MACs (right); see the module docstring for what is drawn."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    teacher = next((recs[0] for seeds in runs.values() for recs in seeds), None)
    for ax, (size, words) in zip(axes, SIZES):
        scale, unit = size_unit(teacher[f"teacher_{size}"] if teacher else 1)
        for agent, seeds in runs.items():
            _agent_points(ax, agent, seeds, summaries.get(agent, []), size, scale)
        if teacher is not None:
            _teacher(ax, teacher, summaries, size, scale)
        log_axis(ax)
        ax.set(xlabel=f"{words} ({unit})" if unit else words, ylabel=f"validation accuracy at the {fidelity}")
        ax.grid(True, which="both", alpha=0.25)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.04 + 0.035 * math.ceil(len(labels) / 4), 1, 1))
    return fig


def size_unit(reference: float) -> tuple[float, str]:
    """(divisor, word) of the largest unit that the teacher's size is at least 2 of: 31e6 MACs -> millions,
    61,706 parameters -> thousands, so tick labels stay short."""
    return next((d, w) for d, w in UNITS if reference >= 2 * d or d == 1.0)


def _agent_points(ax: Any, agent: str, seeds: list[list[dict]], summaries: list[dict], size: str,
                  scale: float) -> None:
    """An agent's valid students, its front over its seeds, its best-reward student and its final students."""
    records = [r for recs in seeds for r in recs if full_fidelity(r)]  # not a multi-fidelity agent's lower rungs
    valid = [r for r in records if r.get("valid")]
    dots = ax.scatter([r[size] / scale for r in valid], [r["accuracy"] for r in valid], s=10, alpha=0.35,
                      label=f"{agent}: students")
    color = dots.get_facecolor()[0][:3]
    front = pareto_front(records, size)
    if front:
        ax.step([r[size] / scale for r in front], [r["accuracy"] for r in front], where="post", color=color,
                linewidth=1.6, label=f"{agent}: non-dominated front", gid=f"front:{agent}")
    top = max((b for recs in seeds if (b := best(recs, valid_only=True)) is not None and b["valid"]),
              key=lambda r: r["reward"], default=None)
    if top is not None:
        ax.scatter([top[size] / scale], [top["accuracy"]], s=110, facecolors="none", edgecolors=[color],
                   linewidths=1.8, label=f"{agent}: best reward", gid=f"best:{agent}")
    _finals(ax, agent, seeds, summaries, size, scale, color)


def _finals(ax: Any, agent: str, seeds: list[list[dict]], summaries: list[dict], size: str, scale: float,
            color: Any) -> None:
    """Each run's best student after the shared final training: a diamond at its test accuracy, joined to where
    the search scored it."""
    by_index = [{r["index"]: r for r in recs} for recs in seeds]
    points = []
    for i, summary in enumerate(summaries):
        final = summary.get("shared_final") or {}
        if final.get("valid") and final.get(size) is not None and final.get("test_accuracy") is not None:
            searched = by_index[i].get(final.get("index")) if i < len(by_index) else None
            points.append((final[size] / scale, final["test_accuracy"], searched))
    for x, y, searched in points:
        if searched is not None:
            ax.plot([searched[size] / scale, x], [searched["accuracy"], y], color=color, linewidth=0.8, alpha=0.6)
    if points:
        ax.scatter([p[0] for p in points], [p[1] for p in points], marker="D", s=40, facecolors="white",
                   edgecolors=[color], linewidths=1.5, zorder=3, label=f"{agent}: after final training (test)",
                   gid=f"final:{agent}")


def _teacher(ax: Any, teacher: dict, summaries: dict[str, list[dict]], size: str, scale: float) -> None:
    """The teacher: a star at its size and validation accuracy, a line there, and its test accuracy."""
    val = float(teacher["teacher_accuracy"])
    ax.axhline(val, color="red", linewidth=1.0, alpha=0.7, gid="teacher:val",
               label=f"teacher: {val:.3f} on the same validation images")
    ax.scatter([teacher[f"teacher_{size}"] / scale], [val], marker="*", s=180, c="red", zorder=4)
    test = teacher_test_accuracy(teacher, summaries)
    if test is not None:
        ax.axhline(test, color="red", linestyle="--", linewidth=1.0, alpha=0.7, gid="teacher:test",
                   label=f"teacher: {test:.3f} test accuracy (fully trained)")


def teacher_test_accuracy(record: dict, summaries: dict[str, list[dict]]) -> float | None:
    """The teacher's test accuracy: from a run's shared final training (measured beside its student), else the
    shipped teachers' manifest entry of the teacher file the records name; None when neither knows it."""
    for sums in summaries.values():
        for summary in sums:
            value = (summary.get("shared_final") or {}).get("teacher_test_accuracy")
            if value is not None:
                return float(value)
    teacher = (record.get("replay") or {}).get("teacher") or {}
    if teacher.get("recipe") == "ship" and teacher.get("path"):
        path = Path(teacher["path"])
        try:
            entry = json.loads((path.parent / "manifest.json").read_text()).get(path.name) or {}
        except (OSError, ValueError):
            return None
        return entry.get("test_accuracy")
    return None


def log_axis(ax: Any) -> None:
    """A log x axis labelled in plain numbers: at the decades, and at 2, 3 and 5 (or 2 and 5) times them while
    that leaves room, so an axis spanning less than a decade still has several labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    low, high = ax.get_xlim()
    decades = math.log10(high / low) if low > 0 else 10.0
    subs = (2.0, 3.0, 5.0) if decades < 1.5 else (2.0, 5.0) if decades < 3 else ()
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0,)))
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=subs or tuple(range(2, 10))))
    ax.xaxis.set_minor_formatter(plain if subs else NullFormatter())
