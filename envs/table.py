"""Table environments: ``gymnasium.make(ID, fidelity="table")`` looks rewards up instead of training.

    env = gymnasium.make("netcomp/channel-ratio-lenet5-fashionmnist-v0", fidelity="table")

A table env is the live env of its space (same action and observation spaces, observations, students, infos
and rewards) whose evaluator is a :class:`netcomp.tables.TableEvaluator`: each student is built and checked as
live, then its recorded result is looked up in the table (``teachers/tables/<spec>.<fidelity>.jsonl.gz``, or the
file given as ``table=``) instead of trained. The info is rebuilt from the recorded result, so any ``reward``,
``penalty`` or ``target`` works on a table. Differences from the live env, all by design:

- a Box action snaps to the table's grid, entry by entry (nearest level, ties upward; the grid is in the
  table's header: ``env.unwrapped.table.grid``), so ``info["raw_ratios"]`` holds the snapped ratios;
- the training seed is the table's (``env.unwrapped.table.train_seed``, whatever the episode seed): the table
  holds one training of each student;
- a step costs a lookup, and reports the recorded training seconds as its ``eval_seconds`` (a simulated
  clock: ``--budget-seconds`` means on a table what it means live);
- a student that is not in the table (another grid, other env kwargs) raises :class:`netcomp.tables.TableError`;
  a submitted student with its own weights too (white-box agents need the live env).

The table's env kwargs must be the env's (the options that choose students: ``lbound``, ``selection``,
``granularity``...); the teacher (weights SHA-256), the data (fingerprint) and the fidelity (key) are checked
against the table's header. The data is still loaded: the teacher's accuracy is measured on it, and a kept
student's final training (the run's best student) really trains.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from envs.base import CompressionEnv, check_box_action
from netcomp.jsonl import to_jsonable
from netcomp.tables import Grid, Table, TableError, TableEvaluator, load_specs, read_table, table_path

#: The ``fidelity=`` value that makes a table env.
TABLE = "table"
#: Env kwargs that never change which student an action yields or what the table holds for it: how the
#: reward is paid, where files live, the device, rendering, and what the header check covers (data, teacher).
FREE_KWARGS = frozenset({"arch", "dataset", "fidelity", "table", "mode", "reward", "penalty", "target", "render_mode",
                         "device", "data_root", "download", "cache_path", "home", "dataset_kwargs", "teacher",
                         "teacher_seed"})


def make_env(entry_point: str, **kwargs: Any) -> CompressionEnv:
    """The env of a space's entry point (``module:Class``): its table env when ``fidelity="table"``."""
    module, _, name = entry_point.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if kwargs.get("fidelity") == TABLE:
        cls = table_class(cls)
    return cls(**kwargs)


@functools.cache
def table_class(cls: type) -> type:
    """The table env class of a space's env class (one per class)."""
    return type(f"Table{cls.__name__}", (TableEnvMixin, cls),
                {"__doc__": __doc__, "__module__": __name__, "live_class": cls})


class TableEnvMixin:
    """Turns a space's env class into its table env (see the module docstring); ``table`` is a table file
    (default: the shipped table of this env id and kwargs at its spec's fidelity)."""

    table: Table
    grid: Grid
    #: the space's own (live) env class
    live_class: type

    def __init__(self, *, table: str | Path | None = None, **kwargs: Any) -> None:
        cls = self.live_class
        self.table = read_table(table) if table is not None else shipped_table(cls, kwargs)
        check_env_kwargs(cls, kwargs, self.table)
        self.grid = self.table.grid
        self.evaluator_class = functools.partial(TableEvaluator, table=self.table)
        super().__init__(**{**kwargs, "fidelity": table_fidelity(self.table)})
        self.train_seed = self.table.train_seed

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        out = super().reset(seed=seed, options=options)
        self.train_seed = self.table.train_seed  # the table holds this training of every student
        return out

    def _check_oneshot(self, action: Any) -> list[Any]:
        return super()._check_oneshot(self._snap(action, self.action_space))

    def _check_step(self, action: Any) -> Any:
        return super()._check_step(self._snap(action, self.action_space))

    def _snap(self, action: Any, space: spaces.Space) -> Any:
        """A Box action checked and moved to the table's grid; any other action as it is."""
        if not isinstance(space, spaces.Box):
            return action
        return self.grid.snap(check_box_action(action, space))


