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
``python -m benchmarks.hoyer_fashion [--ghs 1e-3,...] [--gl 1e-3,...] [--hs 1e-4,...] [--epochs 2] [--ft-epochs 1]``.
"""

from __future__ import annotations

import argparse
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


def run_curve(env: ChannelRatioEnv, regularizer: str, decays: list[float], overrides: dict) -> list[dict]:
    """The agent's points for one regulariser (one submitted student per decay)."""
    preset = agent_yaml("hoyer", "fast")["agent_config"]  # its per-point prune_levels: one std rule here
    config = make_config(HoyerConfig, {**preset, **overrides, "regularizer": regularizer, "decays": decays,
                                       "prune_levels": None})
    recorder = Recorder(env, RunLog(Budget(len(decays))))
    agent = HoyerAgent(recorder, config, seed=0)
    agent.run()
    for point, record in zip(agent.notes["points"], recorder.records):
        student = arch_from_dict(record["student"])
        point["widths"] = {n.name: n.out_channels for n in student.nodes if n.op in ("conv", "linear")}
    return agent.notes["points"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="lenet5")
    parser.add_argument("--ghs", type=floats, default=floats("1e-4,1e-3,3e-3,1e-2"))
    parser.add_argument("--gl", type=floats, default=floats("1e-3,3e-3,1e-2,3e-2"))
    parser.add_argument("--hs", type=floats, default=[], help="element-wise Hoyer-Square decays (default none)")
    parser.add_argument("--epochs", type=float, default=None, help="regularised epochs (default: the preset's)")
    parser.add_argument("--ft-epochs", type=float, default=None, help="fine-tune epochs (default: the preset's)")
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()
    env = ChannelRatioEnv(arch=args.arch, dataset="fashionmnist", fidelity="fast", require_smaller=False)
    ev = env.evaluator
    teacher_test = evaluate(ev.teacher_model, ev.dataset.test, ev.dataset, device=ev.device)[0]
    widths = {n.name: n.out_channels for n in env.arch.nodes if n.op in ("conv", "linear")}
    print(f"teacher {args.arch} (fast recipe): val acc {ev.teacher_accuracy:.4f} (first {ev.fidelity.train.eval_max} "
          f"val images), test acc {teacher_test:.4f}, {ev.teacher_params:,} params, {ev.teacher_macs:,} MACs; "
          f"ready after {time.perf_counter() - start:.0f} s")
    overrides = {k: v for k, v in (("train_epochs", args.epochs), ("final_epochs", args.final_epochs)) if v is not None}
    layers = [n for n in widths if n != list(widths)[-1]]
    print(f"\n| regulariser | decay | alive {' / '.join(layers)} | MACs | MACs % | paper FLOPs % | params | density | "
          f"val acc | test acc | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| teacher | - | {' / '.join(str(widths[n]) for n in layers)} | {ev.teacher_macs:,} | 100 | 100 | "
          f"{ev.teacher_params:,} | 1.000 | {ev.teacher_accuracy:.4f} | {teacher_test:.4f} | - |")
    for name, decays in (("ghs", args.ghs), ("gl", args.gl), ("hs", args.hs)):
        if not decays:
            continue
        for p in run_curve(env, name, decays, overrides):
            alive = " / ".join(str(p["widths"].get(n, 0)) for n in layers)
            macs, proxy = 100 * p["macs"] / ev.teacher_macs, 100 * p["alive_macs"] / ev.teacher_macs
            test = "invalid" if p["test_accuracy"] is None else f"{p['test_accuracy']:.4f}"
            print(f"| {name} | {p['decay']:g} | {alive} | {p['macs']:,} | {macs:.1f} | {proxy:.1f} | "
                  f"{p['params']:,} | {p['density']:.3f} | {p['accuracy']:.4f} | {test} | "
                  f"{p['train_seconds']:.0f} |", flush=True)
    print(f"\ntotal {time.perf_counter() - start:.0f} s on {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
