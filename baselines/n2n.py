"""N2N: Network-to-Network compression by policy-gradient RL (Ashok, Rhinehart, Beainy, Kitani, ICLR 2018).

A clean-room re-implementation of the paper ("N2N Learning: Network to Network Compression via Policy
Gradient Reinforcement Learning", arXiv:1709.06030) and of its reference code (github.com/anubhavashok/N2N),
both summarised in docs/methods.md#n2n; no code of the reference repository is used. The pipeline has three
steps, all in :meth:`N2NAgent.run`:

1. **Stage 1, layer removal.** A bidirectional LSTM reads the teacher's layer sequence (one descriptor row
   per layer) and emits keep/remove for every layer at once (the first layer is forced to keep). Each
   sampled action is one oneshot episode of the run's removal environment, i.e. one evaluation of the
   budget. The policy is trained with REINFORCE.
2. **Stage 2, layer shrinkage.** Starting from the best stage-1 student (by reward), an autoregressive
   LSTM picks one shrink factor (N2N's lookup) for the output width of each conv/linear layer, reading the
   previous choice as it goes. It runs on ``self.make_env("shrinkage", removed=...)``, which shares the
   evaluation budget (``stage2_fraction`` of it).
3. **Final fine-tune** of the overall best student with cross-entropy plus lambda * MSE-to-teacher-logits
   (the maintainer's advice in the reference's issues #9 and #11), reported on the TEST split.

Faithful by default, with every known bug of the reference code behind a named switch that defaults to
FIXED (``shortcut_token_misalignment``, ``register_shrink_lstm``, ``clamp_constraint_schedule``). The
off-by-one running baseline is the reference's and the default; the per-sample advantage is the paper's
estimator and the default (``per_sample_advantage=False`` gives the code's shared batch advantage).

Everything is resumable: :meth:`N2NAgent.state` holds the policies, optimisers, baselines, epoch counters,
the stage, the best students so far and the random states; the runner's :meth:`N2NAgent.checkpoint` hook is
called after every policy update. Policies transfer across teachers of different depth
(:meth:`N2NAgent.save_policy` / :meth:`N2NAgent.load_policy`): the LSTMs read sequences of any length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agents.base import Agent, RecordedEnv, one_torch_thread
from envs.shrinkage import N2N_LOOKUP
from netcomp.arch import Arch, arch_from_dict, arch_to_dict, n2n_descriptors
from netcomp.checks import as_bool, as_choice, as_float, as_int
from netcomp.distill import LOSSES, OPTIMIZERS, SCHEDULES, TrainConfig

#: Order of the pipeline's stages; ``state()["stage"]`` is one of them.
STAGES = ("removal", "shrinkage", "finetune", "done")
#: Baseline forms: the reference's running average with an (e + 1) denominator, or the plain running mean.
BASELINES = ("reference", "mean")
#: What the policies read per layer (N2NConfig.policy_input).
POLICY_INPUTS = ("scaled", "reference")
#: Columns of the reference's raw per-layer input [type, kernel, stride, #outputs, padding] in the rows of
#: netcomp.arch.n2n_descriptors (type, kernel, stride, padding, outputs, skip start, skip end).
REFERENCE_COLUMNS = (0, 1, 2, 4, 3)
#: Version of the files written by :meth:`N2NAgent.save_policy`.
POLICY_FORMAT = 1


# ---------------------------------------------------------------------------------------------- config
@dataclass
class N2NConfig:
    """Hyper-parameters of N2N; defaults are the reference code's values (``configs/n2n.yaml``)."""

    rollouts: int = 5
    """N: students sampled per policy epoch, i.e. evaluations per REINFORCE update (N2N run.py: 5)."""
    removal_lr: float = 3e-3
    """Adam learning rate of the removal policy (N2N run.py: 0.003)."""
    shrink_lr: float = 0.1
    """Adam learning rate of the shrinkage policy (N2N run.py: 0.1)."""
    hidden: int = 30
    """Hidden units of every LSTM (per direction for the bidirectional removal LSTM) (N2N: 30)."""
    lstm_layers: int = 2
    """Stacked LSTM layers (removal) and stacked LSTMCells (shrinkage) (N2N: 2)."""
    stage2_fraction: float = 0.5
    """Share of the evaluation budget spent on stage 2 (shrinkage); 0 = removal only (N2N: 100 epochs each)."""
    per_sample_advantage: bool = True
    """True: the paper's estimator, advantage R_i - b for each rollout. False: the reference code's shared
    batch advantage mean(R) - b for every rollout of the epoch."""
    baseline: str = "reference"
    """'reference': b_e = sum_{k<e} mean(R_k) / (e + 1), the code's running average with its off-by-one
    denominator (b_0 = 0; faithful default). 'mean': b_e = sum_{k<e} mean(R_k) / e, the plain running mean."""
    step_per_rollout: bool = True
    """True: one Adam step per rollout, each on its log-prob recomputed under the current policy (as the
    reference steps N times per epoch). False: one step on the summed loss of the epoch's rollouts."""
    mask_fixed_logprob: bool = False
    """False (reference): the joint log-prob sums every layer's log-prob, forced and fixed layers included.
    True: only layers whose action matters (removable / width-deciding) enter the sum (docs/deviations.md#n2n)."""
    shortcut_token_misalignment: bool = False
    """Bug switch, default FIXED. True reproduces the reference's index drift: its builders skip projection
    shortcut layers without consuming an action, so the k-th non-shortcut layer receives the policy's k-th
    output and the policy's last outputs are never used (in both stages)."""
    register_shrink_lstm: bool = True
    """Bug switch, default FIXED. False reproduces the reference's unregistered shrinkage LSTMCells: the
    optimiser never sees them, so only the output layer of the shrinkage policy trains."""
    clamp_constraint_schedule: bool = True
    """Bug switch, default FIXED. The constraint penalty weight eps = (1 - e/E)^4 is computed with the base
    clamped at 0; False reproduces the unclamped even power, which makes eps rise again after epoch E."""
    size_constraint: int | None = None
    """Optional hardware constraint: a student with more parameters violates it (None = no constraint)."""
    acc_constraint: float | None = None
    """Optional constraint: a student with accuracy (fraction) below this violates it (None = none)."""
    constraint_epochs: float = 15.0
    """E of the constraint annealing: a violating student gets (eps - 1) + eps * R, eps = (1 - e/E)^4."""
    finetune: bool = True
    """Fine-tune the overall best student at the end and report its test accuracy (notes['final'])."""
    final_epochs: float = 100.0
    """Epochs of the final fine-tune (not in the released code; the maintainer asks for 'a longer one')."""
    final_lr: float = 5e-4
    """Learning rate of the final fine-tune (N2N's student optimiser: Adam 5e-4)."""
    final_lambda: float = 1.0
    """lambda of the fine-tune loss CE + lambda * MSE(student logits, teacher logits); tune per student."""
    final_loss: str = "ce+mse"
    """Loss of the final fine-tune, a netcomp.distill loss name ('ce+mse' as the maintainer recommends)."""
    final_optimizer: str = "adam"
    """Optimiser of the final fine-tune: 'adam' or 'sgd' (momentum 0.9)."""
    final_weight_decay: float = 5e-4
    """Weight decay of the final fine-tune (N2N's students: 5e-4)."""
    final_batch_size: int = 200
    """Batch size of the final fine-tune (N2N's CIFAR loader: 200)."""
    final_schedule: str = "cosine"
    """Learning-rate schedule of the final fine-tune ('none', 'cosine', 'step', 'onecycle')."""
    final_max_steps: int | None = None
    """Cap on the fine-tune's optimiser steps (None = no cap); for smoke runs."""
    final_train_max: int | None = None
    """Use only the first n training images in the fine-tune (None = all); for fast runs."""
    final_follow_fidelity: bool = True
    """The fine-tune's length is capped by the run's fidelity (its ``final`` section: smoke takes seconds,
    fast minutes; paper has no cap, so these values hold). False keeps these values at any fidelity."""
    policy_input: str = "scaled"
    """What the policies read per layer. 'scaled' (default): the env's observation row, N2N's descriptor
    divided by fixed constants with log2 widths plus a removable / width-deciding flag (8 columns).
    'reference': the reference code's raw 5-vector [type, kernel, stride, #outputs, padding] (its ``run.py``;
    docs/methods.md#n2n-state). The default is scaled because raw integers up to 512 (or 2048) saturate the
    LSTM gates, so the policy's input barely changes with the width, and the flag tells the policy which
    actions are forced; both stay scale-compatible across teachers, so both transfer."""
    batch_children: bool = True
    """Train an epoch's N children together on shared batches (the reference; each scored as it would be
    alone). False trains them one at a time (same scores, slower)."""

    def __post_init__(self) -> None:
        """Coerce YAML values and reject bad ones (netcomp.checks' one format)."""
        o = "N2NConfig"
        self.rollouts = as_int(o, "rollouts", self.rollouts, 1)
        self.removal_lr = as_float(o, "removal_lr", self.removal_lr, low=0, low_open=True)
        self.shrink_lr = as_float(o, "shrink_lr", self.shrink_lr, low=0, low_open=True)
        self.hidden = as_int(o, "hidden", self.hidden, 1)
        self.lstm_layers = as_int(o, "lstm_layers", self.lstm_layers, 1)
        self.stage2_fraction = as_float(o, "stage2_fraction", self.stage2_fraction, low=0, high=1)
        self.baseline = as_choice(o, "baseline", self.baseline, BASELINES)
        self.policy_input = as_choice(o, "policy_input", self.policy_input, POLICY_INPUTS)
        self.size_constraint = as_int(o, "size_constraint", self.size_constraint, 1, optional=True)
        self.acc_constraint = as_float(o, "acc_constraint", self.acc_constraint, low=0, high=1, optional=True)
        self.constraint_epochs = as_float(o, "constraint_epochs", self.constraint_epochs, low=0, low_open=True)
        self.finetune = as_bool(o, "finetune", self.finetune)
        self.final_epochs = as_float(o, "final_epochs", self.final_epochs, low=0, low_open=True)
        self.final_lr = as_float(o, "final_lr", self.final_lr, low=0, low_open=True)
        self.final_lambda = as_float(o, "final_lambda", self.final_lambda, low=0)
        self.final_loss = as_choice(o, "final_loss", self.final_loss, LOSSES)
        self.final_optimizer = as_choice(o, "final_optimizer", self.final_optimizer, OPTIMIZERS)
        self.final_weight_decay = as_float(o, "final_weight_decay", self.final_weight_decay, low=0)
        self.final_batch_size = as_int(o, "final_batch_size", self.final_batch_size, 1)
        self.final_schedule = as_choice(o, "final_schedule", self.final_schedule, SCHEDULES)
        self.final_max_steps = as_int(o, "final_max_steps", self.final_max_steps, 0, optional=True)
        self.final_train_max = as_int(o, "final_train_max", self.final_train_max, 1, optional=True)
        self.final_follow_fidelity = as_bool(o, "final_follow_fidelity", self.final_follow_fidelity)


