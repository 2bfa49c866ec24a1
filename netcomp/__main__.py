"""Command line of the engine: ``python -m netcomp summary ARCH --dataset D [--json]``."""

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netcomp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("summary", help="params, MACs and the layer table of a zoo architecture")
    p.add_argument("arch", choices=ARCHS, metavar="ARCH", help=f"one of: {', '.join(ARCHS)}")
    p.add_argument("--dataset", default="cifar10", choices=DATASETS, help="input shape and classes")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    info = summary(args.arch, args.dataset)
    if args.json:
        json.dump(info, sys.stdout, indent=1)
        print()
    else:
        _print_table(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
