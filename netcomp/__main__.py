"""Command line of the engine.

``python -m netcomp summary ARCH --dataset D [--json]``: params, MACs and the layer table of a zoo model.
``python -m netcomp train-teacher ARCH --dataset D [--recipe ship] [--seed 0] [--threads N]``: train a
teacher with a recipe from configs/teachers.yaml and ship it (teachers/ and its manifest), resuming an
interrupted training from its per-epoch checkpoint.
``python -m netcomp build-table SPEC [--fidelity rank|reference] [--sample N] [--limit N] [--threads N]
[--workers N]``: score every student of a shipped table spec (configs/tables.yaml) or a spec YAML file into
teachers/tables/SPEC.FIDELITY.jsonl.gz, resuming a killed build with nothing retrained (netcomp/tables.py).
``python -m netcomp table-info SPEC|FILE [--fidelity F] [--json]``: a table's provenance and figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

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
    """Train (or resume) a teacher with a recipe, then save it and its checksum into the shipped folder.

    Shows a progress bar with an ETA on a terminal, else one line per epoch; says before it starts how long the
    CPU would take, and after, the teacher's accuracy and whether it is below what the recipe should reach."""
    from pathlib import Path

    import torch

    from netcomp.data import load_dataset
    from netcomp.teachers import (
        SHIPPED_DIR,
        format_duration,
        partial_path,
        recipe_cpu_seconds,
        ship_teacher,
        shipped_name,
        train_teacher,
        weak_teacher_warning,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = load_dataset(args.dataset, root=args.data_root, download=args.download)
    folder = Path(args.out) if args.out else SHIPPED_DIR
    checkpoint = partial_path(folder / shipped_name(args.arch, dataset.name))
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    estimate = (f"; about {format_duration(recipe_cpu_seconds(args.arch, dataset, args.recipe))} at "
                f"{torch.get_num_threads()} threads (an estimate)" if torch.device(args.device).type == "cpu" else "")
    print(f"training {args.arch} on {dataset.name} with recipe {args.recipe} on {args.device}{estimate}", flush=True)
    teacher = train_teacher(args.arch, dataset, args.recipe, device=args.device, seed=args.seed,
                            progress=True, checkpoint=checkpoint)
    path = ship_teacher(teacher, folder)
    checkpoint.unlink(missing_ok=True)
    m = teacher.meta
    print(f"shipped {path}: val {m['val_accuracy']:.4f}, test {m['test_accuracy']:.4f}, "
          f"{m['train_seconds']:.0f} s of training")
    weak = weak_teacher_warning(m["arch"], m["dataset"], m["recipe"], m["test_accuracy"])
    if weak:
        print(f"WARNING: {weak}")
    return 0


def build_table_command(args: argparse.Namespace) -> int:
    """Build (or resume) a table and print its figures."""
    from envs.build_table import build_table

    report = build_table(args.spec, fidelity=args.fidelity, out=args.out, limit=args.limit, sample=args.sample,
                         seed=args.seed, threads=args.threads, device=args.device, workers=args.workers,
                         batch=args.batch, data_root=args.data_root, progress=not args.quiet)
    state = "complete" if report.complete else f"partial ({report.rows} of {report.planned} planned actions)"
    print(f"{report.path}: {state}; trained {report.trained} students now, {report.resumed_rows} rows from "
          f"before, {report.seconds:.0f} s")
    print(json.dumps(report.stats, indent=1))
    return 0


def table_info_command(args: argparse.Namespace) -> int:
    """Print a table's header (less the fidelity's settings) and figures."""
    from pathlib import Path

    from netcomp.tables import read_table, resolve_spec, table_path

    path = Path(args.table)
    if not path.name.endswith(".jsonl.gz"):
        path = table_path(resolve_spec(args.table), args.fidelity)
    table = read_table(path)
    header = {k: v for k, v in table.header.items() if k != "fidelity"}
    info = {"path": str(path), **header, "fidelity": table.header["fidelity"]["name"], "stats": table.stats()}
    print(json.dumps(info, indent=None if args.json else 1, default=str))
    return 0


def _table_parsers(sub: argparse._SubParsersAction) -> None:
    """The build-table and table-info subcommands."""
    b = sub.add_parser("build-table", help="score every student of a table spec into teachers/tables/ (resumable)")
    b.add_argument("spec", help="a spec of configs/tables.yaml (e.g. channel-ratio-lenet5-fashionmnist) or a YAML file")
    b.add_argument("--fidelity", default=None, help="rank (the spec's default) | reference | any preset")
    b.add_argument("--limit", type=int, default=None, help="score at most N more actions now (resume later)")
    b.add_argument("--sample", type=int, default=None, help="only N random distinct valid students (reference)")
    b.add_argument("--seed", type=int, default=0, help="the seed of --sample's draw")
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads (recorded; default: torch's)")
    b.add_argument("--workers", type=int, default=None, help="train on N Ray actors (a GPU each when present)")
    b.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when present)")
    b.add_argument("--batch", type=int, default=16, help="actions scored together (default 16)")
    b.add_argument("--data-root", default=None)
    b.add_argument("--out", default=None, help="the table file (default teachers/tables/SPEC.FIDELITY.jsonl.gz)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    i = sub.add_parser("table-info", help="a table's provenance, distinct students and rewards")
    i.add_argument("table", help="a table file (.jsonl.gz), a spec name or a spec YAML file")
    i.add_argument("--fidelity", default=None, help="with a spec: the table's fidelity (default: the spec's)")
    i.add_argument("--json", action="store_true", help="one line of JSON")


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
    _table_parsers(sub)
    args = parser.parse_args(argv)
    if args.command == "train-teacher":
        return train_teacher_command(args)
    if args.command in ("build-table", "table-info"):
        return _user_errors(build_table_command if args.command == "build-table" else table_info_command, args)
    info = summary(args.arch, args.dataset)
    if args.json:
        json.dump(info, sys.stdout, indent=1)
        print()
    else:
        _print_table(info)
    return 0


def _user_errors(command: Any, args: argparse.Namespace) -> int:
    """Run a command; a user's error (netcomp.errors.UserError) is one line on stderr and exit code 2."""
    from netcomp.errors import UserError

    try:
        return command(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
