"""DeepHoyer on real Fashion-MNIST: Group-HS against group lasso (SSL) at a few decays each (CPU minutes).

Trains (or loads from the cache) a LeNet-5 teacher with the ``fast`` recipe, then runs the ``hoyer`` agent
with ``configs/hoyer.yaml``'s ``fast`` preset (the MNIST recipe, Adam 1e-3, cut to a few epochs on 20,000
images; prune |w| < 0.25 std per tensor) through the channel-ratio env, once per regulariser with its own
decay list. Each point is the physically shrunk student with its fine-tuned weights, scored as submitted.
Prints, per point: alive channels per layer (conv1, conv2, fc1, fc2 outputs), MACs and params of the real
student, the paper's FLOPs proxy (H*W*k^2*nz_in*nz_out per layer of the sparse model; see
docs/methods.md#deephoyer-measuring-sparsity), element density of the pruned weights, validation (env) and
test accuracy, and the agent's training seconds.

Element-wise Hoyer-Square points (``--hs``) report density; their network is the teacher's shape unless
whole channels died. Usage:
``python -m benchmarks.hoyer_fashion [--arch lenet5caffe] [--ghs 1e-3,...] [--gl 1e-3,...] [--hs 1e-4,...]
[--epochs 2] [--ft-epochs 1] [--seeds 0,1,2] [--levels 0.6,0.7,0.75,0.8,0.85]``.

Group-HS and group lasso push on conv weights with very different strength at the same decay, so equal decays
are not a fair comparison: the last table interpolates each seed's accuracy-against-MACs curve at fixed MACs
fractions and compares the regularisers there (matched sparsity).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from agents.base import Budget, make_config
from baselines.hoyer import HoyerAgent, HoyerConfig
from envs.channel_ratio import ChannelRatioEnv
from netcomp.arch import arch_from_dict
from netcomp.distill import evaluate
from runner.recorder import Recorder, RunLog
from runner.rundir import agent_yaml


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def run_curve(env: ChannelRatioEnv, regularizer: str, decays: list[float], overrides: dict,
              seed: int = 0) -> list[dict]:
    """The agent's points for one regulariser and seed (one submitted student per decay)."""
    preset = agent_yaml("hoyer", "fast")["agent_config"]  # its per-point prune_levels: one std rule here
    config = make_config(HoyerConfig, {**preset, **overrides, "regularizer": regularizer, "decays": decays,
                                       "prune_levels": None})
    env.reset(seed=seed)
    recorder = Recorder(env, RunLog(Budget(len(decays))))
    agent = HoyerAgent(recorder, config, seed=seed)
    agent.run()
    for point, record in zip(agent.notes["points"], recorder.records):
        student = arch_from_dict(record["student"])
        point["widths"] = {n.name: n.out_channels for n in student.nodes if n.op in ("conv", "linear")}
    return agent.notes["points"]


def at_macs(points: list[dict], teacher_macs: int, level: float) -> float | None:
    """Test accuracy at ``level`` (a fraction of the teacher's MACs), interpolated linearly between the two
    valid points of one curve around it; None when the curve does not span the level (no extrapolation)."""
    curve = sorted((p["macs"] / teacher_macs, p["test_accuracy"]) for p in points if p["test_accuracy"] is not None)
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 <= level <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (level - x0) / (x1 - x0)
    return None


def matched_table(curves: dict[str, list[list[dict]]], teacher_macs: int, levels: list[float]) -> str:
    """Per regulariser and MACs level: the interpolated test accuracy, mean +- std over the seeds whose curve
    spans the level (n), so the regularisers are compared at matched MACs, not at matched decays."""
    lines = ["| regulariser | " + " | ".join(f"test acc at {100 * v:g}% MACs" for v in levels) + " |",
             "|---|" + "---|" * len(levels)]
    for name, seeds in curves.items():
        cells = []
        for level in levels:
            values = [v for v in (at_macs(points, teacher_macs, level) for points in seeds) if v is not None]
            if not values:
                cells.append("not spanned")
                continue
            std = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.4f}{std} (n={len(values)})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="lenet5")
    parser.add_argument("--ghs", type=floats, default=floats("1e-4,1e-3,3e-3,1e-2"))
    parser.add_argument("--gl", type=floats, default=floats("1e-3,3e-3,1e-2,3e-2"))
    parser.add_argument("--hs", type=floats, default=[], help="element-wise Hoyer-Square decays (default none)")
    parser.add_argument("--epochs", type=float, default=None, help="regularised epochs (default: the preset's)")
    parser.add_argument("--ft-epochs", type=float, default=None, help="fine-tune epochs (default: the preset's)")
    parser.add_argument("--seeds", type=lambda t: [int(v) for v in t.split(",")], default=[0],
                        help="seeds of each curve (e.g. 0,1,2)")
    parser.add_argument("--levels", type=floats, default=floats("0.6,0.7,0.75,0.8,0.85"),
                        help="MACs fractions at which the curves are compared")
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()
    env = ChannelRatioEnv(arch=args.arch, dataset="fashionmnist", fidelity="fast", require_smaller=False)
    ev = env.evaluator
    teacher_test = evaluate(ev.teacher_model, ev.dataset.test, ev.dataset, device=ev.device)[0]
    widths = {n.name: n.out_channels for n in env.arch.nodes if n.op in ("conv", "linear")}
    print(f"teacher {args.arch} ({ev.teacher.meta.get('recipe')} recipe): val acc {ev.teacher_accuracy:.4f} (first "
          f"{ev.fidelity.train.eval_max} val images), test acc {teacher_test:.4f}, {ev.teacher_params:,} params, "
          f"{ev.teacher_macs:,} MACs; ready after {time.perf_counter() - start:.0f} s")
    overrides = {k: v for k, v in (("train_epochs", args.epochs), ("final_epochs", args.ft_epochs)) if v is not None}
    layers = [n for n in widths if n != list(widths)[-1]]
    print(f"\n| regulariser | seed | decay | alive {' / '.join(layers)} | MACs | MACs % | paper FLOPs % | params | "
          f"density | val acc | test acc | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| teacher | - | - | {' / '.join(str(widths[n]) for n in layers)} | {ev.teacher_macs:,} | 100 | 100 | "
          f"{ev.teacher_params:,} | 1.000 | {ev.teacher_accuracy:.4f} | {teacher_test:.4f} | - |")
    curves: dict[str, list[list[dict]]] = {}
    for name, decays in (("ghs", args.ghs), ("gl", args.gl), ("hs", args.hs)):
        for seed in args.seeds if decays else []:
            points = run_curve(env, name, decays, overrides, seed)
            curves.setdefault(name, []).append(points)
            for p in points:
                alive = " / ".join(str(p["widths"].get(n, 0)) for n in layers)
                macs, proxy = 100 * p["macs"] / ev.teacher_macs, 100 * p["alive_macs"] / ev.teacher_macs
                test = "invalid" if p["test_accuracy"] is None else f"{p['test_accuracy']:.4f}"
                print(f"| {name} | {seed} | {p['decay']:g} | {alive} | {p['macs']:,} | {macs:.1f} | {proxy:.1f} | "
                      f"{p['params']:,} | {p['density']:.3f} | {p['accuracy']:.4f} | {test} | "
                      f"{p['train_seconds']:.0f} |", flush=True)
    print("\nAt matched MACs (each seed's curve interpolated linearly between its points):\n")
    print(matched_table(curves, ev.teacher_macs, args.levels))
    print(f"\ntotal {time.perf_counter() - start:.0f} s on {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
