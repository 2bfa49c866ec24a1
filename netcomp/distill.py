"""One trainer for knowledge distillation and fine-tuning: the hot path of every reward.

Every method in the project ends a candidate's life the same way: train the compressed student for a
little while (distilling from the teacher, or plain fine-tuning) and read its validation accuracy. This
module does that for *several students at once*: N2N trains its children and ESNAC its batch of students on
the same mini-batches, so :func:`train_students` draws one batch stream from the training split, runs the
teacher once per batch and shares its logits with every student.

Design points
- Speed on CUDA: bf16 autocast (no GradScaler, bf16 needs none), channels-last models and inputs,
  fused optimisers, and no host synchronisation inside the step loop. Per-step losses stay on the device
  and are read in one transfer every :data:`CUDA_CHECK_EVERY` steps and at the end of each epoch.
- Robustness: a student whose loss becomes NaN/inf is marked invalid (with the exact step) and dropped;
  the others carry on. Nothing raises for a diverging student, since a reward must always be computable.
- Reproducibility: ``seed`` seeds torch and the loader, so on CPU two identical calls are bit-identical.
- Fidelity knobs (``max_steps``, ``train_max``, ``eval_max``, fractional ``epochs``) let the same code
  path serve a one-step smoke test and a full fine-tune.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from netcomp.checks import as_bool, as_choice, as_float, as_floats, as_int, invalid
from netcomp.cpu_numerics import apply_torch_flags
from netcomp.data import DeviceLoader

if TYPE_CHECKING:
    from netcomp.data import Dataset, Split

apply_torch_flags()  # NNPACK off under the CPU pin, for every training and evaluation (netcomp/cpu_numerics.py)

#: Loss names accepted by :class:`TrainConfig` (see :func:`distill_loss`).
LOSSES = ("mse", "kd", "ce", "ce+mse")
#: Losses that compare with the teacher's logits and therefore need a teacher.
TEACHER_LOSSES = ("mse", "kd", "ce+mse")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("none", "cosine", "step", "onecycle", "multistep")
#: "multistep" schedule (LeGR's fine-tune): the lr is multiplied by ``gamma`` at these fractions of the run.
MULTISTEP_MILESTONES = (0.3, 0.6, 0.8)
AMP_MODES = ("auto", "bf16", "none")
CHANNELS_LAST_MODES = ("auto", "on", "off")
SPLITS = ("val", "test")
#: On CUDA, per-step losses are copied to the host (one sync) this often to look for divergence.
CUDA_CHECK_EVERY = 50
#: One-cycle schedule: fraction of the steps spent warming up, start and final divisors (as in the
#: one-cycle policy of Smith & Topin: lr/25 -> lr -> lr/(25*1e4)).
ONECYCLE_PCT_START = 0.3
ONECYCLE_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e4
#: Version of the training-state dict that :func:`train_students` hands to ``on_epoch_end`` and takes
#: back as ``resume``.
TRAIN_STATE_VERSION = 1


# ---------------------------------------------------------------------------------------------- config
#: The owner name in TrainConfig's error messages (netcomp.checks' one format).
CFG = "TrainConfig"


@dataclass
class TrainConfig:
    """Everything that decides how students are trained; validated on construction.

    ``loss``: "mse" (MSE between student and teacher logits, as N2N/ESNAC), "kd" (``lam*T^2*KL(soft
    teacher || soft student) + (1-lam)*CE``, TAS uses lam=0.9, T=4), "ce" (labels only, no teacher),
    "ce+mse" (``CE + lam*MSE``, N2N's final fine-tune); ``lam`` is ``kd_lambda``. Schedules are per
    optimiser step over the whole run ("step" multiplies the lr by ``gamma`` every ``step_epochs``
    epochs). ``augment=None`` follows the dataset. ``keep_best`` keeps the best epoch's weights (ESNAC).
    ``train_max``/``eval_max``/``max_steps`` cut the work down for smoke and fast fidelities. ``amp`` and
    ``channels_last`` "auto" mean "on for CUDA, off elsewhere". ``bn_recalibrate`` > 0 re-estimates every
    BatchNorm's running statistics before each evaluation from that many un-augmented training batches
    (the first images, the same for every student), so a briefly trained student is not scored with
    statistics that lag its weights.
    """

    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 128
    loss: str = "mse"
    kd_lambda: float = 0.9
    temperature: float = 4.0
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = False
    schedule: str = "none"
    step_epochs: int = 30
    gamma: float = 0.1
    label_smoothing: float = 0.0
    augment: bool | None = None
    eval_every_epoch: bool = True
    keep_best: bool = False
    eval_max: int | None = None
    train_max: int | None = None
    amp: str = "auto"
    channels_last: str = "auto"
    bn_recalibrate: int = 0
    #: "multistep" schedule: the epochs at which the lr is multiplied by ``gamma`` (DeepHoyer's 81, 122); None:
    #: the fractions :data:`MULTISTEP_MILESTONES` of the run (LeGR's)
    milestones: list[float] | None = None

    def __post_init__(self) -> None:
        """Normalise types (numeric strings from YAML) and reject bad values with a message naming them."""
        self.epochs = as_float(CFG, "epochs", self.epochs, low=0, low_open=True)
        self.max_steps = as_int(CFG, "max_steps", self.max_steps, 0, optional=True)  # 0: evaluate only (LeGR tau-hat 0)
        self.batch_size = as_int(CFG, "batch_size", self.batch_size, 1)
        self.loss = as_choice(CFG, "loss", self.loss, LOSSES)
        self.kd_lambda = as_float(CFG, "kd_lambda", self.kd_lambda)
        upper = 1.0 if self.loss == "kd" else math.inf
        if not (0.0 <= self.kd_lambda <= upper):
            raise invalid(CFG, "kd_lambda", self.kd_lambda,
                               "a number in [0, 1] for loss 'kd'" if self.loss == "kd" else "a number >= 0")
        self.temperature = as_float(CFG, "temperature", self.temperature, low=0, low_open=True)
        self.optimizer = as_choice(CFG, "optimizer", self.optimizer, OPTIMIZERS)
        self.lr = as_float(CFG, "lr", self.lr, low=0, low_open=True)
        self.weight_decay = as_float(CFG, "weight_decay", self.weight_decay, low=0)
        self.momentum = as_float(CFG, "momentum", self.momentum, low=0, high=1, high_open=True)
        self.nesterov = as_bool(CFG, "nesterov", self.nesterov)
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise invalid(CFG, "nesterov", self.nesterov, "False unless optimizer='sgd' with momentum > 0")
        self.schedule = as_choice(CFG, "schedule", self.schedule, SCHEDULES)
        self.step_epochs = as_int(CFG, "step_epochs", self.step_epochs, 1)
        self.gamma = as_float(CFG, "gamma", self.gamma, low=0, low_open=True)
        self.label_smoothing = as_float(CFG, "label_smoothing", self.label_smoothing, low=0, high=1, high_open=True)
        self.augment = as_bool(CFG, "augment", self.augment, optional=True)
        self.eval_every_epoch = as_bool(CFG, "eval_every_epoch", self.eval_every_epoch)
        self.keep_best = as_bool(CFG, "keep_best", self.keep_best)
        self.eval_max = as_int(CFG, "eval_max", self.eval_max, 1, optional=True)
        self.train_max = as_int(CFG, "train_max", self.train_max, 1, optional=True)
        self.amp = as_choice(CFG, "amp", self.amp, AMP_MODES)
        self.channels_last = as_choice(CFG, "channels_last", self.channels_last, CHANNELS_LAST_MODES)
        self.bn_recalibrate = as_int(CFG, "bn_recalibrate", self.bn_recalibrate, 0)
        if self.milestones is not None:
            self.milestones = as_floats(CFG, "milestones", self.milestones, low=0, nonempty=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build a config from a mapping (e.g. a YAML fidelity preset).

        Unknown keys raise ValueError listing them and the valid keys, so a typo in a config file cannot
        silently fall back to a default.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"TrainConfig.from_dict expects a mapping, got {type(d).__name__}")
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(str(k) for k in d if k not in valid)
        if unknown:
            raise ValueError(f"unknown TrainConfig key(s) {unknown}; valid keys are {valid}")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (round-trips through :meth:`from_dict`), for logs and caches; an unset
        ``milestones`` is left out, so the settings keys of configs without one stay what they were."""
        out = dataclasses.asdict(self)
        if out["milestones"] is None:
            del out["milestones"]
        return out


def teacher_logits_needed(config: TrainConfig) -> bool:
    """Whether ``config.loss`` compares with the teacher's logits (so a teacher forward is needed)."""
    return config.loss in TEACHER_LOSSES


# ---------------------------------------------------------------------------------------------- results
@dataclass
class TrainResult:
    """The outcome of training one student.

    ``accuracy``/``loss`` are validation accuracy in [0, 1] and mean cross-entropy on the evaluation split,
    taken at the best epoch if ``keep_best`` else after the last step. ``best_epoch`` is the (1-based)
    epoch with the highest evaluated accuracy (0 if none was evaluated). ``steps`` counts optimiser steps
    (for a diverged student: the step whose loss was first non-finite). ``seconds`` is the wall time of
    the whole call (students trained together share it). ``history`` holds one dict per epoch with keys
    epoch, train_loss, val_accuracy, val_loss (the last two None for an epoch that was not evaluated).
    """

    valid: bool
    accuracy: float
    loss: float
    best_epoch: int
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    invalid_reason: str | None = None


# ---------------------------------------------------------------------------------------------- pieces
def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
                 config: TrainConfig) -> torch.Tensor:
    """The training loss of one batch for ``config.loss`` (computed in fp32; a 0-dim tensor).

    - "mse": mean squared error between student and teacher logits (mean over batch and classes).
    - "kd": ``lam * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - lam) * CE(s, y)``, KL averaged over the
      batch; the ``T^2`` keeps the soft term's gradient scale independent of T (Hinton et al.).
    - "ce": cross-entropy with the labels (``label_smoothing`` applies to every CE term).
    - "ce+mse": ``CE(s, y) + lam * MSE(s, t)``.
    """
    s = student_logits.float()
    if config.loss == "ce":
        return F.cross_entropy(s, labels, label_smoothing=config.label_smoothing)
    if teacher_logits is None:
        raise ValueError(f"loss {config.loss!r} needs teacher logits")
    t = teacher_logits.float()
    lam = config.kd_lambda
    if config.loss == "mse":
        return F.mse_loss(s, t)
    if config.loss == "ce+mse":
        return F.cross_entropy(s, labels, label_smoothing=config.label_smoothing) + lam * F.mse_loss(s, t)
    if config.loss == "kd":
        temp = config.temperature
        soft = F.kl_div(F.log_softmax(s / temp, dim=1), F.log_softmax(t / temp, dim=1),
                        reduction="batchmean", log_target=True)
        hard = F.cross_entropy(s, labels, label_smoothing=config.label_smoothing)
        return lam * temp * temp * soft + (1.0 - lam) * hard
    raise ValueError(f"unknown loss {config.loss!r}; expected one of {list(LOSSES)}")


