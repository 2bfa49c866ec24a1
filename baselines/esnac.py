"""ESNAC (Cao, Wang, Kitani, ICLR 2019): Bayesian optimisation of compressed architectures in a learned embedding.

A clean-room re-implementation of the paper ("Learnable Embedding Space for Efficient Neural Architecture
Compression", arXiv:1902.00383) and of its reference code (github.com/Friedrich1006/ESNAC), both summarised in
docs/methods.md#esnac; no code of the reference repository is used. Each search step:
1. builds K fresh kernels; kernel k embeds architectures with a bi-LSTM over their ESNAC descriptor (mean-pooled,
   L2-normalised; :class:`Embedding`), puts an RBF kernel on the embeddings (lengthscale^2 = alpha, fixed noise
   beta; :class:`EmbeddingGP`, a GPyTorch exact GP) and learns the LSTM on a Bernoulli(0.5) subsample of the
   evaluated students plus the teacher (reward 0) by the leave-one-out predictive log-likelihood
   (GPyTorch's ``LeaveOneOutPseudoLikelihood``, ESNAC's objective) with Adam and ESNAC's stopping rule;
2. each kernel proposes the candidate with the highest Expected Improvement among ``candidates`` students drawn
   from the space's sampler (the edit space: ESNAC's sampler on the teacher);
3. the K proposals are evaluated together (``evaluate_many``: trained on shared batches).
After the budget, the top ``top_k`` students by search reward are trained fully (the run's final training) and
the best by validation f (``select_on: val``; ``test`` reproduces the reference's test-set selection) is kept.
The kernel works on students, not actions, so the agent also runs on the removal and shrinkage spaces.
Transfer (the paper's claim; the reference code has none: docs/methods.md#esnac-transfer): ``policy.pt`` holds an
embedding fitted on every evaluation; ``--load-policy`` reuses it for another teacher with no fitting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import gpytorch
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agents.base import Agent, one_torch_thread
from envs.base import discrete_action_key
from netcomp.arch import ESNAC_BASE, ESNAC_MAX_LAYERS, Arch, esnac_descriptor
from netcomp.checks import as_bool, as_choice, as_float, as_int, invalid
from netcomp.data import Dataset, Split
from netcomp.distill import TrainConfig, evaluate
from netcomp.rewards import n2n_reward

#: Version of the files written by :meth:`ESNACAgent.save_policy`.
POLICY_FORMAT = 1
SELECT_ON = ("val", "test")
#: ESNACConfig.final_recipe: the held-out full training (default) or the reference code's (docs/deviations.md#esnac).
FINAL_RECIPES = ("heldout", "reference")


# ---------------------------------------------------------------------------------------------- config
@dataclass
class ESNACConfig:
    """Hyper-parameters of ESNAC; defaults are the reference code's ``options.py`` (``configs/esnac.yaml``)."""

    kernels: int = 8
    """co_kernel_n: kernels per step, each proposing one student (a step asks for this many evaluations)."""
    candidates: int = 1000
    """ac_search_n: random candidates scored by each kernel's Expected Improvement."""
    subsample: float = 0.5
    """co_gamma: each evaluated student is in a kernel's training set with this probability."""
    alpha: float = 0.01
    """ke_alpha: RBF k = exp(-|e - e'|^2 / (2 alpha)) on unit-norm embeddings (GPyTorch lengthscale sqrt(alpha))."""
    beta: float = 0.05
    """ke_beta: GP noise added to the Gram diagonal (and to the predictive variance)."""
    hidden_size: int = 64
    """ke_hidden_size: LSTM hidden units per direction."""
    num_layers: int = 4
    """ke_num_layers: stacked bi-LSTM layers."""
    lr: float = 1e-3
    """ke_lr: Adam learning rate of the embedding."""
    weight_decay: float = 5e-4
    """ke_weight_decay: Adam weight decay of the embedding."""
    max_fit_steps: int = 100
    """At most this many Adam steps per kernel fit."""
    ma_weight: float = 0.5
    """co_alpha: moving average ma_j = w * ll_j + (1 - w) * ma_{j-1} of the LOO log-likelihood."""
    tolerance: float = 1e-3
    """co_beta: a fit stops when j > min_fit_steps and |ma_j - ll_j| < tolerance."""
    min_fit_steps: int = 5
    """The stopping rule is only checked after this many steps (the reference: j > 5)."""
    max_layers: int = ESNAC_MAX_LAYERS
    """ar_max_layers: length of the edge one-hots (the reference: 128; 384 fits every zoo model)."""
    warm_start: bool = False
    """False (the reference): kernels are new random LSTMs every step; True: each starts from the last fit."""
    top_k: int = 4
    """co_best_n: students (best search reward) trained fully at the end; 0 skips the full training."""
    select_on: str = "val"
    """Which split picks the final student among the top_k: "val" (default) or "test" (the reference's leak)."""
    final_epochs: float = 300
    """tr_fu: full-training epochs (capped by the run's fidelity ``final`` section)."""
    final_lr: float = 0.01
    """tr_fu: SGD learning rate (momentum 0.9, weight decay 5e-4)."""
    final_step_epochs: int = 100
    """tr_fu: the learning rate is multiplied by 0.1 every this many epochs."""
    final_train_max: int | None = None
    """Use only the first N training images in the full training (None: all)."""
    final_recipe: str = "heldout"
    """"heldout" (default): the full training uses the training images without the validation split (45,000 on
    CIFAR) and submits its last epoch, so the validation f that picks the final student is clean. "reference"
    (the reference code's tr_fu): the full training set (training and validation images, 50,000 on CIFAR), the
    best TEST epoch kept; it needs ``select_on: test``, as the validation images were trained on."""
    gp_invalid: bool = True
    """True (default): invalid students (broken shapes, not smaller) are GP observations with the env's penalty
    reward (-1 under the ``n2n`` reward), so the kernels learn to avoid them; False leaves them out. The
    reference has no invalid students (its candidates are built to be valid)."""
    fresh_candidates: bool = True
    """True (default): a kernel's candidates exclude students already evaluated in the run or proposed by another
    kernel of the same step (compared by their ESNAC representation), unless no other candidate is left. False
    (the reference) scores every drawn candidate. On a finite space (removal: 2^9 block subsets) the reference's
    rule made all K kernels of a step propose the same student (the farthest from the teacher), spending K
    evaluations on one; in the reference's continuous edit space repeats have probability zero."""

    def __post_init__(self) -> None:
        """Coerce YAML values and reject bad ones (netcomp.checks' one format)."""
        o = "ESNACConfig"
        self.select_on = as_choice(o, "select_on", self.select_on, SELECT_ON)
        self.final_recipe = as_choice(o, "final_recipe", self.final_recipe, FINAL_RECIPES)
        if self.final_recipe == "reference" and self.select_on != "test":
            raise invalid(o, "select_on", self.select_on, "'test' with final_recipe 'reference' (its full "
                          "training uses the validation images)")
        for name in ("kernels", "candidates", "hidden_size", "num_layers", "max_layers", "max_fit_steps"):
            setattr(self, name, as_int(o, name, getattr(self, name), 1))
        self.min_fit_steps = as_int(o, "min_fit_steps", self.min_fit_steps, 0)
        self.top_k = as_int(o, "top_k", self.top_k, 0)
        self.subsample = as_float(o, "subsample", self.subsample, low=0, high=1, low_open=True)
        for name in ("alpha", "beta", "final_epochs", "final_lr"):
            setattr(self, name, as_float(o, name, getattr(self, name), low=0, low_open=True))
        self.lr = as_float(o, "lr", self.lr, low=0)  # 0: a frozen embedding
        self.weight_decay = as_float(o, "weight_decay", self.weight_decay, low=0)
        self.ma_weight = as_float(o, "ma_weight", self.ma_weight, low=0, high=1)
        self.tolerance = as_float(o, "tolerance", self.tolerance, low=0)
        self.final_step_epochs = as_int(o, "final_step_epochs", self.final_step_epochs, 1)
        self.final_train_max = as_int(o, "final_train_max", self.final_train_max, 1, optional=True)
        self.warm_start = as_bool(o, "warm_start", self.warm_start)
        self.gp_invalid = as_bool(o, "gp_invalid", self.gp_invalid)
        self.fresh_candidates = as_bool(o, "fresh_candidates", self.fresh_candidates)


