"""The common agent interface, the evaluation budget, and the recorder that writes every evaluation to disk.

Three kinds of agents share one interface (:class:`Agent`):
- ``policy``: learns from episodes (N2N, PPO, A2C); it steps the environment itself.
- ``blackbox``: proposes actions and observes their scores (random search, ESNAC, LeGR evolution);
  it calls :meth:`Agent.evaluate`, or :meth:`Agent.evaluate_many` to ask for a batch at once (trained
  together on shared batches locally, spread over workers by a distributed evaluator).
- ``whitebox``: needs the teacher and data (TAS, DeepHoyer); it trains on its own, charges the seconds to
  the budget (:meth:`Agent.charge`) and submits a finished student (:meth:`Agent.submit`), which the env
  scores, counts and records exactly like an episode.
The budget is counted in evaluations, in training seconds, or both (:class:`Budget`).

Every agent declares the action spaces and modes it supports; :func:`check_compatible` turns a mismatch into
a clear error before anything runs. The :class:`Recorder` wraps the environment: each finished episode is one
evaluation, appended to ``evaluations.jsonl`` as it happens and counted against the :class:`Budget`;
agents stop when ``budget.exhausted``. Agents save and load their state so a killed run resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch

from netcomp.arch import Arch, arch_from_dict, arch_to_dict
from netcomp.errors import UserError, disk_full_error
from netcomp.files import torch_save_atomic
from netcomp.jsonl import CorruptLineWarning, append_jsonl, read_jsonl
from netcomp.surgery import save_student


class BudgetExhausted(RuntimeError):
    """Raised when an agent asks for an evaluation after the budget is spent."""


@dataclass
class Budget:
    """What a run may spend, in reward evaluations and/or training seconds, and what it has spent.

    ``evaluations``: the number of reward evaluations (episodes or submitted students). ``seconds``: training
    seconds, i.e. the seconds the evaluations' student trainings took (``eval_seconds``) plus what white-box
    agents charge for their own training (``charged_seconds``: TAS's search, DeepHoyer's regularised
    training). Either or both may be set; the budget is exhausted when any set limit is reached.
    """

    evaluations: int | None = None
    seconds: float | None = None
    used: int = 0
    eval_seconds: float = 0.0
    charged_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.evaluations is None and self.seconds is None:
            raise ValueError("a budget needs evaluations or seconds (or both)")
        if self.evaluations is not None and (isinstance(self.evaluations, bool) or int(self.evaluations) < 1):
            raise ValueError(f"budget must be >= 1 evaluation, got {self.evaluations}")
        if self.seconds is not None and not float(self.seconds) > 0:
            raise ValueError(f"budget seconds must be > 0, got {self.seconds}")
        self.evaluations = None if self.evaluations is None else int(self.evaluations)
        self.seconds = None if self.seconds is None else float(self.seconds)

    @property
    def train_seconds(self) -> float:
        """Training seconds spent: the evaluations' plus those charged by the agent."""
        return self.eval_seconds + self.charged_seconds

    @property
    def exhausted(self) -> bool:
        out_of_evals = self.evaluations is not None and self.used >= self.evaluations
        out_of_time = self.seconds is not None and self.train_seconds >= self.seconds
        return out_of_evals or out_of_time

    @property
    def left(self) -> int:
        """Evaluations left. With a seconds-only budget: 1 while seconds are left, else 0 (a batch of any
        size may still be asked for while seconds are left; it may overrun the seconds by its own cost)."""
        if self.evaluations is None:
            return 0 if self.exhausted else 1
        return 0 if self.exhausted else max(0, self.evaluations - self.used)

    def charge(self, seconds: float) -> None:
        """Count ``seconds`` of an agent's own training against the budget."""
        if not (np.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"charged seconds must be a finite number >= 0, got {seconds}")
        self.charged_seconds += float(seconds)


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


