"""Optuna's samplers as black-box agents: TPE, CMA-ES, GP-based Bayesian optimisation and NSGA-II.

One agent class drives an Optuna study with ask/tell over a one-shot action space: a ``Box`` is one float
parameter per dimension, ``MultiBinary`` and ``MultiDiscrete`` are one integer (or categorical) parameter per
dimension, and the edit space gets a structured encoding (see :func:`encoding_for`). Each trial is one
evaluation; ``batch`` trials are asked together, scored in one :meth:`Agent.evaluate_many` and then told.

Objectives: ``reward`` (single objective, maximised) or ``pareto``: validation accuracy (maximised) and the
student's size, MACs or parameters (minimised). An invalid student is told the worst point, accuracy 0 at the
teacher's size (the reference point of the hypervolume), not FAIL: Optuna's samplers drop failed trials, so a
region that only yields invalid students would never be learnt as bad and would keep being asked, each ask
costing an evaluation; the worst point is dominated by every valid student, so it never enters a front.

Resume: the agent is deterministic under its seed (the samplers are seeded, the scores of a student are
cached). Its checkpoint holds the sizes of the batches it asked; a resumed agent rebuilds the study by asking
those batches again and telling them the recorded scores (no evaluation, no training), checking each asked
action against the record, then continues. With a shared study (``study_storage``) the storage keeps the
study; a resumed agent re-scores (from the cache) and tells the trials it had asked and not yet told.

At the end of :meth:`OptunaAgent.run` the run directory gets ``pareto_front.csv``, the non-dominated valid
records over (accuracy, ``size_metric``), and ``summary.json``'s notes the front's hypervolume.
"""

from __future__ import annotations

import contextlib
import warnings
from abc import abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import optuna
from gymnasium import spaces as gym_spaces
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from agents.base import Agent
from netcomp.checks import as_bool, as_choice, as_int, invalid
from netcomp.files import write_text_atomic
from netcomp.jsonl import to_jsonable
from netcomp.pareto import front_csv, front_hypervolume, pareto_front

OBJECTIVES = ("reward", "pareto")
SIZE_METRICS = ("macs", "params")
DISCRETE = ("int", "categorical")
#: user attributes that tag a trial of a shared study with the run and evaluation index that asked it
RUN_ATTR, INDEX_ATTR = "netcomp_run", "netcomp_index"


# ---------------------------------------------------------------------------- configuration
@dataclass
class OptunaConfig:
    """Hyper-parameters of the Optuna agents (``agent_config:`` in a run's config)."""

    batch: int = 4
    """Trials asked together, scored in one ``evaluate_many`` (trained on shared batches, or spread over
    ``--workers``) and then told. The samplers see the batch's earlier trials as running (TPE's constant liar,
    GP's q-batch acquisition, one CMA-ES / NSGA-II generation), so the asks depend on it. A training-seconds
    budget is spent one trial at a time."""

    objective: str = "reward"
    """``reward``: maximise the env's reward. ``pareto``: two objectives, validation accuracy (max) and the
    student's ``size_metric`` (min); the front is ``pareto_front.csv``. CMA-ES supports ``reward`` only."""

    size_metric: str = "macs"
    """The size objective of ``pareto`` and the size axis of ``pareto_front.csv``: ``macs`` or ``params``."""

    discrete: str = "int"
    """How a MultiBinary / MultiDiscrete dimension is a parameter: ``int`` (ordered integers; every sampler
    models them, CMA-ES included) or ``categorical`` (unordered choices; CMA-ES samples them at random)."""

    edit_skips: bool = False
    """Edit space only: search its skip-connection entries too (one 0/1 parameter per candidate pair, 612 for
    ResNet-20). Off by default: a uniform draw adds half of all candidate skips, and the rest of the space
    (removals, width ratios) is small; the skips are then never added."""

    startup_trials: int | None = None
    """Trials drawn at random before the model is used (TPE, GP: ``n_startup_trials``, Optuna's default 10;
    CMA-ES: default 1). None: the sampler's default. Unused by NSGA-II (its first generation is random)."""

    population: int | None = None
    """NSGA-II's population size (None: 10, small enough for the suite's budgets) or CMA-ES's ``popsize``
    (None: CMA-ES's default, 4 + 3 ln(dimensions)). Unused by TPE and GP."""

    study_storage: str | None = None
    """A shared study: an Optuna journal file (a path) or an RDB URL (``sqlite:///study.db``). Several runs
    with the same storage and ``study_name`` (give each its own seed, else their random starts coincide) ask
    from one study and see each other's trials; their asks then depend on the other runs' timing, so a shared
    run is not reproducible from its seed (a killed one still resumes its own record exactly). None: a private
    in-memory study, exactly reproducible from the seed."""

    study_name: str = "netcomp"
    """The study's name in ``study_storage``."""

    #: the objectives this sampler supports (subclasses narrow it)
    OBJECTIVES: ClassVar[tuple[str, ...]] = OBJECTIVES

    def __post_init__(self) -> None:
        """Reject bad values (netcomp.checks' one format)."""
        o = type(self).__name__
        self.batch = as_int(o, "batch", self.batch, 1)
        self.objective = as_choice(o, "objective", self.objective, type(self).OBJECTIVES)
        self.size_metric = as_choice(o, "size_metric", self.size_metric, SIZE_METRICS)
        self.discrete = as_choice(o, "discrete", self.discrete, DISCRETE)
        self.edit_skips = as_bool(o, "edit_skips", self.edit_skips)
        self.startup_trials = as_int(o, "startup_trials", self.startup_trials, 1, optional=True)
        self.population = as_int(o, "population", self.population, 2, optional=True)
        if self.study_storage is not None and not (isinstance(self.study_storage, str) and self.study_storage):
            raise invalid(o, "study_storage", self.study_storage, "a file path or an RDB URL (or null)")
        if not (isinstance(self.study_name, str) and self.study_name):
            raise invalid(o, "study_name", self.study_name, "a non-empty name")