def table_fidelity(table: Table) -> dict[str, Any]:
    """The table's fidelity as a mapping (its scoring, from the header), with the current preset's
    ``protocol`` fine-tune of the same name, if any (a kept student's recipe, not part of the table).

    Warns when configs/fidelity.yaml's preset of that name now scores otherwise (another key): the table
    still gives what it recorded, but no longer what a live run at that preset gives."""
    from netcomp.evaluator import load_fidelity
    from netcomp.teachers import load_yaml

    name = table.header["fidelity"]["name"]
    preset = load_yaml("fidelity.yaml").get(name) or {}
    if preset and load_fidelity(name, table.header["space"]).key() != table.header["fidelity"]["key"]:
        warnings.warn(f"table {table.name} was scored at a {name!r} fidelity that configs/fidelity.yaml has since "
                      f"changed: its rewards are the recorded ones, not a live {name!r} run's; rebuild it "
                      f"(python -m netcomp build-table {table.name})", UserWarning, stacklevel=3)
    protocol = {"protocol": preset["protocol"]} if preset.get("protocol") else {}
    return {**table.fidelity_spec(), **protocol}


def env_defaults(cls: type) -> dict[str, Any]:
    """The default of every keyword of ``cls`` and its bases' constructors (the class's own win)."""
    out: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.default is not inspect.Parameter.empty:
                out[p.name] = p.default
    return out


def kwargs_mismatches(cls: type, kwargs: Mapping[str, Any], recorded: Mapping[str, Any]) -> list[str]:
    """The student-choosing kwargs whose value (given, else default) differs from the table's, as text."""
    defaults = env_defaults(cls)
    out = []
    for key in sorted((set(kwargs) | set(recorded)) - FREE_KWARGS):
        given = to_jsonable(kwargs.get(key, defaults.get(key)))
        table = to_jsonable(recorded.get(key, defaults.get(key)))
        if given != table:
            out.append(f"{key}={given!r} (the table has {table!r})")
    return out


def check_env_kwargs(cls: type, kwargs: Mapping[str, Any], table: Table) -> None:
    """TableError unless the env is the table's: its space, arch and dataset, and its student-choosing kwargs."""
    header = table.header
    env_id = _env_id(cls, kwargs)
    if env_id != header["env_id"]:
        raise TableError(f"table {table.name} ({table.path}) is a table of {header['env_id']}, not of {env_id}")
    wrong = kwargs_mismatches(cls, kwargs, header["env_kwargs"])
    if wrong:
        raise TableError(f"table {table.name} was built with other env options than this env's: {', '.join(wrong)}")


def shipped_table(cls: type, kwargs: Mapping[str, Any]) -> Table:
    """The shipped table of an env class and kwargs: the spec of configs/tables.yaml with its env id and
    options, at the spec's fidelity; TableError naming the specs of this env id otherwise."""
    import envs

    env_id = _env_id(cls, kwargs)
    candidates = [s for s in load_specs().values() if envs.parse_env_id(s.env) == env_id]
    for spec in candidates:
        if not kwargs_mismatches(cls, kwargs, spec.env_kwargs):
            return read_table(table_path(spec))
    shipped = "; ".join(f"{s.name} ({s.env_kwargs or 'default options'})" for s in candidates) or "none"
    raise TableError(f"no shipped table for {env_id} with these options; its table specs: {shipped} "
                     f"(configs/tables.yaml). Pass table=FILE for another table")


def _env_id(cls: type, kwargs: Mapping[str, Any]) -> str:
    import envs

    defaults = env_defaults(cls)
    return envs.env_id(cls.space, kwargs.get("arch", defaults["arch"]), kwargs.get("dataset", defaults["dataset"]))


def grid_of(space: spaces.Space, levels: int | None, entries: tuple[str, ...]) -> Grid:
    """The finite grid of a one-shot action space: ``levels`` per entry of a Box (required), the space's own
    values otherwise; TableError for a space with no finite grid."""
    if isinstance(space, spaces.Box):
        if levels is None:
            raise TableError(f"a Box action space ({space}) needs the spec's levels: how many grid values per entry")
        low, high = float(np.min(space.low)), float(np.max(space.high))
        if not (np.all(space.low == low) and np.all(space.high == high)):
            raise TableError(f"a table grid needs equal bounds on every entry; {space} has not")
        return Grid("box", int(space.shape[0]), (int(levels),) * int(space.shape[0]), low, high, entries)
    if isinstance(space, spaces.MultiBinary):
        return Grid("multibinary", int(space.n), (2,) * int(space.n), entries=entries)
    if isinstance(space, spaces.MultiDiscrete):
        return Grid("multidiscrete", len(space.nvec), tuple(int(n) for n in space.nvec), entries=entries)
    if isinstance(space, spaces.Discrete):
        return Grid("discrete", 1, (int(space.n),), entries=entries)
    raise TableError(f"no finite grid for the action space {space}")