#: Env kwargs a replay does not need: where files live, the device, rendering, and the teacher object or
#: file (named by its identity and hash instead).
REPLAY_DROP = ("cache_path", "device", "data_root", "download", "home", "render_mode", "teacher")


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
    #: the evaluators of the run's envs (each once), whose trainings the harness checks against the records
    evaluators: list[Any] = field(default_factory=list)
    #: records before this position were read from disk; the ones after were made by this process
    session_start: int = -1

    def __post_init__(self) -> None:
        if self.session_start < 0:
            self.session_start = len(self.records)

    def watch(self, evaluator: Any) -> None:
        """Count ``evaluator``'s trainings in this run's accounting (once, however many envs share it)."""
        if evaluator is not None and all(evaluator is not e for e in self.evaluators):
            self.evaluators.append(evaluator)

    def add(self, record: dict) -> None:
        self.records.append(record)
        if self.path is not None and record["index"] >= self.skip_until:
            try:
                append_jsonl(self.path, record)
            except OSError as exc:
                raise disk_full_error(self.path, exc) from None
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
        self.log.watch(getattr(env.unwrapped, "evaluator", None))
        self._actions: list[Any] = []
        self._replay: dict[str, Any] | None = None

    def replay_spec(self) -> dict[str, Any]:
        """What rebuilds this env's scoring for a replay (``run_agent.py --validate``): the env id and its
        kwargs (less where files live and the device), the teacher's identity and file hash, the fidelity."""
        if self._replay is None:
            from netcomp.teachers import teacher_identity

            base = self.env.unwrapped
            spec = base.spec
            kwargs = {k: to_jsonable(v) for k, v in (spec.kwargs if spec else {}).items() if k not in REPLAY_DROP}
            self._replay = {"env_id": spec.id if spec else None, "env_kwargs": kwargs,
                            "teacher": teacher_identity(base.teacher), "fidelity": base.fidelity.name,
                            "fidelity_key": base.fidelity.key()}
        return self._replay

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
        self._check_budget(1)
        self._actions.append(to_jsonable(action))
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            action = self._actions[0] if len(self._actions) == 1 else self._actions
            last = getattr(self.env.unwrapped, "last_result", None)
            self._record(float(reward), info, action, bool(getattr(last, "cached", False)))
        return obs, reward, terminated, truncated, info

    def evaluate_many(self, actions: Sequence[Any]) -> list[dict]:
        """Score whole-episode actions together (see ``CompressionEnv.evaluate_many``); one evaluation each.

        Raises BudgetExhausted if the budget cannot pay for all of them (ask for at most ``budget.left``).
        """
        actions = list(actions)
        self._check_budget(len(actions))
        infos = self.env.unwrapped.evaluate_many(actions)
        results = self.env.unwrapped.last_results
        for action, info, result in zip(actions, infos, results):
            self._record(float(info["reward"]), info, to_jsonable(action), bool(result.cached))
        return infos

    def submit(self, student: Arch, weights: Mapping[str, Any] | None = None, train: bool = True,
               facts: Mapping[str, Any] | None = None) -> dict:
        """Score a white-box agent's finished student like an episode (``CompressionEnv.score_student``).

        Counted and recorded as one evaluation; the record holds the student's architecture (so it can be
        rebuilt), the agent's own ``facts`` about it under ``"facts"`` (e.g. DeepHoyer's element density)
        and, when weights were given and the run has a directory, they are saved atomically to
        ``submitted/<index>.pt`` (loadable with weights_only=True).
        """
        self._check_budget(1)
        info = self.env.unwrapped.score_student(student, weights, train=train)
        is_student = isinstance(student, Arch)
        extra = {"student": arch_to_dict(student) if is_student else None, "trained": weights is None or bool(train)}
        if facts:
            extra["facts"] = to_jsonable(dict(facts))
        tensors = isinstance(weights, Mapping) and all(isinstance(v, torch.Tensor) for v in weights.values())
        if tensors and self.log.path is not None and is_student:
            path = self.log.path.parent / "submitted" / f"{self.budget.used}.pt"
            torch_save_atomic({k: v.detach().cpu() for k, v in weights.items()}, path)
            extra["weights"] = str(path.relative_to(self.log.path.parent))
        self._record(float(info["reward"]), info, None, False, extra)
        return info

    def _check_budget(self, n: int) -> None:
        budget = self.budget
        if budget.exhausted:
            raise BudgetExhausted(f"the budget ({_describe(budget)}) is spent")
        if budget.evaluations is not None and n > budget.left:
            raise BudgetExhausted(f"asked for {n} evaluations with {budget.left} left ({_describe(budget)})")

    def _record(self, reward: float, info: dict, action: Any, cached: bool, extra: dict | None = None) -> None:
        index = self.budget.used
        self.budget.used += 1
        if not cached:  # a cache hit trained nothing: it costs no training seconds
            self.budget.eval_seconds += float(info.get("eval_seconds") or 0.0)
        record = {
            "index": index, "space": self.env.unwrapped.space, "action": action, "reward": reward,
            **{k: to_jsonable(info.get(k)) for k in (
                "valid", "accuracy", "teacher_accuracy", "params", "teacher_params", "macs", "teacher_macs",
                "compression", "arch_key", "eval_seconds", "invalid_reason")},
            "cached": cached,
            "wall_seconds": time.perf_counter() - self.log.start,
            "replay": {**self.replay_spec(), "train_seed": int(self.env.unwrapped.train_seed),
                       "threads": torch.get_num_threads()},
            **(extra or {}),
        }
        self.log.add(record)

    @property
    def best(self) -> dict | None:
        """The record with the highest reward so far."""
        return max(self.records, key=lambda r: r["reward"], default=None)