@dataclass
class CmaEsConfig(OptunaConfig):
    """CMA-ES's settings: single objective only (Optuna's CmaEsSampler does not support several)."""

    OBJECTIVES: ClassVar[tuple[str, ...]] = ("reward",)

    def __post_init__(self) -> None:
        super().__post_init__()
        # fewer than 4: one parent, a degenerate update (CMA-ES's popsize)
        self.population = as_int(type(self).__name__, "population", self.population, 4, optional=True)


@dataclass
class ParetoConfig(OptunaConfig):
    """The multi-objective agents' settings: accuracy and size by default."""

    objective: str = "pareto"
    """As :class:`OptunaConfig`, defaulting to ``pareto`` (accuracy and ``size_metric``)."""


@dataclass
class NSGA2Config(ParetoConfig):
    """NSGA-II's settings: accuracy and size by default; one batch is one generation of 10."""

    batch: int = 10
    """As :class:`OptunaConfig`; the default asks one whole generation (``population``) at once."""


# ---------------------------------------------------------------------------- the action encoding
@dataclass(frozen=True)
class Encoding:
    """An action space as Optuna parameters: their distributions and the action of a trial's params."""

    distributions: dict[str, BaseDistribution]
    decode: Callable[[dict[str, Any]], np.ndarray]


def _names(prefix: str, n: int) -> list[str]:
    """Parameter names that sort in dimension order (x00, x01, ...)."""
    width = len(str(max(n - 1, 0)))
    return [f"{prefix}{i:0{width}d}" for i in range(n)]


def _discrete(n: int, how: str) -> BaseDistribution:
    return IntDistribution(0, n - 1) if how == "int" else CategoricalDistribution(tuple(range(n)))


