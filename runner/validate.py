"""``run_agent.py --validate RUN_DIR``: rebuild and re-score a run's top students, compare with the record.

Why: a recorded reward is only worth something if the student can be rebuilt and scores the same again. Each
evaluation record carries a ``replay`` spec (env id and kwargs, the teacher's identity and hash, the fidelity,
the training seed; see ``Recorder.replay_spec``). This module remakes that env with no evaluation cache (so the
student is really trained again), checks the teacher is the recorded one (by SHA-256) and re-scores the top K
records: an action through ``evaluate_many``, a white-box agent's submitted student through ``score_student``
(from its saved weights when the run kept them). On CPU a replay must reproduce the reward exactly.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from netcomp.errors import UserError
from runner.recorder import read_records
from runner.rundir import check_config, check_device, read_yaml_file, torch_threads, user_input

#: Default tolerance on a GPU: cuDNN/cuBLAS kernels are not bitwise deterministic across runs.
CUDA_TOLERANCE = 1e-3


def read_run(run_dir: Path) -> tuple[dict, list[dict]]:
    """The run's config and its evaluation records; FileNotFoundError naming whichever file is missing."""
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    for name in ("config.yaml", "evaluations.jsonl"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name} is missing: {run_dir} holds no run to validate")
    config = read_yaml_file(run_dir / "config.yaml", "the run's config") or {}
    check_config(config, str(run_dir / "config.yaml"))
    return config, read_records(run_dir / "evaluations.jsonl")


def top_records(records: list[dict], top: int) -> list[dict]:
    """The ``top`` records with the highest recorded reward (ties: lower index first)."""
    if top < 1:
        raise ValueError(f"--top must be >= 1, got {top}")
    return sorted(records, key=lambda r: (-float(r["reward"]), int(r["index"])))[:top]


def resolve_device(device: str | None, config: dict) -> str:
    """The replay's device: the flag, else the run's, else the env default (resolved now, so the header and
    the default tolerance name the device the students really train on)."""
    from envs.base import default_device

    return device or (config.get("run") or {}).get("device") or default_device()


def default_tolerance(device: str) -> float:
    """0 on CPU (training there is deterministic: a replay must be exact), ``CUDA_TOLERANCE`` otherwise."""
    import torch

    return 0.0 if torch.device(device).type == "cpu" else CUDA_TOLERANCE


def choose_teacher(teacher: str | None, config: dict, replay: dict) -> str | None:
    """The teacher file to replay with: the flag, the run's ``run.teacher``, the recorded file if it is still
    there, else None (the env trains or loads its default teacher; the hash check says if it is the same)."""
    recorded = (replay.get("teacher") or {}).get("path")
    run_teacher = (config.get("run") or {}).get("teacher")
    return teacher or run_teacher or (recorded if recorded and Path(recorded).is_file() else None)


def checked_env_id(env_id: Any) -> str:
    """A recorded env id, if it is one of netcomp's own registered ids (UserError otherwise): ``gym.make``
    imports the module that an id like ``some.module:Env-v0`` names, and a record is data, never code."""
    import envs

    try:
        canonical = envs.parse_env_id(env_id) if isinstance(env_id, str) else None
    except ValueError:
        canonical = None
    if canonical is None or canonical != env_id:
        raise UserError(f"the record's env id {env_id!r} is not one of netcomp's registered ids "
                        f"(netcomp/SPACE-ARCH-DATASET-v0); a run directory never chooses code to import")
    return canonical


def make_replay_env(replay: dict, device: str, data_root: str | None, download: bool, teacher: str | None,
                    teacher_model: str | None = None) -> Any:
    """The recorded env, remade without the run's cache (cache_path=None: every student is retrained).
    ``teacher_model`` (your own model's MODULE:CALLABLE) comes from the command line, never from the record."""
    import gymnasium as gym

    from runner.recorder import REPLAY_DROP

    env_id = checked_env_id(replay.get("env_id"))
    kwargs = replay.get("env_kwargs")
    if not isinstance(kwargs, dict):
        raise UserError(f"the record's env kwargs {kwargs!r} are not a mapping")
    kwargs = {k: v for k, v in kwargs.items() if k not in REPLAY_DROP}
    if kwargs.get("fidelity") == "table":  # a table's entry is checked by training it again, live
        kwargs["fidelity"] = replay.get("fidelity")
    extra = {"teacher": teacher} if teacher else {}
    if teacher_model:
        extra["teacher_model"] = teacher_model
    try:
        return gym.make(env_id, disable_env_checker=True, cache_path=None, device=device, data_root=data_root,
                        download=download, **kwargs, **extra)
    except TypeError as exc:
        raise UserError(f"cannot remake {env_id} with the recorded kwargs: {exc}") from None


