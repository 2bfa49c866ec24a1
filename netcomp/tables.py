"""Tabular benchmarks: a complete, finite space of students of one teacher, each scored once and stored.

An agent then runs on the table instead of training (``gymnasium.make(ID, fidelity="table")``, envs/table.py):
thousands of episodes per minute on a CPU, as NAS-Bench-201 ("NAS-Bench-201: Extending the scope of
reproducible neural architecture search", ICLR 2020, arXiv:2001.00326) and NATS-Bench ("NATS-Bench:
Benchmarking NAS algorithms for architecture topology and size", TPAMI 2021, arXiv:2009.00437) made possible
for architecture search, with a simulated clock: a lookup charges the seconds the student's training took.

A table file (``teachers/tables/<spec>.<fidelity>.jsonl.gz``, gzip JSON lines) is one header line, ``{"header": ...}``,
then one line per action of the space's grid:

- the header: the format version, the spec's name, the env id and kwargs it was built with, the action grid
  (:class:`Grid`), the fidelity (name, key and settings: the table is self-contained), the reward the builder's
  env paid and its size metrics, the teacher (weights SHA-256 via :func:`netcomp.teachers.teacher_identity`,
  accuracy, params, MACs), the data (name, fingerprint, the reward split), the training seed, the evaluator's
  cache-key suffix, and the provenance: torch / Python / NumPy versions, the device, the torch thread count,
  the builder's git commit (``provenance.commit``; every build session's in ``build.sessions``), and how the
  build went (students, trained, training seconds, load averages);
- a row: ``action`` (the grid index of every entry), ``key`` (the student's part of the evaluator's cache key;
  null for a student refused before training, e.g. not smaller than the teacher), ``valid``,
  ``invalid_reason``, ``accuracy`` (on the reward split), ``test_accuracy`` (null: not measured at a search
  fidelity), ``loss``, ``params``, ``macs``, ``eval_seconds`` (the seconds its training took), ``reward``
  (under the header's reward), ``arch_key`` and ``extra`` (the trainer's steps and best epoch). The env
  rebuilds its own info (and any reward) from these fields exactly as from a live result.

A build appends each finished row as one whole line to ``<out>.partial.jsonl`` and the evaluator's cache to
``<out>.cache.jsonl`` beside the table, so a killed build resumes with nothing retrained; the table itself is
written atomically when the build ends. This module never imports gymnasium.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import itertools
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from netcomp.arch import Arch
from netcomp.cpu_numerics import cpu_numerics
from netcomp.errors import UserError
from netcomp.evaluator import EvalResult, Evaluator, Fidelity
from netcomp.files import write_atomic
from netcomp.jsonl import read_jsonl, to_jsonable
from netcomp.teachers import SHIPPED_DIR

#: Version of the table file format.
FORMAT = 1
#: The repository root, where ``configs/tables.yaml`` lives.
ROOT = Path(__file__).resolve().parent.parent
#: Folder of the shipped tables: beside the shipped teachers they were scored from, in the ``teachers``
#: package, so that an installed netcomp-gym (not only a checkout) serves ``fidelity="table"``.
TABLE_DIR = SHIPPED_DIR / "tables"
#: The shipped table specs: name -> env, env kwargs, grid levels, fidelity.
SPECS_FILE = ROOT / "configs" / "tables.yaml"
#: Largest space a table may enumerate (a spec beyond it is refused before anything trains).
MAX_STUDENTS = 1 << 20
#: Keys of a spec mapping (configs/tables.yaml entries, or a spec YAML file).
SPEC_KEYS = ("name", "env", "env_kwargs", "levels", "dataset_kwargs", "fidelity", "description")


class TableError(UserError):
    """A table that cannot serve this env or this student: the message says which and what to do."""


# ---------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class TableSpec:
    """What a table enumerates: an env (id and kwargs) whose one-shot action space is finite on a grid.

    ``levels`` is the number of grid levels of every Box entry (None for discrete spaces); ``fidelity`` the
    preset the table is scored at by default; ``dataset_kwargs`` a synthetic data set's sizes (tests).
    """

    name: str
    env: str
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    levels: int | None = None
    dataset_kwargs: Mapping[str, Any] = field(default_factory=dict)
    fidelity: str = "rank"
    description: str = ""

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], name: str | None = None) -> TableSpec:
        """A spec from a mapping (a configs/tables.yaml entry or a spec file); TableError for unknown keys."""
        if not isinstance(data, Mapping):
            raise TableError(f"a table spec is a mapping of {', '.join(SPEC_KEYS)}, got {type(data).__name__}")
        unknown = sorted(set(data) - set(SPEC_KEYS))
        if unknown or "env" not in data:
            raise TableError(f"table spec {name or data.get('name')!r}: unknown keys {unknown} or no env; "
                             f"valid keys are {', '.join(SPEC_KEYS)}")
        levels = data.get("levels")
        if levels is not None and (isinstance(levels, bool) or not isinstance(levels, int) or levels < 2):
            raise TableError(f"table spec {name!r}: levels must be an integer >= 2, got {levels!r}")
        return cls(name=str(name or data.get("name") or "table"), env=str(data["env"]),
                   env_kwargs=dict(data.get("env_kwargs") or {}), levels=levels,
                   dataset_kwargs=dict(data.get("dataset_kwargs") or {}),
                   fidelity=str(data.get("fidelity", "rank")), description=str(data.get("description", "")))


def load_specs(path: Path = SPECS_FILE) -> dict[str, TableSpec]:
    """The shipped table specs (configs/tables.yaml), by name."""
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    return {name: TableSpec.from_mapping(entry, name) for name, entry in data.items()}


def resolve_spec(spec: str | Path | TableSpec | Mapping[str, Any]) -> TableSpec:
    """A spec: itself, a mapping, a YAML file's path, or the name of a shipped spec (TableError otherwise)."""
    if isinstance(spec, TableSpec):
        return spec
    if isinstance(spec, Mapping):
        return TableSpec.from_mapping(spec)
    specs = load_specs()
    if str(spec) in specs:
        return specs[str(spec)]
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        import yaml

        return TableSpec.from_mapping(yaml.safe_load(path.read_text()) or {}, name=path.stem)
    raise TableError(f"unknown table spec {str(spec)!r}; the shipped specs are {', '.join(specs)} "
                     f"(configs/tables.yaml), or give a spec YAML file")