def planned_steps(config: TrainConfig, train_images: int) -> int:
    """The optimiser steps :func:`train_students` takes with ``config`` on ``train_images`` training images
    (before ``train_max``): a multi-fidelity ladder's top rung (Hyperband/ASHA over the KD budget)."""
    return _total_steps(config, _epoch_shape(config, train_images)[1])


def _epoch_shape(config: TrainConfig, train_images: int) -> tuple[int, int]:
    """(images trained per epoch, batches per epoch): the first ``train_max`` images, the ragged last batch
    dropped unless there is only one (as :func:`train_students`' loader does)."""
    n = min(train_images, config.train_max) if config.train_max is not None else train_images
    return n, (n // config.batch_size if n > config.batch_size else (1 if n > 0 else 0))


def _total_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    """``min(max_steps, ceil(epochs * batches per epoch))``, at least 1 (``max_steps=0`` only evaluates)."""
    # Round first so that e.g. 0.7 epochs of 10 batches is 7 steps, not ceil(7.000000000000001) = 8.
    total = max(1, math.ceil(round(config.epochs * steps_per_epoch, 6)))
    return total if config.max_steps is None else min(total, config.max_steps)


def lr_multiplier(config: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Factor applied to ``config.lr`` for optimiser step ``step`` (0-based) of ``total_steps``.

    "none": 1. "cosine": ``0.5 * (1 + cos(pi * step / total))``. "step": ``gamma ** (epoch // step_epochs)``
    with the epoch counted in steps. "multistep": ``gamma ** k`` after k of :data:`MULTISTEP_MILESTONES`
    (fractions of the run, LeGR's 0.3/0.6/0.8 of the epochs). "onecycle": linear warm-up from 1/25 to 1 over
    the first 30% of the steps, then cosine annealing down to 1/(25*1e4).
    """
    if config.schedule == "none":
        return 1.0
    if config.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / max(1, total_steps)))
    if config.schedule == "step":
        return config.gamma ** (step // (config.step_epochs * max(1, steps_per_epoch)))
    if config.schedule == "multistep" and config.milestones is not None:
        return config.gamma ** sum(step >= m * steps_per_epoch for m in config.milestones)
    if config.schedule == "multistep":
        return config.gamma ** sum(step >= round(m * total_steps) for m in MULTISTEP_MILESTONES)
    if config.schedule == "onecycle":
        start = 1.0 / ONECYCLE_DIV
        final = start / ONECYCLE_FINAL_DIV
        warm = max(1, round(ONECYCLE_PCT_START * total_steps))
        if step < warm:
            return start + (1.0 - start) * step / warm
        progress = min(1.0, (step - warm) / max(1, total_steps - 1 - warm))
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {config.schedule!r}; expected one of {list(SCHEDULES)}")


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when ``amp`` asks for it ("auto": only on CUDA), else a no-op context."""
    use = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    if use:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _use_channels_last(device: torch.device, mode: str) -> bool:
    return mode == "on" or (mode == "auto" and device.type == "cuda")


def _head(split: Split, n: int | None) -> Split:
    """The first ``n`` items of a split (the split itself if ``n`` is None or covers it)."""
    if n is None or n >= len(split.y):
        return split
    return split.take(n)


def _eval_split(dataset: Dataset, split: str) -> Split:
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is invalid: expected one of {list(SPLITS)}")
    return getattr(dataset, split)


def _make_optimizer(params: list[nn.Parameter], config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam or SGD as configured; fused (else foreach) kernels on CUDA, the plain loop elsewhere."""
    def build(**fast: bool) -> torch.optim.Optimizer:
        if config.optimizer == "adam":
            return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, **fast)
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                               weight_decay=config.weight_decay, **fast)

    if device.type == "cuda":
        for fast in ({"fused": True}, {"foreach": True}):
            try:
                return build(**fast)
            except (RuntimeError, ValueError, TypeError):
                continue
    return build()


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, dataset: Dataset, device: str | torch.device = "cpu",
             batch_size: int = 1000, max_items: int | None = None, amp: str = "auto",
             channels_last: bool | None = None) -> tuple[float, float]:
    """Accuracy in [0, 1] and mean cross-entropy of ``model`` on ``split`` (its first ``max_items`` items).

    The model is moved to ``device`` and run in eval mode without gradients over normalised,
    un-augmented batches; its previous train/eval mode is restored afterwards. Counts are accumulated
    on the device and read once at the end. ``channels_last`` (inputs) defaults to "on CUDA".
    """
    device = torch.device(device)
    if amp not in AMP_MODES:
        raise ValueError(f"amp={amp!r} is invalid: expected one of {list(AMP_MODES)}")
    split = _head(split, max_items).to(device)
    n = len(split.y)
    if n == 0:
        raise ValueError("cannot evaluate on an empty split")
    if channels_last is None:
        channels_last = device.type == "cuda"
    loader = DeviceLoader(split, batch_size, dataset.mean, dataset.std, shuffle=False, augment=False,
                          drop_last=False, channels_last=channels_last)
    was_training = model.training
    model.to(device)
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            with _autocast(device, amp):
                logits = model(x)
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(dim=1) == y).sum()
    finally:
        model.train(was_training)
    return correct.item() / n, loss_sum.item() / n


def recalibration_batches(split: Split, dataset: Dataset, batch_size: int, batches: int,
                          channels_last: bool = False) -> list[torch.Tensor]:
    """The first ``batches`` un-augmented, unshuffled, normalised batches of ``split``: the images every
    student's BatchNorm statistics are re-estimated on (cut once, shared by all students)."""
    loader = DeviceLoader(_head(split, batch_size * batches), batch_size, dataset.mean, dataset.std,
                          shuffle=False, augment=False, drop_last=False, channels_last=channels_last)
    return [x for x, _ in loader]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Sequence[torch.Tensor]) -> None:
    """Re-estimate the BatchNorm running statistics of ``model`` from ``batches`` (see
    :func:`recalibration_batches`): the statistics become the plain average over those batches.

    Weights are untouched; the model's train/eval mode and the layers' momentum are restored.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the mean over the batches seen
    was_training = model.training
    model.train()
    try:
        for x in batches:
            model(x)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(was_training)


# ---------------------------------------------------------------------------------------------- training
@dataclass
class _Student:
    """Book-keeping for one student during :func:`train_students`."""

    index: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    was_training: bool
    active: bool = True
    steps: int = 0
    window: list[torch.Tensor] = field(default_factory=list)  # per-step losses not yet read
    epoch_loss_sum: float = 0.0
    epoch_steps: int = 0
    history: list[dict] = field(default_factory=list)
    best_acc: float = -1.0
    best_loss: float = math.inf
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    last_acc: float | None = None
    last_loss: float | None = None
    invalid_reason: str | None = None


def _drain(students: list[_Student], first_step: int) -> None:
    """Read the pending per-step losses of all active students in one host transfer.

    Adds finite losses to the epoch sums; a student whose loss went NaN/inf is marked invalid with the
    (1-based) step at which it first happened and deactivated. ``first_step`` is the 1-based step number
    of the first loss in each window (all active students share the window).
    """
    pending = [s for s in students if s.active and s.window]
    if not pending:
        return
    values = torch.stack([torch.stack(s.window) for s in pending]).cpu().tolist()
    for s, losses in zip(pending, values):
        s.window = []
        for k, v in enumerate(losses):
            if not math.isfinite(v):
                step = first_step + k
                s.active = False
                s.steps = step
                s.invalid_reason = f"loss diverged ({'nan' if math.isnan(v) else 'inf'}) at step {step}"
                break
            s.epoch_loss_sum += v
            s.epoch_steps += 1


class TeacherLogitCache:
    """The teacher's logits per training batch, kept for the whole search.

    Every student trained with the same seed, data cut, batch size and augmentation sees the same batches
    (:class:`DeviceLoader` draws epoch ``e`` from ``(seed, e)`` only), so the teacher's eval-mode logits of
    batch ``b`` of epoch ``e`` are the same for all of them: after the first student no teacher forward runs.
    One cache serves one teacher on one dataset (the :class:`~netcomp.evaluator.Evaluator` owns it). Entries
    stay on the device they were computed on; once ``max_bytes`` are held, new batches are computed and not
    kept (the first epochs of a search are the ones every student repeats).
    """

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._logits: dict[tuple, torch.Tensor] = {}

    def logits(self, key: tuple, teacher: nn.Module, x: torch.Tensor, amp: str) -> torch.Tensor:
        """The teacher's float32 logits for batch ``x`` under ``key``, computed (no grad, eval mode) on a miss."""
        cached = self._logits.get(key)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        with torch.no_grad(), _autocast(x.device, amp):
            out = teacher(x).float()
        size = out.numel() * out.element_size()
        if self.bytes + size <= self.max_bytes:
            self._logits[key] = out
            self.bytes += size
        return out

    def clear(self) -> None:
        self._logits.clear()
        self.bytes = 0


def train_students(students: Sequence[nn.Module], dataset: Dataset, config: TrainConfig,
                   teacher: nn.Module | None = None, device: str | torch.device = "cpu", seed: int = 0,
                   split: str = "val", progress: bool = False, resume: Mapping[str, Any] | None = None,
                   on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
                   teacher_cache: TeacherLogitCache | None = None,
                   extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
                   after_backward: Callable[[nn.Module], None] | None = None) -> list[TrainResult]:
    """Train several students together on one batch stream and evaluate them; one result per student.

    All students see the same (seeded) shuffled, augmented batches of ``dataset.train``; for each batch
    the teacher (if the loss needs one) runs once in eval mode without gradients and its logits are shared.
    Each student then does its own forward/backward/optimiser step in train mode. The total number of
    steps is ``min(max_steps, ceil(epochs * batches_per_epoch))``; the last epoch may be partial.

    After each epoch (if ``eval_every_epoch`` or ``keep_best``) and at the end, active students are
    evaluated on ``split`` ("val", or "test" for final reports). With ``keep_best`` the best epoch's
    weights are restored at the end and reported. A student whose loss becomes NaN/inf is returned with
    ``valid=False`` and a reason and stops training; the others continue. Models end on ``device`` (in
    channels-last memory format if that was used) with their original train/eval mode. The training
    images are moved to ``device`` once per call (no copy if they are there already: callers that train
    many times should put the dataset on the device once, with ``Dataset.to``).

    Resumable training: ``on_epoch_end(state)``, if given, is called after every finished epoch (after
    its evaluation) with the training state: a dict of CPU tensors and plain values (weights, optimiser
    and schedule states, step and epoch counters, the per-student book-keeping, the torch RNG state) that
    ``torch.save`` writes and ``torch.load(weights_only=True)`` reads back. Passing such a state as
    ``resume`` to a call with the same students (architecture), dataset, config and seed continues after
    that epoch; on the CPU the outcome is bit-identical to the uninterrupted call (the batches of an epoch
    depend only on ``seed`` and the epoch number). An exception raised by ``on_epoch_end`` propagates.

    ``teacher_cache`` (one per teacher and dataset) keeps the teacher's logits of every batch for the next
    call with the same batch stream, so later students run no teacher forward; the outcome is identical.

    Hooks for methods that train differently (DeepHoyer): ``extra_loss(model)`` is added to each student's
    loss (a sparsity regulariser), and ``after_backward(model)`` runs between ``backward()`` and the optimiser
    step (masking the gradients of pruned weights).

    Raises ValueError for an empty student list, a loss that needs a teacher when none is given, a bad
    ``split``, a training set with no batch, or a ``resume`` state that does not fit this training.
    """
    start_time = time.perf_counter()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if len(students) == 0:
        raise ValueError("train_students needs at least one student")
    need_teacher = teacher_logits_needed(config)
    if need_teacher and teacher is None:
        raise ValueError(f"loss {config.loss!r} distils from a teacher's logits but teacher=None; "
                         f"pass a teacher or use loss 'ce'")
    eval_split = _eval_split(dataset, split)
    device = torch.device(device)
    channels_last = _use_channels_last(device, config.channels_last)
    memory_format = torch.channels_last if channels_last else torch.preserve_format

    torch.manual_seed(seed)
    augment = dataset.augment if config.augment is None else config.augment
    # Batches are cut and augmented where the images live: put them on the training device once.
    train_split = _head(dataset.train, config.train_max).to(device)
    recal_batches = (recalibration_batches(train_split, dataset, config.batch_size, config.bn_recalibrate,
                                           channels_last) if config.bn_recalibrate else [])
    # Drop the ragged last batch (a batch of one breaks BatchNorm) unless there is only one batch.
    drop_last = len(train_split.y) > config.batch_size
    loader = DeviceLoader(train_split, config.batch_size, dataset.mean, dataset.std, shuffle=True,
                          augment=augment, drop_last=drop_last, seed=seed, channels_last=channels_last,
                          dtype=torch.float32)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError("the training split yields no batch")
    # what decides the batch stream (with the epoch and batch number): the cache's key
    stream = (seed, len(train_split.y), config.batch_size, bool(augment), drop_last, channels_last, config.amp,
              str(device))
    total_steps = _total_steps(config, steps_per_epoch)
    n_epochs = max(1, math.ceil(total_steps / steps_per_epoch))  # max_steps=0: one pass that only evaluates

    teacher_was_training = teacher.training if teacher is not None else False
    if teacher is not None and need_teacher:
        teacher.to(device=device, memory_format=memory_format)
        teacher.eval()

    states: list[_Student] = []
    for i, model in enumerate(students):
        was_training = model.training
        model.to(device=device, memory_format=memory_format)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"student {i} has no trainable parameters")
        opt = _make_optimizer(params, config, device)
        sched = None
        if config.schedule != "none":
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: lr_multiplier(config, s, total_steps, steps_per_epoch))
        states.append(_Student(i, model, opt, sched, was_training))

    first_epoch, step = 1, 0
    if resume is not None:
        first_epoch = _restore_state(resume, states, loader, device, steps_per_epoch, total_steps) + 1
        step = int(resume["step"])

    check_every = CUDA_CHECK_EVERY if device.type == "cuda" else 1
    evaluate_each_epoch = config.eval_every_epoch or config.keep_best
    bar = tqdm(total=total_steps, initial=step, disable=not progress, desc="train", unit="step", leave=False)
    window_start = step + 1
    try:
        for epoch in range(first_epoch, n_epochs + 1):
            for s in states:
                s.epoch_loss_sum, s.epoch_steps = 0.0, 0
            for batch, (x, y) in enumerate(loader):
                if step >= total_steps:
                    break
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                t_logits = None
                if need_teacher and teacher_cache is not None:
                    t_logits = teacher_cache.logits((*stream, epoch, batch), teacher, x, config.amp)
                elif need_teacher:
                    with torch.no_grad(), _autocast(device, config.amp):
                        t_logits = teacher(x)
                    t_logits = t_logits.float()
                for s in states:
                    if not s.active:
                        continue
                    with _autocast(device, config.amp):
                        out = s.model(x)
                    loss = distill_loss(out, t_logits, y, config)
                    if extra_loss is not None:
                        loss = loss + extra_loss(s.model)
                    s.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if after_backward is not None:
                        after_backward(s.model)
                    s.optimizer.step()
                    if s.scheduler is not None:
                        s.scheduler.step()
                    s.window.append(loss.detach())
                    s.steps += 1
                step += 1
                bar.update(1)
                if step - window_start + 1 >= check_every:
                    _drain(states, window_start)
                    window_start = step + 1
                    _set_postfix(bar, states, progress)
                if step >= total_steps or not any(s.active for s in states):
                    break
            _drain(states, window_start)
            window_start = step + 1
            _set_postfix(bar, states, progress)
            last_epoch = epoch == n_epochs or not any(s.active for s in states)
            for s in states:
                if not s.active:
                    continue
                entry = {"epoch": epoch,
                         "train_loss": s.epoch_loss_sum / s.epoch_steps if s.epoch_steps else math.nan,
                         "val_accuracy": None, "val_loss": None}
                if evaluate_each_epoch or last_epoch:
                    if recal_batches:
                        recalibrate_bn(s.model, recal_batches)
                    acc, vloss = evaluate(s.model, eval_split, dataset, device=device,
                                          max_items=config.eval_max, amp=config.amp,
                                          channels_last=channels_last)
                    entry["val_accuracy"], entry["val_loss"] = acc, vloss
                    s.last_acc, s.last_loss = acc, vloss
                    if acc > s.best_acc:
                        s.best_acc, s.best_loss, s.best_epoch = acc, vloss, epoch
                        if config.keep_best:
                            s.best_state = {k: v.detach().clone() for k, v in s.model.state_dict().items()}
                s.history.append(entry)
            if on_epoch_end is not None:
                on_epoch_end(_capture_state(states, epoch, step, device, steps_per_epoch, total_steps))
            if last_epoch:
                break
    finally:
        bar.close()
        if teacher is not None:
            teacher.train(teacher_was_training)
        for s in states:
            s.model.train(s.was_training)

    seconds = time.perf_counter() - start_time
    results = []
    for s in states:
        if s.invalid_reason is not None:
            results.append(TrainResult(valid=False, accuracy=0.0, loss=math.inf, best_epoch=s.best_epoch,
                                       steps=s.steps, seconds=seconds, history=s.history,
                                       invalid_reason=s.invalid_reason))
            continue
        if config.keep_best and s.best_state is not None:
            s.model.load_state_dict(s.best_state)
            acc, loss = s.best_acc, s.best_loss
        else:
            acc, loss = s.last_acc, s.last_loss
        results.append(TrainResult(valid=True, accuracy=float(acc), loss=float(loss), best_epoch=s.best_epoch,
                                   steps=s.steps, seconds=seconds, history=s.history))
    return results


def _cpu_copy(value: Any) -> Any:
    """A deep copy of nested dicts/lists/tuples with every tensor detached and copied to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _cpu_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_copy(v) for v in value)
    return value


_BOOKKEEPING = ("active", "steps", "history", "best_acc", "best_loss", "best_epoch", "last_acc", "last_loss",
                "invalid_reason")


def _capture_state(states: list[_Student], epoch: int, step: int, device: torch.device, steps_per_epoch: int,
                   total_steps: int) -> dict[str, Any]:
    """The training state after ``epoch`` (see :func:`train_students`): CPU copies, safe to keep or save."""
    students = []
    for s in states:
        entry = {name: _cpu_copy(getattr(s, name)) for name in _BOOKKEEPING}
        entry["model"] = _cpu_copy(s.model.state_dict())
        entry["optimizer"] = _cpu_copy(s.optimizer.state_dict())
        entry["scheduler"] = _cpu_copy(s.scheduler.state_dict()) if s.scheduler is not None else None
        entry["best_state"] = _cpu_copy(s.best_state)
        students.append(entry)
    return {
        "version": TRAIN_STATE_VERSION, "epoch": epoch, "step": step, "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps, "students": students, "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
    }


def _restore_state(resume: Mapping[str, Any], states: list[_Student], loader: DeviceLoader, device: torch.device,
                   steps_per_epoch: int, total_steps: int) -> int:
    """Load a state from :func:`_capture_state` into fresh students and the loader; returns its epoch."""
    if not isinstance(resume, Mapping) or resume.get("version") != TRAIN_STATE_VERSION:
        version = resume.get("version") if isinstance(resume, Mapping) else type(resume).__name__
        raise ValueError(f"resume state has version {version!r}, expected {TRAIN_STATE_VERSION}")
    want = {"students": len(states), "steps_per_epoch": steps_per_epoch, "total_steps": total_steps}
    got = {"students": len(resume.get("students", ())), "steps_per_epoch": resume.get("steps_per_epoch"),
           "total_steps": resume.get("total_steps")}
    if got != want:
        raise ValueError(f"resume state does not fit this training: it has {got}, this training has {want}")
    for s, saved in zip(states, resume["students"]):
        s.model.load_state_dict(saved["model"])
        s.optimizer.load_state_dict(saved["optimizer"])
        if s.scheduler is not None:
            s.scheduler.load_state_dict(saved["scheduler"])
        for name in _BOOKKEEPING:
            setattr(s, name, _cpu_copy(saved[name]))
        best = saved["best_state"]
        s.best_state = {k: v.to(device) for k, v in best.items()} if best is not None else None
    torch.set_rng_state(resume["rng"])
    cuda_rng = list(resume.get("cuda_rng") or [])
    if device.type == "cuda" and cuda_rng and len(cuda_rng) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_rng)
    epoch = int(resume["epoch"])
    loader.set_epoch(epoch)  # the next iteration is epoch + 1 (the loader counts epochs from 0)
    return epoch


def _set_postfix(bar: tqdm, states: list[_Student], progress: bool) -> None:
    """Show the mean training loss of this epoch (active students) on the progress bar."""
    if not progress:
        return
    losses = [s.epoch_loss_sum / s.epoch_steps for s in states if s.active and s.epoch_steps]
    bar.set_postfix(loss=f"{sum(losses) / len(losses):.4f}" if losses else "n/a",
                    active=sum(s.active for s in states))


def train_model(model: nn.Module, dataset: Dataset, config: TrainConfig, teacher: nn.Module | None = None,
                device: str | torch.device = "cpu", seed: int = 0, split: str = "val",
                progress: bool = False, resume: Mapping[str, Any] | None = None,
                on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
                teacher_cache: TeacherLogitCache | None = None) -> TrainResult:
    """Train one model (see :func:`train_students`, which this wraps, also for ``resume``, ``on_epoch_end``
    and ``teacher_cache``) and return its result."""
    return train_students([model], dataset, config, teacher=teacher, device=device, seed=seed, split=split,
                          progress=progress, resume=resume, on_epoch_end=on_epoch_end,
                          teacher_cache=teacher_cache)[0]


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Train with ``n`` torch intra-op threads (on CPU the float reductions, and so every seeded result,
    depend on the count: a run fixes and records it); the previous count is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------- cost model
#: The CPU cost model of :func:`estimated_cpu_seconds`: multiply-accumulates per second of 2 torch threads, and
#: a fixed cost per batch. Fitted on 2 busy cores (torch 2.14) to the seconds per student measured at the
#: `fast` and `rank` fidelities for ResNet-20 on Fashion-MNIST (3.4-4.8 s and 4.5-6.5 s; the model: 4.1 and
#: 5.5 s) and for LeNet-5 at `rank` (0.5 s; the model: 0.5 s). Against the other measured figures: the shipped
#: ResNet-20 teacher (`ship`, 15 epochs, one core) took 3,638 s (the model at one thread: 2,820 s), the LeNet-5 one
#: 139 s (the model: 134 s), and N2N's 5-epoch `paper` student about 1,000 s (the model: 476 s: it can be 2x low).
CPU_MACS_PER_SECOND = 5.8e10
CPU_SECONDS_PER_BATCH = 0.015
#: Threads the cost model was fitted at; other counts scale the arithmetic linearly (optimistic past a few).
CPU_MODEL_THREADS = 2
EVAL_BATCH = 1000


def estimated_cpu_seconds(config: TrainConfig, train_images: int, eval_images: int, macs: int,
                          threads: int = CPU_MODEL_THREADS) -> float:
    """Rough seconds :func:`train_students` takes on the CPU to train and score one model of ``macs``
    multiply-accumulates per image with ``config`` on ``train_images`` training and ``eval_images`` evaluation
    images, at ``threads`` torch threads on an otherwise idle machine (more load: longer).

    Why: a run says how long it will take before it starts, and a teacher recipe that would take hours on this
    CPU is flagged before it trains. The work counted is what the trainer does: a training image costs three
    forwards (forward and backward), each evaluation (every epoch, or once) scores the evaluation images and
    re-estimates BatchNorm on ``bn_recalibrate`` batches; see :data:`CPU_MACS_PER_SECOND` for the fit and its
    error. The teacher's forward in KD is not counted (its logits are cached after the first student).
    """
    n, batches = _epoch_shape(config, train_images)
    steps, per_epoch = _total_steps(config, batches), max(1, batches)
    trained = steps * min(n, config.batch_size)
    evaluations = math.ceil(steps / per_epoch) if config.eval_every_epoch or config.keep_best else 1
    scored = min(eval_images, config.eval_max) if config.eval_max is not None else eval_images
    recalibrated = min(n, config.bn_recalibrate * config.batch_size)
    work = macs * (3 * trained + evaluations * (scored + recalibrated))
    batches = steps + evaluations * (math.ceil(scored / EVAL_BATCH) + config.bn_recalibrate)
    rate = CPU_MACS_PER_SECOND * max(1, threads) / CPU_MODEL_THREADS
    return work / rate + batches * CPU_SECONDS_PER_BATCH
