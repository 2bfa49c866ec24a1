"""TAS on real Fashion-MNIST (ResNet-20, FLOPs target 0.5, the `fast` preset), beside random search.

1. ``run_agent.py --env channel-ratio-resnet20-fashionmnist --agent tas --preset fast``: the search on a 50/50
   per-class split of the first 5,000 training images, the last genotype submitted, then 3 KD epochs from
   scratch. Reports the genotype's FLOPs against the target (the reference's argmax count F and the built
   network's MACs) and the student's test accuracy.
2. With ``--random``: random search on the channel-ratio space (AMC's budget wall at 0.5 of the teacher's
   MACs) for the same training seconds (TAS's search seconds plus its scoring), its best student trained by
   the run machinery at the rank fidelity's final caps (2 epochs on 8,192 images, inherited weights).

Usage: ``nice -n 10 python -m benchmarks.tas_fashion [--out DIR] [--random]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

import run_agent


def run(argv: list[str]) -> dict:
    """One run_agent.py run; its summary.json."""
    out = Path(argv[argv.index("--out") + 1])
    start = time.perf_counter()
    if run_agent.main(argv) != 0:
        raise SystemExit(f"run failed: {' '.join(argv)}")
    summary = json.loads((out / "summary.json").read_text())
    summary["bench_wall_seconds"] = time.perf_counter() - start
    return summary


def tas(out: Path) -> dict:
    summary = run(["--env", "channel-ratio-resnet20-fashionmnist", "--agent", "tas", "--preset", "fast",
                   "--out", str(out / "tas")])
    g, final = summary["notes"]["genotype"], summary["best_student"]
    built = final["macs"] / (g["max_flops"] * 1e6)
    print(f"TAS: target {g['target_flops']:.2f} MFLOPs ({g['target_flops'] / g['max_flops']:.3f}); argmax F "
          f"{g['flops']:.2f} ({g['flops'] / g['max_flops']:.3f}); built network {final['macs'] / 1e6:.2f} MMACs "
          f"({built:.3f}); depths {g['depths']}")
    print(f"     search {g['search_seconds']:.0f} s over {g['epochs']} epochs; "
          f"scoring {summary['eval_seconds']:.0f} s; final KD {final['seconds']:.0f} s; "
          f"test acc {final['test_accuracy']:.4f} (teacher "
          f"{final['teacher_test_accuracy']:.4f}); wall {summary['bench_wall_seconds']:.0f} s")
    return summary


def random_search(out: Path, seconds: float) -> dict:
    config = out / "random.yaml"
    config.write_text(yaml.safe_dump({"run": {"fidelity": "rank", "budget": None, "budget_seconds": seconds,
                                              "env_kwargs": {"budget": 0.5}}}))
    summary = run(["--env", "channel-ratio-resnet20-fashionmnist", "--agent", "random", "--config", str(config),
                   "--out", str(out / "random")])
    final, best = summary["best_student"], summary["best"]
    print(f"random: {summary['evaluations']} students in {summary['eval_seconds']:.0f} training s; best "
          f"{final['macs'] / 1e6:.2f} MMACs ({final['macs'] / best['teacher_macs']:.3f}); "
          f"final {final['seconds']:.0f} s; test acc {final['test_accuracy']:.4f}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=f"runs/tas-fashion-{time.strftime('%Y%m%d-%H%M%S')}")
    parser.add_argument("--random", action="store_true", help="also run random search at the same seconds")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: on a shared 2-core machine two threads oversubscribe, 7x slower)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = tas(out)
    if args.random:
        random_search(out, summary["charged_seconds"] + summary["eval_seconds"])


if __name__ == "__main__":
    main()