# ---------------------------------------------------------------------------------------------- the model
class Embedding(nn.Module):
    """ESNAC's architecture embedding: a bi-LSTM over the node sequence, mean-pooled, L2-normalised."""

    def __init__(self, max_layers: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(ESNAC_BASE + 2 * max_layers, hidden_size, num_layers, batch_first=True,
                            bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, n, 16 + 2 max_layers) descriptors -> (N, 2 hidden) unit vectors."""
        out, _ = self.lstm(x)
        return F.normalize(out.mean(dim=1), dim=-1)


class EmbeddingGP(gpytorch.models.ExactGP):
    """Zero-mean exact GP with an RBF kernel on learned embeddings (ESNAC's kernel; deep-kernel GP).

    GPyTorch concatenates training and test inputs along dim -2, so sequences travel flattened as
    (N, n * width) and are reshaped here.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, embedding: Embedding, alpha: float, beta: float) -> None:
        likelihood = gpytorch.likelihoods.GaussianLikelihood(noise_constraint=gpytorch.constraints.GreaterThan(1e-8))
        likelihood.noise = beta
        likelihood.raw_noise.requires_grad_(False)
        self.width = x.shape[-1]
        super().__init__(x.flatten(1), y, likelihood)
        self.embedding = embedding
        self.mean_module = gpytorch.means.ZeroMean()
        self.covar_module = gpytorch.kernels.RBFKernel()
        self.covar_module.lengthscale = math.sqrt(alpha)
        self.covar_module.raw_lengthscale.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        z = self.embedding(x.reshape(x.shape[0], -1, self.width))
        return gpytorch.distributions.MultivariateNormal(self.mean_module(z), self.covar_module(z))

    def loo_loglik(self) -> torch.Tensor:
        """ESNAC's objective: mean over i of log N(y_i | mu_-i, sigma_-i^2), the GP refitted without point i."""
        mll = gpytorch.mlls.LeaveOneOutPseudoLikelihood(self.likelihood, self)
        x, y = self.train_inputs[0], self.train_targets
        return mll(self(x), y)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictive mean and standard deviation of y (the noise beta included, as ESNAC's sigma)."""
        self.eval()
        means, stds = [], []
        with gpytorch.settings.fast_pred_var(False):
            for part in x.split(chunk):
                pred = self.likelihood(self(part.flatten(1)))
                means.append(pred.mean)
                stds.append(pred.variance.clamp_min(1e-12).sqrt())
        return torch.cat(means), torch.cat(stds)


def expected_improvement(mean: torch.Tensor, std: torch.Tensor, best: float) -> torch.Tensor:
    """EI = (mu - y+) Phi(z) + sigma phi(z), z = (mu - y+) / sigma (maximisation; ESNAC's acquisition).

    BoTorch's analytic EI would use the noise-free posterior of f; ESNAC's sigma includes the noise, so the
    formula is applied to GPyTorch's predictive distribution directly.
    """
    normal = torch.distributions.Normal(0.0, 1.0)
    z = (mean - best) / std
    return (mean - best) * normal.cdf(z) + std * torch.exp(normal.log_prob(z))


def fit_embedding(gp: EmbeddingGP, config: ESNACConfig) -> dict[str, Any]:
    """Learn the embedding by ESNAC's LOO objective and stopping rule; returns {steps, loglik}.

    At most ``max_fit_steps`` Adam steps; with fewer than 2 points nothing is fitted. ll_j is the LOO
    log-likelihood before step j, ma_j = w ll_j + (1 - w) ma_{j-1} (ma_{-1} = 0); the fit stops when
    j > min_fit_steps and |ma_j - ll_j| < tolerance.
    """
    if len(gp.train_targets) < 2:
        return {"steps": 0, "loglik": None}
    gp.train()
    optimizer = torch.optim.Adam(gp.embedding.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    ma, ll, steps = 0.0, None, 0
    for j in range(config.max_fit_steps):
        optimizer.zero_grad()
        loglik = gp.loo_loglik()
        ll = float(loglik.detach())
        ma = config.ma_weight * ll + (1.0 - config.ma_weight) * ma
        if j > config.min_fit_steps and abs(ma - ll) < config.tolerance:
            break
        (-loglik).backward()
        optimizer.step()
        steps += 1
    return {"steps": steps, "loglik": ll}


def unseen(actions: list[Any], descriptors: list[np.ndarray], seen: Sequence[np.ndarray],
           ) -> tuple[list[Any], list[np.ndarray]]:
    """The candidates whose representation is not in ``seen`` (all of them if none is new)."""
    known = {d.tobytes() for d in seen}
    fresh = [i for i, d in enumerate(descriptors) if d.tobytes() not in known]
    if not fresh:
        return actions, descriptors
    return [actions[i] for i in fresh], [descriptors[i] for i in fresh]


class DescriptorMemo:
    """Representations of the actions of a discrete action space, stored sparse (a ResNet-20 descriptor is
    64 x 784 floats, almost all zero) and returned exactly; a continuous space stores nothing (no action
    repeats). At most ``capacity`` actions are kept (a ResNet-20 entry is about 3 KB)."""

    def __init__(self, space: Any, capacity: int = 8192) -> None:
        self.space = space
        self.capacity = capacity
        self.entries: dict[bytes, tuple[tuple[int, ...], np.dtype, np.ndarray, np.ndarray]] = {}

    def key(self, action: Any) -> bytes | None:
        """The action's identity (None on a continuous space)."""
        return discrete_action_key(self.space, action)

    def get(self, key: bytes | None) -> np.ndarray | None:
        """A new array equal to the remembered representation (None when the action is not remembered)."""
        entry = self.entries.get(key) if key is not None else None
        if entry is None:
            return None
        shape, dtype, where, values = entry
        d = np.zeros(shape, dtype)
        d.reshape(-1)[where] = values
        return d

    def put(self, key: bytes | None, descriptor: np.ndarray) -> None:
        """Remember ``descriptor`` for the action ``key`` (nothing on a continuous space or when full)."""
        if key is None or len(self.entries) >= self.capacity:
            return
        flat = descriptor.reshape(-1)
        where = np.flatnonzero(flat).astype(np.int32)
        self.entries[key] = (descriptor.shape, descriptor.dtype, where, flat[where].copy())


# ---------------------------------------------------------------------------------------------- the agent
class ESNACAgent(Agent):
    """ESNAC's multiple-kernel Bayesian optimisation; see the module docstring."""

    has_policy = True
    name = "esnac"
    kind = "blackbox"
    spaces = ("edit", "removal", "shrinkage")
    modes = ("oneshot",)
    Config = ESNACConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.steps_done = 0
        self.loaded_embedding: dict[str, torch.Tensor] | None = None
        self.last_embedding: dict[str, torch.Tensor] | None = None
        self.final_embedding: dict[str, torch.Tensor] | None = None
        self.fits: list[dict[str, Any]] = []
        self._descriptors: dict[int, np.ndarray] = {}  # record index -> descriptor (students do not change)
        self._memo = DescriptorMemo(self.env.action_space)
        base = self.env.unwrapped
        self.teacher_descriptor = esnac_descriptor(base.arch, None, self.config.max_layers)

    # ------------------------------------------------------------------ search
    def run(self) -> None:
        while not self.budget.exhausted:
            self.final_embedding = None  # new evaluations (an extended run too): refit the transferable one
            self.search_step()
            self.checkpoint()
        if self.final_embedding is None:
            self.final_embedding = self.fit_final_embedding()
            self.checkpoint()
        if self.config.top_k > 0 and "final" not in self.notes:
            self.full_training()


    def search_step(self) -> list[tuple[float, dict]]:
        """One BO step: K kernels, one proposal each, evaluated together."""
        k = self.config.kernels if self.budget.evaluations is None else min(self.config.kernels, self.budget.left)
        proposals: list[Any] = []
        taken: list[np.ndarray] = []
        for _ in range(k):
            action, descriptor = self.propose_with_descriptor(taken)
            proposals.append(action)
            taken.append(descriptor)
        results = self.evaluate_many(proposals)
        self.steps_done += 1
        return results

    def history(self) -> tuple[list[np.ndarray], list[float]]:
        """Descriptors and rewards of this space's evaluated students (the run's records), teacher first."""
        xs, ys = [self.teacher_descriptor], [0.0]
        space = self.env.unwrapped.space
        for record in self.env.records:
            if not (self.config.gp_invalid or record["valid"]):
                continue
            if record.get("space") == space and record.get("action") is not None:
                if record["index"] not in self._descriptors:
                    self._descriptors[record["index"]] = self.action_descriptor(record["action"])
                xs.append(self._descriptors[record["index"]])
                ys.append(float(record["reward"]))
        return xs, ys

    def descriptor(self, student: Arch) -> np.ndarray:
        return esnac_descriptor(self.env.unwrapped.arch, student, self.config.max_layers)

    def action_descriptor(self, action: Any) -> np.ndarray:
        """The representation of an action's student: straight from the action where the space offers it
        (the edit space: no network built, as ESNAC's ``Architecture.comp_rep`` does;
        docs/methods.md#esnac-search-space-and-sampler), else from the built student. On a discrete action
        space (removal's bits) it is remembered per action: the candidates of every kernel are drawn from the
        same few hundred actions, and building their students was 40% of a step on the block-removal table."""
        key = self._memo.key(action)
        known = self._memo.get(key)
        if known is not None:
            return known
        base = self.env.unwrapped
        fast = getattr(base, "descriptor_of_action", None)
        d = fast(action, self.config.max_layers) if fast is not None else None
        d = d if d is not None else self.descriptor(base.student_for(action))
        self._memo.put(key, d)
        return d

    def make_gp(self, xs: Sequence[np.ndarray], ys: Sequence[float]) -> EmbeddingGP:
        """A fresh kernel on (xs, ys): a new random LSTM (seeded from the agent's RNG), the last or the loaded one."""
        cfg = self.config
        seed = int(self.rng.integers(2**31 - 1))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            embedding = Embedding(cfg.max_layers, cfg.hidden_size, cfg.num_layers)
        start = self.loaded_embedding or (self.last_embedding if cfg.warm_start else None)
        if start is not None:
            embedding.load_state_dict(start)
        x = torch.as_tensor(np.stack(xs))
        y = torch.as_tensor(np.asarray(ys, np.float32))
        return EmbeddingGP(x, y, embedding, cfg.alpha, cfg.beta)

    def propose(self, taken: Sequence[np.ndarray] = ()) -> Any:
        """One kernel's proposal: see :meth:`propose_with_descriptor`."""
        return self.propose_with_descriptor(taken)[0]

    def propose_with_descriptor(self, taken: Sequence[np.ndarray] = ()) -> tuple[Any, np.ndarray]:
        """One kernel: subsample, fit (unless an embedding was loaded), return the argmax-EI candidate and its
        representation (under an operating-point target, the argmax over the feasible candidates; with
        ``fresh_candidates``, over those not yet evaluated nor in ``taken``, the representations this step's
        other kernels proposed)."""
        cfg = self.config
        xs, ys = self.history()
        keep = [0] + [i for i in range(1, len(xs)) if self.rng.random() < cfg.subsample]
        gp = self.make_gp([xs[i] for i in keep], [ys[i] for i in keep])
        with one_torch_thread():
            fit = {"steps": 0, "loglik": None} if self.loaded_embedding is not None else fit_embedding(gp, cfg)
        self.fits.append({"step": self.steps_done, "points": len(keep), **fit})
        self.last_embedding = {k: v.detach().clone() for k, v in gp.embedding.state_dict().items()}
        env = self.env.unwrapped
        actions = [env.sample_action(self.rng) for _ in range(cfg.candidates)]
        if env.target is not None:  # under an operating-point target only feasible candidates (all if none is)
            actions = [a for a in actions if env.within_target(a)] or actions
        descriptors = [self.action_descriptor(a) for a in actions]
        if cfg.fresh_candidates:
            actions, descriptors = unseen(actions, descriptors, [*xs, *taken])
        x = torch.as_tensor(np.stack(descriptors))
        with one_torch_thread():
            mean, std = gp.predict(x)
        ei = expected_improvement(mean, std, max(ys[i] for i in keep))
        best = int(torch.argmax(ei))
        return actions[best], descriptors[best]

    def fit_final_embedding(self) -> dict[str, torch.Tensor]:
        """The embedding to transfer: one kernel fitted on every evaluation (or the loaded one, unchanged)."""
        if self.loaded_embedding is not None:
            return self.loaded_embedding
        xs, ys = self.history()
        gp = self.make_gp(xs, ys)
        with one_torch_thread():
            self.notes["final_embedding_fit"] = {"points": len(ys), **fit_embedding(gp, self.config)}
        return {k: v.detach().clone() for k, v in gp.embedding.state_dict().items()}

    # ------------------------------------------------------------------ selection and full training
    def full_training_config(self) -> TrainConfig:
        """ESNAC's full training (tr_fu): CE, SGD 0.01 momentum 0.9 wd 5e-4, step x0.1 every 100 epochs."""
        cfg = self.config
        return TrainConfig(epochs=cfg.final_epochs, loss="ce", optimizer="sgd", lr=cfg.final_lr, momentum=0.9,
                           weight_decay=5e-4, schedule="step", step_epochs=cfg.final_step_epochs, gamma=0.1,
                           train_max=cfg.final_train_max, eval_every_epoch=False)

    def full_training(self) -> dict[str, Any]:
        """Train the top_k students fully, keep the best by ``select_on`` f, save it; sets ``notes['final']``.

        The search keeps no trained weights, so each starts from its inherited weights (the reference continues
        from the search-trained ones). f after full training = C(2 - C) acc / teacher acc, the teacher scored on
        the same images as the student (:meth:`final_f`).
        """
        best_of: dict[str, dict] = {}  # one record per student, the best first
        for r in sorted(self.env.records, key=lambda r: -r["reward"]):
            if r["valid"]:
                best_of.setdefault(r["arch_key"], r)
        top = list(best_of.values())[: self.config.top_k]
        if not top:
            self.notes["final"] = {"skipped": "no valid student was found"}
            return self.notes["final"]
        trained = []
        for record in top:
            arch = self.student_of(record)
            model, report = self.train_full(arch)
            f = self.final_f(report)
            trained.append((f[self.config.select_on], record, arch, model, {**report, "f_val": f["val"],
                                                                            "f_test": f["test"]}))
        _, record, arch, model, report = max(trained, key=lambda t: t[0])
        final = {**report, "index": record["index"], "search_reward": record["reward"], "select_on":
                 self.config.select_on, "final_recipe": self.config.final_recipe, "candidates": [
                     {"index": t[1]["index"], **{k: t[4][k] for k in (
                         "val_accuracy", "test_accuracy", "f_val", "f_test", "params")}} for t in trained]}
        return self.keep_final(arch, model, final)

    def train_full(self, arch: Arch) -> tuple[nn.Module, dict[str, Any]]:
        """One student's full training by ``final_recipe`` (capped by the run's fidelity): (model, report)."""
        if self.config.final_recipe == "heldout":
            return self.train_kept(arch, self.full_training_config())
        ev = self.env.unwrapped.evaluator
        config = ev.fidelity.final_config(replace(self.full_training_config(), keep_best=True))
        # scores test (its "val" here) as usual
        model, report = ev.train_final(arch, config, seed=self.seed, data=with_validation_trained(ev.dataset),
                                       test_max=config.eval_max)
        return model, {**report, "val_accuracy": None}

    def final_f(self, report: dict[str, Any]) -> dict[str, float | None]:
        """f = C(2 - C) acc / teacher acc after full training, per split: the teacher on the same images (the
        student's validation accuracy is on the final training's first ``eval_max`` validation images); None
        for the validation split when the full training used it."""
        c = report["compression"]
        f_test = n2n_reward(c, report["test_accuracy"], report["teacher_test_accuracy"])
        if report["val_accuracy"] is None:
            return {"val": None, "test": f_test}
        ev = self.env.unwrapped.evaluator
        teacher_val = evaluate(ev.teacher_model, ev.dataset.val, ev.dataset, device=ev.device,
                               max_items=report["final_train"]["eval_max"])[0]
        return {"val": n2n_reward(c, report["val_accuracy"], teacher_val), "test": f_test}

    # ------------------------------------------------------------------ state and transfer
    def state(self) -> dict[str, Any]:
        return {**super().state(), "steps_done": self.steps_done, "last_embedding": self.last_embedding,
                "final_embedding": self.final_embedding}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.steps_done = int(state["steps_done"])
        self.last_embedding = state.get("last_embedding")
        self.final_embedding = state.get("final_embedding")

    def save_policy(self, path: str | Path) -> None:
        """The transferable embedding (weights only) and the settings it needs."""
        embedding = self.final_embedding or self.fit_final_embedding()
        cfg = self.config
        self.write_policy(path, POLICY_FORMAT, {"embedding": embedding}, {
            "max_layers": cfg.max_layers, "hidden_size": cfg.hidden_size, "num_layers": cfg.num_layers,
            "teacher": str(self.env.unwrapped.arch.family), "config": asdict(cfg)})

    def load_policy(self, path: str | Path, trust_pickle: bool = False) -> None:
        """Reuse a saved embedding for every kernel, with no fitting (ESNAC's transfer, docs/methods.md#esnac-transfer).

        ``trust_pickle`` is accepted for the common interface; the file is always read with weights_only=True.
        """
        blob = self.read_policy(path, POLICY_FORMAT, ("embedding",))
        meta, cfg = blob.get("meta") or {}, self.config
        for key in ("max_layers", "hidden_size", "num_layers"):
            if key not in meta:
                raise ValueError(f"{path} does not say the {key} its embedding was trained with")
            if int(meta[key]) != int(getattr(cfg, key)):
                raise ValueError(f"{path} was trained with {key}={meta[key]}, this run has {getattr(cfg, key)}; "
                                 f"set {key}: {meta[key]} in the agent config")
        self.loaded_embedding = blob["embedding"]


def with_validation_trained(data: Dataset) -> Dataset:
    """The data of ESNAC's reference full training: the training images with the validation images appended
    (the full official training set), and the test split in the validation slot, so that the best epoch kept
    (``keep_best``) is the best TEST epoch, as the reference code keeps it."""
    train = Split(torch.cat([data.train.x, data.val.x]), torch.cat([data.train.y, data.val.y]))
    return replace(data, train=train, val=data.test)