def teacher_mismatch(env: Any, replay: dict) -> str | None:
    """Why the env's teacher is not the recorded one (both hashes), or None when the SHA-256 matches."""
    from netcomp.teachers import teacher_identity

    recorded = (replay.get("teacher") or {}).get("sha256")
    actual = teacher_identity(env.unwrapped.teacher)["sha256"]
    if recorded == actual:
        return None
    return f"teacher differs: recorded sha256 {recorded}, replay teacher {actual}"


#: The recorded figures a replay recomputes and compares, besides the reward.
FIGURES = ("valid", "accuracy", "params", "macs", "compression", "teacher_accuracy", "teacher_params",
           "teacher_macs", "arch_key")


def replay_info(env: Any, record: dict, run_dir: Path) -> dict:
    """Re-score one record on its env: the action (one-shot or an episode's steps) or the submitted student,
    at the recorded training seed and thread count, with the in-memory cache emptied so nothing is reused.
    The replay's info (reward and every figure)."""
    import torch

    from netcomp.arch import arch_from_dict

    base = env.unwrapped
    base.train_seed = int(record["replay"]["train_seed"])
    base.evaluator.cache.clear()
    threads = int(record["replay"].get("threads") or torch.get_num_threads())
    with torch_threads(threads):
        if record.get("student") is None:  # a lower rung's record (ASHA) is scored at that rung again
            return base.evaluate_many([record["action"]], steps=record.get("rung"))[0]
        weights = None
        if record.get("weights"):
            weights = torch.load(run_dir / record["weights"], map_location="cpu", weights_only=True)
        student = arch_from_dict(record["student"])
        return base.score_student(student, weights, train=record.get("trained", True))


def figure_differences(record: dict, info: dict, tolerance: float) -> list[str]:
    """The recorded figures the replay does not reproduce (numbers within ``tolerance``), as 'name a -> b'."""
    out = []
    for name in FIGURES:
        old, new = record.get(name), info.get(name)
        if isinstance(old, int | float) and isinstance(new, int | float) and not isinstance(old, bool):
            same = abs(float(old) - float(new)) <= tolerance
        else:
            same = old == new
        if not same:
            out.append(f"{name} {old} -> {new}")
    return out


def row(record: dict, replayed: float | None, tolerance: float, reason: str | None = None,
        differences: list[str] | None = None) -> dict:
    """One result: index, recorded and replayed reward, |difference|, the other figures that differ, agreement,
    and why it failed if so."""
    recorded = float(record["reward"])
    diff = None if replayed is None else abs(recorded - replayed)
    out = {"index": int(record["index"]), "space": record.get("space"), "recorded": recorded,
           "replayed": replayed, "diff": diff, "differences": differences or [],
           "agree": diff is not None and diff <= tolerance and not differences}
    notes = [n for n in (reason, "; ".join(differences or [])) if n]
    if notes:
        out["reason"] = "; ".join(notes)
    return out


def env_key(replay: dict) -> str:
    """What identifies one replay env: its id and kwargs (records of the same env share one instance)."""
    return json.dumps([replay["env_id"], replay["env_kwargs"]], sort_keys=True)