# ---------------------------------------------------------------------------------------------- pure pieces
def baseline_value(history: Sequence[float], kind: str = "reference") -> float:
    """The baseline b_e of policy epoch e = len(history), from the past epochs' mean rewards.

    'reference' is N2N's code: sum_{k<e} Rbar_k / (e + 1), a running average whose denominator is one too
    large (b_0 = 0, b_1 = Rbar_0 / 2, ...), so early baselines are biased towards 0. 'mean' divides by e.
    """
    e = len(history)
    if kind == "reference":
        return float(sum(history)) / (e + 1)
    if kind == "mean":
        return float(sum(history)) / e if e else 0.0
    raise ValueError(f"unknown baseline {kind!r}; expected one of {list(BASELINES)}")


def compute_advantages(rewards: Sequence[float], history: Sequence[float], per_sample: bool = True,
                       baseline: str = "reference") -> tuple[np.ndarray, float]:
    """REINFORCE advantages of one epoch's rollouts and the baseline used.

    ``per_sample``: A_i = R_i - b_e (the paper's estimator). Otherwise every rollout gets the shared
    A = mean(R) - b_e, as the reference code does (its rollouts only differ in their log-probs).
    """
    r = np.asarray(rewards, dtype=np.float64)
    if r.size == 0:
        raise ValueError("compute_advantages needs at least one reward")
    b = baseline_value(history, baseline)
    adv = r - b if per_sample else np.full_like(r, r.mean() - b)
    return adv, b


