"""The Agent contract: what a new agent author reads.

An agent is a subclass of :class:`Agent` with its knobs in one dataclass (``Config``). It declares:

- ``name``, ``kind`` (``policy``: learns from episodes and steps the env itself; ``blackbox``: proposes actions
  and observes scores; ``whitebox``: trains on its own and submits a finished student), the action ``spaces``
  and ``modes`` it can act in, the ``budget_units`` it can spend, whether a finished run can be ``extendable``
  with a larger budget, and ``has_policy`` (it saves a policy that ``--load-policy`` can start from);
- :meth:`Agent.run`, which spends the budget through :meth:`Agent.evaluate`, :meth:`Agent.evaluate_many`
  (a batch, trained together) or :meth:`Agent.submit` (a white-box student) plus :meth:`Agent.charge`, and
  stops when ``self.budget.exhausted``; asking for more than is left raises :class:`BudgetExhausted`;
- :meth:`Agent.state` / :meth:`Agent.load_state` (plain, ``torch.save``-able values), and a call to
  :meth:`Agent.checkpoint` wherever that state is worth saving (the harness saves it there);
- with ``has_policy``: :meth:`Agent.save_policy` and :meth:`Agent.load_policy` (written and read through
  :meth:`Agent.write_policy` / :meth:`Agent.read_policy`, which record and print what the policy was trained on).

The environment an agent gets (:class:`RecordedEnv`) counts and records every evaluation; the harness that
builds it, the run directory and the resume live in ``runner/``, which this module never imports.
"""

from __future__ import annotations

import contextlib
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from netcomp.arch import Arch, arch_from_dict, arch_to_dict
from netcomp.distill import torch_threads
from netcomp.files import torch_save_atomic
from netcomp.surgery import save_student

#: A seconds-only budget ends after this many evaluations in a row that cost no training seconds.
FREE_LIMIT = 1000


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

    #: evaluations in a row that cost no training seconds (cache hits, students invalid before training)
    free_streak: int = 0

    @property
    def stalled(self) -> bool:
        """A seconds-only budget that :data:`FREE_LIMIT` evaluations in a row did not spend: the agent keeps
        asking for students that cost nothing (all over a target, all cached), so the budget would never end."""
        return self.evaluations is None and self.free_streak >= FREE_LIMIT

    def note_spent(self, seconds: float) -> None:
        """Count one evaluation that cost ``seconds`` of training (0: free), for :attr:`stalled`."""
        self.free_streak = 0 if seconds > 0 else self.free_streak + 1

    @property
    def exhausted(self) -> bool:
        out_of_evals = self.evaluations is not None and self.used >= self.evaluations
        out_of_time = self.seconds is not None and self.train_seconds >= self.seconds
        return out_of_evals or out_of_time or self.stalled

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


