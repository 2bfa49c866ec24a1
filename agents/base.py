"""The common agent interface, the evaluation budget, and the recorder that writes every evaluation to disk.

Three kinds of agents share one interface (:class:`Agent`):
- ``policy``: learns from episodes (N2N, PPO, A2C); it steps the environment itself.
- ``blackbox``: proposes actions and observes their scores (random search, ESNAC, LeGR evolution);
  it calls :meth:`Agent.evaluate` (ask/tell through the environment).
- ``whitebox``: needs the teacher and data (TAS, DeepHoyer) and ends by proposing a final action.

Every agent declares the action spaces and modes it supports; :func:`check_compatible` turns a mismatch into
a clear error before anything runs. The :class:`Recorder` wraps the environment: each finished episode is one
evaluation, appended to ``evaluations.jsonl`` as it happens and counted against the :class:`Budget`;
agents stop when ``budget.exhausted``. Agents save and load their state so a killed run resumes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np


class BudgetExhausted(RuntimeError):
    """Raised when an agent asks for an evaluation after the budget is spent."""


@dataclass
class Budget:
    """How many reward evaluations a run may spend, and what it has spent (evaluations and seconds)."""

    evaluations: int
    used: int = 0
    eval_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.evaluations < 1:
            raise ValueError(f"budget must be >= 1 evaluation, got {self.evaluations}")

    @property
    def exhausted(self) -> bool:
        return self.used >= self.evaluations

    @property
    def left(self) -> int:
        return max(0, self.evaluations - self.used)


def to_jsonable(value: Any) -> Any:
    """Actions and infos as plain JSON values (numpy arrays and scalars become lists and numbers)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


@dataclass
class RunLog:
    """What every environment of one run shares: the budget, the evaluations file and the records.

    On resume, records before ``skip_until`` are already on disk: they are counted again as the agent
    replays them (from the evaluation cache) but not written twice.
    """

    budget: Budget
    path: Path | None = None
    records: list[dict] = field(default_factory=list)
    skip_until: int = 0
    callbacks: list[Callable[[dict], None]] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)

    def add(self, record: dict) -> None:
        self.records.append(record)
        if self.path is not None and record["index"] >= self.skip_until:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        for callback in self.callbacks:
            callback(record)


class Recorder(gym.Wrapper):
    """Counts and logs every evaluation (finished episode) of the wrapped environment.

    Each finished episode is one evaluation: it increments ``budget.used`` and adds a record (action(s),
    arch key, params, MACs, accuracy, reward, valid, seconds, whether it came from the cache) to the
    run's :class:`RunLog`, which appends it to ``evaluations.jsonl`` as it happens. Stepping after the
    budget is spent raises :class:`BudgetExhausted`.
    """

    def __init__(self, env: gym.Env, log: RunLog | Budget) -> None:
        super().__init__(env)
        self.log = log if isinstance(log, RunLog) else RunLog(log)
        self._actions: list[Any] = []

    @property
    def budget(self) -> Budget:
        return self.log.budget

    @property
    def records(self) -> list[dict]:
        return self.log.records

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        self._actions = []
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        if self.budget.exhausted:
            raise BudgetExhausted(f"the budget of {self.budget.evaluations} evaluations is spent")
        self._actions.append(to_jsonable(action))
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            self._record(float(reward), info)
        return obs, reward, terminated, truncated, info

    def _record(self, reward: float, info: dict) -> None:
        index = self.budget.used
        self.budget.used += 1
        self.budget.eval_seconds += float(info.get("eval_seconds") or 0.0)
        action = self._actions[0] if len(self._actions) == 1 else self._actions
        last = getattr(self.env.unwrapped, "last_result", None)
        record = {
            "index": index, "space": self.env.unwrapped.space, "action": action, "reward": reward,
            **{k: to_jsonable(info.get(k)) for k in (
                "valid", "accuracy", "teacher_accuracy", "params", "teacher_params", "macs", "teacher_macs",
                "compression", "arch_key", "eval_seconds", "invalid_reason")},
            "cached": bool(getattr(last, "cached", False)),
            "wall_seconds": time.perf_counter() - self.log.start,
        }
        self.log.add(record)

    @property
    def best(self) -> dict | None:
        """The record with the highest reward so far."""
        return max(self.records, key=lambda r: r["reward"], default=None)


def read_records(path: Path) -> list[dict]:
    """The evaluations a run has written (a torn last line from a kill is ignored)."""
    if not path.exists():
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


class Agent(ABC):
    """Base of every agent: its hyper-parameters are one dataclass (``Config``), its state saves and loads.

    Subclasses set ``name``, ``kind``, ``spaces``, ``modes`` and ``Config``, and implement :meth:`run`,
    which acts until ``self.budget.exhausted`` (or its own stopping rule) and may be called again after
    :meth:`load` to resume.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "blackbox"
    spaces: ClassVar[tuple[str, ...]] = ()
    modes: ClassVar[tuple[str, ...]] = ("oneshot",)
    Config: ClassVar[type] = object

    def __init__(self, env: Recorder, config: Any, seed: int = 0, run_dir: Path | None = None,
                 make_env: Callable[..., Recorder] | None = None) -> None:
        check_compatible(type(self), env.unwrapped.space, env.unwrapped.mode)
        self.env = env
        #: ``make_env(space, mode="oneshot", **env_kwargs)``: another env on the same teacher, data, fidelity
        #: and budget (N2N's stage 2 runs on a shrinkage env built from the stage-1 result).
        self.make_env = make_env
        self.config = config
        self.seed = seed
        self.run_dir = run_dir
        self.rng = np.random.default_rng(seed)
        self.notes: dict[str, Any] = {}  # facts the run records in summary.json (e.g. a transferred policy)

    @property
    def budget(self) -> Budget:
        return self.env.budget

    def evaluate(self, action: Any) -> tuple[float, dict]:
        """Black-box evaluation of a one-shot action: one episode, (reward, info)."""
        self.env.reset()
        _, reward, _, _, info = self.env.step(action)
        return float(reward), info

    @abstractmethod
    def run(self) -> None:
        """Spend the budget."""

    def state(self) -> dict[str, Any]:
        """Everything needed to resume (override and extend; values must be torch.save-able)."""
        return {"rng": self.rng.bit_generator.state}

    def load_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]

    def final_action(self) -> Any:
        """The action of the best student found (white-box agents return their result here)."""
        best = self.env.best
        return None if best is None else best["action"]


def make_config(cls: type, overrides: dict[str, Any] | None) -> Any:
    """An agent's Config dataclass from defaults plus overrides; unknown keys raise ValueError."""
    overrides = dict(overrides or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown {cls.__qualname__} keys {sorted(unknown)}; valid keys are {sorted(names)}")
    return cls(**overrides)


def check_compatible(agent: type[Agent], space: str, mode: str) -> None:
    """Raise ValueError if the agent cannot act in this space/mode."""
    if space not in agent.spaces:
        raise ValueError(f"agent {agent.name!r} does not support the {space!r} space; it supports "
                         f"{', '.join(agent.spaces)}")
    if mode not in agent.modes:
        raise ValueError(f"agent {agent.name!r} does not support mode {mode!r}; it supports {', '.join(agent.modes)}")
