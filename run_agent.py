"""Run a compression agent on an environment: ``python run_agent.py --env ENV --agent AGENT``.

Configs are layered: built-in defaults < configs/<agent>.yaml < --config YAML < command-line flags; unknown
keys are errors. The run directory holds config.yaml (the resolved config, written before anything trains),
evaluations.jsonl (one line per reward evaluation, written as it happens), cache.jsonl (scored students, so
a resumed run never retrains one), checkpoint.pt (agent state), summary.json, TensorBoard events (tb/), two
plots and the best student (best_student.pt: weights plus the spec to rebuild it). ``--resume DIR``
continues a killed run to the same budget (a larger ``--budget`` extends it). The run machinery lives in
runner/rundir.py; this file is the command line only.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from netcomp.errors import UserError


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's input or the run directory's state: one line on stderr, exit code 2. A plain
    ValueError is not among them: outside the places that read the user's input (runner.rundir.user_input) it
    is a bug, and keeps its traceback. (Imported here, not at the top, so --help answers without torch.)"""
    from netcomp.teachers import CacheNotWritableError

    return UserError, FileNotFoundError, NotADirectoryError, PermissionError, CacheNotWritableError


def resolve_config(args: argparse.Namespace) -> dict:
    """The run config the flags resolve to (``runner.rundir.resolve_config``)."""
    from runner.rundir import resolve_config as resolve

    return resolve(args)


#: Flags --validate reads; any other flag given with it would be ignored, so it is refused.
VALIDATE_FLAGS = ("validate", "top", "tolerance", "device", "teacher", "data_root", "download", "teacher_model")