def table_path(spec: TableSpec, fidelity: str | None = None, folder: Path = TABLE_DIR) -> Path:
    """Where the table of ``spec`` at ``fidelity`` (default: the spec's) is stored."""
    return folder / f"{spec.name}.{fidelity or spec.fidelity}.jsonl.gz"


def work_paths(out: Path) -> tuple[Path, Path]:
    """(rows, evaluator cache) files of a build in progress beside the table file ``out``."""
    stem = str(out).removesuffix(".gz").removesuffix(".jsonl")
    return Path(stem + ".partial.jsonl"), Path(stem + ".cache.jsonl")


# ---------------------------------------------------------------------------- the action grid
@dataclass(frozen=True)
class Grid:
    """The finite action grid of a table: ``size`` entries, each taking ``levels`` values.

    ``kind`` is the one-shot action space's: "box" (entry k is ``low + (high - low) * k / (levels - 1)``; a
    Box action snaps to the nearest level, ties upward), "multibinary" (levels 2), "multidiscrete" (levels per
    entry from the space) or "discrete" (one entry). ``entries`` names what each entry acts on.
    """

    kind: str
    size: int
    levels: tuple[int, ...]
    low: float = 0.0
    high: float = 1.0
    entries: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        """How many actions the grid holds."""
        return math.prod(self.levels)

    def indices(self) -> Iterator[tuple[int, ...]]:
        """Every action's index vector, in lexicographic order."""
        return itertools.product(*(range(n) for n in self.levels))

    def action(self, index: Sequence[int]) -> np.ndarray | int:
        """The env action of an index vector."""
        if self.kind == "box":
            return np.array([self._value(k, n) for k, n in zip(index, self.levels)], np.float64)
        if self.kind == "discrete":
            return int(index[0])
        return np.asarray(index, np.int64)

    def _value(self, k: int, levels: int) -> float:
        return float(self.low + (self.high - self.low) * k / (levels - 1))

    def snap(self, values: np.ndarray) -> np.ndarray:
        """Box values (checked, float64) moved to the nearest grid level, entry-wise; other kinds unchanged."""
        if self.kind != "box":
            return values
        n = self.levels[0]
        k = np.floor((np.asarray(values, np.float64) - self.low) / (self.high - self.low) * (n - 1) + 0.5)
        k = np.clip(k, 0, n - 1).astype(np.int64)
        return np.array([self._value(int(i), n) for i in k.reshape(-1)], np.float64).reshape(np.shape(values))

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "size": self.size, "levels": list(self.levels), "low": self.low,
                "high": self.high, "entries": list(self.entries)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Grid:
        return cls(str(data["kind"]), int(data["size"]), tuple(int(n) for n in data["levels"]),
                   float(data.get("low", 0.0)), float(data.get("high", 1.0)), tuple(data.get("entries", ())))


