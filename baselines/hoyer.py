"""DeepHoyer: scale-invariant sparsity regularisers, prune, fine-tune (Yang, Wen & Li, ICLR 2020).

A clean-room re-implementation of the paper ("DeepHoyer: Learning Sparser Neural Network with Differentiable
Scale-Invariant Sparsity Measures", arXiv:1908.09979) and of its reference code (github.com/yanghr/DeepHoyer),
both summarised in docs/methods.md#deephoyer; no code of the reference
repository is used. A white-box agent: for every strength in ``decays`` (the knob the paper sweeps to trace
its accuracy-vs-FLOPs curves) :meth:`HoyerAgent.run` does, starting each time from the teacher's weights:

1. **Regularised training**: CE + decay * sum_l R(W_l) over every conv and linear weight
   (:mod:`netcomp.sparsity`; Group-HS by default, or group lasso / Group-Hoyer / HS / Hoyer / L1 / TL1).
2. **Pruning** by thresholding each element: a fixed tau, or s * std per tensor.
3. **Fine-tuning with the zeros fixed** (gradient mask, fresh optimiser, no regulariser).
4. **Physical shrinking**: a channel of a coupling group is removed when it is dead (``dead_rule``), and
   the real smaller student, carrying the fine-tuned weights of the channels it keeps, is submitted to the
   env, which scores it like any episode (one evaluation per decay). The training seconds are charged.

Element-wise regularisers (``hs`` ...) make no physically smaller network unless whole channels die: the
point then reports element density and the nonzero count beside the dense params (``notes['points']``)
and says ``physical: false``; the submitted network is the teacher's architecture, which the env marks
invalid ("not fewer params than the teacher") rather than pretend it is smaller.

Resume: the state is the index of the next decay and the points so far; the runner checkpoints after each
submission, and a killed decay is trained again from the teacher (deterministic on the CPU, so the replayed
submission is the recorded one).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from agents.base import Agent
from netcomp.arch import Arch
from netcomp.checks import as_bool, as_choice, as_float, as_floats, as_int, invalid
from netcomp.data import Dataset
from netcomp.distill import OPTIMIZERS, TrainConfig, evaluate, train_students
from netcomp.metrics import count_params
from netcomp.sparsity import (
    ELEMENTWISE,
    GROUPINGS,
    PRUNE_RULES,
    REGULARIZERS,
    alive_channels,
    apply_masks,
    density,
    mask_gradients,
    penalty,
    prune_masks,
)
from netcomp.surgery import build_module, inherit_weights, keep_channels

DEAD_RULES = ("both", "inputs", "filters")
REG_PARAMS = ("auto", "weights", "all")
#: HoyerConfig.fibre_scope: the group regularisers that ``grouping: fibre`` applies to.
FIBRE_SCOPES = ("gl", "all")


@dataclass
class HoyerConfig:
    """Hyper-parameters of DeepHoyer; defaults are the reference's CIFAR schedule (``configs/hoyer.yaml``)."""

    regularizer: str = "ghs"
    """'ghs' Group-HS (the paper's structural choice), 'gl' group lasso (SSL), 'group_hoyer', or an
    element-wise one: 'hs' Hoyer-Square (the paper's element-wise choice), 'hoyer', 'l1', 'tl1'."""
    decays: list[float] = field(default_factory=lambda: [1e-4, 1e-3, 1e-2])
    """Regularisation strengths, one point (one evaluation) each. The paper's values are not in its repo
    (only the default 1e-3); it sweeps decay to trace accuracy-vs-FLOPs curves."""
    grouping: str = "whole"
    """'whole': filter and input-channel groups (the CIFAR code, the paper). 'fibre': the reference's
    ImageNet / MNIST-CNN quirk, groups summed over dim 0 / dim 1 only ((c,h,w) and (n,h,w) fibres), for the
    regularisers ``fibre_scope`` names."""
    fibre_scope: str = "gl"
    """Which group regularisers ``grouping: fibre`` changes: 'gl' (the reference's MNIST-CNN script: only
    group lasso sums fibres, Group-HS keeps whole filters and channels) or 'all' (group lasso, Group-Hoyer
    and Group-HS alike, as the ImageNet script forms every group). No effect with ``grouping: whole``."""
    reg_params: str = "auto"
    """Tensors regularised and pruned: 'weights' (every conv and linear weight, the CIFAR and structural
    code), 'all' (every trainable tensor, biases and BN included, as the MNIST element-wise script), or
    'auto': 'weights' for a structural regulariser, 'all' for an element-wise one (each as its script)."""
    prune_rule: str = "threshold"
    """'threshold': |w| < threshold -> 0, one tau for all tensors (prun_tune_T, CIFAR / ImageNet).
    'std': |w| < std_scale * std(W_l) -> 0 per tensor (prun_tune_V, the reference's MNIST choice)."""
    threshold: float = 1e-4
    """tau of the fixed-threshold rule (CIFAR / ImageNet default 1e-4; MNIST T uses 1e-3)."""
    std_scale: float = 0.25
    """s of the std rule (prun_tune_V default 0.25)."""
    prune_levels: list[float] | None = None
    """Per-point pruning levels, one per decay: tau of the 'threshold' rule or s of the 'std' rule for that
    point. None (the reference: one value per run): ``threshold`` / ``std_scale`` at every point. The smoke and
    fast presets end with a high level, so that even their few training steps leave a point whose channels die."""
    prune_bn: bool = False
    """Quirk switch, off: True also thresholds BatchNorm gammas, as the reference's CIFAR / ImageNet pruning
    hits every parameter named 'weight'."""
    dead_rule: str = "both"
    """When a channel of a coupling group is removed. 'both': its filter is zero in every producer of the
    group AND its input slice is zero in every consumer (exact: the student computes what the masked dense
    model computes). 'inputs': only every consumer's input slice is zero (exact; also drops computed but
    unused channels). 'filters': only every producer's filter is zero (the paper's dead-filter count; NOT
    exact when a bias or BatchNorm shift follows, whose constant output is dropped). A channel dead in some
    producers only is kept, its zero filters included."""
    train_epochs: float = 164.0
    """Epochs of regularised training (CIFAR README: 164)."""
    train_optimizer: str = "sgd"
    """'sgd' (momentum, CIFAR / ImageNet) or 'adam' (MNIST)."""
    train_lr: float = 0.1
    """Learning rate of regularised training (CIFAR 0.1; MNIST Adam 1e-3)."""
    train_weight_decay: float = 1e-4
    """Weight decay of regularised training (CIFAR 1e-4; MNIST element-wise 0, structural 1e-4)."""
    train_milestones: list[float] = field(default_factory=lambda: [81.0, 122.0])
    """Epochs where the lr is multiplied by ``gamma`` (CIFAR 81, 122)."""
    final_epochs: float = 164.0
    """Epochs of the masked fine-tune (CIFAR 164; MNIST T 100, V 50)."""
    final_optimizer: str = "sgd"
    """Optimiser of the fine-tune."""
    final_lr: float = 0.1
    """Learning rate of the fine-tune (CIFAR 0.1; MNIST T 1e-4, V 1e-3)."""
    final_weight_decay: float = 1e-4
    """Weight decay of the fine-tune (zeros stay zero through it)."""
    final_milestones: list[float] = field(default_factory=lambda: [81.0, 122.0])
    """Epochs where the fine-tune's lr is multiplied by ``gamma``."""
    gamma: float = 0.1
    """lr multiplier at each milestone."""
    momentum: float = 0.9
    """SGD momentum (both phases)."""
    batch_size: int = 128
    """Batch size (CIFAR 128, MNIST 100)."""
    train_max: int | None = None
    """Use only the first n training images (None = all); for fast runs."""
    max_steps: int | None = None
    """Cap on each phase's optimiser steps (None = none); for smoke runs."""
    follow_fidelity: bool = True
    """Cap both phases by the run's fidelity (its ``final`` section: smoke takes seconds; paper has no cap).
    False keeps these values at any fidelity."""
    env_train: bool = False
    """False: the env only evaluates the submitted student (the fine-tuned weights are the result). True:
    it also distils it at the fidelity before scoring."""
    fit_target: bool = True
    """Under an env ``target`` (the operating-point protocol): True raises each point's pruning level (tau, or
    s of the std rule) to the smallest one whose physically shrunk student is at or below the target, found by
    bisection; the paper has no target (its level is fixed), so False keeps the configured level, and a point
    above the target is then invalid ("over target")."""

    def __post_init__(self) -> None:
        """Coerce YAML values and reject bad ones (netcomp.checks' one format)."""
        o = "HoyerConfig"
        for name, choices in {"regularizer": REGULARIZERS, "grouping": GROUPINGS, "fibre_scope": FIBRE_SCOPES,
                              "reg_params": REG_PARAMS,
                              "prune_rule": PRUNE_RULES, "dead_rule": DEAD_RULES, "train_optimizer": OPTIMIZERS,
                              "final_optimizer": OPTIMIZERS}.items():
            setattr(self, name, as_choice(o, name, getattr(self, name), choices))
        self.decays = as_floats(o, "decays", self.decays, low=0, scalar_ok=True)
        if self.prune_levels is not None:
            self.prune_levels = as_floats(o, "prune_levels", self.prune_levels, low=0, scalar_ok=True)
            if len(self.prune_levels) != len(self.decays):
                raise invalid(o, "prune_levels", self.prune_levels, f"one level per decay ({len(self.decays)})")
        for name in ("train_epochs", "train_lr", "final_epochs", "final_lr", "gamma", "threshold", "std_scale",
                     "train_weight_decay", "final_weight_decay"):
            setattr(self, name, as_float(o, name, getattr(self, name), low=0))
        self.momentum = as_float(o, "momentum", self.momentum, low=0, high=1, high_open=True)
        self.train_milestones = as_floats(o, "train_milestones", self.train_milestones, low=0, nonempty=False)
        self.final_milestones = as_floats(o, "final_milestones", self.final_milestones, low=0, nonempty=False)
        self.batch_size = as_int(o, "batch_size", self.batch_size, 1)
        self.train_max = as_int(o, "train_max", self.train_max, 1, optional=True)
        self.max_steps = as_int(o, "max_steps", self.max_steps, 0, optional=True)
        for name in ("prune_bn", "follow_fidelity", "env_train", "fit_target"):
            setattr(self, name, as_bool(o, name, getattr(self, name)))

    @property
    def structural(self) -> bool:
        return self.regularizer not in ELEMENTWISE

    @property
    def reg_grouping(self) -> str:
        """The grouping the regulariser uses: ``grouping``, unless fibres are limited to group lasso."""
        if self.fibre_scope == "gl" and self.regularizer != "gl":
            return "whole"
        return self.grouping

    def prune_args(self, i: int, level: float | None = None) -> tuple[float, float]:
        """(threshold, std_scale) that point ``i`` prunes with: ``level`` if given (a level fitted to a target),
        else its ``prune_levels`` entry, else the run's."""
        if level is None and self.prune_levels is None:
            return self.threshold, self.std_scale
        level = self.prune_levels[i] if level is None else level
        return (level, self.std_scale) if self.prune_rule == "threshold" else (self.threshold, level)

    def prune_level(self, i: int) -> float:
        """Point ``i``'s configured level: tau of the threshold rule or s of the std rule."""
        return self.prune_args(i)[0 if self.prune_rule == "threshold" else 1]

    @property
    def tensors(self) -> str:
        """'weights' or 'all': what ``reg_params`` means for this regulariser."""
        if self.reg_params != "auto":
            return self.reg_params
        return "weights" if self.structural else "all"

    def phase(self, which: str) -> TrainConfig | None:
        """The TrainConfig of the 'train' (regularised) or 'final' (masked fine-tune) phase, labels only; None
        when the phase has 0 epochs."""
        def get(key: str) -> Any:
            return getattr(self, f"{which}_{key}")

        if get("epochs") == 0:
            return None
        return TrainConfig(epochs=get("epochs"), max_steps=self.max_steps, batch_size=self.batch_size,
                           loss="ce", optimizer=get("optimizer"), lr=get("lr"), weight_decay=get("weight_decay"),
                           momentum=self.momentum, train_max=self.train_max, eval_every_epoch=False)


