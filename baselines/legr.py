"""LeGR: learned global ranking by regularised evolution (Chin, Ding, Zhang, Marculescu, CVPR 2020).

A clean-room re-implementation of the paper ("Towards Efficient Model Compression via Learned Global Ranking",
arXiv:1904.12368) and of its reference code (github.com/cmu-enyac/LeGR), both summarised in docs/methods.md#legr;
a name in brackets below, e.g. [evolution], is the heading of one of its subsections ("LeGR: evolution"). No
code of the reference repository is used. Three agents act on the ranking-affine env (``envs/ranking_affine.py``,
which holds the filter norms, the chains, the affine map and LeGR's greedy pruning to a FLOPs target):

- ``legr`` (:class:`LegrAgent`): learns one (alpha, kappa) per conv by regularised evolution [evolution]: a first
  population of random maps plus the identity, asked as one batch; then steady-state tournament selection
  (sample S with replacement, the parent is the fittest), mutation of a random 10% of the layers (drawn with
  replacement; alpha noise annealed linearly from 1 to 0.2, kappa noise N(0, std_l)), the child replaces the
  oldest member. Fitness is the env's reward (``legr``: minus the validation loss after the fidelity's tau-hat
  fine-tune steps). The best candidate over all evaluated ones is kept, then deployed [deployment].
- ``l2-global`` (:class:`L2GlobalAgent`): the identity map, plain global L2-norm ranking; one evaluation.
- ``uniform`` (:class:`UniformAgent`): the same keep ratio in every layer at the FLOPs target, filters chosen
  by L2 norm; one evaluation (a submitted student).

Deployment [deployment], common to the three: prune the teacher with the learned ranking at one or several FLOPs
targets (the same env, no rebuild) and fine-tune each student with LeGR's schedule (SGD Nesterov, lr 0.01,
momentum 0.9, weight decay 5e-4, batch 128, the lr times 0.2 at 30%, 60% and 80% of the epochs), starting
from the teacher's surviving weights. Splits: the search's fitness is measured on the env's reward split
(validation by default, held out from training); the reported accuracy is the TEST split's after the last
epoch (``notes['final']`` for the first target, ``notes['targets']`` for all).

Genome. The env's action is ``(a_1..a_L, b_1..b_L)`` in [-1, 1] with alpha = exp(2 a) and kappa = 3 b std_l.
LeGR's draws alpha = exp(N(0, 1)) and kappa = N(0, std_l) are a = N(0, 1) / 2 and b = N(0, 1) / 3, and its
mutations a += N(0, sigma step) / 2, b += N(0, 1) / 3; values outside the box are clipped to it (the
reference's genome is unbounded; about 5% of alpha draws and 0.3% of kappa draws reach the bound).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from agents.base import Agent
from netcomp.arch import Arch
from netcomp.checks import as_bool, as_float, as_floats, as_int
from netcomp.distill import TrainConfig
from netcomp.jsonl import to_jsonable
from netcomp.surgery import keep_channels

#: The agents' stages; ``state()["stage"]`` is one of them.
STAGES = ("search", "deploy", "done")


# ---------------------------------------------------------------------------------------------- configs
@dataclass
class DeployConfig:
    """LeGR's deployment [deployment]: FLOPs targets and the final fine-tune; shared by legr, l2-global and uniform."""

    targets: list[float] | None = None
    """Deployment targets, fractions of the teacher's MACs kept (LeGR Table 1: 0.47 and 0.70); None = the
    env's ``flops_target``. The first one is the run's final student (best_student.pt)."""
    finetune: bool = True
    """Fine-tune the deployed students and report their test accuracy (notes['final'], notes['targets'])."""
    final_epochs: float = 400.0
    """Epochs of the fine-tune (LeGR: 400 for Table 1, CIFAR-10 'following DCP'; 60 for Figure 2)."""
    final_lr: float = 0.01
    """Initial learning rate of the fine-tune (LeGR: 0.01)."""
    final_momentum: float = 0.9
    """SGD momentum (LeGR: 0.9)."""
    final_nesterov: bool = True
    """Nesterov momentum (LeGR's fine-tune: yes; its tau-hat search steps: no)."""
    final_weight_decay: float = 5e-4
    """Weight decay (LeGR: 5e-4)."""
    final_batch_size: int = 128
    """Batch size (LeGR: 128)."""
    final_gamma: float = 0.2
    """The lr is multiplied by this at 30%, 60% and 80% of the epochs (LeGR's MultiStepLR: 0.2)."""
    final_train_max: int | None = None
    """Use only the first n training images (None = all); for fast runs."""
    final_max_steps: int | None = None
    """Cap on the fine-tune's optimiser steps (None = no cap); for smoke runs."""
    final_follow_fidelity: bool = True
    """Cap the fine-tune by the run's fidelity (its ``final`` section: smoke takes seconds); False keeps
    these values at any fidelity."""

    def __post_init__(self) -> None:
        """Coerce YAML values and reject bad ones (netcomp.checks' one format)."""
        owner = type(self).__name__
        if self.targets is not None:
            self.targets = as_floats(owner, "targets", self.targets, low=0, high=1, low_open=True)
        self.finetune = as_bool(owner, "finetune", self.finetune)
        self.final_epochs = as_float(owner, "final_epochs", self.final_epochs, low=0, low_open=True)
        self.final_lr = as_float(owner, "final_lr", self.final_lr, low=0, low_open=True)
        self.final_momentum = as_float(owner, "final_momentum", self.final_momentum, low=0, high=1,
                                          high_open=True)
        self.final_nesterov = as_bool(owner, "final_nesterov", self.final_nesterov)
        self.final_weight_decay = as_float(owner, "final_weight_decay", self.final_weight_decay, low=0)
        self.final_batch_size = as_int(owner, "final_batch_size", self.final_batch_size, 1)
        self.final_gamma = as_float(owner, "final_gamma", self.final_gamma, low=0, low_open=True)
        self.final_train_max = as_int(owner, "final_train_max", self.final_train_max, 1, optional=True)
        self.final_max_steps = as_int(owner, "final_max_steps", self.final_max_steps, 0, optional=True)
        self.final_follow_fidelity = as_bool(owner, "final_follow_fidelity", self.final_follow_fidelity)

    def train_config(self) -> TrainConfig:
        """LeGR's fine-tune as a TrainConfig: CE on the labels, SGD Nesterov, multistep 0.3/0.6/0.8."""
        return TrainConfig(
            epochs=self.final_epochs, max_steps=self.final_max_steps, batch_size=self.final_batch_size,
            loss="ce", optimizer="sgd", lr=self.final_lr, momentum=self.final_momentum,
            nesterov=self.final_nesterov, weight_decay=self.final_weight_decay, schedule="multistep",
            gamma=self.final_gamma, train_max=self.final_train_max, eval_every_epoch=False)