def encoding_for(env: Any, config: OptunaConfig) -> Encoding:
    """The parameters of ``env``'s one-shot action space (ValueError for a space with no encoding).

    Box: one float per dimension in its bounds. MultiBinary / MultiDiscrete: one integer (or categorical)
    per dimension. Edit: one 0/1 per removable node (ESNAC's removal), one width ratio in [0, 1] per width
    class, and (``edit_skips``) one 0/1 per candidate skip; the rest of its Box is -1 (nothing removed, no skip).
    """
    base = env.unwrapped
    space = base.action_space
    if base.space == "edit":
        return _edit_encoding(base, config)
    if isinstance(space, gym_spaces.Box):
        names = _names("x", int(np.prod(space.shape)))
        low, high = space.low.reshape(-1), space.high.reshape(-1)
        dists = {n: FloatDistribution(float(lo), float(hi)) for n, lo, hi in zip(names, low, high)}
        return Encoding(dists, lambda p: np.clip(np.array([p[n] for n in names], space.dtype).reshape(space.shape),
                                                 space.low, space.high))
    if isinstance(space, gym_spaces.MultiBinary | gym_spaces.MultiDiscrete):
        nvec = np.full(space.shape, 2) if isinstance(space, gym_spaces.MultiBinary) else space.nvec
        names = _names("x", int(np.prod(space.shape)))
        dists = {n: _discrete(int(k), config.discrete) for n, k in zip(names, np.ravel(nvec))}
        return Encoding(dists, lambda p: np.array([p[n] for n in names], space.dtype).reshape(space.shape))
    raise ValueError(f"the Optuna agents have no encoding for the {base.space!r} space's {space}")


def _edit_encoding(base: Any, config: OptunaConfig) -> Encoding:
    removal = _names("remove", len(base.removable))
    ratios = _names("ratio", len(base.width_classes))
    skips = _names("skip", len(base.skip_pairs)) if config.edit_skips else []
    dists = {**{n: _discrete(2, config.discrete) for n in removal + skips},
             **{n: FloatDistribution(0.0, 1.0) for n in ratios}}
    size = base.action_space.shape[0]

    def decode(params: dict[str, Any]) -> np.ndarray:
        action = -np.ones(size, np.float32)
        r, g = len(removal), len(ratios)
        action[:r] = [2.0 * params[n] - 1.0 for n in removal]
        action[r:r + g] = [2.0 * params[n] - 1.0 for n in ratios]
        action[r + g:r + g + len(skips)] = [2.0 * params[n] - 1.0 for n in skips]
        return np.clip(action, -1.0, 1.0)
    return Encoding(dists, decode)


# ---------------------------------------------------------------------------- the agent
@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's per-trial INFO lines and experimental-feature warnings off while the agent runs."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)


def open_storage(url: str) -> Any:
    """An Optuna storage: an RDB URL (``scheme://...``) as it is, else a journal file at that path."""
    if "://" in url:
        return url
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    Path(url).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(Path(url).expanduser())))


