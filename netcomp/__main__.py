"""Command line of the engine.

``python -m netcomp summary ARCH --dataset D [--json]``: params, MACs and the layer table of a zoo model.
``python -m netcomp train-teacher ARCH --dataset D [--recipe ship] [--seed 0] [--threads N]``: train a
teacher with a recipe from configs/teachers.yaml and ship it (teachers/ and its manifest), resuming an
interrupted training from its per-epoch checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys

from netcomp.data import DATASETS, dataset_shape
from netcomp.metrics import count_macs, count_params, layer_table
from netcomp.zoo import ARCHS, build_arch


def summary(arch_name: str, dataset: str) -> dict:
    """Params, MACs and the layer table of a zoo model for a dataset's input, as plain data."""
    arch = build_arch(arch_name, *dataset_shape(dataset))
    return {
        "arch": arch_name, "dataset": dataset, "params": count_params(arch), "macs": count_macs(arch),
        "layers": [
            {"name": r.name, "op": r.op, "out_shape": list(r.out_shape), "params": r.params, "macs": r.macs,
             "attrs": r.attrs}
            for r in layer_table(arch)
        ],
    }


def _print_table(info: dict) -> None:
    print(f"{'layer':<28} {'op':<8} {'output':<16} {'params':>10} {'MACs':>13}  attrs")
    for r in info["layers"]:
        shape = "x".join(str(s) for s in r["out_shape"])
        print(f"{r['name']:<28} {r['op']:<8} {shape:<16} {r['params']:>10,} {r['macs']:>13,}  {r['attrs']}")
    print(f"\n{info['arch']} on {info['dataset']}: {info['params']:,} parameters, {info['macs']:,} MACs "
          f"({info['macs'] / 1e6:.2f} M)")


def train_teacher_command(args: argparse.Namespace) -> int:
    """Train (or resume) a teacher with a recipe, then save it and its checksum into the shipped folder."""
    from pathlib import Path

    import torch

    from netcomp.data import load_dataset
    from netcomp.teachers import SHIPPED_DIR, partial_path, ship_teacher, shipped_name, train_teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = load_dataset(args.dataset, root=args.data_root, download=args.download)
    folder = Path(args.out) if args.out else SHIPPED_DIR
    checkpoint = partial_path(folder / shipped_name(args.arch, dataset.name))
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    teacher = train_teacher(args.arch, dataset, args.recipe, device=args.device, seed=args.seed,
                            progress=True, checkpoint=checkpoint)
    path = ship_teacher(teacher, folder)
    checkpoint.unlink(missing_ok=True)
    m = teacher.meta
    print(f"shipped {path}: val {m['val_accuracy']:.4f}, test {m['test_accuracy']:.4f}, "
          f"{m['train_seconds']:.0f} s of training")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netcomp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("summary", help="params, MACs and the layer table of a zoo architecture")
    p.add_argument("arch", choices=ARCHS, metavar="ARCH", help=f"one of: {', '.join(ARCHS)}")
    p.add_argument("--dataset", default="cifar10", choices=DATASETS, help="input shape and classes")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    t = sub.add_parser("train-teacher", help="train a teacher and ship it into teachers/ (with its checksum)")
    t.add_argument("arch", choices=ARCHS, metavar="ARCH", help=f"one of: {', '.join(ARCHS)}")
    t.add_argument("--dataset", default="fashionmnist", choices=DATASETS)
    t.add_argument("--recipe", default="ship", help="a recipe of configs/teachers.yaml (default: ship)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--data-root", default=None)
    t.add_argument("--download", action="store_true")
    t.add_argument("--out", default=None, help="folder to ship into (default: the repository's teachers/)")
    args = parser.parse_args(argv)
    if args.command == "train-teacher":
        return train_teacher_command(args)
    info = summary(args.arch, args.dataset)
    if args.json:
        json.dump(info, sys.stdout, indent=1)
        print()
    else:
        _print_table(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
