"""How well does each fidelity rank students? Seed-to-seed and against a much costlier reference.

A reward is only as good as the order it puts students in: an agent learns from that order. For one space
and teacher this script samples students (random valid actions, spread over compression), scores every
student at each fidelity under two training seeds, and once at a reference fidelity that costs at least
10x more, and prints per fidelity:

- seconds per evaluation (training plus evaluation, students trained together in batches as a search does);
- the range of validation accuracies;
- seed-to-seed Spearman rho and Kendall tau of the students' accuracies (is the order the fidelity gives
  stable, or noise?), with a 95% bootstrap interval over students;
- Spearman rho of the fidelity's accuracies (seed 0) against the reference's, with its interval.

Accuracies, not rewards, are ranked: a reward adds the compression term, which is exact and would inflate
the figures. Every student of one fidelity and seed sees the same batches and evaluation images (common
random numbers); students are scored in batches of ``--batch`` with ``Evaluator.evaluate_many``.

    python -m benchmarks.fidelity_rank --space removal --students 20 --fidelities smoke fast rank \\
        --reference reference --json removal.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import stats

from envs import SPACES
from netcomp.arch import Arch, arch_key


def env_class(space: str) -> type:
    import importlib

    module, _, name = SPACES[space].partition(":")
    return getattr(importlib.import_module(module), name)


def spread_action(env, rng: np.random.Generator) -> np.ndarray:
    """A random action whose strength is itself random, so the students spread over compression."""
    space = env.action_space
    strength = rng.uniform(0.05, 0.6)
    if env.space == "removal":
        return (rng.random(space.shape) >= strength).astype(np.int64)
    if env.space == "shrinkage":
        keep = rng.random(space.shape) >= strength
        return np.where(keep, space.nvec - 1, rng.integers(0, space.nvec)).astype(np.int64)
    low = 1.0 - 2.0 * strength  # Box(-1, 1): a lower mean keeps fewer channels
    return np.clip(rng.normal(low, 0.3, space.shape), -1, 1).astype(np.float32)


def sample_students(env, n: int, seed: int) -> list[Arch]:
    """``n`` distinct valid students of ``env`` (checked without training)."""
    rng = np.random.default_rng(seed)
    students, keys = [], set()
    ev = env.evaluator
    for _ in range(200 * n):
        student = env.student_for(spread_action(env, rng))
        if ev.problem(student):
            continue
        key = arch_key(student, with_origin=True)
        if key not in keys:
            keys.add(key)
            students.append(student)
        if len(students) == n:
            return students
    raise RuntimeError(f"found only {len(students)} distinct valid students of {n}")


def score(env, students: Sequence[Arch], seed: int, batch: int) -> tuple[np.ndarray, float]:
    """Validation accuracies of the students at ``env``'s fidelity and the seconds per student."""
    ev = env.evaluator
    ev.cache.clear()
    start = time.perf_counter()
    accs: list[float] = []
    for i in range(0, len(students), batch):
        accs += [r.accuracy if r.valid else np.nan for r in ev.evaluate_many(list(students[i:i + batch]), seed=seed)]
    return np.asarray(accs), (time.perf_counter() - start) / len(students)


def bootstrap(a: np.ndarray, b: np.ndarray, fn: Callable, reps: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of ``fn(a, b)`` over students resampled with replacement."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(reps):
        idx = rng.integers(0, len(a), len(a))
        if len(set(idx)) > 2:
            v = fn(a[idx], b[idx])
            if np.isfinite(v):
                values.append(v)
    return (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))) if values else (np.nan, np.nan)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(stats.spearmanr(a, b).statistic)


def kendall(a: np.ndarray, b: np.ndarray) -> float:
    return float(stats.kendalltau(a, b).statistic)


def study(args: argparse.Namespace) -> dict:
    cls = env_class(args.space)
    common = {"arch": args.arch, "dataset": args.dataset, "device": args.device, "teacher": args.teacher}
    base = cls(fidelity=args.reference, **common)
    common["teacher"] = base.teacher  # every fidelity scores with the same teacher
    students = sample_students(base, args.students, args.sample_seed)
    out = {"space": args.space, "arch": args.arch, "dataset": args.dataset, "students": len(students),
           "teacher_val_accuracy": base.evaluator.teacher_accuracy, "threads": torch.get_num_threads(),
           "torch": torch.__version__, "compression": [1 - base.student_cost(s)[0] / base.evaluator.teacher_params
                                                      for s in students], "fidelities": {}}
    ref_acc, ref_seconds = score(base, students, args.seeds[0], args.batch)
    out["reference"] = {"name": args.reference, "seconds": ref_seconds, "accuracy": ref_acc.tolist()}
    for name in args.fidelities:
        env = cls(fidelity=name, **common)
        runs = [score(env, students, seed, args.batch) for seed in args.seeds[:2]]
        (a, sec_a), (b, sec_b) = runs
        row = {"seconds": (sec_a + sec_b) / 2, "accuracy": [a.tolist(), b.tolist()],
               "inherit": env.evaluator.inherit,
               "seed_spearman": spearman(a, b), "seed_spearman_ci": bootstrap(a, b, spearman),
               "seed_kendall": kendall(a, b), "seed_kendall_ci": bootstrap(a, b, kendall),
               "ref_spearman": spearman(a, ref_acc), "ref_spearman_ci": bootstrap(a, ref_acc, spearman),
               "cost_ratio": ref_seconds / max((sec_a + sec_b) / 2, 1e-9)}
        out["fidelities"][name] = row
        print(format_row(name, row), flush=True)
    return out


def format_row(name: str, r: dict) -> str:
    acc = np.asarray(r["accuracy"][0], dtype=float)
    return (f"{name:<10} {r['inherit']:<8} {r['seconds']:7.2f} s  acc {np.nanmin(acc):.3f}-{np.nanmax(acc):.3f}  "
            f"seed rho {r['seed_spearman']:+.2f} [{r['seed_spearman_ci'][0]:+.2f}, {r['seed_spearman_ci'][1]:+.2f}]  "
            f"tau {r['seed_kendall']:+.2f} [{r['seed_kendall_ci'][0]:+.2f}, {r['seed_kendall_ci'][1]:+.2f}]  "
            f"ref rho {r['ref_spearman']:+.2f} [{r['ref_spearman_ci'][0]:+.2f}, {r['ref_spearman_ci'][1]:+.2f}]  "
            f"(reference {r['cost_ratio']:.0f}x costlier)")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="removal", choices=list(SPACES))
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--dataset", default="fashionmnist")
    p.add_argument("--teacher", help="teacher file (default: the env's cached teacher of the reference fidelity)")
    p.add_argument("--students", type=int, default=20)
    p.add_argument("--fidelities", nargs="+", default=["smoke", "fast", "rank"])
    p.add_argument("--reference", default="reference", help="a fidelity at least 10x costlier than those tested")
    p.add_argument("--seeds", type=int, nargs=2, default=[0, 1])
    p.add_argument("--sample-seed", dest="sample_seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=5, help="students trained together (shared batches)")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", help="write every number to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{args.space} on {args.arch}/{args.dataset}: {args.students} students, seeds {args.seeds}, "
          f"reference {args.reference!r}, {torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)
    out = study(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