# ---------------------------------------------------------------------------------------------- training
def train_phase(model: nn.Module, dataset: Dataset, config: TrainConfig, milestones: list[float], gamma: float,
                device: torch.device, seed: int, reg: Any = None, masks: dict | None = None,
                tensors: dict | None = None) -> int:
    """Train ``model`` with CE (+ ``reg()``), the lr multiplied by ``gamma`` at each milestone epoch, through
    the engine's one trainer (:func:`netcomp.distill.train_students`: its non-finite-loss check, bf16 and
    channels_last on CUDA, the dataset's augmentation). With ``masks`` the gradients of ``tensors`` are masked
    after every backward (fine-tuning with the zeros fixed). A fresh optimiser every call, so its momentum
    starts at zero. Returns the optimiser steps."""
    phase = dataclasses.replace(config, schedule="multistep", milestones=list(milestones), gamma=gamma,
                                loss="ce", eval_every_epoch=False, keep_best=False)
    extra = (lambda _model: reg()) if reg is not None else None
    after = (lambda _model: mask_gradients(tensors, masks)) if masks is not None else None
    result = train_students([model], dataset, phase, device=device, seed=seed, extra_loss=extra,
                            after_backward=after)[0]
    model.eval()
    return result.steps


def weight_tensors(model: nn.Module, arch: Arch, which: str = "weights", bn: bool = False) -> dict[str, nn.Parameter]:
    """The parameters the regulariser and the pruning act on, by name.

    'weights': every conv and linear weight (plus BN gammas with ``bn``); 'all': every trainable tensor.
    """
    if which == "all":
        return {n: p for n, p in model.named_parameters() if p.requires_grad}
    ops = ("conv", "linear", "bn") if bn else ("conv", "linear")
    return {f"{n.name}.weight": model.get_submodule(n.name).weight for n in arch.nodes if n.op in ops}