class OptunaAgent(Agent):
    """An Optuna study driven by ask/tell, one trial per evaluation, ``batch`` trials at a time."""

    name = "optuna"
    kind = "blackbox"
    spaces = ("removal", "shrinkage", "channel-ratio", "ranking-affine", "edit")
    modes = ("oneshot",)
    Config = OptunaConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.encoding = encoding_for(self.env, self.config)
        self.study: optuna.Study | None = None
        self.batches: list[int] = []  # the sizes of the batches asked and told, in order (the checkpoint)
        self._replay: list[int] = []  # batches of a loaded checkpoint, to ask and tell again from the records

    # -------------------------------------------------------------- what subclasses choose
    @abstractmethod
    def make_sampler(self) -> optuna.samplers.BaseSampler:
        """The study's sampler, seeded with the agent's seed."""

    @property
    def directions(self) -> list[str]:
        """The study's directions: maximise the reward, or maximise accuracy and minimise size."""
        return ["maximize"] if self.config.objective == "reward" else ["maximize", "minimize"]

    def values(self, info: dict) -> list[float]:
        """What a trial is told for an evaluation's info (or its record): the reward, or (accuracy, size).

        An invalid student is told accuracy 0 at the teacher's size (see the module docstring)."""
        if self.config.objective == "reward":
            return [float(info["reward"])]
        key = self.config.size_metric
        if not info.get("valid") or info.get("accuracy") is None or info.get(key) is None:
            return [0.0, float(info[f"teacher_{key}"])]
        return [float(info["accuracy"]), float(info[key])]

    # -------------------------------------------------------------- the run
    def run(self) -> None:
        with quiet_optuna():
            self.study = self.make_study()
            if self.config.study_storage:
                self._reclaim()
            else:
                self._fast_forward()
            while not self.budget.exhausted:
                # a seconds budget stops at the first evaluation past its limit: one at a time
                n = 1 if self.budget.seconds is not None else min(self.config.batch, self.budget.left)
                self.step(n)
                self.checkpoint()
        self.write_front()

    def make_study(self) -> optuna.Study:
        """A private in-memory study, or the shared one in ``study_storage`` (created if missing)."""
        if not self.config.study_storage:
            return optuna.create_study(sampler=self.make_sampler(), directions=self.directions)
        study = optuna.create_study(storage=open_storage(self.config.study_storage), sampler=self.make_sampler(),
                                    study_name=self.config.study_name, directions=self.directions,
                                    load_if_exists=True)
        found = [d.name.lower() for d in study.directions]
        if found != self.directions:  # an existing study of another objective
            raise ValueError(f"study {self.config.study_name!r} in {self.config.study_storage} optimises {found}; "
                             f"this agent's objective {self.config.objective!r} needs {self.directions}")
        return study

    def ask(self, n: int) -> list[optuna.Trial]:
        """``n`` new trials of the encoding's distributions (tagged with this run in a shared study)."""
        trials = [self.study.ask(self.encoding.distributions) for _ in range(n)]
        if self.config.study_storage:
            for k, trial in enumerate(trials):
                trial.set_user_attr(RUN_ATTR, self.run_id)
                trial.set_user_attr(INDEX_ATTR, self.budget.used + k)
        return trials

    def step(self, n: int) -> None:
        """Ask ``n`` trials, score their actions together, tell the scores."""
        trials = self.ask(n)
        results = self.evaluate_many([self.encoding.decode(t.params) for t in trials])
        for trial, (_, info) in zip(trials, results):
            self.study.tell(trial, self.values(info))
        self.batches.append(n)


    # -------------------------------------------------------------- resume
    @property
    def run_id(self) -> str:
        """This run's name in a shared study: its directory, else its seed."""
        return str(Path(self.run_dir).resolve()) if self.run_dir is not None else f"seed-{self.seed}"

    def _fast_forward(self) -> None:
        """Rebuild the study of a loaded checkpoint: ask its batches again and tell them the recorded scores.

        Nothing is evaluated; each asked action must equal the recorded one (the samplers are seeded)."""
        records, done = self.env.records, 0
        for n in self._replay:
            trials = self.ask(n)
            for trial, record in zip(trials, records[done:done + n]):
                action = to_jsonable(self.encoding.decode(trial.params))
                if action != record.get("action"):
                    _mismatch(record["index"])
                self.study.tell(trial, self.values(record))
            done += n
            self.batches.append(n)
        self._replay = []
        if done != self.budget.used:
            raise RuntimeError(f"the checkpoint's batches hold {done} trials but it counts {self.budget.used} "
                               f"evaluations; the checkpoint is not this agent's")

    def _reclaim(self) -> None:
        """Shared study: score again (from the cache) and tell this run's trials asked since the checkpoint.

        They were asked, and some perhaps evaluated and recorded, before a kill; they are re-scored in the
        order they were asked, so the run's records replay as recorded."""
        mine = sorted((t for t in self.study.get_trials(deepcopy=False) if t.user_attrs.get(RUN_ATTR) == self.run_id
                       and t.user_attrs.get(INDEX_ATTR, -1) >= self.budget.used),
                      key=lambda t: t.user_attrs[INDEX_ATTR])
        mine = [t for t in mine if t.params.keys() == self.encoding.distributions.keys()][: self.budget.left]
        if not mine:
            return
        results = self.evaluate_many([self.encoding.decode(t.params) for t in mine])
        for trial, (_, info) in zip(mine, results):
            if trial.state == optuna.trial.TrialState.RUNNING:
                self.study.tell(trial.number, self.values(info))
        self.batches.append(len(mine))

    def state(self) -> dict[str, Any]:
        return {**super().state(), "batches": list(self.batches)}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self._replay = [int(n) for n in state.get("batches", [])]

    # -------------------------------------------------------------- the front
    def write_front(self) -> list[dict]:
        """The non-dominated valid records of the run; ``pareto_front.csv`` (atomically) and the hypervolume
        in the run's notes. Built from the records, so a resumed or extended run writes the same file."""
        records = [r for r in self.env.records if r.get("space") == self.env.unwrapped.space]
        key = self.config.size_metric
        front = pareto_front(records, key)
        hv = front_hypervolume(records, key, relative=True)
        self.notes["pareto"] = {"size_metric": key, "points": len(front), "hypervolume": hv,
                                "reference": f"accuracy 0 at the teacher's {key}; sizes relative to the teacher's"}
        if self.run_dir is not None:
            write_text_atomic(Path(self.run_dir) / "pareto_front.csv", front_csv(front))
        return front


