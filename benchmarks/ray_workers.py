"""N Ray workers vs 1 on the same batch of evaluations: seconds, speed-up and efficiency (speed-up / N).

What it measures: the wall time of scoring one batch of random-search students (``--students`` seeded
samples of the removal space) through ``CompressionEnv.evaluate_many`` with a :class:`netcomp.workers.WorkerPool`
of N actors attached, for each N of ``--workers``, against a pool of 1 actor (the same path, so only the
parallelism differs) and, for reference, this process alone. The cache is emptied before every timed call,
so every student is really trained; each pool first scores the batch once untimed (actor start-up, the
teacher and data sent to each actor), reported as ``startup``. Every path gives the same scores (checked).
Actors use one torch thread each (the in-process reference too), so N actors need N cores or N GPUs.

    python -m benchmarks.ray_workers                                  # ResNet-20, synthetic, fast, 8 students
    python -m benchmarks.ray_workers --fidelity fast --workers 1,2,4 --ray-address HEAD:6379
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from envs.removal import RemovalEnv
from netcomp.evaluator import load_fidelity
from netcomp.workers import WorkerPool


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _scores(infos: list[dict]) -> list[tuple]:
    return [(i["arch_key"], i["valid"], i["accuracy"], i["reward"]) for i in infos]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--fidelity", default="fast", help="the students' KD run: a configs/fidelity.yaml preset")
    p.add_argument("--teacher-recipe", dest="teacher_recipe", default="smoke",
                   help="the teacher's recipe (timing does not depend on its accuracy; smoke trains in seconds)")
    p.add_argument("--students", type=int, default=8)
    p.add_argument("--workers", default="1,2", help="comma-separated pool sizes (1 is the baseline)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--ray-address", dest="ray_address", help="a running cluster (default: a local one)")
    p.add_argument("--worker-gpus", dest="worker_gpus", type=float, default=None,
                   help="each actor's GPU share (0.25: four actors per GPU); default: 1 if there are GPUs")
    p.add_argument("--device", default="cpu", help="the in-process reference's device (cpu, cuda)")
    args = p.parse_args(argv)
    sizes = sorted({1, *(int(n) for n in args.workers.split(","))})
    torch.set_num_threads(1)
    preset = load_fidelity(args.fidelity, "removal")
    fidelity = {"name": args.fidelity, "train": preset.train.to_dict(), "teacher_recipe": args.teacher_recipe}
    env = RemovalEnv(arch=args.arch, dataset="synthetic", fidelity=fidelity, device=args.device)
    env.reset(seed=0)
    env.action_space.seed(0)
    actions = [env.sample_action() for _ in range(args.students)]

    def batch() -> list[dict]:
        env.evaluator.cache.clear()
        return env.evaluate_many(actions)

    reference = _scores(batch())
    local = statistics.median(timed(batch) for _ in range(args.repeats))
    print(f"{args.arch} on synthetic, fidelity {args.fidelity} ({args.teacher_recipe} teacher), {args.students} "
          f"students per batch, "
          f"{os.cpu_count()} CPU cores, median of {args.repeats}")
    print(f"{'path':<16}{'seconds':>9}{'speed-up':>10}{'efficiency':>12}{'startup':>9}")
    print(f"{'this process':<16}{local:>9.2f}{'':>10}{'':>12}{'':>9}")
    base = None
    for n in sizes:
        pool = WorkerPool(n, args.ray_address, args.worker_gpus)
        try:
            pool.attach(env.evaluator)
            startup = timed(lambda: _check(batch(), reference))
            seconds = statistics.median(timed(batch) for _ in range(args.repeats))
        finally:
            env.evaluator.pool = None
            pool.shutdown()
        base = seconds if n == 1 else base
        speedup = base / seconds
        print(f"{f'{n} worker(s)':<16}{seconds:>9.2f}{speedup:>10.2f}{speedup / n:>12.2f}{startup:>9.2f}")


def _check(infos: list[dict], reference: list[tuple]) -> None:
    if _scores(infos) != reference:
        raise AssertionError("the pool's scores differ from this process's")


if __name__ == "__main__":
    main()