def alive_macs(model: nn.Module, arch: Arch) -> int:
    """The paper's FLOPs of a sparse model (docs/methods.md#deephoyer-measuring-sparsity): H*W*k^2*nz_in*nz_out
    per conv, nz_in*nz_out per linear, counting in every layer the input channels and filters with any nonzero
    weight. Equals the MACs of the dense teacher when nothing is zero; a lower bound of what a physically shrunk
    network costs."""
    total = 0
    for node in arch.nodes:
        if node.op not in ("conv", "linear"):
            continue
        nz_in, nz_out = alive_channels(model.get_submodule(node.name).weight)
        area = 1 if node.op == "linear" else arch.shapes[node.name][1] * arch.shapes[node.name][2] * node.kernel ** 2
        total += area * nz_in * nz_out
    return total


# ---------------------------------------------------------------------------------------------- dead channels
def _channel_any(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """Per index of ``dim``: whether any entry of the weight is nonzero."""
    nz = weight.detach() != 0
    return nz.transpose(0, dim).reshape(nz.shape[dim], -1).any(dim=1)


def _consumer_alive(model: nn.Module, arch: Arch, gid: str) -> torch.Tensor | None:
    """Per channel of group ``gid``: whether any layer reading the group uses it (None: cannot tell)."""
    group = arch.group(gid)
    members = set(group.members)
    alive = torch.zeros(group.width, dtype=torch.bool)
    for node in arch.nodes:
        if node.name in members or not any(i in members for i in node.inputs):
            continue
        readers = [node]
        hw = 1
        if node.op == "flatten":  # a flatten with a spatial map: each channel is hw consecutive features
            shape = arch.shapes[node.inputs[0]]
            hw = shape[1] * shape[2]
            readers = [arch.node(c) for c in arch.consumers[node.name]]
        for reader in readers:
            if reader.op not in ("conv", "linear") or reader.depthwise or (reader.op == "conv" and reader.groups != 1):
                return None
            w = model.get_submodule(reader.name).weight.detach()
            if hw > 1:
                w = w.reshape(w.shape[0], group.width, hw)
            alive |= _channel_any(w, 1).cpu()
    return alive


def dead_channels(model: nn.Module, arch: Arch, gid: str, rule: str = "both") -> list[int]:
    """The channels of coupling group ``gid`` that ``rule`` (see ``HoyerConfig.dead_rule``) removes."""
    group = arch.group(gid)
    filters_alive = torch.zeros(group.width, dtype=torch.bool)
    for name in group.producers:
        filters_alive |= _channel_any(model.get_submodule(name).weight, 0).cpu()
    if rule == "filters":
        dead = ~filters_alive
    else:
        inputs_alive = _consumer_alive(model, arch, gid)
        if inputs_alive is None:
            return []
        dead = ~inputs_alive if rule == "inputs" else ~inputs_alive & ~filters_alive
    return [int(i) for i in torch.nonzero(dead).flatten()]


def shrink(model: nn.Module, arch: Arch, rule: str = "both") -> tuple[Arch, nn.Module, dict[str, int]]:
    """The physically smaller student without the dead channels, its module holding ``model``'s weights of
    the kept channels, and the number of channels removed per group. A group whose every channel is dead
    keeps one (the network's output no longer depends on it)."""
    keep, removed = {}, {}
    for group in arch.groups:
        if not group.shrinkable or any(arch.node(p).groups != 1 for p in group.producers):
            continue  # grouped producers keep equal counts per conv group: left whole
        dead = set(dead_channels(model, arch, group.gid, rule))
        if len(dead) == group.width:
            dead.discard(0)
        if dead:
            keep[group.gid] = [c for c in range(group.width) if c not in dead]
            removed[group.gid] = len(dead)
    student = keep_channels(arch, keep) if keep else arch
    module = build_module(student)
    inherit_weights(module, student, model, arch, mode="indices", bn_stats=True)
    return student, module.eval(), removed


# ---------------------------------------------------------------------------------------------- the agent
class HoyerAgent(Agent):
    """DeepHoyer on the channel-ratio space: one regularise / prune / fine-tune / shrink point per decay."""

    name = "hoyer"
    kind = "whitebox"
    spaces = ("channel-ratio",)
    modes = ("oneshot",)
    extendable = False
    Config = HoyerConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.next = 0
        self.notes["points"] = []
        self.best_reward: float | None = None


    def run(self) -> None:
        while self.next < len(self.config.decays) and not self.budget.exhausted:
            self.run_point(self.next)
            self.next += 1
            self.checkpoint()

    def phase(self, which: str) -> TrainConfig | None:
        """A phase's TrainConfig, capped by the fidelity's ``final`` section when ``follow_fidelity``."""
        asked = self.config.phase(which)
        if asked is None or not self.config.follow_fidelity:
            return asked
        return self.env.unwrapped.evaluator.fidelity.final_config(asked)

    def run_point(self, i: int) -> dict[str, Any]:
        """Regularise with decays[i], prune, fine-tune, shrink, submit; the point's facts (also in notes)."""
        cfg, base = self.config, self.env.unwrapped
        ev, decay = base.evaluator, cfg.decays[i]
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1000 + i)
            model = copy.deepcopy(ev.teacher.model).to(ev.device)
            tensors = weight_tensors(model, base.arch, cfg.tensors)
            reg = (lambda: decay * penalty(tensors.values(), cfg.regularizer, cfg.reg_grouping)) if decay > 0 else None
            train = self.phase("train")
            if train is not None:
                train_phase(model, ev.dataset, train, cfg.train_milestones, cfg.gamma, ev.device, self.seed + i,
                            reg=reg)
            pruned = weight_tensors(model, base.arch, cfg.tensors, bn=cfg.prune_bn)
            level = self.level_for_target(model, i) if base.target and cfg.fit_target else cfg.prune_level(i)
            masks = prune_masks(pruned, cfg.prune_rule, *cfg.prune_args(i, level))
            apply_masks(pruned, masks)
            ft = self.phase("final")
            if ft is not None:
                train_phase(model, ev.dataset, ft, cfg.final_milestones, cfg.gamma, ev.device, self.seed + i,
                            masks=masks, tensors=pruned)
            student, module, removed = shrink(model.cpu(), base.arch, cfg.dead_rule)
        seconds = time.perf_counter() - start
        self.charge(seconds)
        point = {**self.describe(i, model, student, removed, seconds), "prune_level": level}
        facts = {k: point[k] for k in ("decay", "regularizer", "prune_level", "density", "nonzeros",
                                       "pruned_total", "dense_params", "physical", "note")}
        reward, info = self.submit(student, module.state_dict(), train=cfg.env_train, facts=facts)
        point.update({"index": self.env.records[-1]["index"], "reward": reward, "valid": info["valid"],
                      "accuracy": info["accuracy"], "params": info["params"], "macs": info["macs"],
                      "invalid_reason": info.get("invalid_reason")})
        point["test_accuracy"] = self.test_accuracy(module) if info["valid"] else None  # no pass for invalid ones
        self.notes["points"].append(point)
        self.keep_best(point, student, module)
        return point

    def level_for_target(self, model: nn.Module, i: int, tolerance: float = 1e-3) -> float:
        """The smallest pruning level at or above point ``i``'s whose shrunk student is within the env's target.

        A higher level zeroes more weights, so more channels die and the student only shrinks: the level is
        doubled until the student fits, then bisected between the last level that did not fit and the first
        that did, to a relative ``tolerance``. A level above which every weight is pruned ends the doubling:
        the student of that level is returned as it is, and the env says why it is invalid. Each trial
        prunes a copy of ``model``."""
        cfg, base = self.config, self.env.unwrapped
        model = copy.deepcopy(model).cpu()

        def fits(level: float) -> bool:
            trial = copy.deepcopy(model)
            tensors = weight_tensors(trial, base.arch, cfg.tensors, bn=cfg.prune_bn)
            apply_masks(tensors, prune_masks(tensors, cfg.prune_rule, *cfg.prune_args(i, level)))
            return base.evaluator.target_problem(shrink(trial, base.arch, cfg.dead_rule)[0]) is None

        low = cfg.prune_level(i)
        if fits(low):
            return low
        everything = self.level_pruning_everything(model)
        high = max(low, 1e-12) * 2
        while not fits(high):
            if high > everything:
                return high
            low, high = high, high * 2
        while high - low > tolerance * high:
            middle = (low + high) / 2
            low, high = (low, middle) if fits(middle) else (middle, high)
        return high

    def level_pruning_everything(self, model: nn.Module) -> float:
        """A level at which every pruned weight is zeroed: the largest |w| (threshold rule), or the largest
        |w| / std(w) of a tensor (std rule)."""
        cfg, arch = self.config, self.env.unwrapped.arch
        tensors = [w.detach().float() for w in weight_tensors(model, arch, cfg.tensors, bn=cfg.prune_bn).values()]
        if cfg.prune_rule == "threshold":
            return max(float(w.abs().max()) for w in tensors)
        return max(float(w.abs().max() / w.std()) for w in tensors if w.numel() > 1 and float(w.std()) > 0)

    def describe(self, i: int, model: nn.Module, student: Arch, removed: dict[str, int],
                 seconds: float) -> dict[str, Any]:
        """Sparsity facts of a pruned, fine-tuned model: density, nonzeros, alive channels per layer."""
        cfg, arch = self.config, self.env.unwrapped.arch
        tensors = weight_tensors(model, arch, cfg.tensors, bn=cfg.prune_bn)
        nonzeros, total = density(tensors.values())
        layers = {n.name: alive_channels(model.get_submodule(n.name).weight) for n in arch.nodes
                  if n.op in ("conv", "linear")}
        physical = student is not arch
        return {
            "decay": cfg.decays[i], "regularizer": cfg.regularizer, "structural": cfg.structural,
            "nonzeros": nonzeros, "pruned_total": total, "density": nonzeros / max(1, total),
            "dense_params": count_params(arch), "student_params": count_params(student),
            "alive_macs": alive_macs(model, arch),
            "alive": {k: {"in": v[0], "out": v[1]} for k, v in layers.items()},
            "removed_channels": removed, "physical": physical, "train_seconds": seconds,
            "note": None if physical else "no channel died: no physically smaller network was made; the "
                                           "sparsity is element-wise only (density, nonzeros)",
        }

    def test_accuracy(self, module: nn.Module) -> float:
        """The submitted student's accuracy on the TEST split (capped like the final training's report)."""
        ev = self.env.unwrapped.evaluator
        cap = (ev.fidelity.final or {}).get("eval_max") if self.config.follow_fidelity else None
        return float(evaluate(module, ev.dataset.test, ev.dataset, device=ev.device, max_items=cap)[0])

    def keep_best(self, point: dict[str, Any], student: Arch, module: nn.Module) -> None:
        """Save the best valid submitted student with its fine-tuned weights (``best_student.pt``)."""
        if not point["valid"] or (self.best_reward is not None and point["reward"] <= self.best_reward):
            return
        self.best_reward = point["reward"]
        self.keep_final(student, module, {
            "index": point["index"], "reward": point["reward"], "val_accuracy": point["accuracy"],
            "test_accuracy": point["test_accuracy"], "params": point["params"], "macs": point["macs"],
            "decay": point["decay"]})

    def state(self) -> dict[str, Any]:
        return {**super().state(), "next": self.next, "notes": copy.deepcopy(self.notes),
                "best_reward": self.best_reward}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.next, self.notes, self.best_reward = int(state["next"]), dict(state["notes"]), state["best_reward"]