def validate_run(run_dir: str | Path, top: int = 5, tolerance: float | None = None, device: str | None = None,
                 teacher: str | None = None, data_root: str | None = None, download: bool = False,
                 teacher_model: str | None = None) -> list[dict]:
    """Replay the run's ``top`` best records; one dict per record (see :func:`row`), best first.

    A record without a replay spec (an older run), or whose env's teacher hash differs from the recorded one,
    is reported as not agreeing with a ``reason``, and nothing is trained for it.
    """
    run_dir = Path(run_dir)
    config, records = read_run(run_dir)
    device = resolve_device(device, config)
    tolerance = default_tolerance(device) if tolerance is None else float(tolerance)
    check_device(device)  # a run recorded on cuda, validated where there is none: one line, not a traceback
    built: dict[str, tuple[Any, str | None]] = {}
    rows = []
    for record in top_records(records, top):
        replay = record.get("replay")
        if not replay:
            rows.append(row(record, None, tolerance, "not replayable: the record has no replay spec (older run)"))
            continue
        if not isinstance(replay, dict) or "env_id" not in replay or "train_seed" not in replay:
            rows.append(row(record, None, tolerance, "not replayable: the record's replay spec is incomplete"))
            continue
        key = env_key(replay)
        if key not in built:
            threads = int(replay.get("threads") or (config.get("run") or {}).get("threads") or 1)
            with torch_threads(threads), user_input():  # the teacher and data files are the user's
                env = make_replay_env(replay, device, data_root, download, choose_teacher(teacher, config, replay),
                                      teacher_model)
            built[key] = (env, teacher_mismatch(env, replay))
        env, mismatch = built[key]
        if mismatch:
            rows.append(row(record, None, tolerance, mismatch))
            continue
        if record.get("student") is None and record.get("action") is None:
            rows.append(row(record, None, tolerance, "not replayable: the record holds neither an action nor a "
                                                     "student (a submission that was not a student)"))
            continue
        info = replay_info(env, record, run_dir)
        rows.append(row(record, float(info["reward"]), tolerance, fidelity_note(env, replay),
                        figure_differences(record, info, tolerance)))
    for env, _ in built.values():
        env.close()
    return rows


def fidelity_note(env: Any, replay: dict) -> str | None:
    """A note when the fidelity's settings changed since the run (its key differs): a likely cause of a
    disagreement, so it is reported with the row."""
    key = env.unwrapped.fidelity.key()
    recorded = replay.get("fidelity_key")
    if recorded is None or recorded == key:
        return None
    return f"fidelity {replay.get('fidelity')!r} settings changed since the run (key {recorded} -> {key})"


def format_row(r: dict) -> str:
    """One printed line of a result."""
    replayed = "-" if r["replayed"] is None else f"{r['replayed']:.6f}"
    diff = "-" if r["diff"] is None else f"{r['diff']:.3g}"
    line = f"{r['index']:>6}  {r['recorded']:>10.6f}  {replayed:>10}  {diff:>9}  {'yes' if r['agree'] else 'NO':>5}"
    return line + (f"  {r['reason']}" if r.get("reason") else "")


def validate_command(args: argparse.Namespace) -> int:
    """``--validate DIR``: print recorded vs replayed rewards (and figures) of the top students of a run, or of
    every run of a comparison folder; 0 if all agree, else 1."""
    folder = Path(args.validate)
    if (folder / "compare.yaml").exists():
        runs = sorted(p.parent for p in folder.glob("*/config.yaml"))
        if not runs:
            raise UserError(f"{folder} is a comparison with no run yet")
        codes = [validate_one(args, run_dir) for run_dir in runs]
        print(f"\n{sum(c == 0 for c in codes)}/{len(codes)} runs of {folder} agree")
        return 0 if not any(codes) else 1
    return validate_one(args, folder)


def validate_one(args: argparse.Namespace, run_dir: Path) -> int:
    """Validate one run directory (see :func:`validate_command`)."""
    config, _ = read_run(run_dir)
    check_device(args.device)
    top = 5 if args.top is None else args.top
    device = resolve_device(args.device, config)
    tolerance = default_tolerance(device) if args.tolerance is None else float(args.tolerance)
    print(f"validating {run_dir}: top {top} students, device {device}, tolerance {tolerance:g}")
    rows = validate_run(run_dir, top=top, tolerance=tolerance, device=device, teacher=args.teacher,
                        data_root=args.data_root, download=args.download,
                        teacher_model=getattr(args, "teacher_model", None))
    print(f"{'index':>6}  {'recorded':>10}  {'replayed':>10}  {'|diff|':>9}  {'agree':>5}")
    for r in rows:
        print(format_row(r))
    agreed = sum(r["agree"] for r in rows)
    print(f"{agreed}/{len(rows)} agree within {tolerance:g}")
    return 0 if agreed == len(rows) else 1
