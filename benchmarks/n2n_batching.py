"""N2N's children trained together vs one at a time: seconds per policy epoch, side by side in one run.

What it measures: the wall time of scoring one N2N policy epoch (N removal students) through
``CompressionEnv.evaluate_many`` (the N students share every batch and one teacher forward per batch, as
the reference trains its rollouts) against the same N students scored one episode at a time. Both paths
give identical scores (tests/test_baseline_n2n.py checks it); only the time differs. The evaluation cache
is emptied before every timed call, so every student is really trained. Calls alternate (together, alone,
together, ...) so drift on a shared machine hits both alike; medians and the per-run ratios are printed.

    python -m benchmarks.n2n_batching                          # ResNet-20, synthetic 1x28x28, fast fidelity
    python -m benchmarks.n2n_batching --dataset fashionmnist --rollouts 5 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from envs.removal import RemovalEnv


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--fidelity", default="fast")
    p.add_argument("--rollouts", type=int, default=5, help="N: students per policy epoch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    kwargs = {"dataset_kwargs": {"channels": 1, "image_size": 28}} if args.dataset == "synthetic" else {}
    env = RemovalEnv(arch=args.arch, dataset=args.dataset, fidelity=args.fidelity, **kwargs)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = [(rng.random(len(env.layers)) < 0.8).astype(np.int64) for _ in range(args.rollouts)]

    def together() -> None:
        env.evaluator.cache.clear()
        env.evaluate_many(actions)

    def alone() -> None:
        env.evaluator.cache.clear()
        for action in actions:
            env.reset()
            env.step(action)

    together()  # warm-up
    pairs = [(timed(together), timed(alone)) for _ in range(args.repeats)]
    t_med = statistics.median(t for t, _ in pairs)
    a_med = statistics.median(a for _, a in pairs)
    print(f"{args.arch} on {args.dataset}, fidelity {args.fidelity}, N={args.rollouts} students per epoch, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {args.repeats} runs each")
    print(f"together (evaluate_many): {t_med:8.2f} s per epoch (median)")
    print(f"one at a time:            {a_med:8.2f} s per epoch (median)")
    print(f"speed-up: {a_med / t_med:.2f}x; per-run ratios {', '.join(f'{a / t:.2f}' for t, a in pairs)}")


if __name__ == "__main__":
    main()
