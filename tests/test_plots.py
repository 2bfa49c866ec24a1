"""The plots draw what they say: on synthetic records, pareto.png's fronts are netcomp.pareto's, the best and final
students and the teacher lines sit where the records put them, log axes carry plain labels, titles name the
settings, and N2N's stage switch is marked."""

import json

import matplotlib
import numpy as np
import pytest
import yaml

matplotlib.use("Agg")

from netcomp.pareto import pareto_front  # noqa: E402
from runner.compare import run_label  # noqa: E402
from runner.plots import UNITS, best_so_far_figure, pareto_figure, write_comparison_plots  # noqa: E402
from runner.report import reward_figure, stage_switches, write_plots  # noqa: E402

TEACHER = {"teacher_accuracy": 0.9, "teacher_params": 60_000, "teacher_macs": 400_000}
SWITCH = 6  # N2N's records move from removal to shrinkage after this many evaluations


def records(seed: int, agent: str, n: int = 12) -> list[dict]:
    """A run's synthetic records: sizes within a decade and a half, some invalid; N2N's switch space."""
    rng = np.random.default_rng(seed + (100 if agent == "n2n" else 0))
    out = []
    for i in range(n):
        valid = bool(rng.random() > 0.15)
        params = int(rng.uniform(5_000, 55_000))
        out.append({"index": i, "space": "shrinkage" if agent == "n2n" and i >= SWITCH else "removal",
                    "reward": float(rng.uniform(0, 1)) if valid else -1.0, "valid": valid,
                    "accuracy": float(rng.uniform(0.3, 0.85)) if valid else None, "params": params,
                    "macs": params * 7, "eval_seconds": float(rng.uniform(0.5, 2)), "cached": False,
                    "replay": {"fidelity": "rank"}, **TEACHER})
    return out


@pytest.fixture
def runs() -> dict[str, list[list[dict]]]:
    out = {agent: [records(seed, agent) for seed in (0, 1)] for agent in ("n2n", "random")}
    rung = dict(out["random"][0][0], index=12, accuracy=0.99, reward=9.0, valid=True, params=5_000, macs=35_000, rung=4)
    out["random"][0].append(rung)  # a lower rung's score is no student of the front
    return out


def summaries(runs: dict) -> dict[str, list[dict]]:
    """Each run's shared final training of its best valid record, as summary.json holds it."""
    out = {}
    for agent, seeds in runs.items():
        out[agent] = []
        for recs in seeds:
            top = max((r for r in recs if r["valid"] and r.get("rung") is None), key=lambda r: r["reward"])
            out[agent].append({"shared_final": {"valid": True, "index": top["index"], "params": top["params"],
                                                "macs": top["macs"], "test_accuracy": top["accuracy"] + 0.05,
                                                "teacher_test_accuracy": 0.93}})
    return out


def artist(ax, gid):
    found = [a for a in ax.get_children() if a.get_gid() == gid]
    assert found, f"nothing drawn with gid {gid!r}"
    return found


def scale_of(ax) -> float:
    """The divisor the axis label names: 'parameters (thousands)' -> 1e3."""
    unit = ax.get_xlabel().rpartition("(")[2].rstrip(")")
    return next(d for d, w in UNITS if w == unit)


def test_pareto_draws_each_agents_front_best_final_students_and_the_teacher(runs):
    sums = summaries(runs)
    fig = pareto_figure(runs, sums, "env | fidelity rank", "rank fidelity")
    for ax, size in zip(fig.axes, ("params", "macs")):
        scale = scale_of(ax)
        assert "validation accuracy at the rank fidelity" in ax.get_ylabel()
        for agent, seeds in runs.items():
            full = [r for recs in seeds for r in recs if r.get("rung") is None]
            front = pareto_front(full, size)
            line = artist(ax, f"front:{agent}")[0]
            assert line.get_drawstyle() == "steps-post"
            assert np.allclose(line.get_xdata() * scale, [r[size] for r in front])
            assert list(line.get_ydata()) == [r["accuracy"] for r in front]
            top = max((r for r in full if r["valid"]), key=lambda r: r["reward"])
            ringed = artist(ax, f"best:{agent}")[0].get_offsets() * [scale, 1]
            assert np.allclose(ringed, [[top[size], top["accuracy"]]])
            finals = [[s["shared_final"][size], s["shared_final"]["test_accuracy"]] for s in sums[agent]]
            assert np.allclose(artist(ax, f"final:{agent}")[0].get_offsets() * [scale, 1], finals)
        assert list(artist(ax, "teacher:val")[0].get_ydata()) == [0.9, 0.9]
        assert list(artist(ax, "teacher:test")[0].get_ydata()) == [0.93, 0.93]