@dataclass
class LegrConfig(DeployConfig):
    """Hyper-parameters of LeGR; defaults are the reference code's values (``configs/legr.yaml``)."""

    population: int = 64
    """P: population size; the first generation is P candidates (P - 1 random and the identity) (LeGR: 64)."""
    sample: int = 16
    """S: tournament size, members drawn uniformly WITH replacement; the fittest is the parent (LeGR: 16)."""
    candidates: int = 400
    """Candidates evaluated in all, the first generation included (LeGR: 400); the run's --budget caps it,
    and the anneal then runs over the budget."""
    mutate_fraction: float = 0.1
    """Share of the layers mutated per child, m = max(1, floor(fraction L)) draws WITH replacement (LeGR: 0.1)."""
    sigma: float = 1.0
    """Scale of the alpha noise: log alpha += N(0, sigma step_i) (LeGR: 1)."""
    anneal_to: float = 0.2
    """step_i = 1 - (1 - anneal_to) i / candidates: the alpha noise falls linearly from 1 to this
    (LeGR: 1 - i / (1.25 x 400), i.e. 0.2). kappa's noise N(0, std_l) is not annealed (as the reference)."""
    batch: int = 1
    """Children asked per batch after the first generation (steady state). 1 = the reference (each child is
    bred from the population updated by the previous one); b > 1 breeds b children from the same population
    so a batched or distributed evaluator keeps b workers busy."""

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        for name in ("population", "sample", "candidates", "batch"):
            setattr(self, name, as_int(owner, name, getattr(self, name), 1))
        self.mutate_fraction = as_float(owner, "mutate_fraction", self.mutate_fraction, low=0, high=1, low_open=True)
        self.sigma = as_float(owner, "sigma", self.sigma, low=0, low_open=True)
        self.anneal_to = as_float(owner, "anneal_to", self.anneal_to, low=0, high=1)