def constraint_epsilon(epoch: float, horizon: float = 15.0, clamp: bool = True) -> float:
    """Weight eps(e) of the constraint penalty: (1 - e/E)^4, 1 at e = 0 and 0 from e = E on.

    The reference computes the even power of an unclamped base, so eps grows again after E (back to 1 at
    e = 2E); ``clamp=True`` clamps the base at 0 first.
    """
    base = 1.0 - epoch / horizon
    if clamp:
        base = max(0.0, base)
    return min(1.0, max(0.0, base**4))


def constrained_reward(reward: float, eps: float) -> float:
    """N2N's reward of a student that violates a constraint: (eps - 1) + eps * R (-1 once eps is 0)."""
    return (eps - 1.0) + eps * reward


def reference_input(env: Any) -> np.ndarray:
    """The reference code's raw policy input for a removal or shrinkage env: one row per action layer,
    [type, kernel, stride, #outputs, padding] as unscaled integers (the reference's ``run.py``;
    docs/methods.md#n2n-state)."""
    arch = getattr(env, "parent", env.arch)
    rows = n2n_descriptors(arch)
    index = {name: i for i, name in enumerate(arch.layers)}
    return rows[[index[n] for n in env.layers]][:, list(REFERENCE_COLUMNS)]


def misalign_actions(actions: np.ndarray, shortcut: np.ndarray, neutral: int) -> np.ndarray:
    """The action the reference's builders effectively apply, given the policy's per-token actions.

    The reference builds a child by walking the network and consuming one action per layer, but it skips
    projection-shortcut layers without consuming theirs, although they are tokens of the policy's input
    sequence. So the k-th non-shortcut layer gets the policy's k-th output (computed at an earlier token once a
    shortcut has been passed) and the last outputs are dropped. Shortcut layers get ``neutral`` (they are
    never changed by the reference).
    """
    actions = np.asarray(actions)
    shortcut = np.asarray(shortcut, dtype=bool)
    out = np.full_like(actions, neutral)
    main = np.flatnonzero(~shortcut)
    out[main] = actions[: len(main)]
    return out


