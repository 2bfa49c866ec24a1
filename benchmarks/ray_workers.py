"""N Ray workers vs 1 on the same batch of evaluations: seconds, speed-up and efficiency (speed-up / N).

What it measures: the wall time of scoring one batch of random-search students (``--students`` seeded
samples of the removal space) through ``CompressionEnv.evaluate_many`` with a :class:`netcomp.workers.WorkerPool`
of N actors attached, for each N of ``--workers``, against a pool of 1 actor (the same path, so only the
parallelism differs) and, for reference, this process alone. The cache is emptied before every timed call,
so every student is really trained; each pool first scores the batch once untimed (actor start-up, the
teacher and data sent to each actor), reported as ``startup``. Every path gives the same students and scores
(checked): exactly on the CPU; on CUDA (bf16 autocast, non-deterministic cuDNN kernels, separate processes) the
accuracies within ``--tolerance`` (default 0.05 there, 0 on the CPU), and the largest difference is reported.
Actors use one torch thread each (the in-process reference too), so N actors need N cores or N GPUs.

    python -m benchmarks.ray_workers                                  # ResNet-20, synthetic, fast, 8 students
    python -m benchmarks.ray_workers --fidelity fast --workers 1,2,4 --ray-address HEAD:6379
    python -m benchmarks.ray_workers --device cuda --workers 1,4 --worker-gpus 0.25 --json ray.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from envs.removal import RemovalEnv
from netcomp.evaluator import load_fidelity
from netcomp.workers import WorkerPool


def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _scores(infos: list[dict]) -> list[tuple]:
    """(arch key, valid, accuracy, reward) of each student, the fields every path must agree on."""
    return [(i["arch_key"], i["valid"], i["accuracy"], i["reward"]) for i in infos]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Print the table (and write ``--json``); returns the figures."""
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
    p.add_argument("--tolerance", type=float, default=None,
                   help="largest accuracy difference allowed between a pool and this process "
                        "(default: 0 on the CPU, 0.05 on CUDA)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.add_argument("--dataset-kwargs", dest="dataset_kwargs", type=json.loads, default={},
                   help='the synthetic data\'s size, as JSON (e.g. \'{"image_size": 16, "train_size": 256}\' '
                        "for a plumbing run); default: the synthetic set's defaults")
    args = p.parse_args(argv)
    cuda = torch.device(args.device).type == "cuda"
    tolerance = args.tolerance if args.tolerance is not None else (0.05 if cuda else 0.0)
    if tolerance < 0:
        p.error(f"--tolerance must be >= 0, got {tolerance}")
    sizes = sorted({1, *(int(n) for n in args.workers.split(","))})
    torch.set_num_threads(1)
    preset = load_fidelity(args.fidelity, "removal")
    fidelity = {"name": args.fidelity, "train": preset.train.to_dict(), "teacher_recipe": args.teacher_recipe}
    env = RemovalEnv(arch=args.arch, dataset="synthetic", fidelity=fidelity, device=args.device,
                     dataset_kwargs=args.dataset_kwargs)
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
    print(f"{'path':<16}{'seconds':>9}{'speed-up':>10}{'efficiency':>12}{'startup':>9}{'max |d acc|':>13}")
    print(f"{'this process':<16}{local:>9.2f}{'':>10}{'':>12}{'':>9}{'':>13}")
    out: dict[str, Any] = {"arch": args.arch, "fidelity": args.fidelity, "teacher_recipe": args.teacher_recipe,
                           "students": args.students, "repeats": args.repeats, "device": args.device,
                           "device_name": torch.cuda.get_device_name(0) if cuda else "cpu",
                           "cpu_cores": os.cpu_count(), "worker_gpus": args.worker_gpus, "tolerance": tolerance,
                           "torch": str(torch.__version__), "this_process_seconds": local, "pools": []}
    base = None
    for n in sizes:
        pool = WorkerPool(n, args.ray_address, args.worker_gpus)
        diffs: list[tuple[float, float]] = []
        try:
            pool.attach(env.evaluator)
            startup = timed(lambda d=diffs: d.append(_check(batch(), reference, tolerance)))
            seconds = statistics.median(timed(batch) for _ in range(args.repeats))
        finally:
            env.evaluator.pool = None
            pool.shutdown()
        base = seconds if n == 1 else base
        speedup = base / seconds
        acc_diff, reward_diff = diffs[0]
        print(f"{f'{n} worker(s)':<16}{seconds:>9.2f}{speedup:>10.2f}{speedup / n:>12.2f}{startup:>9.2f}"
              f"{acc_diff:>13.4f}")
        out["pools"].append({"workers": n, "seconds": seconds, "speedup": speedup, "efficiency": speedup / n,
                             "startup_seconds": startup, "max_accuracy_diff": acc_diff,
                             "max_reward_diff": reward_diff})
    print(f"scores checked against this process: {'exactly' if tolerance == 0 else f'accuracies within {tolerance}'}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")
    return out


def _check(infos: list[dict], reference: list[tuple], tolerance: float = 0.0) -> tuple[float, float]:
    """Check a pool's scores against this process's: the same students and validity, and the same accuracies
    and rewards exactly (``tolerance`` 0) or accuracies within ``tolerance``. Returns the largest accuracy and
    reward differences; AssertionError names the first student that differs beyond them."""
    scores = _scores(infos)
    if tolerance == 0 and scores == reference:
        return 0.0, 0.0
    if len(scores) != len(reference):
        raise AssertionError(f"the pool scored {len(scores)} students, this process {len(reference)}")
    acc_diff = reward_diff = 0.0
    for k, ((key, valid, acc, reward), (rkey, rvalid, racc, rreward)) in enumerate(zip(scores, reference)):
        if (key, valid) != (rkey, rvalid):
            raise AssertionError(f"student {k}: the pool's {key} (valid {valid}) is not this process's "
                                 f"{rkey} (valid {rvalid})")
        d_acc = abs((acc or 0.0) - (racc or 0.0))
        d_reward = abs((reward or 0.0) - (rreward or 0.0))
        if (tolerance == 0 and (acc, reward) != (racc, rreward)) or d_acc > tolerance:
            raise AssertionError(f"student {k} ({key}): the pool's accuracy {acc} and reward {reward} differ from "
                                 f"this process's {racc} and {rreward} (tolerance {tolerance})")
        acc_diff, reward_diff = max(acc_diff, d_acc), max(reward_diff, d_reward)
    return acc_diff, reward_diff


if __name__ == "__main__":
    main()