class RecordedEnv(Protocol):
    """What an agent's environment offers (``runner.recorder.Recorder`` implements it): a gymnasium env whose
    every finished episode, batch member or submission is one recorded evaluation of the run's budget."""

    budget: Budget
    records: list[dict]
    action_space: Any
    observation_space: Any
    unwrapped: Any

    @property
    def best(self) -> dict | None: ...

    def reset(self, **kwargs: Any) -> tuple[Any, dict]: ...

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]: ...

    def evaluate_many(self, actions: Sequence[Any]) -> list[dict]: ...

    def submit(self, student: Arch, weights: Mapping[str, Any] | None = None, train: bool = True,
               facts: Mapping[str, Any] | None = None) -> dict: ...


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
    #: whether the agent saves a policy (``policy.pt``) and can start from one (``--load-policy``)
    has_policy: ClassVar[bool] = False
    #: other agents whose policy files this one can start from (its own name always): SB3's agents share one
    loads_policies_of: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type] = object

    def __init__(self, env: RecordedEnv, config: Any, seed: int = 0, run_dir: Path | None = None,
                 make_env: Callable[..., RecordedEnv] | None = None) -> None:
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
        #: what :meth:`checkpoint` calls: the harness sets it to save :meth:`state` (None: nothing is saved)
        self.on_checkpoint: Callable[[], None] | None = None

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

    def checkpoint(self) -> None:
        """Save the agent's state now (call it where a resume should restart from: after a batch, an update).

        Evaluations recorded after the last checkpoint are replayed from the cache on resume, so call it
        often enough that a resume replays little, and only where :meth:`state` is consistent."""
        if self.on_checkpoint is not None:
            self.on_checkpoint()

    def provenance(self) -> dict[str, Any]:
        """What a saved policy was trained on (written into the policy file, printed when another run loads
        it): the teacher's arch and dataset, the space, mode and reward, the fidelity, the agent and the
        episodes (evaluations) it learned from."""
        base = self.env.unwrapped
        return {"agent": self.name, "teacher": str(base.arch.family), "dataset": base.evaluator.dataset.name,
                "space": base.space, "mode": base.mode, "reward": getattr(base, "reward_name", None),
                "fidelity": base.fidelity.name, "episodes": int(self.budget.used)}

    def check_provenance(self, path: str | Path, saved: dict[str, Any] | None) -> None:
        """Print what a loaded policy was trained on; ValueError when another agent trained it (one not in
        ``loads_policies_of``), or when it was trained on another space or mode, where its actions would mean
        something else even if the shapes fit."""
        if not saved:
            print(f"loading the policy {path} (it records no provenance)")
            return
        print(f"loading the policy {path}: trained by {saved.get('agent')} on {saved.get('teacher')} / "
              f"{saved.get('dataset')}, space {saved.get('space')} ({saved.get('mode')}), reward "
              f"{saved.get('reward')}, fidelity {saved.get('fidelity')}, {saved.get('episodes')} episodes")
        agent = saved.get("agent")
        if agent is not None and agent != self.name and agent not in self.loads_policies_of:
            raise ValueError(f"the policy {path} was trained by agent {agent!r}; this run's agent {self.name!r} "
                             f"cannot start from it")
        here = self.provenance()
        for key in ("space", "mode"):
            if saved.get(key) is not None and saved[key] != here[key]:
                raise ValueError(f"the policy {path} was trained on {key} {saved[key]!r}; this run's is "
                                 f"{here[key]!r}: its actions would not mean the same here")
        self.notes["transferred_provenance"] = saved

    def write_policy(self, path: str | Path, fmt: int, content: Mapping[str, Any],
                     meta: Mapping[str, Any] | None = None) -> None:
        """Write a policy file atomically: ``content`` (tensors, numbers, lists, strings: what
        ``torch.load(weights_only=True)`` reads back), its format version ``fmt``, and ``meta`` with this run's
        :meth:`provenance` added, which the run that loads it prints (:meth:`read_policy`)."""
        torch_save_atomic({"format": fmt, **content, "meta": {**(meta or {}), "provenance": self.provenance()}},
                          Path(path))

    def read_policy(self, path: str | Path, fmt: int, required: Sequence[str]) -> dict[str, Any]:
        """Read a file :meth:`write_policy` wrote (weights only: no code runs), print what it was trained on and
        refuse it (ValueError, with the reason) when it is of another format, lacks a ``required`` key, or was
        trained on another space or mode (:meth:`check_provenance`). Records the transfer in the run's notes."""
        if not Path(path).is_file():
            raise ValueError(f"the policy file {path} does not exist")
        try:
            blob = torch.load(Path(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # not a torch file, or one that would need unpickling code
            raise ValueError(f"{path} is not a policy file of agent {self.name!r}: {exc}") from exc
        if not isinstance(blob, dict) or blob.get("format") != fmt:
            found = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
            raise ValueError(f"{path} is not a policy file of agent {self.name!r}: format {found!r}, not {fmt}")
        meta = blob.get("meta") or {}
        provenance = meta.get("provenance") if isinstance(meta, dict) else None
        if not isinstance(meta, dict) or not isinstance(provenance, (dict, type(None))):
            raise ValueError(f"{path} is not a policy file of agent {self.name!r}: its meta is not a mapping")
        self.check_provenance(path, provenance)  # another agent's file is refused here, by name
        missing = [key for key in required if key not in blob]
        if missing:
            raise ValueError(f"{path} is not a policy file of agent {self.name!r}: it lacks {', '.join(missing)}")
        self.notes["transferred_from"] = str(path)
        return blob

    def save_policy(self, path: str | Path) -> None:
        """Write the learned policy (``has_policy`` agents), loadable with ``torch.load(weights_only=True)``;
        :meth:`write_policy` does the writing and records the provenance."""
        raise NotImplementedError(f"agent {self.name!r} has no policy to save")

    def load_policy(self, path: str | Path, trust_pickle: bool = False) -> None:
        """Start from a policy another run saved (``has_policy`` agents; :meth:`read_policy` reads and checks it);
        ``trust_pickle`` comes from the command line only and lets a format that unpickles code be read."""
        raise NotImplementedError(f"agent {self.name!r} has no policy to load")

    def state(self) -> dict[str, Any]:
        """Everything needed to resume (override and extend; values must be torch.save-able)."""
        return {"rng": self.rng.bit_generator.state}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned (override and extend)."""
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


def one_torch_thread() -> contextlib.AbstractContextManager[None]:
    """Run an agent's small recurrent models (N2N's policies, ESNAC's embedding) on one CPU thread.

    A small LSTM is latency-bound: with several intra-op threads the synchronisation costs more than the
    arithmetic, and on a busy 2-core machine a step was 100-400x slower. The previous setting is restored.
    """
    return torch_threads(1)


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


def check_compatible(agent: type[Agent], space: str, mode: str) -> None:
    """Raise ValueError if the agent cannot act in this space/mode."""
    if space not in agent.spaces:
        raise ValueError(f"agent {agent.name!r} does not support the {space!r} space; it supports "
                         f"{', '.join(agent.spaces)}")
    if mode not in agent.modes:
        raise ValueError(f"agent {agent.name!r} does not support mode {mode!r}; it supports {', '.join(agent.modes)}")