# ---------------------------------------------------------------------------------------------- policies
class RemovalPolicy(nn.Module):
    """N2N's removal controller: a bidirectional LSTM over the layer sequence and a keep/remove head.

    Zero initial states; the head maps the concatenated directions (2 * hidden) to 2 logits per layer
    (index 1 = keep). Actions are independent given the LSTM outputs.
    """

    def __init__(self, features: int, hidden: int = 30, layers: int = 2) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=layers, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * hidden, 2)

    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        """(L, 2) logits for an (L, F) observation."""
        out, _ = self.lstm(obs.unsqueeze(0))
        return self.head(out[0])

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One action per layer (int64, 1 = keep), the first forced to keep as in the reference."""
        probs = F.softmax(self.logits(obs), dim=-1)
        actions = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        actions[0] = 1
        return actions

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """log pi(actions | obs): the sum of per-layer log-probs (only where ``mask`` is 1 if given)."""
        logp = F.log_softmax(self.logits(obs), dim=-1).gather(1, actions.view(-1, 1)).squeeze(1)
        return (logp if mask is None else logp * mask).sum()


class ShrinkPolicy(nn.Module):
    """N2N's autoregressive shrinkage controller: stacked LSTMCells, one step per layer, an 11-way head.

    Step t reads layer t's descriptor row concatenated with the previous step's shrink factor (1.0 before
    the first layer); the hidden state carries across the layers. The cells are always held in a ModuleList
    (so checkpoints hold them); the reference's unregistered-cell bug is reproduced by the agent freezing
    them (``register_shrink_lstm=False``), which has the same effect: only the head trains.
    """

    def __init__(self, features: int, n_actions: int, hidden: int = 30, layers: int = 2) -> None:
        super().__init__()
        self.hidden = hidden
        self.cells = nn.ModuleList(
            [nn.LSTMCell(features + 1, hidden)] + [nn.LSTMCell(hidden, hidden) for _ in range(layers - 1)])
        self.head = nn.Linear(hidden, n_actions)

    def _unroll(self, obs: torch.Tensor, factors: torch.Tensor, actions: torch.Tensor | None,
                generator: torch.Generator | None, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the L steps, sampling (``actions`` None) or scoring given actions; (actions, log-prob sum)."""
        n = obs.shape[0]
        h = [obs.new_zeros(1, self.hidden) for _ in self.cells]
        c = [obs.new_zeros(1, self.hidden) for _ in self.cells]
        previous = obs.new_ones(1)
        chosen = torch.empty(n, dtype=torch.int64)
        total = obs.new_zeros(())
        for t in range(n):
            x = torch.cat([obs[t], previous]).unsqueeze(0)
            for k, cell in enumerate(self.cells):
                h[k], c[k] = cell(x, (h[k], c[k]))
                x = h[k]
            logp = F.log_softmax(self.head(x)[0], dim=-1)
            if actions is None:
                a = int(torch.multinomial(logp.detach().exp(), 1, generator=generator))
            else:
                a = int(actions[t])
            chosen[t] = a
            total = total + (logp[a] if mask is None else logp[a] * mask[t])
            previous = factors[a].view(1)
        return chosen, total

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, factors: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One lookup index per layer, sampled autoregressively."""
        return self._unroll(obs, factors, None, generator, None)[0]

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor, factors: torch.Tensor,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
        """log pi(actions | obs) with the previous factors taken from ``actions`` (teacher forcing)."""
        return self._unroll(obs, factors, actions, None, mask)[1]


# ---------------------------------------------------------------------------------------------- agent
class N2NAgent(Agent):
    """N2N's two-stage REINFORCE compression (removal, then shrinkage, then a final fine-tune).

    Acts on the run's removal env (oneshot) and builds its own stage-2 shrinkage env with ``make_env``
    (without one, the whole budget goes to stage 1). ``notes`` receives ``stage1_best``, ``best``,
    ``final`` (test accuracy of the fine-tuned best student), and ``transferred_from`` after
    :meth:`load_policy`.
    """

    has_policy = True
    name: ClassVar[str] = "n2n"
    kind: ClassVar[str] = "policy"
    spaces: ClassVar[tuple[str, ...]] = ("removal",)
    modes: ClassVar[tuple[str, ...]] = ("oneshot",)
    budget_units: ClassVar[tuple[str, ...]] = ("evaluations",)  # the stage split is counted in evaluations
    extendable: ClassVar[bool] = False  # the stage split is fixed by the budget the run started with
    Config: ClassVar[type] = N2NConfig

    def __init__(self, env: RecordedEnv, config: N2NConfig, seed: int = 0, run_dir: Path | None = None,
                 make_env: Callable[..., RecordedEnv] | None = None) -> None:
        super().__init__(env, config, seed=seed, run_dir=run_dir, make_env=make_env)
        self.config: N2NConfig = config
        self.features = (len(REFERENCE_COLUMNS) if config.policy_input == "reference"
                         else int(env.observation_space.shape[-1]))
        self.n_shrink_actions = len(N2N_LOOKUP)  # the shrink head has one output per lookup entry
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.removal_policy = RemovalPolicy(self.features, config.hidden, config.lstm_layers)
            self.shrink_policy = ShrinkPolicy(self.features, self.n_shrink_actions, config.hidden,
                                              config.lstm_layers)
        if not config.register_shrink_lstm:
            self.shrink_policy.cells.requires_grad_(False)
        self._make_optimizers()
        #: the policies' own random stream (the engine reseeds torch's global RNG for every student)
        self.generator = torch.Generator().manual_seed(seed)
        self.stage = "removal"
        #: per stage: policy epochs done and the mean reward of each (the baseline's history)
        self.progress: dict[str, dict[str, Any]] = {s: {"epoch": 0, "means": []} for s in ("removal", "shrinkage")}
        self.best: dict[str, Any] | None = None          # best valid student of both stages
        self.best_removal: dict[str, Any] | None = None  # best valid stage-1 student (stage 2 starts there)
        self.history: list[dict[str, Any]] = []          # one row per policy epoch
        self.stage2_env: RecordedEnv | None = None

    # ------------------------------------------------------------------ hooks

    # ------------------------------------------------------------------ budget split
    @property
    def stage2_evaluations(self) -> int:
        """Evaluations reserved for stage 2 (0 without ``make_env`` or with ``stage2_fraction=0``)."""
        if self.make_env is None:
            return 0
        return int(round(self.config.stage2_fraction * self.budget.evaluations))

    @property
    def stage1_limit(self) -> int:
        """Stage 1 runs while ``budget.used`` is below this."""
        return self.budget.evaluations - self.stage2_evaluations

    # ------------------------------------------------------------------ the pipeline
    def run(self) -> None:
        """Spend the budget on stage 1 then stage 2, fine-tune the best student; resumes at ``self.stage``."""
        if self.make_env is None and self.config.stage2_fraction > 0:
            self.notes["stage2_skipped"] = "no make_env was given: the whole budget went to stage 1"
        while self.stage != "done":
            if self.stage == "removal":
                if self.budget.used < self.stage1_limit:
                    self.policy_epoch()
                    continue
                self._end_removal()
            elif self.stage == "shrinkage":
                if self.stage2_evaluations > 0 and not self.budget.exhausted:
                    self.policy_epoch()
                    continue
                self.stage = "finetune"
                self.checkpoint()
            elif self.stage == "finetune":
                if self.config.finetune:
                    self.final_finetune()
                self.stage = "done"
                if self.run_dir is not None:
                    self.save_policy(Path(self.run_dir) / "policy.pt")
                self.checkpoint()

    def _end_removal(self) -> None:
        """Record the best stage-1 student and move on to stage 2 (from it, or from the teacher)."""
        self.notes["stage1_best"] = _summary(self.best_removal)
        self.stage = "shrinkage"
        if self.run_dir is not None:
            self.save_policy(Path(self.run_dir) / "policy.pt")
        self.checkpoint()

    def stage_env(self, stage: str) -> RecordedEnv:
        """The env a stage acts on; stage 2's is built (once) from the best stage-1 student's removals."""
        if stage == "removal":
            return self.env
        if self.stage2_env is None:
            if self.make_env is None:
                raise RuntimeError("stage 2 needs make_env to build its shrinkage environment")
            removed = list(self.best_removal["removed"]) if self.best_removal else []
            self.stage2_env = self.make_env("shrinkage", mode="oneshot", removed=removed)
            lookup = tuple(self.stage2_env.unwrapped.lookup)
            if len(lookup) != self.n_shrink_actions:
                raise ValueError(f"the shrinkage env has {len(lookup)} lookup factors; the N2N shrink policy "
                                 f"has {self.n_shrink_actions} outputs (N2N's lookup)")
        return self.stage2_env

    def policy_epoch(self) -> dict[str, Any]:
        """One REINFORCE epoch of the current stage: sample up to N rollouts, score them, update, checkpoint.

        The last epoch of a stage is partial when fewer than N evaluations are left in its share; its
        update uses the rollouts it has. Returns the epoch's history row.
        """
        stage = self.stage
        if stage not in ("removal", "shrinkage"):
            raise RuntimeError(f"no policy epoch in stage {stage!r}")
        env = self.stage_env(stage)
        limit = self.stage1_limit if stage == "removal" else self.budget.evaluations
        n = min(self.config.rollouts, limit - self.budget.used)
        if n < 1:
            raise RuntimeError(f"no evaluation left for stage {stage!r}")
        progress = self.progress[stage]
        obs = self.observation(stage)
        # The policy does not change within an epoch: sample all N children, then train them together on
        # shared batches (as the reference does), each scored exactly as it would be alone.
        actions = [self.sample_actions(stage, obs) for _ in range(n)]
        outcomes = self._evaluate_many(env, [self.env_action(stage, a.numpy()) for a in actions])
        rewards = []
        for student, (reward, info) in outcomes:
            reward = self.shaped_reward(reward, info, progress["epoch"])
            self._track_best(stage, reward, info, student)
            rewards.append(reward)
        adv, base = compute_advantages(rewards, progress["means"], self.config.per_sample_advantage,
                                       self.config.baseline)
        self.update(stage, obs, actions, adv)
        progress["means"].append(float(np.mean(rewards)))
        progress["epoch"] += 1
        row = {"stage": stage, "epoch": progress["epoch"], "rollouts": n, "mean_reward": float(np.mean(rewards)),
               "max_reward": float(np.max(rewards)), "baseline": base, "used": self.budget.used}
        self.history.append(row)
        self.checkpoint()
        return row

    # ------------------------------------------------------------------ acting
    def observation(self, stage: str) -> torch.Tensor:
        """What the policy reads: one row per layer of the stage env (see ``policy_input``), a float tensor."""
        env = self.stage_env(stage)
        obs, _ = env.reset()
        if self.config.policy_input == "reference":
            return torch.as_tensor(reference_input(env.unwrapped), dtype=torch.float32)
        return torch.as_tensor(np.asarray(obs), dtype=torch.float32)

    def sample_actions(self, stage: str, obs: torch.Tensor | None = None) -> torch.Tensor:
        """The policy's per-token actions for a stage (before any misalignment), from the agent's generator."""
        obs = self.observation(stage) if obs is None else obs
        with one_torch_thread():
            if stage == "removal":
                return self.removal_policy.sample(obs, self.generator)
            return self.shrink_policy.sample(obs, self._factors(), self.generator)

    def env_action(self, stage: str, actions: np.ndarray) -> np.ndarray:
        """The env action for the policy's actions: unchanged, or shifted as the reference's builders do."""
        actions = np.asarray(actions, dtype=np.int64)
        if not self.config.shortcut_token_misalignment:
            return actions
        env = self.stage_env(stage).unwrapped
        arch = getattr(env, "parent", env.arch)
        shortcut = np.array([arch.node(n).role == "shortcut" for n in env.layers])
        neutral = 1 if stage == "removal" else self.n_shrink_actions - 1  # keep / factor 1.0
        return misalign_actions(actions, shortcut, neutral)

    def _factors(self) -> torch.Tensor:
        return torch.tensor(self.stage_env("shrinkage").unwrapped.lookup, dtype=torch.float32)

    def _mask(self, stage: str) -> torch.Tensor | None:
        """1 for layers whose action matters (removable / width-deciding) if ``mask_fixed_logprob``."""
        if not self.config.mask_fixed_logprob:
            return None
        env = self.stage_env(stage).unwrapped
        acting = env.removable if stage == "removal" else set(env.acting)
        return torch.tensor([float(n in acting) for n in env.layers])

    def log_prob(self, stage: str, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log pi(actions) under the current policy of ``stage`` (with gradient)."""
        if stage == "removal":
            return self.removal_policy.log_prob(obs, actions, self._mask(stage))
        return self.shrink_policy.log_prob(obs, actions, self._factors(), self._mask(stage))

    def update(self, stage: str, obs: torch.Tensor, actions: Sequence[torch.Tensor], advantages: np.ndarray) -> None:
        """REINFORCE: minimise -A_i * log pi(a_i); one Adam step per rollout or one on the summed loss.

        No entropy bonus, no clipping, no discount (one terminal reward), as in the reference.
        """
        opt = self.removal_opt if stage == "removal" else self.shrink_opt
        with one_torch_thread():
            if self.config.step_per_rollout:
                for a, adv in zip(actions, advantages):
                    opt.zero_grad(set_to_none=True)
                    (-float(adv) * self.log_prob(stage, obs, a)).backward()
                    opt.step()
            else:
                opt.zero_grad(set_to_none=True)
                loss = sum(-float(adv) * self.log_prob(stage, obs, a) for a, adv in zip(actions, advantages))
                loss.backward()
                opt.step()

    def _evaluate_many(self, env: RecordedEnv, actions: Sequence[np.ndarray]) -> list[tuple[Arch, tuple[float, dict]]]:
        """Oneshot episodes of ``env``, one evaluation each: (student, (reward, info)) per action.

        ``batch_children`` trains them together (``evaluate_many``); otherwise one episode at a time.
        """
        base = env.unwrapped
        if self.config.batch_children:
            env.reset()
            infos = env.evaluate_many(actions)
            return [(base.student_for(a), (float(i["reward"]), i)) for a, i in zip(actions, infos)]
        out = []
        for action in actions:
            env.reset()
            _, reward, _, _, info = env.step(action)
            out.append((base.student, (float(reward), info)))
        return out

    def shaped_reward(self, reward: float, info: dict, epoch: int) -> float:
        """The reward the policy learns from: the env's, with N2N's constraint penalty if one is violated."""
        cfg = self.config
        if not info.get("valid", False):
            return reward
        violated = ((cfg.size_constraint is not None and info["params"] > cfg.size_constraint)
                    or (cfg.acc_constraint is not None and info["accuracy"] < cfg.acc_constraint))
        if not violated:
            return reward
        eps = constraint_epsilon(epoch, cfg.constraint_epochs, cfg.clamp_constraint_schedule)
        return constrained_reward(reward, eps)

    def _track_best(self, stage: str, reward: float, info: dict, student: Arch) -> None:
        """Keep the best valid student overall and of stage 1 (by the learning reward)."""
        if not info.get("valid", False):
            return
        is_best = self.best is None or reward > self.best["reward"]
        is_best_removal = stage == "removal" and (self.best_removal is None or reward > self.best_removal["reward"])
        if not (is_best or is_best_removal):
            return
        entry = {
            "stage": stage, "reward": float(reward), "env_reward": float(info["reward"]),
            "accuracy": float(info["accuracy"]), "params": int(info["params"]),
            "compression": float(info["compression"]), "arch_key": str(info["arch_key"]),
            "removed": list(info.get("removed", [])),
            "widths": {str(k): int(v) for k, v in info.get("widths", {}).items()},
            "arch": arch_to_dict(student),
        }
        if is_best:
            self.best = entry
            self.notes["best"] = _summary(entry)
        if is_best_removal:
            self.best_removal = entry

    # ------------------------------------------------------------------ final fine-tune
    def finetune_config(self) -> TrainConfig:
        """The TrainConfig of the final fine-tune (CE + lambda * MSE-to-teacher by default)."""
        cfg = self.config
        return TrainConfig(
            epochs=cfg.final_epochs, max_steps=cfg.final_max_steps, batch_size=cfg.final_batch_size,
            loss=cfg.final_loss, kd_lambda=cfg.final_lambda, optimizer=cfg.final_optimizer,
            lr=cfg.final_lr, weight_decay=cfg.final_weight_decay, schedule=cfg.final_schedule,
            train_max=cfg.final_train_max, eval_every_epoch=False,
        )

    def final_finetune(self) -> dict[str, Any]:
        """Fine-tune the best student found and report it on the TEST split; sets ``notes['final']``.

        The search keeps no trained weights, so the student starts as it did when it was scored (the env's
        inheritance mode: re-initialised as N2N's children by default, the teacher's surviving weights at the
        ``rank`` fidelity, the runs' default) and trains ``final_epochs`` with the teacher's logits.
        Writes ``run_dir/best_student.pt`` ({arch, state_dict, meta}, loadable with weights_only=True).
        """
        if self.best is None:
            self.notes["final"] = {"skipped": "no valid student was found"}
            return self.notes["final"]
        arch = arch_from_dict(self.best["arch"])
        asked = self.finetune_config()
        model, report = self.train_kept(arch, asked, self.config.final_follow_fidelity)
        final = {**report, "stage": self.best["stage"], "search_reward": self.best["reward"],
                 "arch_key": self.best["arch_key"], "finetune": asked.to_dict()}
        return self.keep_final(arch, model, final)

    # ------------------------------------------------------------------ transfer
    def save_policy(self, path: str | Path) -> None:
        """Write both policies' weights (loadable with weights_only=True) for :meth:`load_policy`."""
        self.write_policy(path, POLICY_FORMAT, {
            "removal": self.removal_policy.state_dict(), "shrinkage": self.shrink_policy.state_dict()}, {
            "features": self.features, "hidden": self.config.hidden, "lstm_layers": self.config.lstm_layers,
            "n_shrink_actions": self.n_shrink_actions, "teacher": str(self.env.unwrapped.arch.family),
            "epochs": {s: p["epoch"] for s, p in self.progress.items()}})

    def student_of(self, record: dict) -> Arch | None:
        """The student of a record of either stage (stage 2's are rebuilt on the stage-2 env)."""
        if record.get("space") == "shrinkage" and self.make_env is not None and record.get("action") is not None:
            return self.stage_env("shrinkage").unwrapped.student_for(record["action"])
        return super().student_of(record)

    def load_policy(self, path: str | Path, trust_pickle: bool = False) -> None:
        """Start from policies trained by another run (any teacher depth); the optimisers start fresh.

        The file holds weights only (``trust_pickle`` is accepted for a uniform interface and not needed)."""
        blob = self.read_policy(path, POLICY_FORMAT, ("removal",))
        try:
            self.removal_policy.load_state_dict(blob["removal"])
            if blob.get("shrinkage") is not None:
                self.shrink_policy.load_state_dict(blob["shrinkage"])
        except RuntimeError as exc:
            raise ValueError(f"the policy in {path} ({blob.get('meta')}) does not fit this agent (features "
                             f"{self.features}, hidden {self.config.hidden}, lstm_layers "
                             f"{self.config.lstm_layers}): {exc}") from exc
        self._make_optimizers()

    def _make_optimizers(self) -> None:
        self.removal_opt = torch.optim.Adam(self.removal_policy.parameters(), lr=self.config.removal_lr)
        shrink_params = [p for p in self.shrink_policy.parameters() if p.requires_grad]
        self.shrink_opt = torch.optim.Adam(shrink_params, lr=self.config.shrink_lr)

    # ------------------------------------------------------------------ resume
    def state(self) -> dict[str, Any]:
        """Everything needed to resume (torch.save-able; loads with weights_only=True)."""
        return {
            **super().state(),
            "torch_generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
            "removal_policy": self.removal_policy.state_dict(), "shrink_policy": self.shrink_policy.state_dict(),
            "removal_opt": self.removal_opt.state_dict(), "shrink_opt": self.shrink_opt.state_dict(),
            "stage": self.stage, "progress": _copy(self.progress), "best": _copy(self.best),
            "best_removal": _copy(self.best_removal), "history": _copy(self.history),
            "notes": _copy(self.notes), "budget_used": self.budget.used,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`; :meth:`run` then continues from the saved stage and epoch."""
        super().load_state(state)
        self.generator.set_state(state["torch_generator"])
        torch.set_rng_state(state["torch_rng"])
        self.removal_policy.load_state_dict(state["removal_policy"])
        self.shrink_policy.load_state_dict(state["shrink_policy"])
        self._make_optimizers()
        self.removal_opt.load_state_dict(state["removal_opt"])
        self.shrink_opt.load_state_dict(state["shrink_opt"])
        if state["stage"] not in STAGES:
            raise ValueError(f"unknown N2N stage {state['stage']!r}; expected one of {STAGES}")
        self.stage = state["stage"]
        self.progress = _copy(state["progress"])
        self.best, self.best_removal = _copy(state["best"]), _copy(state["best_removal"])
        self.history = _copy(state["history"])
        self.notes.update(_copy(state["notes"]))
        self.stage2_env = None  # rebuilt from best_removal when stage 2 runs


def _summary(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """A best-student entry without its architecture dict (for notes / summary.json)."""
    return None if entry is None else {k: v for k, v in entry.items() if k != "arch"}


def _copy(value: Any) -> Any:
    """A deep copy of plain data (dicts, lists, numbers, strings)."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(v) for v in value]
    return value


__all__ = ["N2NAgent", "N2NConfig", "RemovalPolicy", "ShrinkPolicy", "baseline_value", "compute_advantages",
           "constraint_epsilon", "constrained_reward", "misalign_actions"]
