"""The recorder: every evaluation of a run is counted against its budget and appended to ``evaluations.jsonl``.

:class:`Recorder` wraps a run's environment: each finished episode (or batch member, or white-box submission)
is one evaluation, counted against the :class:`agents.base.Budget` and written by the run's :class:`RunLog`
as it happens. :func:`read_records` reads a run's evaluations back, refusing a damaged middle line.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import gymnasium as gym
import torch

from agents.base import Budget, BudgetExhausted
from netcomp.arch import Arch, arch_to_dict
from netcomp.errors import UserError, disk_full_error
from netcomp.files import torch_save_atomic
from netcomp.jsonl import CorruptLineWarning, append_jsonl, read_jsonl, to_jsonable


class EvaluationRecord(TypedDict, total=False):
    """One line of ``evaluations.jsonl``: one evaluation of a run (the schema every reader relies on)."""

    index: int                   # position in the run, 0, 1, 2, ... (the budget's count when it was made)
    space: str                   # the env's space (N2N's stage 2 records its shrinkage episodes)
    action: Any                  # the one-shot action, or the list of an episode's step actions; None: submitted
    reward: float                # the env's reward (an invalid student's penalty, below every valid reward)
    valid: bool
    invalid_reason: str | None   # why, whenever valid is false
    accuracy: float | None       # on the reward split (validation by default)
    teacher_accuracy: float
    params: int
    teacher_params: int
    macs: int
    teacher_macs: int
    compression: float           # 1 - params / teacher params
    arch_key: str                # canonical hash of the student
    eval_seconds: float          # the training it took (a cache hit keeps the seconds of the original training)
    cached: bool                 # answered from the cache: no training now, no seconds charged
    wall_seconds: float
    replay: dict                 # env id and kwargs, teacher identity, fidelity, train seed, threads
    student: dict | None         # a submitted student's architecture (netcomp.arch.arch_to_dict)
    trained: bool                # a submitted student was distilled at the fidelity (else only evaluated)
    weights: str                 # a submitted student's weights, relative to the run directory
    facts: dict                  # a white-box agent's own facts about its submission
    rung: int                    # a lower rung of a multi-fidelity ladder: the KD steps it was scored at (its
                                 # reward is not the fidelity's; absent on every full-fidelity evaluation)


def full_fidelity(record: Mapping[str, Any]) -> bool:
    """Whether a record was scored at the run's fidelity: not a lower rung of a multi-fidelity ladder (ASHA),
    whose reward comes from a shorter KD run. Only these compete for a run's best, front and curves."""
    return record.get("rung") is None


def best(records: Sequence[Mapping[str, Any]], valid_only: bool = False) -> dict | None:
    """The full-fidelity record with the highest reward (the first of equals; invalid ones score below every
    valid one, so ``valid_only`` matters only when no record is valid), or None when there is none."""
    pool = [r for r in records if full_fidelity(r) and (r["valid"] or not valid_only)]
    return max(pool, key=lambda r: r["reward"], default=None)


#: Env kwargs a replay does not need: where files live, the device, rendering, and the teacher object or
#: file (named by its identity and hash instead).
REPLAY_DROP = ("cache_path", "device", "data_root", "download", "home", "render_mode", "teacher", "table",
               "teacher_model")  # code to import: a replay takes it from the command line (--teacher-model)


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
        obs, reward, terminated, truncated, info = self.env.step(action)  # a rejected action raises: not recorded
        self._actions.append(to_jsonable(action))
        if terminated or truncated:
            action = self._actions[0] if len(self._actions) == 1 else self._actions
            last = getattr(self.env.unwrapped, "last_result", None)
            self._record(float(reward), info, action, bool(getattr(last, "cached", False)))
        return obs, reward, terminated, truncated, info

    def evaluate_many(self, actions: Sequence[Any], steps: int | None = None) -> list[dict]:
        """Score whole-episode actions together (see ``CompressionEnv.evaluate_many``); one evaluation each.

        ``steps``: at that lower rung of the fidelity (a multi-fidelity agent); the records say ``rung``.
        Raises BudgetExhausted if the budget cannot pay for all of them (ask for at most ``budget.left``).
        """
        actions = list(actions)
        self._check_budget(len(actions))
        infos = self.env.unwrapped.evaluate_many(actions, steps=steps)
        results = self.env.unwrapped.last_results
        extra = None if steps is None else {"rung": int(steps)}
        for action, info, result in zip(actions, infos, results):
            self._record(float(info["reward"]), info, to_jsonable(action), bool(result.cached), extra)
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
        cached = weights is None and bool(getattr(self.env.unwrapped.last_result, "cached", False))
        self._record(float(info["reward"]), info, None, cached, extra)
        return info

    def _check_budget(self, n: int) -> None:
        budget = self.budget
        if budget.exhausted:
            raise BudgetExhausted(f"the budget ({describe_budget(budget)}) is spent")
        if budget.evaluations is not None and n > budget.left:
            raise BudgetExhausted(f"asked for {n} evaluations with {budget.left} left ({describe_budget(budget)})")

    def _record(self, reward: float, info: dict, action: Any, cached: bool, extra: dict | None = None) -> None:
        index, before = self.budget.used, self.budget.train_seconds
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
        self.log.add(record)  # (a resume's replay charges the recorded seconds in a callback here)
        self.budget.note_spent(self.budget.train_seconds - before)

    @property
    def best(self) -> dict | None:
        """The full-fidelity record with the highest reward so far."""
        return best(self.records)


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


def describe_budget(budget: Budget) -> str:
    """What a budget has spent of what it may spend, for messages."""
    parts = []
    if budget.evaluations is not None:
        parts.append(f"{budget.used}/{budget.evaluations} evaluations")
    if budget.seconds is not None:
        parts.append(f"{budget.train_seconds:.1f}/{budget.seconds:g} training seconds")
    return ", ".join(parts)
