"""Building a table: ``python -m netcomp build-table SPEC`` scores every student of a finite space once.

The spec's env (configs/tables.yaml, or a spec YAML file) is made at the build's fidelity with the evaluator's
cache in ``<table>.cache.jsonl``; its one-shot action grid is enumerated (:func:`envs.table.grid_of`) and
scored in batches through the env's own ``evaluate_many``, so the students are trained exactly as a live run
trains them (shared batches here, Ray actors with ``workers``, a GPU when the device is one). Each scored
action is appended as one whole line to ``<table>.partial.jsonl``; a killed build started again skips those
rows and finds every student trained since in the evaluator's cache, so nothing is retrained. When every
planned action is scored, the table is written (atomically) and the two work files are removed; a build cut
short by ``limit`` writes what it has (``build.complete: false``) and keeps them for the next call; without
them (a partial table committed elsewhere, a fresh clone) the next call resumes from the table file itself.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs.table import grid_of
from netcomp.distill import torch_threads
from netcomp.files import write_atomic
from netcomp.jsonl import append_jsonl, to_jsonable
from netcomp.tables import (
    FORMAT,
    MAX_STUDENTS,
    Grid,
    Table,
    TableError,
    TableSpec,
    load_average,
    now,
    provenance,
    read_partial,
    read_table,
    resolve_spec,
    scoring_header,
    session,
    table_path,
    work_paths,
    write_table,
)


@dataclass
class BuildReport:
    """What a build call did: the table file, its rows, what this call trained, and the table's figures."""

    path: Path
    rows: int
    planned: int
    trained: int
    resumed_rows: int
    seconds: float
    complete: bool
    stats: dict[str, Any]


def build_table(spec: str | Path | TableSpec, fidelity: str | None = None, out: str | Path | None = None,
                limit: int | None = None, sample: int | None = None, seed: int = 0, threads: int | None = None,
                device: str | None = None, workers: int | None = None, batch: int = 16,
                data_root: str | None = None, progress: bool = True) -> BuildReport:
    """Build (or resume) the table of ``spec`` at ``fidelity`` (default: the spec's) into ``out`` (default:
    ``teachers/tables/<spec>.<fidelity>.jsonl.gz``).

    ``sample``: only that many distinct valid students, drawn with ``seed`` (one action each: the first in
    grid order), for a costly fidelity; ``limit``: score at most that many more actions in this call;
    ``threads``: torch CPU threads (default: the current count; recorded in the header); ``workers``: Ray
    actors; ``batch``: actions per ``evaluate_many`` call.
    """
    spec = resolve_spec(spec)
    fidelity = fidelity or spec.fidelity
    out = Path(out) if out is not None else table_path(spec, fidelity)
    rows_path, cache_path = work_paths(out)
    threads = int(threads or torch.get_num_threads())
    start = time.perf_counter()
    with torch_threads(threads):
        env = make_build_env(spec, fidelity, cache_path, device, data_root)
        with _pool(env, workers, threads) as pool:
            header = table_header(env, spec, threads, _device(env, pool), sample, seed)
            seeded = seed_from_table(out, rows_path, header)
            done, sessions = resume_rows(rows_path, header)
            plan = planned_actions(env, header, sample, seed)
            todo = [a for a in plan if a not in done][:limit]
            trained_before = env.unwrapped.evaluator.trainings
            new = score_actions(env, Grid.from_json(header["grid"]), todo, rows_path, batch, progress,
                                len(plan) - len(todo), len(plan))
            trained = env.unwrapped.evaluator.trainings - trained_before
    rows = [done[a] for a in plan if a in done] + new
    complete = len(rows) == len(plan)
    header["build"] = build_section(rows, plan, complete, limit, sessions, time.perf_counter() - start)
    header["provenance"]["commit"] = sessions[-1]["commit"]
    if not (seeded and complete and not new):  # a complete table built again is left as it is
        write_table(out, header, rows)
    if complete:
        rows_path.unlink(missing_ok=True)
        cache_path.unlink(missing_ok=True)
    stats = Table(header, rows, out).stats()
    return BuildReport(out, len(rows), len(plan), trained, len(rows) - len(new), time.perf_counter() - start,
                       complete, stats)