# ---------------------------------------------------------------------------- the table
@dataclass
class Table:
    """A loaded table: its header, its rows, and the trained students by key (the lookups)."""

    header: dict[str, Any]
    rows: list[dict[str, Any]]
    path: Path | None = None
    by_key: dict[str, dict[str, Any]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.by_key = {}
        for row in self.rows:
            if row.get("key") is not None:
                self.by_key.setdefault(row["key"], row)

    @property
    def name(self) -> str:
        return str(self.header.get("spec"))

    @property
    def grid(self) -> Grid:
        return Grid.from_json(self.header["grid"])

    @property
    def train_seed(self) -> int:
        return int(self.header["train_seed"])

    @property
    def cache_suffix(self) -> str:
        return str(self.header["cache_suffix"])

    def fidelity_spec(self) -> dict[str, Any]:
        """The table's fidelity as a mapping for :func:`netcomp.evaluator.load_fidelity` (same key)."""
        f = self.header["fidelity"]
        return {k: f[k] for k in ("name", "train", "teacher_recipe", "final", "inherit") if k in f}

    def result_for(self, cache_key: str) -> EvalResult:
        """The recorded result of the student an evaluator's ``cache_key`` names; TableError when the key's
        scoring (inheritance, teacher, fidelity, seed, split) is not the table's or the student is not in it."""
        key, _, suffix = cache_key.partition("|")
        if suffix != self.cache_suffix:
            raise TableError(f"table {self.name}: this env scores students as {suffix!r} (inherit|teacher|fidelity|"
                             f"seed|split) but the table holds {self.cache_suffix!r}")
        row = self.by_key.get(key)
        if row is None:
            raise TableError(f"the student {key} is not in table {self.name} ({len(self.by_key)} students of "
                             f"{self.header['env_id']} {self.header['env_kwargs']}, {self._coverage()}); use the "
                             f"live env (another fidelity) for students outside it")
        return EvalResult.from_json(row)

    def _coverage(self) -> str:
        build = self.header.get("build") or {}
        if build.get("complete"):
            return "the complete space"
        return f"a partial table: {build.get('rows', len(self.rows))} of {self.grid.count} actions"

    def stats(self) -> dict[str, Any]:
        """The figures that say whether a table is a benchmark: actions, distinct students and rewards."""
        valid = [r for r in self.rows if r["valid"]]
        trained = {r["key"]: r for r in self.rows if r.get("key") is not None}
        best = max(valid, key=lambda r: r["reward"], default=None)
        return {
            "actions": len(self.rows), "grid": self.grid.count, "distinct_students": len(trained),
            "valid_actions": len(valid), "distinct_valid_students": len({r["key"] for r in valid}),
            "distinct_valid_rewards": len({r["reward"] for r in valid}),
            "distinct_rewards": len({r["reward"] for r in self.rows}),
            "distinct_params": len({r["params"] for r in valid}),
            "best_reward": best["reward"] if best else None, "best_action": best["action"] if best else None,
            "training_seconds": sum(float(r["eval_seconds"]) for r in trained.values()),
        }


def write_table(path: Path, header: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> None:
    """Write a table file atomically: gzip JSON lines, the header first, rows in grid order (reproducible
    bytes: no gzip timestamp)."""
    def write(f: Any) -> None:
        with gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as gz, io.TextIOWrapper(gz, encoding="utf-8") as text:
            text.write(json.dumps({"header": to_jsonable(dict(header))}, sort_keys=True) + "\n")
            for row in sorted(rows, key=lambda r: r["action"]):
                text.write(json.dumps(to_jsonable(dict(row)), sort_keys=True) + "\n")

    write_atomic(path, write)


def read_table(path: str | Path) -> Table:
    """A table file (read once per process while the file is unchanged); TableError if it is not one."""
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise TableError(f"no table file {path}; build it with `python -m netcomp build-table SPEC`") from None
    return _read_table(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_table(path: str, mtime_ns: int, size: int) -> Table:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = [json.loads(line) for line in f if line.strip()]
    except (OSError, EOFError, ValueError) as exc:
        raise TableError(f"{path} is not a readable table file ({exc}); restore it (git checkout) or rebuild "
                         f"it") from None
    if not lines or "header" not in lines[0] or lines[0]["header"].get("format") != FORMAT:
        raise TableError(f"{path} has no table header of format {FORMAT}; rebuild it")
    return Table(lines[0]["header"], lines[1:], Path(path))


def read_partial(path: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]:
    """(header, rows, sessions) of a build in progress ((None, [], []) when there is none); a torn last line is
    dropped. A session line (``{"session": ...}``) is appended by every build call: its commit, start, load."""
    lines = read_jsonl(path)
    if not lines:
        return None, [], []
    if "header" not in lines[0]:
        raise TableError(f"{path} does not start with a table header; move it aside to restart the build")
    rows = [line for line in lines[1:] if "action" in line]
    return lines[0]["header"], rows, [line["session"] for line in lines[1:] if "session" in line]


# ---------------------------------------------------------------------------- provenance
def git_commit(root: Path = ROOT) -> str | None:
    """The checkout's commit, with ``-dirty`` when the working tree has changes (None outside git)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def provenance(device: str, threads: int) -> dict[str, Any]:
    """Where and with what a table is computed: the values it holds depend on all of these (the builder's
    commit is each build session's: see :func:`session`)."""
    return {"torch": torch.__version__, "python": platform.python_version(), "numpy": np.__version__,
            "device": device, "threads": int(threads), "machine": platform.machine(), "cpus": os.cpu_count(),
            "cpu_numerics": cpu_numerics() if device == "cpu" else None}


def session() -> dict[str, Any]:
    """One build call: the builder's commit, when it started, the machine's load then, and its CPU (model and
    the instruction set torch's kernels use: CPU results are exact only on a CPU that computes alike)."""
    return {"commit": git_commit(), "started": now(), "load_average": load_average(), "cpu": cpu_identity()}


def cpu_identity() -> dict[str, Any]:
    """The CPU's model name (from /proc/cpuinfo where there is one) and torch's CPU capability (e.g. AVX2,
    AVX512): two CPUs that differ in either may train a student to different last bits."""
    model = platform.processor() or None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return {"model": model, "capability": torch.backends.cpu.get_cpu_capability()}


def load_average() -> list[float] | None:
    """The machine's 1, 5 and 15-minute load averages (None where the platform has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def now() -> str:
    """The UTC time, ISO 8601."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---------------------------------------------------------------------------- the evaluator of a table env
class TableEvaluator(Evaluator):
    """An :class:`Evaluator` whose trainings are table lookups; everything else is the evaluator's own.

    The students are still built, checked (:meth:`Evaluator.problem`, a ``target``) and cached exactly as
    live, so infos, the cache file and its resume are a live env's; only :meth:`_train` differs: each
    uncached student's recorded result is looked up by its cache key, and counted as one training of its
    recorded seconds (``trainings`` / ``trained_seconds``: the harness's accounting, and the simulated clock of
    a ``--budget-seconds`` run). Construction checks the teacher (weights SHA-256), the data (fingerprint) and
    the fidelity (key) against the table's header. The data is still needed: the teacher's accuracy is
    measured on it and :meth:`train_final` (a kept student's final training) really trains.
    """

    def __init__(self, *args: Any, table: Table, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.table = table
        problems = header_mismatches(table.header, self)
        if problems:
            raise TableError(f"table {table.name} ({table.path}) does not fit this env: {'; '.join(problems)}")

    def _train(self, students: Sequence[Arch], inherit: str, seed: int,
               fidelity: Fidelity | None = None) -> list[EvalResult]:
        if fidelity is not None and fidelity.key() != self.fidelity.key():
            raise TableError(f"table {self.table.name} holds its students at the {self.fidelity.name!r} fidelity "
                             f"only, not at the {fidelity.name!r} rung; a multi-fidelity agent needs the live env")
        results = [self.table.result_for(self.cache_key(s, inherit, seed)) for s in students]
        self.trainings += len(results)
        self.trained_seconds += sum(r.eval_seconds for r in results)
        return results

    def evaluate_weights(self, student: Arch, state_dict: Mapping[str, torch.Tensor], train: bool = True,
                         seed: int | None = None) -> EvalResult:
        """A student with its own weights is not a table entry: TableError (use the live env)."""
        raise TableError(f"table {self.table.name} scores the students of its space only; a submitted student "
                         f"with its own weights needs the live env (another fidelity)")


def scoring_header(evaluator: Evaluator) -> dict[str, Any]:
    """The header fields that say how an evaluator scores: teacher, data, fidelity, split, inheritance."""
    from netcomp.teachers import data_fingerprint, teacher_identity

    f = evaluator.fidelity
    return {
        "teacher": {**teacher_identity(evaluator.teacher), "path": _repo_path(evaluator.teacher.path),
                    "accuracy": evaluator.teacher_accuracy, "params": evaluator.teacher_params,
                    "macs": evaluator.teacher_macs},
        "data": {"dataset": evaluator.dataset.name, "fingerprint": data_fingerprint(evaluator.dataset),
                 "split": evaluator.split},
        "fidelity": {"name": f.name, "key": f.key(), "train": f.train.to_dict(), "teacher_recipe": f.teacher_recipe,
                     "final": dict(f.final) if f.final else None, "inherit": f.inherit},
        "inherit": evaluator.inherit, "size_metrics": list(evaluator.size_metrics),
        "require_smaller": evaluator.require_smaller,
    }


def _repo_path(path: str | Path | None) -> str | None:
    """A teacher file's path, relative to the repository when it is inside (a shipped teacher)."""
    if path is None:
        return None
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def header_mismatches(header: Mapping[str, Any], evaluator: Evaluator) -> list[str]:
    """What differs between a table's scoring and an evaluator's: teacher weights, data, fidelity, split,
    inheritance (each as 'what: table X, env Y')."""
    now_ = scoring_header(evaluator)
    pairs = {
        "teacher weights": (header["teacher"]["sha256"], now_["teacher"]["sha256"]),
        "data fingerprint": (header["data"]["fingerprint"], now_["data"]["fingerprint"]),
        "reward split": (header["data"]["split"], now_["data"]["split"]),
        "fidelity key": (header["fidelity"]["key"], now_["fidelity"]["key"]),
        "inheritance": (header["inherit"], now_["inherit"]),
    }
    return [f"{what}: table {a}, env {b}" for what, (a, b) in pairs.items() if a != b]