# ---------------------------------------------------------------------------------------------- evolution
def anneal_step(i: int, total: int, end: float = 0.2) -> float:
    """LeGR's alpha-noise scale for candidate ``i`` of ``total``: 1 - (1 - end) i / total (1 -> end)."""
    return 1.0 - (1.0 - end) * i / max(1, total)


def tournament(rewards: list[float], sample: int, rng: np.random.Generator) -> int:
    """Index of the parent: the fittest of ``sample`` members drawn uniformly with replacement (first on ties)."""
    drawn = rng.integers(0, len(rewards), size=sample)
    return int(drawn[int(np.argmax([rewards[k] for k in drawn]))])


def mutate(action: np.ndarray, step: float, fraction: float, rng: np.random.Generator, sigma: float = 1.0,
           alpha_scale: float = 2.0, kappa_scale: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """LeGR's mutation of a genome (the env's action: L alpha entries a, then L kappa entries b).

    m = max(1, floor(fraction L)) layers are drawn with replacement; each draw adds N(0, sigma step) to the
    layer's log alpha and N(0, std_l) to its kappa, i.e. N(0, sigma step) / alpha_scale to a and
    N(0, 1) / kappa_scale to b. Returns (the child clipped to [-1, 1], the drawn layers).
    """
    child = np.array(action, dtype=np.float64)
    n = child.size // 2
    layers = rng.integers(0, n, size=max(1, int(np.floor(fraction * n))))
    for layer in layers:
        child[layer] += rng.normal(0.0, sigma * step) / alpha_scale
        child[n + layer] += rng.normal(0.0, 1.0) / kappa_scale
    return np.clip(child, -1.0, 1.0), layers


def random_genome(n: int, rng: np.random.Generator, alpha_scale: float = 2.0, kappa_scale: float = 3.0) -> np.ndarray:
    """LeGR's random candidate: alpha = exp(N(0, 1)), kappa = N(0, std_l) per layer, as an action (clipped)."""
    a = rng.normal(0.0, 1.0, size=n) / alpha_scale
    b = rng.normal(0.0, 1.0, size=n) / kappa_scale
    return np.clip(np.concatenate([a, b]), -1.0, 1.0)


# ---------------------------------------------------------------------------------------------- deployment
def finetune_report(env: Any, student: Arch, config: DeployConfig, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """Fine-tune a deployed student with LeGR's schedule (from the teacher's surviving weights) and report it.

    ``env`` is a ranking-affine env (or its wrapper). Returns (model, report) with the validation and TEST
    accuracy after the last epoch (:meth:`netcomp.evaluator.Evaluator.train_final`).
    """
    ev = env.unwrapped.evaluator
    asked = config.train_config()
    train = ev.fidelity.final_config(asked) if config.final_follow_fidelity else asked
    model, report = ev.train_final(student, train, seed=seed)
    return model, {**report, "finetune": asked.to_dict()}


class _Deploying(Agent):
    """What the three LeGR agents share: the stages, deployment at the targets, state for resume."""

    kind: ClassVar[str] = "blackbox"
    spaces: ClassVar[tuple[str, ...]] = ("ranking-affine",)
    modes: ClassVar[tuple[str, ...]] = ("oneshot",)
    budget_units: ClassVar[tuple[str, ...]] = ("evaluations",)
    extendable: ClassVar[bool] = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stage = "search"
        self.best: dict[str, Any] | None = None  # {"index", "reward", "action" (list)} of the best candidate


    @property
    def targets(self) -> list[float]:
        """The deployment FLOPs targets (the env's when the config names none)."""
        return list(self.config.targets or [self.env.unwrapped.flops_target])

    def run(self) -> None:
        """Search (the subclass's :meth:`search_step`) until it is done, then deploy; resumes at ``stage``."""
        while self.stage != "done":
            if self.stage == "search":
                if not self.search_step():
                    self.stage = "deploy"
                    self.checkpoint()
            elif self.stage == "deploy":
                if self.config.finetune:
                    self.deploy()
                self.stage = "done"
                self.checkpoint()

    def search_step(self) -> bool:
        """Ask for the next batch; False when the search is over."""
        raise NotImplementedError

    def deployed(self, target: float) -> tuple[Arch, dict[str, Any]]:
        """The student at a FLOPs target and facts about it."""
        raise NotImplementedError

    def deploy(self) -> list[dict[str, Any]]:
        """Prune at every target, fine-tune, report on the test split; the first target is the run's student."""
        if self.best is None:
            self.notes["final"] = {"skipped": "no candidate was evaluated"}
            return []
        ev = self.env.unwrapped.evaluator
        reports = []
        for k, target in enumerate(self.targets):
            student, facts = self.deployed(target)
            model, report = finetune_report(self.env, student, self.config, seed=self.seed)
            report = {**report, **facts, "flops_target": target, "macs_ratio": report["macs"] / ev.teacher_macs,
                      "index": self.best["index"], "search_reward": self.best["reward"]}
            if k == 0:  # the first target's student is the run's
                report = {k: v for k, v in self.keep_final(student, model, report).items() if k != "arch"}
            reports.append(report)
        self.notes["targets"] = [{k: v for k, v in r.items() if k != "finetune"} for r in reports]
        return reports

    def _track(self, action: Any, reward: float, index: int) -> None:
        if self.best is None or reward > self.best["reward"]:
            self.best = {"index": int(index), "reward": float(reward), "action": to_jsonable(action)}

    def state(self) -> dict[str, Any]:
        return {**super().state(), "stage": self.stage, "best": self.best, "notes": to_jsonable(self.notes)}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        if state["stage"] not in STAGES:
            raise ValueError(f"unknown LeGR stage {state['stage']!r}; expected one of {STAGES}")
        self.stage, self.best = state["stage"], state["best"]
        self.notes.update(state["notes"])


class LegrAgent(_Deploying):
    """LeGR's regularised evolution of per-conv affine maps, then deployment at the FLOPs targets.

    ``population`` holds the living members oldest first, each {"action", "reward", "index"}; ``evaluated``
    counts the candidates asked so far. ``notes``: ``best`` (the best candidate), ``final`` and ``targets``.
    """

    name: ClassVar[str] = "legr"
    Config: ClassVar[type] = LegrConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config: LegrConfig = self.config
        self.population: list[dict[str, Any]] = []
        self.evaluated = 0

    @property
    def total(self) -> int:
        """Candidates this run evaluates: ``candidates`` capped by the evaluation budget."""
        return min(self.config.candidates, self.budget.evaluations or self.config.candidates)

    def search_step(self) -> bool:
        """Ask the first generation as one batch, then ``batch`` children at a time; tell the results."""
        left = min(self.total - self.evaluated, self.budget.left)
        if left <= 0:
            return False
        if self.evaluated < self.config.population:
            actions, ages = self.first_generation(min(self.config.population - self.evaluated, left))
        else:
            actions = [self.child(self.evaluated + k) for k in range(min(self.config.batch, left))]
            ages = list(range(len(actions)))
        results = self.evaluate_many(actions)
        start = self.budget.used - len(actions)  # the record index of the batch's first candidate
        for k in ages:  # into the population in age order (the identity is the youngest of generation one)
            self.tell(actions[k], results[k][0], start + k)
        self.evaluated += len(actions)
        self.notes["best"] = {k: v for k, v in (self.best or {}).items() if k != "action"}
        self.checkpoint()
        return True

    def first_generation(self, n: int) -> tuple[list[np.ndarray], list[int]]:
        """n candidates of generation one: the identity first (so any budget scores it) and n - 1 random
        maps; their age order is the reference's (random ones, then the identity)."""
        env = self.env.unwrapped
        randoms = [random_genome(len(env.genes), self.rng, env.ALPHA_SCALE, env.KAPPA_SCALE) for _ in range(n - 1)]
        return [env.identity_action(), *randoms], [*range(1, n), 0]

    def child(self, i: int) -> np.ndarray:
        """Candidate ``i`` (i >= population): tournament, copy of the parent, LeGR's mutation at step_i."""
        cfg, env = self.config, self.env.unwrapped
        parent = self.population[tournament([m["reward"] for m in self.population], cfg.sample, self.rng)]
        step = anneal_step(i, self.total, cfg.anneal_to)
        action, _ = mutate(np.asarray(parent["action"]), step, cfg.mutate_fraction, self.rng, cfg.sigma,
                           env.ALPHA_SCALE, env.KAPPA_SCALE)
        return action

    def tell(self, action: np.ndarray, reward: float, index: int) -> None:
        """Add an evaluated candidate; beyond ``population`` members the oldest one dies (ageing)."""
        self.population.append({"action": to_jsonable(action), "reward": float(reward), "index": int(index)})
        if len(self.population) > self.config.population:
            self.population.pop(0)
        self._track(action, reward, index)

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(alpha, kappa) per gene of the best candidate."""
        env = self.env.unwrapped
        a = np.asarray(self.best["action"], dtype=np.float64)
        n = len(env.genes)
        return env.affine(list(zip(a[:n], a[n:])))

    def deployed(self, target: float) -> tuple[Arch, dict[str, Any]]:
        env = self.env.unwrapped
        plan = env.prune_plan(*self.affine(), flops_target=target)
        return env.plan_student(plan), {"met_target": plan.met_target, "pruned": len(plan.pruned),
                                        "widths": plan.widths}

    def state(self) -> dict[str, Any]:
        return {**super().state(), "population": to_jsonable(self.population), "evaluated": self.evaluated}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.population, self.evaluated = state["population"], int(state["evaluated"])


class L2GlobalAgent(LegrAgent):
    """LeGR's 'L2-norm global ranking' baseline: the identity map (alpha = 1, kappa = 0); one evaluation."""

    name: ClassVar[str] = "l2-global"
    Config: ClassVar[type] = DeployConfig

    def search_step(self) -> bool:
        if self.evaluated >= 1 or self.budget.exhausted:
            return False
        action = self.env.unwrapped.identity_action()
        reward, _ = self.evaluate(action)
        self._track(action, reward, self.budget.used - 1)
        self.evaluated = 1
        self.checkpoint()
        return True


class UniformAgent(_Deploying):
    """LeGR's uniform baseline: the same keep ratio in every layer at the FLOPs target (filters by L2 norm).

    The student is not an action of the ranking-affine space, so it is submitted (scored like an episode);
    one evaluation. ``notes['ratio']`` is the keep ratio found for the env's target.
    """

    name: ClassVar[str] = "uniform"
    Config: ClassVar[type] = DeployConfig

    def search_step(self) -> bool:
        if self.best is not None or self.budget.exhausted:
            return False
        student, facts = self.deployed(self.env.unwrapped.flops_target)
        reward, _ = self.submit(student)
        self.notes["ratio"] = facts["ratio"]
        self._track(None, reward, self.budget.used - 1)
        self.checkpoint()
        return True

    def deployed(self, target: float) -> tuple[Arch, dict[str, Any]]:
        env = self.env.unwrapped
        plan, ratio = env.uniform_plan(target)
        return env.plan_student(plan), {"met_target": plan.met_target, "ratio": ratio, "widths": plan.widths}


class RandomChannelsAgent(UniformAgent):
    """The random-selection baseline of pruning studies (Blalock et al., "What is the state of neural network
    pruning?", MLSys 2020, arXiv:2003.03033): the uniform baseline's keep ratio at the FLOPs target, but each
    group keeps a random subset of its channels (as many as the uniform baseline keeps, so the same widths and
    MACs) instead of its largest-norm filters. Beside ``uniform`` it separates what the ratio buys from what
    the filter choice buys. The subset is drawn from the agent's seed and the target: a run is reproducible.
    """

    name: ClassVar[str] = "uniform-random"

    def deployed(self, target: float) -> tuple[Arch, dict[str, Any]]:
        env = self.env.unwrapped
        plan, ratio = env.uniform_plan(target)
        rng = np.random.default_rng([self.seed, round(target * 1_000_000)])
        keep = {gid: random_channels(env.arch, gid, len(idx), rng) for gid, idx in plan.keep.items()}
        changed = {gid: idx for gid, idx in keep.items() if len(idx) < len(env.scores[gid])}
        return keep_channels(env.arch, changed), {"met_target": plan.met_target, "ratio": ratio,
                                                  "widths": plan.widths, "selection": "random"}


def random_channels(arch: Arch, gid: str, width: int, rng: np.random.Generator) -> list[int]:
    """``width`` random channels of group ``gid``, sorted; a group produced by grouped convs keeps the same
    number in every conv group (its width is a multiple of the groups)."""
    n = arch.group(gid).width
    blocks = max(arch.node(p).groups for p in arch.group(gid).producers)
    step, per = n // blocks, width // blocks
    return sorted(b * step + int(i) for b in range(blocks) for i in rng.choice(step, size=per, replace=False))


__all__ = ["DeployConfig", "L2GlobalAgent", "LegrAgent", "LegrConfig", "RandomChannelsAgent", "UniformAgent",
           "anneal_step", "finetune_report", "mutate", "random_genome", "random_channels", "tournament"]