def make_build_env(spec: TableSpec, fidelity: str, cache_path: Path, device: str | None,
                   data_root: str | None) -> Any:
    """The spec's live env at ``fidelity`` (one-shot), its evaluator cached in ``cache_path``."""
    import gymnasium as gym

    import envs

    return gym.make(envs.parse_env_id(spec.env), fidelity=fidelity, device=device, data_root=data_root,
                    dataset_kwargs=dict(spec.dataset_kwargs), cache_path=str(cache_path), disable_env_checker=True,
                    mode="oneshot", **dict(spec.env_kwargs))


def table_header(env: Any, spec: TableSpec, threads: int, device: str, sample: int | None,
                 seed: int) -> dict[str, Any]:
    """Everything a table's values depend on (without the ``build`` section, added when it is written)."""
    base = env.unwrapped
    ev = base.evaluator
    grid = grid_of(base.action_space, spec.levels, tuple(base.layers))
    if grid.count > MAX_STUDENTS:
        raise TableError(f"table spec {spec.name}: {grid.count:,} actions, more than {MAX_STUDENTS:,}; a table "
                         f"enumerates a small finite space")
    suffix = ev.cache_key(base.arch, ev.inherit, base.train_seed).partition("|")[2]
    return {
        "format": FORMAT, "spec": spec.name, "description": spec.description, "env_id": base.spec.id,
        "env_kwargs": dict(spec.env_kwargs), "space": base.space, "grid": grid.to_json(),
        "reward": {"name": base.reward_name, "penalty": base.penalty}, "train_seed": int(base.train_seed),
        "cache_suffix": suffix, "plan": {"sample": sample, "seed": seed if sample else None},
        **scoring_header(ev), "provenance": provenance(device, threads),
    }


def seed_from_table(out: Path, rows_path: Path, header: dict[str, Any]) -> bool:
    """Start the work file of a build from the table file ``out`` when there is no work file but a table of
    the same settings (a partial table committed from another machine, a fresh clone): its rows are then
    not trained again. True when it did; TableError when the table holds other settings (another teacher,
    fidelity, sample, thread count...; the builder's commit may differ)."""
    if rows_path.exists() or not out.exists():
        return False
    table = read_table(out)
    old = {k: v for k, v in table.header.items() if k != "build"}
    old["provenance"] = {k: v for k, v in old.get("provenance", {}).items() if k != "commit"}
    differ = differing_keys(old, json.loads(json.dumps(to_jsonable(header))))
    if differ:
        raise TableError(f"{out} is a table of other settings ({', '.join(differ)} differ); move it aside to "
                         f"build this one")
    lines = [{"header": header}, *({"session": s} for s in table.header.get("build", {}).get("sessions", [])),
             *table.rows]
    write_atomic(rows_path, lambda f: f.write("".join(json.dumps(to_jsonable(x)) + "\n" for x in lines).encode()))
    return True


def differing_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The top-level keys whose values differ between two table headers."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def resume_rows(rows_path: Path, header: dict[str, Any]) -> tuple[dict[tuple[int, ...], dict[str, Any]], list]:
    """(the rows earlier sessions of this build scored, by action; every session, this one last), writing the
    header of a new build and this session's line; TableError when an earlier session scored something else
    (another teacher, fidelity, thread count, torch...; a commit may differ: each session's is recorded)."""
    old, rows, sessions = read_partial(rows_path)
    if old is None:
        append_jsonl(rows_path, {"header": header})
    differ = differing_keys(old or header, header)
    if differ:
        raise TableError(f"{rows_path} holds a build of other settings ({', '.join(differ)} differ); move it and "
                         f"the .cache.jsonl file beside it aside to start the build again")
    now_ = session()
    append_jsonl(rows_path, {"session": now_})
    return {tuple(r["action"]): r for r in rows}, [*sessions, now_]