def _mismatch(index: int) -> None:
    from runner.rundir import ReplayMismatch

    raise ReplayMismatch(f"resume cannot rebuild the study: trial {index} asks for another action than the one "
                         f"recorded (was Optuna upgraded since the run started?). Start a new run")


# ---------------------------------------------------------------------------- the samplers
class TPEAgent(OptunaAgent):
    """Tree-structured Parzen Estimator (Bergstra et al. 2011; Optuna's multivariate TPE, constant liar for
    batches). Single-objective by default; ``objective: pareto`` gives MOTPE."""

    name = "tpe"

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        startup = {} if self.config.startup_trials is None else {"n_startup_trials": self.config.startup_trials}
        return optuna.samplers.TPESampler(seed=self.seed, constant_liar=True, **startup)


class CmaEsAgent(OptunaAgent):
    """CMA-ES (Hansen 2016, through the ``cmaes`` package); single objective."""

    name = "cmaes"
    Config = CmaEsConfig

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        startup = {} if self.config.startup_trials is None else {"n_startup_trials": self.config.startup_trials}
        return optuna.samplers.CmaEsSampler(seed=self.seed, popsize=self.config.population,
                                            warn_independent_sampling=False, **startup)

    def run(self) -> None:
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise ImportError("the cmaes agent needs the 'cmaes' package (pip install cmaes)") from None
        super().run()


class GPAgent(OptunaAgent):
    """Gaussian-process Bayesian optimisation (Optuna's GPSampler: logEI, or logEHVI for two objectives;
    q-batch variants for batches). Two objectives by default: accuracy and size."""

    name = "gp"
    Config = ParetoConfig

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        startup = {} if self.config.startup_trials is None else {"n_startup_trials": self.config.startup_trials}
        # a student's score is a seeded training's, the same each time: a deterministic objective
        return optuna.samplers.GPSampler(seed=self.seed, deterministic_objective=True,
                                         warn_independent_sampling=False, **startup)


class NSGA2Agent(OptunaAgent):
    """NSGA-II (Deb et al. 2002): accuracy and size by default, a population of 10."""

    name = "nsga2"
    Config = NSGA2Config

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        return optuna.samplers.NSGAIISampler(seed=self.seed, population_size=self.config.population or 10)


# ---------------------------------------------------------------------------- multi-fidelity
@dataclass
class ASHAConfig(OptunaConfig):
    """ASHA's settings: TPE proposes, successive halving over the KD budget decides how long each student
    trains. Single objective (the reward), a private study."""

    OBJECTIVES: ClassVar[tuple[str, ...]] = ("reward",)

    min_steps: int = 1
    """The first rung: a student is first scored after this many KD optimiser steps."""

    reduction_factor: int = 4
    """Rung ``k`` trains ``min_steps * reduction_factor**k`` steps, up to the fidelity's own KD run (the last
    rung, whose score is the env's reward); at each rung about ``1/reduction_factor`` of the students go on.
    With ``rank``'s 16 steps the defaults give rungs of 1, 4 and 16 steps."""

    def __post_init__(self) -> None:
        super().__post_init__()
        o = type(self).__name__
        self.min_steps = as_int(o, "min_steps", self.min_steps, 1)
        self.reduction_factor = as_int(o, "reduction_factor", self.reduction_factor, 2)
        if self.study_storage is not None:
            raise invalid(o, "study_storage", self.study_storage, "null: ASHA runs a private study (its rungs "
                                                                   "would be reported by several processes)")