def test_log_axes_label_minor_ticks_in_plain_numbers(runs):
    fig = pareto_figure(runs, {}, "t", "rank fidelity")
    fig.canvas.draw()
    for ax in fig.axes:
        minor = [t.get_text() for t in ax.xaxis.get_ticklabels(minor=True) if t.get_text()]
        assert len(minor) >= 2, "an axis spanning about a decade needs labelled minor ticks"
        assert all(float(text) > 0 for text in minor)  # plain numbers, not 10^x mathtext


def test_best_so_far_has_a_title_step_lines_and_n2ns_stage_switch(runs):
    title = "removal-resnet20-fashionmnist | fidelity rank | budget 12 evaluations per run | 2 seeds (0, 1)"
    fig = best_so_far_figure(runs, title)
    assert fig._suptitle.get_text() == title
    by_evals, by_seconds = fig.axes
    assert artist(by_evals, "n2n")[0].get_drawstyle() == "steps-post"
    assert [line.get_xdata()[0] for line in artist(by_evals, "stage")] == [SWITCH + 0.5]  # both seeds switch there
    assert len(artist(by_seconds, "stage")) == 2                                          # at each seed's seconds
    assert stage_switches(runs["random"][0]) == []


def test_a_runs_reward_plot_has_its_title_best_so_far_steps_and_stage_switch(tmp_path):
    recs = records(0, "n2n")
    fig = reward_figure(recs, "a title")
    ax = fig.axes[0]
    assert ax.get_title() == "a title"
    line = artist(ax, "best_so_far")[0]
    assert line.get_drawstyle() == "steps-post"
    assert list(line.get_ydata()) == list(np.maximum.accumulate([r["reward"] for r in recs]))
    assert [s.get_xdata()[0] for s in artist(ax, "stage")] == [SWITCH + 0.5]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"env": "removal-resnet20-fashionmnist", "agent": "n2n",
                                                          "run": {"fidelity": "rank", "budget": 12, "seed": 3}}))
    write_plots(recs, tmp_path)
    assert (tmp_path / "reward.png").read_bytes().startswith(b"\x89PNG")


def test_a_comparison_directory_gets_its_three_plots(runs, tmp_path):
    spec = {"env": "channel-ratio-lenet5-fashionmnist", "agents": list(runs), "seeds": [0, 1],
            "run": {"fidelity": "table", "budget": 13, "budget_seconds": None}}
    for agent, seeds in runs.items():
        for seed, recs in zip(spec["seeds"], seeds):
            run_dir = tmp_path / run_label(agent, seed)
            run_dir.mkdir()
            (run_dir / "evaluations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
            (run_dir / "summary.json").write_text(json.dumps({"table_optimum": 1.0}))
    write_comparison_plots(tmp_path, spec)
    for name in ("best_so_far.png", "pareto.png", "regret.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")


def test_the_regret_axis_is_logarithmic_down_to_the_smallest_regret_and_reaches_zero():
    from runner.plots import regret_figure

    recs = [{"index": i, "reward": r, "valid": True, "eval_seconds": 1.0} for i, r in enumerate([0.5, 0.99, 1.0])]
    near = [{"index": i, "reward": r, "valid": True, "eval_seconds": 1.0} for i, r in enumerate([0.9, 0.995])]
    fig = regret_figure({"a": [recs], "b": [near]}, {"a": 1.0, "b": 1.0}, "t")
    for ax in fig.axes:
        assert ax.get_yscale() == "symlog" and ax.get_ylim()[0] == 0.0
        assert ax.yaxis.get_transform().linthresh == pytest.approx(0.005)  # the smallest positive regret drawn
