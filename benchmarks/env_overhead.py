"""The env's overhead per student: building the student module and inheriting the teacher's weights.

What it measures: milliseconds per student, outside training, for a ResNet-34 teacher (CIFAR shape) and a
student that keeps every layer (the worst case: the most weights to create and copy), split into
building the module on the evaluator's device and inheriting per mode (``reinit``: none, ``first_k``,
``indices``), the median of ``--repeats`` runs after one warm-up. Why: issue "Scale" asks for an env
overhead under 20 ms per step for ResNet-34; this prints where the time goes.

    python benchmarks/env_overhead.py [--arch resnet34] [--device cuda] [--repeats 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netcomp.surgery import build_module, inherit_weights, remove_layers  # noqa: E402
from netcomp.zoo import build_arch  # noqa: E402


def median_ms(fn, repeats: int, device: torch.device) -> float:
    """Median wall milliseconds of ``fn()`` over ``repeats`` calls after one warm-up (device synchronised)."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Print and return the milliseconds per student of each part."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet34")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, default=None, help="write the milliseconds (and the device) here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    teacher_arch = build_arch(args.arch, 3, 32, 10)
    teacher = build_module(teacher_arch, device=device).eval()
    student = remove_layers(teacher_arch, [])
    module = build_module(student, device=device)
    rows = {"build on device": median_ms(lambda: build_module(student, device=device), args.repeats, device),
            "build on CPU, then copy": median_ms(lambda: build_module(student).to(device), args.repeats, device)}
    for mode in ("reinit", "first_k", "indices"):
        rows[f"inherit {mode}"] = median_ms(lambda m=mode: inherit_weights(module, student, teacher, teacher_arch, m),
                                            args.repeats, device)
    threads = torch.get_num_threads()
    print(f"{args.arch} student ({sum(p.numel() for p in module.parameters()):,} params) on {device} "
          f"({threads} CPU threads), median of {args.repeats}; torch {torch.__version__}")
    for name, ms in rows.items():
        print(f"  {name:<26} {ms:9.1f} ms")
    print(f"  {'step (build + indices)':<26} {rows['build on device'] + rows['inherit indices']:9.1f} ms")
    if args.json is not None:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({threads} threads)"
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"arch": args.arch, "device": name, "repeats": args.repeats,
                                         "torch": str(torch.__version__), "milliseconds": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