class CorruptRecord(UserError):
    """A line in the middle of ``evaluations.jsonl`` is damaged: no kill or full disk can do that."""


def read_records(path: Path) -> list[dict]:
    """The evaluations a run has written ([] if none).

    A torn last line (a kill or a full disk mid-append) is dropped and cut off the file, so a resumed run
    appends on a clean line. A damaged line in the middle, or a line whose index is out of order, is not
    something a kill can leave: :class:`CorruptRecord` names the line and what to do, since skipping it would
    shift every later evaluation and give a silently wrong record.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = read_jsonl(path)
    for w in caught:
        if issubclass(w.category, CorruptLineWarning):
            raise CorruptRecord(f"{w.message} -- a kill only ever tears the LAST line (that one is repaired on "
                                f"its own); a damaged middle line means the file was edited or the disk is failing. "
                                f"Restore the line from a backup, or move that line and every line after it to "
                                f"another file and --resume: the run continues from the lines before it") from None
        warnings.warn(w.message, w.category, stacklevel=2)
    for position, row in enumerate(rows):
        if not isinstance(row.get("index"), int) or row["index"] != position or "reward" not in row:
            raise CorruptRecord(f"{path}: line {position + 1} is not evaluation {position} (index "
                                f"{row.get('index')!r}); the file was edited. Restore it, or move that line and "
                                f"every line after it to another file and --resume from the lines before it")
    return rows


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
    #: the budget units the agent can spend: "evaluations" and/or "seconds" (training seconds)
    budget_units: ClassVar[tuple[str, ...]] = ("evaluations", "seconds")
    #: whether a finished run can be extended with a larger budget (False: the schedule is fixed at start)
    extendable: ClassVar[bool] = True
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

    def evaluate_many(self, actions: Sequence[Any]) -> list[tuple[float, dict]]:
        """Black-box evaluation of several one-shot actions at once: (reward, info) each, in order.

        The students are trained together on shared batches (a distributed evaluator spreads them over
        workers); each counts as one evaluation and gets the same score it would get alone. Ask for at most
        ``self.budget.left`` (BudgetExhausted otherwise).
        """
        self.env.reset()
        return [(float(info["reward"]), info) for info in self.env.evaluate_many(actions)]

    def submit(self, student: Arch, weights: Mapping[str, Any] | None = None, train: bool = True,
               facts: Mapping[str, Any] | None = None) -> tuple[float, dict]:
        """White-box result: score a finished student (architecture, optional weights) like an episode.

        Counted and recorded as one evaluation, with the agent's ``facts`` about it (see
        :meth:`Recorder.submit`). Returns (reward, info).
        """
        info = self.env.submit(student, weights, train=train, facts=facts)
        return float(info["reward"]), info

    def charge(self, seconds: float) -> None:
        """Charge ``seconds`` of the agent's own training (a white-box search) to the run's budget."""
        self.budget.charge(seconds)

    @abstractmethod
    def run(self) -> None:
        """Spend the budget."""

    def state(self) -> dict[str, Any]:
        """Everything needed to resume (override and extend; values must be torch.save-able)."""
        return {"rng": self.rng.bit_generator.state}

    def load_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]

    def student_of(self, record: dict) -> Arch | None:
        """The student architecture of one of this run's records (None if this agent cannot rebuild it).

        A submitted student carries its architecture; an episode of the run's env is rebuilt from its action.
        Agents that act on other envs (N2N's stage 2) extend this.
        """
        if record.get("student") is not None:
            return arch_from_dict(record["student"])
        if record.get("space") == self.env.unwrapped.space and record.get("action") is not None:
            return self.env.unwrapped.student_for(record["action"])
        return None

    def train_kept(self, student: Arch, asked: Any | None = None, follow_fidelity: bool = True) -> tuple[Any, dict]:
        """Train a student the run keeps (a method's final training) and report it on validation and TEST.

        ``asked`` is the method's TrainConfig (None: the fidelity's KD run); with ``follow_fidelity`` it is capped
        by the fidelity's ``final`` section, so a smoke run's final training takes seconds. Returns (model, report).
        """
        ev = self.env.unwrapped.evaluator
        config = ev.fidelity.final_config(asked) if follow_fidelity or asked is None else asked
        return ev.train_final(student, config, seed=self.seed)

    def keep_final(self, student: Arch, model: Any, final: dict[str, Any]) -> dict[str, Any]:
        """The run's final student: saved to ``best_student.pt`` (atomically, weights only; its meta names the
        agent and the teacher) when the run has a directory, and recorded as ``notes['final']`` (with its path
        and architecture) for summary.json."""
        if self.run_dir is not None:
            path = Path(self.run_dir) / "best_student.pt"
            teacher = self.env.unwrapped.evaluator.teacher.meta
            save_student(path, student, model, {**final, "agent": self.name,
                                                "teacher": {k: teacher.get(k) for k in ("arch", "dataset", "recipe",
                                                                                        "seed")}})
            final = {**final, "path": str(path)}
        self.notes["final"] = {**final, "arch": arch_to_dict(student)}
        return self.notes["final"]

    def final_action(self) -> Any:
        """The action of the best student found (white-box agents return their result here)."""
        best = self.env.best
        return None if best is None else best["action"]


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run an agent's small recurrent models (N2N's policies, ESNAC's embedding) on one CPU thread.

    A small LSTM is latency-bound: with several intra-op threads the synchronisation costs more than the
    arithmetic, and on a busy 2-core machine a step was 100-400x slower. The previous setting is restored.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def make_config(cls: type, overrides: dict[str, Any] | None) -> Any:
    """An agent's Config dataclass from defaults plus overrides; unknown keys raise ValueError."""
    overrides = dict(overrides or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown {cls.__qualname__} keys {sorted(unknown)}; valid keys are {sorted(names)}")
    return cls(**overrides)


def check_budget_units(agent: type[Agent], budget: Budget) -> None:
    """Raise ValueError if the budget is counted in a unit the agent cannot spend."""
    if budget.evaluations is None and "seconds" not in agent.budget_units:
        raise ValueError(f"agent {agent.name!r} needs a budget in evaluations (--budget N): its schedule is "
                         f"counted in evaluations, not training seconds")
    if budget.seconds is None and "evaluations" not in agent.budget_units:
        raise ValueError(f"agent {agent.name!r} needs a budget in training seconds (--budget-seconds S)")


def _describe(budget: Budget) -> str:
    parts = []
    if budget.evaluations is not None:
        parts.append(f"{budget.used}/{budget.evaluations} evaluations")
    if budget.seconds is not None:
        parts.append(f"{budget.train_seconds:.1f}/{budget.seconds:g} training seconds")
    return ", ".join(parts)


def check_compatible(agent: type[Agent], space: str, mode: str) -> None:
    """Raise ValueError if the agent cannot act in this space/mode."""
    if space not in agent.spaces:
        raise ValueError(f"agent {agent.name!r} does not support the {space!r} space; it supports "
                         f"{', '.join(agent.spaces)}")
    if mode not in agent.modes:
        raise ValueError(f"agent {agent.name!r} does not support mode {mode!r}; it supports {', '.join(agent.modes)}")
