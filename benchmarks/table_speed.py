"""Steps per second of a table env against the live env it tabulates, side by side in one run.

What it measures: the wall time of ``env.step`` for random one-shot actions (seeded, the space's own sampler)
on the table env (``fidelity="table"``: the student is built and checked, its result looked up) and on the
live env at the table's fidelity (the student trained), each after one warm-up step, at ``--threads`` torch
threads. Why: issue 23 asks for a step that costs microseconds on a table, so that an agent runs thousands
of episodes per minute on a CPU.

    python benchmarks/table_speed.py [--spec channel-ratio-lenet5-fashionmnist] [--steps 2000]
        [--live-steps 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gymnasium as gym  # noqa: E402

import envs  # noqa: E402
from netcomp.tables import read_table, resolve_spec, table_path  # noqa: E402


def steps_per_second(env: gym.Env, steps: int, seed: int) -> tuple[float, float]:
    """(steps per second, mean microseconds per step) of ``steps`` random one-shot steps after a warm-up."""
    rng = np.random.default_rng(seed)
    base = env.unwrapped
    actions = [base.sample_action(rng) for _ in range(steps + 1)]
    env.reset(seed=seed)
    env.step(actions[0])
    start = time.perf_counter()
    for action in actions[1:]:
        env.step(action)
    seconds = time.perf_counter() - start
    return steps / seconds, seconds / steps * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default="channel-ratio-lenet5-fashionmnist", help="a table spec (configs/tables.yaml)")
    p.add_argument("--steps", type=int, default=2000, help="table env steps")
    p.add_argument("--live-steps", type=int, default=10, help="live env steps (each trains a student)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = resolve_spec(args.spec)
    table = read_table(table_path(spec))
    env_id = envs.parse_env_id(spec.env)
    rows = []
    for label, fidelity, steps in (("table", "table", args.steps),
                                   ("live", table.header["fidelity"]["name"], args.live_steps)):
        env = gym.make(env_id, fidelity=fidelity, device="cpu", disable_env_checker=True, **spec.env_kwargs)
        rate, micros = steps_per_second(env, steps, seed=0)
        rows.append((label, fidelity, steps, rate, micros))
    print(f"{spec.name}: {args.threads} torch thread(s), {table.stats()['distinct_valid_students']} valid students")
    print(f"{'env':<6} {'fidelity':<10} {'steps':>6} {'steps/s':>12} {'us/step':>14}")
    for label, fidelity, steps, rate, micros in rows:
        print(f"{label:<6} {fidelity:<10} {steps:>6} {rate:>12,.1f} {micros:>14,.0f}")
    print(f"table / live: {rows[0][3] / rows[1][3]:,.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