class ASHAAgent(TPEAgent):
    """Asynchronous successive halving (Li et al., "A System for Massively Parallel Hyperparameter Tuning",
    MLSys 2020, arXiv:1810.05934) over the KD budget, with TPE proposing the students (Optuna's
    SuccessiveHalvingPruner).

    Each asked student is scored at the first rung (a KD run cut to ``min_steps`` steps), reported to the
    pruner, and trained again at the next rung only if it is in the top ``1/reduction_factor`` of the students
    scored at that rung so far; the last rung is the env's own fidelity, so a student that reaches it gets the
    same (cached) reward as under any other agent. Every rung's scoring is one recorded evaluation (``rung``
    in its record, its own training seconds); only last-rung scores compete for the run's best. Each rung is
    a fresh KD run from the inherited weights, not a continuation, so a student that reaches the top costs
    the sum of its rungs. The rungs need the live env: a table holds one fidelity.

    Resume: deterministic under its seed; a resumed run replays its evaluations from the cache (nothing
    retrained) through the same loop, so no study state is saved.
    """

    name = "asha"
    Config = ASHAConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        evaluator = self.env.unwrapped.evaluator
        if evaluator.pool is not None:
            raise ValueError("the asha agent trains its rungs in this process; run it without --workers")
        if getattr(evaluator, "table", None) is not None:
            raise ValueError("the asha agent scores students at several KD lengths, and a table holds one "
                             "fidelity: run it on the live env (without fidelity='table')")
        self.rungs = self.ladder()

    def ladder(self) -> list[int]:
        """The KD steps of each rung: ``min_steps * reduction_factor**k`` below the fidelity's own steps,
        then None (the fidelity itself)."""
        full = self.env.unwrapped.evaluator.full_steps
        steps, rungs = self.config.min_steps, []
        while steps < full:
            rungs.append(steps)
            steps *= self.config.reduction_factor
        return [*rungs, None]

    def make_study(self) -> optuna.Study:
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=self.config.min_steps,
                                                        reduction_factor=self.config.reduction_factor,
                                                        min_early_stopping_rate=0)
        return optuna.create_study(sampler=self.make_sampler(), pruner=pruner, direction="maximize")

    def run(self) -> None:
        with quiet_optuna():
            self.study = self.make_study()
            self._replay = list(self.env.records)  # a resumed run's evaluations, told again through the same loop
            while self._replay or not self.budget.exhausted:
                n = 1 if self.budget.seconds is not None else min(self.config.batch, self._left())
                self.halve(self.ask(n))
        full = self.env.unwrapped.evaluator.full_steps
        rungs = [r.get("rung") for r in self.env.records]
        self.notes["asha"] = {"rung_steps": [s or full for s in self.rungs],
                              "scored_per_rung": [rungs.count(s) for s in self.rungs]}
        self.write_front()

    def _left(self) -> int:
        """Evaluations left counting from the replay's position (the records not yet told come first)."""
        return self.budget.left + len(self._replay)

    def halve(self, trials: list[optuna.Trial]) -> None:
        """Climb the rungs with a batch of trials: score the alive ones together at each rung, report, and
        keep those the pruner promotes; the last rung's score is told as the trial's value."""
        alive = [(t, self.encoding.decode(t.params)) for t in trials]
        for steps in self.rungs:
            if not alive or (not self._replay and self.budget.exhausted):
                return
            if self.budget.evaluations is not None:
                alive = alive[: self._left()]
            infos = self.scores([a for _, a in alive], steps)
            if steps is None:
                for (trial, _), info in zip(alive, infos):
                    self.study.tell(trial, float(info["reward"]))
                return
            for (trial, _), info in zip(alive, infos):
                trial.report(float(info["reward"]), steps)
            promoted = []
            for (trial, action), info in zip(alive, infos):
                if info["valid"] and not trial.should_prune():
                    promoted.append((trial, action))
                else:  # an invalid student stays invalid (or diverged): no longer rung
                    self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            alive = promoted

    def scores(self, actions: list[np.ndarray], steps: int | None) -> list[dict]:
        """The infos of ``actions`` at a rung: a resumed run's recorded ones first (each must be the action and
        rung asked now: the samplers are seeded), then scored together on the env."""
        told, self._replay = self._replay[: len(actions)], self._replay[len(actions):]
        for action, record in zip(actions, told):
            if to_jsonable(action) != record.get("action") or record.get("rung") != steps:
                _mismatch(record["index"])
        rest = actions[len(told):]
        if not rest:
            return told
        self.env.reset()
        return [*told, *self.env.evaluate_many(rest, steps=steps)]

    def state(self) -> dict[str, Any]:
        return Agent.state(self)

    def load_state(self, state: dict[str, Any]) -> None:
        Agent.load_state(self, state)