def list_everything() -> None:
    """Print the envs and agents from runner/catalog.py, which imports no torch, so --list answers at once."""
    from runner.catalog import listing

    print(listing())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", help="environment, e.g. removal-resnet18-cifar10 (or netcomp/...-v0)")
    p.add_argument("--agent", help="agent name (see --list)")
    p.add_argument("--budget", type=int, help="reward evaluations to spend (on --resume: a larger one extends)")
    p.add_argument("--budget-seconds", dest="budget_seconds", type=float,
                   help="training seconds to spend (students' training plus white-box agents' own)")
    p.add_argument("--fidelity", help="rank (default) | smoke | fast | paper | esnac | reference (configs/)")
    p.add_argument("--mode", choices=("oneshot", "sequential"), help="env mode (default: the agent's)")
    p.add_argument("--preset", help="a presets: section of configs/<agent>.yaml (e.g. fast)")
    p.add_argument("--config", help="a YAML file layered over the defaults")
    p.add_argument("--out", help="run directory (default runs/<env>-<agent>-<time>)")
    p.add_argument("--resume", help="continue the run in this directory")
    p.add_argument("--teacher", help="a teacher checkpoint file (default: the shipped teacher of the arch and "
                                     "data in teachers/, else the cached teacher of the fidelity's recipe; "
                                     "'recipe' asks for the latter); with --teacher-model, that model's state "
                                     "dict file")
    p.add_argument("--teacher-model", dest="teacher_model", metavar="MODULE:CALLABLE",
                   help="your own model as the teacher, with --env SPACE-custom-DATASET: e.g. "
                        "torchvision.models:resnet18 (called with num_classes= when it takes it; command line only, "
                        "so give it again on --resume and --validate)")
    p.add_argument("--load-policy", dest="load_policy", help="start from a policy saved by another run")
    p.add_argument("--trust-pickle", dest="trust_pickle", action="store_true",
                   help="let --load-policy unpickle an SB3 zip (runs code from the file: trusted files only)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int,
                   help="torch CPU threads to train with (default: this machine's count); recorded in the run, so "
                        "a resume or --validate elsewhere computes the same numbers")
    p.add_argument("--data-root", dest="data_root",
                   help="folder with the datasets (torchvision layout); for imagefolder, the folder holding "
                        "train/<class>/ (and val/, test/)")
    p.add_argument("--image-size", dest="image_size", type=int,
                   help="imagefolder (and synthetic): the side images are resized and cropped to (default 32)")
    p.add_argument("--download", action="store_true", help="let torchvision download the dataset")
    p.add_argument("--workers", type=int,
                   help="train batched students on N Ray actors (one GPU each, or CPU); default: this process")
    p.add_argument("--ray-address", dest="ray_address",
                   help="with --workers: a running Ray cluster, HEAD:6379 (default: a local one)")
    p.add_argument("--seeds", type=int,
                   help="a comparison: run every --agent (comma-separated) with seeds 0..N-1 at the same budget, "
                        "teacher, fidelity and data, then write leaderboard.md/.csv, best_so_far.png, pareto.png")
    p.add_argument("--targets",
                   help="the operating-point protocol: every --agent x seed at each fraction of the teacher's MACs "
                        "(or params), e.g. 0.5,0.25,0.125, then the same fine-tune for every kept student; writes "
                        "protocol.md/.csv and curve.png")
    p.add_argument("--target-metric", dest="target_metric", choices=("macs", "params"),
                   help="with --targets: what the targets bound (default macs)")
    p.add_argument("--no-scratch", dest="no_scratch", action="store_true", default=None,
                   help="with --targets: no train-from-scratch rows")
    p.add_argument("--validate", metavar="RUN_DIR",
                   help="rebuild and re-score a run's top students; print recorded vs replayed rewards")
    p.add_argument("--top", type=int, help="with --validate: how many students (default 5)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="with --validate: largest |recorded - replayed| reward that agrees (default: 0 on CPU)")
    p.add_argument("--agent-config", dest="agent_config", action="append", metavar="LABEL=FILE",
                   help="a comparison: that agent's own settings (a YAML mapping of its Config fields); repeatable. "
                        "One agent may run twice under two labels: --agent random,random@b8 --agent-config "
                        "random@b8=b8.yaml")
    p.add_argument("--study-storage", dest="study_storage",
                   help="the Optuna agents (tpe, cmaes, gp, nsga2): share one study with other runs through this "
                        "journal file or RDB URL (command line only; give it again on --resume)")
    p.add_argument("--list", action="store_true", help="list environments and agents")
    return p.parse_args(argv)


def _is_protocol(resume: str | None) -> bool:
    """Whether --resume names an operating-point protocol directory (it holds protocol.yaml)."""
    return bool(resume) and (Path(resume) / "protocol.yaml").exists()


def _is_comparison(resume: str | None) -> bool:
    """Whether --resume names a comparison directory (it holds compare.yaml) rather than one run."""
    return bool(resume) and (Path(resume) / "compare.yaml").exists()


def given_flags(args: argparse.Namespace) -> list[str]:
    """The flags the command line set (not at their defaults), by destination name."""
    defaults = vars(parse_args([]))
    return [k for k, v in vars(args).items() if v != defaults.get(k)]


def check_flags(args: argparse.Namespace) -> None:
    """UserError for flags that cannot go together or have impossible values, before anything runs."""
    def name(dest: str) -> str:
        return "--" + dest.replace("_", "-")

    if args.validate:
        ignored = [name(f) for f in given_flags(args) if f not in VALIDATE_FLAGS]
        if ignored:
            raise UserError(f"--validate takes only {', '.join(name(f) for f in VALIDATE_FLAGS[1:])}; "
                            f"{', '.join(ignored)} would be ignored")
    if args.tolerance is not None and not (math.isfinite(args.tolerance) and args.tolerance >= 0):
        raise UserError(f"--tolerance {args.tolerance} is not a number >= 0")
    if args.top is not None and args.top < 1:
        raise UserError(f"--top must be >= 1, got {args.top}")
    for flag in ("seed", "seeds", "budget", "threads", "workers"):
        value = getattr(args, flag)
        low = 0 if flag in ("seed", "workers") else 1
        if value is not None and value < low:
            raise UserError(f"{name(flag)} must be >= {low}, got {value}")
    if args.budget_seconds is not None and not (math.isfinite(args.budget_seconds) and args.budget_seconds > 0):
        raise UserError(f"--budget-seconds must be a number > 0, got {args.budget_seconds}")
    if args.agent is not None and not [a for a in args.agent.split(",") if a.strip()]:
        raise UserError(f"--agent {args.agent!r} names no agent")
    comparison = args.seeds is not None or (args.agent and "," in args.agent) or _is_comparison(args.resume) \
        or args.targets is not None or _is_protocol(args.resume)
    if args.agent_config and not comparison:
        raise UserError("--agent-config LABEL=FILE is for a comparison (--agent a,b or --seeds N); a single run "
                        "takes its agent's settings from --config FILE (agent_config:)")
    if (args.target_metric or args.no_scratch) and args.targets is None and not _is_protocol(args.resume):
        raise UserError("--target-metric and --no-scratch go with --targets")
    if args.resume and not _is_comparison(args.resume) and not _is_protocol(args.resume) and args.seeds is not None:
        raise UserError(f"--seeds starts a comparison; {args.resume} is one run: resume it without --seeds")
    if args.config and not args.resume and Path(args.config).is_dir():
        raise UserError(f"--config {args.config} is a folder; expected a YAML file")


def main(argv: list[str] | None = None) -> int:
    """The command line: 0 when the run finished, 2 with one line on stderr for bad input."""
    args = parse_args(argv)
    if args.list:
        list_everything()
        return 0
    from runner.rundir import start

    try:
        check_flags(args)
        if args.validate:
            from runner.validate import validate_command

            return validate_command(args)
        if args.targets is not None or _is_protocol(args.resume):
            from runner.protocol import protocol_command

            return protocol_command(args)
        if args.seeds is not None or (args.agent and "," in args.agent) or _is_comparison(args.resume):
            from runner.compare import compare_command

            return compare_command(args)
        return start(args)
    except user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