def planned_actions(env: Any, header: dict[str, Any], sample: int | None, seed: int) -> list[tuple[int, ...]]:
    """The actions a build scores: all of them in grid order, or one per sampled distinct valid student in the
    order of the draw, so that a sample build cut short by ``limit`` has scored a random subset of the sample
    (a partial reference column is then still an unbiased sample of the space)."""
    grid = Grid.from_json(header["grid"])
    actions = list(grid.indices())
    if sample is None:
        return actions
    first: dict[str, tuple[int, ...]] = {}
    for index in actions:
        key = student_key(env, grid.action(index))
        if key is not None:
            first.setdefault(key, index)
    if sample > len(first):
        raise TableError(f"--sample {sample}: the space has only {len(first)} distinct valid students")
    chosen = np.random.default_rng(seed).choice(len(first), size=sample, replace=False)
    students = list(first.values())
    return [students[i] for i in chosen]


def student_key(env: Any, action: Any) -> str | None:
    """The student part of the evaluator's cache key of an action's student (None when it is refused before
    training: broken, too large, ...)."""
    base = env.unwrapped
    ev = base.evaluator
    student = base.student_for(action)
    if ev.problem(student) is not None:
        return None
    return ev.cache_key(student, ev.inherit, base.train_seed).partition("|")[0]


def score_actions(env: Any, grid: Grid, todo: Sequence[tuple[int, ...]], rows_path: Path, batch: int,
                  progress: bool, initial: int, total: int) -> list[dict[str, Any]]:
    """Score ``todo`` in batches through ``evaluate_many``, appending each row as it is known."""
    from tqdm import tqdm

    rows: list[dict[str, Any]] = []
    with tqdm(total=total, initial=initial, unit="student", desc="build-table", disable=not progress,
              smoothing=0.05) as bar:
        for chunk in _chunks(todo, batch):
            for row in score_chunk(env, grid, chunk):
                append_jsonl(rows_path, row)
                rows.append(row)
            bar.update(len(chunk))
    return rows


def score_chunk(env: Any, grid: Grid, chunk: Sequence[tuple[int, ...]]) -> list[dict[str, Any]]:
    """The table rows of a batch of actions (index vectors), scored together."""
    base = env.unwrapped
    actions = [grid.action(i) for i in chunk]
    keys = [student_key(env, a) for a in actions]
    infos = base.evaluate_many(actions)
    rows = []
    for index, key, info, result in zip(chunk, keys, infos, base.last_results):
        fields = {k: v for k, v in result.to_json().items() if k != "cached"}
        rows.append({"action": list(index), "key": key, **fields, "reward": info["reward"], "test_accuracy": None})
    return rows


def build_section(rows: list[dict[str, Any]], plan: list, complete: bool, limit: int | None, sessions: list,
                  wall: float) -> dict[str, Any]:
    """The header's ``build`` section: how complete the table is, what it cost, and every session (commit,
    start, load average then)."""
    trained = {r["key"]: float(r["eval_seconds"]) for r in rows if r.get("key") is not None}
    return {"rows": len(rows), "planned": len(plan), "complete": complete, "limit": limit,
            "trained_students": len(trained), "training_seconds": sum(trained.values()),
            "last_session_wall_seconds": wall, "finished": now(), "load_average": load_average(),
            "sessions": sessions}


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), max(1, size)):
        yield items[i:i + max(1, size)]


def _device(env: Any, pool: Any) -> str:
    """Where the students train: the pool's actors' device, else the env's."""
    if pool is not None:
        return "cuda" if pool.gpus else "cpu"
    return str(env.unwrapped.device)


@contextlib.contextmanager
def _pool(env: Any, workers: int | None, threads: int) -> Iterator[Any]:
    """Ray actors training the env's students at ``threads`` torch threads each (None without ``workers``),
    shut down at the end."""
    if not workers:
        yield None
        return
    from netcomp.workers import WorkerPool

    pool = WorkerPool(int(workers), threads=threads)
    pool.attach(env.unwrapped.evaluator)
    try:
        yield pool
    finally:
        pool.shutdown()
