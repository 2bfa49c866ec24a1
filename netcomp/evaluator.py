"""Turns student architectures into scored results: build, inherit, distil, measure, cache.

The evaluator owns everything a reward needs from the engine: the teacher (module and accuracy measured
on the same evaluation images the students are scored on), the dataset on its device, the fidelity (how
long the KD run is), and a cache keyed by (student key, teacher, fidelity, seed) so that the same student is
never trained twice; the cache can be persisted as a JSON-lines file that a run directory owns.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netcomp.arch import Arch, arch_key
from netcomp.checks import did_you_mean
from netcomp.data import Dataset
from netcomp.distill import (
    TeacherLogitCache,
    TrainConfig,
    TrainResult,
    evaluate,
    planned_steps,
    train_model,
    train_students,
)
from netcomp.errors import disk_full_error
from netcomp.jsonl import append_jsonl, read_jsonl
from netcomp.metrics import count_macs, count_params
from netcomp.surgery import INHERIT_MODES, build_module, inherit_weights, student_problem
from netcomp.teachers import DEFAULT_RECIPE, Teacher, load_yaml

#: With ``require_smaller=False`` a valid student may still be at most this many times the teacher's size
#: (params, and MACs for rewards that pay for MACs): the bound gives every reward a floor.
MAX_GROWTH = 16.0
#: TrainConfig keys a fidelity's ``final`` section may set: how long a kept student's final training runs.
FINAL_KEYS = ("epochs", "max_steps", "train_max", "eval_max")
#: What an operating-point target (the env option ``target``) may bound, as fractions of the teacher's.
TARGET_METRICS = ("macs", "params")
#: Keys of a fidelity's ``protocol`` section besides a TrainConfig's: the recipe's name and how students start.
PROTOCOL_KEYS = ("name", "inherit")


@dataclass(frozen=True)
class Protocol:
    """The operating-point protocol's fine-tune: the one named recipe every compared student gets, so that
    the only difference between a protocol table's rows is which student each method chose.

    ``train`` is a KD run from the fidelity's teacher (a TrainConfig); ``inherit`` is how a student's weights
    start (``indices``: the teacher's surviving channels; a white-box agent's submitted weights are used
    as they are, and the train-from-scratch baseline re-initialises); ``name`` names it in every report.
    """

    name: str
    train: TrainConfig
    inherit: str = "indices"

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data (reports, and the protocol's cached fine-tunes compare it)."""
        return {"name": self.name, "inherit": self.inherit, "train": self.train.to_dict()}


@dataclass(frozen=True)
class Fidelity:
    """How a student is scored: its KD run and the recipe of a teacher trained for it.

    ``inherit`` (when set) is how students get their first weights at this fidelity, overriding the
    space's default (a cheap fidelity ranks better with inherited weights than with N2N's re-initialised
    ones). ``final`` caps the length of the final training of a kept student (the best one of a run, or a
    method's fine-tune) at this fidelity: a mapping of some of :data:`FINAL_KEYS`, so a smoke run ends in
    seconds and a fast one in minutes. None (the ``paper`` preset) leaves the method's own schedule.
    ``protocol`` is the operating-point protocol's fine-tune (:class:`Protocol`; see :meth:`protocol_recipe`).
    """

    name: str
    train: TrainConfig
    teacher_recipe: str = DEFAULT_RECIPE
    final: Mapping[str, Any] | None = None
    inherit: str | None = None
    protocol: Protocol | None = None

    def final_config(self, base: TrainConfig | None = None) -> TrainConfig:
        """The final-training config of a kept student.

        ``base`` (a method's own schedule) is capped by ``final``'s values. Without ``base`` it is the shared
        final training every agent's best student gets (the runner's best student, a comparison's
        leaderboard): this fidelity's KD run with ``final``'s values set, so at ``rank`` it trains 2 epochs over
        8,192 images, longer than the 16 scoring steps (a cap would make it the scoring run again).
        """
        if base is None:
            return TrainConfig.from_dict({**self.train.to_dict(), **(self.final or {})})
        if not self.final:
            return base
        asked = base.to_dict()
        capped = {k: cap if asked[k] is None else min(asked[k], cap) for k, cap in self.final.items()}
        return TrainConfig.from_dict({**asked, **capped})

    def protocol_recipe(self) -> Protocol:
        """The protocol fine-tune at this fidelity: its ``protocol`` section; without one, the shared final
        training (:meth:`final_config`) from the teacher's surviving weights, named ``<fidelity>-final``."""
        if self.protocol is not None:
            return self.protocol
        return Protocol(f"{self.name}-final", self.final_config(), "indices")

    def at_steps(self, steps: int) -> Fidelity:
        """This fidelity's KD run cut to ``steps`` optimiser steps: a lower rung of a multi-fidelity ladder
        (successive halving over the KD budget). Named ``<name>@<steps>``, with its own key, so each rung's
        scores are cached apart from the full fidelity's; the students are scored on the same images."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"a rung needs a whole number of steps >= 1, got {steps!r}")
        train = TrainConfig.from_dict({**self.train.to_dict(), "max_steps": steps})
        return replace(self, name=f"{self.name}@{steps}", train=train)

    def key(self) -> str:
        """A short hash of what scores a student here (name, KD run, inheritance); computed once (every cache
        key holds it, and a table env looks one up per step)."""
        if "_key" not in self.__dict__:
            blob = json.dumps({"name": self.name, "train": self.train.to_dict(), "inherit": self.inherit},
                              sort_keys=True)
            object.__setattr__(self, "_key", hashlib.sha1(blob.encode()).hexdigest()[:12])
        return self.__dict__["_key"]


def load_fidelity(spec: str | Mapping[str, Any], space: str | None = None) -> Fidelity:
    """A preset from configs/fidelity.yaml by name (with its per-space override), or a mapping."""
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"train", "teacher_recipe", "name", "final", "inherit", "protocol"}
        if unknown:
            raise ValueError(f"unknown fidelity keys {sorted(unknown)}; expected train, teacher_recipe, name, final, "
                             f"inherit, protocol")
        name = str(spec.get("name", "custom"))
        return Fidelity(name, TrainConfig.from_dict(spec.get("train", {})),
                        str(spec.get("teacher_recipe", DEFAULT_RECIPE)), _check_final(spec.get("final")),
                        _check_inherit(spec.get("inherit"), space), _check_protocol(spec.get("protocol"), name))
    presets = load_yaml("fidelity.yaml")
    if spec not in presets:
        raise ValueError(f"unknown fidelity {spec!r}{did_you_mean(spec, list(presets))}; expected one of "
                         f"{', '.join(presets)} or a mapping")
    preset = presets[spec]
    train = dict(preset["train"])
    if space is not None:
        train = dict(preset.get("by_space", {}).get(space, train))
    return Fidelity(spec, TrainConfig.from_dict(train), preset.get("teacher_recipe", DEFAULT_RECIPE),
                    _check_final(preset.get("final")), _check_inherit(preset.get("inherit"), space),
                    _check_protocol(preset.get("protocol"), spec))


def _check_inherit(inherit: str | Mapping[str, str] | None, space: str | None) -> str | None:
    """A fidelity's inheritance mode for ``space``: one mode, or a mapping space -> mode (absent: None)."""
    if isinstance(inherit, Mapping):
        inherit = inherit.get(space) if space is not None else None
    if inherit is not None and inherit not in INHERIT_MODES:
        raise ValueError(f"unknown fidelity inherit {inherit!r}; expected one of {INHERIT_MODES}")
    return inherit


def _check_final(final: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A fidelity's ``final`` caps, checked: only :data:`FINAL_KEYS`, values a TrainConfig accepts."""
    if final is None:
        return None
    if not isinstance(final, Mapping):
        raise ValueError(f"a fidelity's final section must be a mapping of {FINAL_KEYS}, got {final!r}")
    unknown = sorted(set(final) - set(FINAL_KEYS))
    if unknown:
        raise ValueError(f"unknown fidelity final key(s) {unknown}; valid keys are {list(FINAL_KEYS)}")
    TrainConfig.from_dict(dict(final))  # validates the values
    return dict(final)


def _check_protocol(section: Mapping[str, Any] | None, fidelity: str) -> Protocol | None:
    """A fidelity's ``protocol`` section, checked: TrainConfig keys plus an optional ``name`` (default
    ``<fidelity>-protocol``) and ``inherit`` (default ``indices``); None when there is none."""
    if section is None:
        return None
    if not isinstance(section, Mapping):
        raise ValueError(f"a fidelity's protocol section must be a mapping of TrainConfig keys plus "
                         f"{list(PROTOCOL_KEYS)}, got {section!r}")
    inherit = section.get("inherit", "indices")
    if inherit not in INHERIT_MODES:
        raise ValueError(f"unknown protocol inherit {inherit!r}; expected one of {INHERIT_MODES}")
    train = TrainConfig.from_dict({k: v for k, v in section.items() if k not in PROTOCOL_KEYS})
    return Protocol(str(section.get("name", f"{fidelity}-protocol")), train, inherit)


def check_target(target: Any) -> dict[str, float] | None:
    """An operating-point target (the env option ``target``), checked: None, or a mapping of ``macs`` and/or
    ``params`` to a fraction of the teacher's in (0, 1], e.g. ``{"macs": 0.5}``. ValueError names a bad value."""
    if target is None:
        return None
    if not isinstance(target, Mapping) or not target:
        raise ValueError(f"target {target!r} is not a mapping of {' and/or '.join(TARGET_METRICS)} to a fraction "
                         f"of the teacher's, e.g. {{'macs': 0.5}}")
    unknown = sorted(str(k) for k in target if k not in TARGET_METRICS)
    if unknown:
        raise ValueError(f"unknown target metric(s) {unknown} in target {dict(target)!r}; expected "
                         f"{' and/or '.join(TARGET_METRICS)}")
    for metric, value in target.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value)
                                                                                and 0.0 < value <= 1.0):
            raise ValueError(f"target {metric}={value!r} is not a fraction of the teacher's {metric} in (0, 1]")
    return {metric: float(target[metric]) for metric in TARGET_METRICS if metric in target}


@dataclass
class EvalResult:
    """A scored student: what goes into an episode's info and the run's evaluations.jsonl."""

    valid: bool
    arch_key: str
    params: int
    macs: int
    accuracy: float = 0.0
    loss: float = float("inf")
    eval_seconds: float = 0.0
    invalid_reason: str | None = None
    cached: bool = False
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        out = asdict(self)
        out["loss"] = None if out["loss"] == float("inf") else out["loss"]
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> EvalResult:
        d = dict(d)
        d["loss"] = float("inf") if d.get("loss") is None else d["loss"]
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class Evaluator:
    """Scores students of one teacher on one dataset at one fidelity.

    ``inherit`` is the default weight-inheritance mode (see :func:`netcomp.surgery.inherit_weights`);
    ``inherit_bn_stats=False`` leaves inherited BatchNorms with fresh running statistics (ESNAC).
    ``require_smaller`` makes a student that is not smaller than the teacher in every one of
    ``size_metrics`` ("params", "macs") invalid (N2N: params); without it a student may be at most
    :data:`MAX_GROWTH` times the teacher's size. Either way every reward has a floor (netcomp.rewards).
    ``cache_path`` persists results (one JSON line each) and reloads them on construction.
    ``split`` is where rewards are measured: "val" (default) or "test", which reproduces N2N's reference
    code (it scores students on the test set; a leak, listed in docs/deviations.md).
    ``target`` (see :func:`check_target`) makes a student above that fraction of the teacher's MACs and/or
    params invalid before anything trains, with a reason that starts with "over target".
    """

    #: a :class:`netcomp.workers.WorkerPool` that trains the uncached students on Ray actors (None: here)
    pool: Any = None

    def __init__(self, teacher: Teacher, dataset: Dataset, fidelity: Fidelity, device: str | torch.device = "cpu",
                 seed: int = 0, inherit: str = "reinit", require_smaller: bool = True, min_linear_inputs: int = 1,
                 cache_path: str | Path | None = None, split: str = "val",
                 size_metrics: Sequence[str] = ("params",), inherit_bn_stats: bool = True,
                 target: Mapping[str, float] | None = None) -> None:
        if split not in ("val", "test"):
            raise ValueError(f"unknown reward split {split!r}; expected 'val' (default) or 'test' (N2N's leak)")
        if inherit not in INHERIT_MODES:
            raise ValueError(f"unknown inheritance mode {inherit!r}; expected one of {INHERIT_MODES}")
        self.device = torch.device(device)
        self.teacher = teacher
        self.teacher_model = teacher.model.to(self.device).eval()
        self.dataset = dataset.to(self.device)
        self.fidelity = fidelity
        self.seed = seed
        self.inherit = inherit
        self.inherit_bn_stats = bool(inherit_bn_stats)
        self.require_smaller = require_smaller
        unknown = sorted(set(size_metrics) - {"params", "macs"})
        if unknown:
            raise ValueError(f"unknown size metric(s) {unknown}; expected 'params' and/or 'macs'")
        self.size_metrics = tuple(size_metrics)
        self.target = check_target(target)
        self.min_linear_inputs = min_linear_inputs
        self.split = split
        self.teacher_params = count_params(teacher.arch)
        self.teacher_macs = count_macs(teacher.arch)
        #: the split rewards are measured on
        self.scored = scored = self.dataset.val if split == "val" else self.dataset.test
        acc, loss = evaluate(self.teacher_model, scored, self.dataset, device=self.device,
                             max_items=fidelity.train.eval_max)
        self.teacher_accuracy, self.teacher_loss = acc, loss
        self.teacher_id = hashlib.sha1(json.dumps(
            [teacher.meta.get(k) for k in ("arch", "dataset", "recipe", "seed", "split", "val_accuracy")],
            sort_keys=True, default=str).encode()).hexdigest()[:12]
        self.cache: dict[str, EvalResult] = {}
        #: the teacher's logits of every training batch, shared by all the students this evaluator scores
        self.teacher_logits = TeacherLogitCache()
        self.cache_path = Path(cache_path) if cache_path else None
        self.trainings = 0  # students actually trained (cache misses), for the harness's accounting
        self._teacher_test: dict[int | None, float] = {}  # the teacher's TEST accuracy per image cap, once each
        self.trained_seconds = 0.0  # the seconds those trainings took (as each result's eval_seconds adds up)
        if self.cache_path and self.cache_path.exists():
            self._load_cache()

    # ------------------------------------------------------------------ cache
    def cache_key(self, student: Arch, inherit: str, seed: int, fidelity: Fidelity | None = None) -> str:
        key = arch_key(student, with_origin=inherit != "reinit")
        stats = "" if self.inherit_bn_stats or inherit == "reinit" else "|fresh-bn-stats"
        fidelity_key = (fidelity or self.fidelity).key()
        return f"{key}|{inherit}{stats}|{self.teacher_id}|{fidelity_key}|{seed}|{self.split}"

    @property
    def full_steps(self) -> int:
        """The optimiser steps of one student's KD run at this fidelity: a multi-fidelity ladder's top rung."""
        return planned_steps(self.fidelity.train, len(self.dataset.train.y))

    def _load_cache(self) -> None:
        # a torn last line (a kill or a full disk mid-append) is dropped and cut off, so the run resumes
        for row in read_jsonl(self.cache_path):
            self.cache[row["cache_key"]] = EvalResult.from_json(row["result"])

    def _store(self, key: str, result: EvalResult) -> None:
        if self.cache.get(key) is result:  # a pool's student, stored as it finished (netcomp.workers)
            return
        self.cache[key] = result
        if self.cache_path:
            try:
                append_jsonl(self.cache_path, {"cache_key": key, "result": result.to_json()})
            except OSError as exc:
                raise disk_full_error(self.cache_path, exc) from None

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, student: Arch, inherit: str | None = None, seed: int | None = None) -> EvalResult:
        """Score one student (see :meth:`evaluate_many`)."""
        return self.evaluate_many([student], inherit, seed)[0]

    def evaluate_many(self, students: Sequence[Arch], inherit: str | None = None, seed: int | None = None,
                      fidelity: Fidelity | None = None) -> list[EvalResult]:
        """Score several students; the uncached valid ones are trained together on shared batches.

        ``fidelity`` (default: the evaluator's) scores them at another KD run on the same images, a rung of a
        multi-fidelity ladder (:meth:`Fidelity.at_steps`), cached under its own key. Rungs train in this
        process: ValueError with a worker pool, whose actors hold the evaluator's fidelity."""
        if fidelity is not None and fidelity.key() != self.fidelity.key() and self.pool is not None:
            raise ValueError(f"students are scored at the {fidelity.name!r} rung in this process, but this "
                             f"evaluator trains on Ray workers; run a multi-fidelity agent without --workers")
        fidelity = fidelity or self.fidelity
        inherit = inherit or self.inherit
        seed = self.seed if seed is None else seed
        results: list[EvalResult | None] = [None] * len(students)
        pending: dict[str, list[int]] = {}
        for i, student in enumerate(students):
            problem = self.problem(student)
            if problem is not None:
                results[i] = EvalResult(False, _safe_key(student), _safe(count_params, student),
                                        _safe(count_macs, student), invalid_reason=problem)
                continue
            key = self.cache_key(student, inherit, seed, fidelity)
            if key in self.cache:
                results[i] = _as_cached(self.cache[key])
            else:
                pending.setdefault(key, []).append(i)
        if pending:
            trained = self._train([students[idx[0]] for idx in pending.values()], inherit, seed, fidelity)
            for (key, idx), result in zip(pending.items(), trained):
                self._store(key, result)
                results[idx[0]] = result
                for j in idx[1:]:
                    results[j] = _as_cached(result)
        return results  # type: ignore[return-value]

    @property
    def max_growth(self) -> float:
        """How many times the teacher's size a valid student may reach (1.0: strictly smaller)."""
        return 1.0 if self.require_smaller else MAX_GROWTH

    def problem(self, student: Arch) -> str | None:
        """Why a student cannot be scored (a broken network, a too-narrow linear, too large), or None."""
        return student_problem(student, None, self.min_linear_inputs) or self.size_problem(student)

    def submission_problem(self, student: Any, weights: Any = None) -> str | None:
        """Why a white-box agent's submission cannot be scored, or None: not an :class:`Arch`, another input
        (channels, image size) or other classes than the teacher's, weights that are not a mapping of tensors,
        or any of :meth:`problem`'s reasons. Such a submission is an invalid student, recorded with the reason."""
        if not isinstance(student, Arch):
            return f"the submission is a {type(student).__name__}, not a student architecture (netcomp.arch.Arch)"
        teacher = self.teacher.arch
        for what in ("in_channels", "image_size", "num_classes"):
            if getattr(student, what) != getattr(teacher, what):
                return (f"the student has {what}={getattr(student, what)} but the teacher and data have "
                        f"{getattr(teacher, what)}")
        if weights is not None and not (isinstance(weights, Mapping)
                                        and all(isinstance(v, torch.Tensor) for v in weights.values())):
            return f"the submitted weights are a {type(weights).__name__}, not a state dict of tensors"
        return self.problem(student)

    def size_problem(self, student: Arch) -> str | None:
        """Why a student is too large (above the ``target``, or see ``require_smaller`` and ``size_metrics``),
        or None."""
        over = self.target_problem(student)
        if over is not None:
            return over
        for metric in self.size_metrics:
            value = count_params(student) if metric == "params" else count_macs(student)
            teacher = self.teacher_params if metric == "params" else self.teacher_macs
            if self.require_smaller and value >= teacher:
                return f"student has {value} {metric}, not fewer than the teacher's {teacher}"
            if not self.require_smaller and value > MAX_GROWTH * teacher:
                return f"student has {value} {metric}, more than {MAX_GROWTH:g}x the teacher's {teacher}"
        return None

    def target_problem(self, student: Arch, target: Mapping[str, float] | None = None) -> str | None:
        """Why a student is above ``target`` (default: the evaluator's), by the engine's counters
        (:mod:`netcomp.metrics`): a reason starting with "over target", or None (also without a target, or
        for a student the counters cannot measure, which :meth:`problem` reports)."""
        target = self.target if target is None else check_target(target)
        for metric, fraction in (target or {}).items():
            value = _safe(count_params if metric == "params" else count_macs, student)
            teacher = self.teacher_params if metric == "params" else self.teacher_macs
            if value > fraction * teacher:
                return (f"over target: student has {value:,} {metric}, above {fraction:g} x the teacher's "
                        f"{teacher:,} ({fraction * teacher:,.0f})")
        return None

    def build_student(self, arch: Arch, inherit: str, seed: int) -> nn.Module:
        """The student module with its inherited weights, initialised from ``seed`` alone.

        The seed is reset for every student, so a student gets the same initial weights (and so the same
        score) whether it is trained alone or together with others.
        """
        torch.manual_seed(seed)
        module = build_module(arch, device=self.device)  # initialised where it trains (no CPU init and copy)
        inherit_weights(module, arch, self.teacher.model, self.teacher.arch, mode=inherit,
                        bn_stats=self.inherit_bn_stats)
        return module.to(self.device)

    def _train(self, students: Sequence[Arch], inherit: str, seed: int,
               fidelity: Fidelity | None = None) -> list[EvalResult]:
        fidelity = fidelity or self.fidelity
        if self.pool is not None:  # Ray actors train one student each; each is stored (cache.jsonl) as it finishes
            results = self.pool.train(self, students, inherit, seed, on_result=lambda i, result: self._store(
                self.cache_key(students[i], inherit, seed), result))
            self.trainings += len(students)
            self.trained_seconds += sum(r.eval_seconds for r in results)
            return results
        start = time.perf_counter()
        # the caller's torch RNG must not depend on whether a student was trained or came from the cache:
        # an agent that samples from torch's global RNG (SB3) then replays a resumed run exactly
        with torch.random.fork_rng(devices=[]):
            modules = [self.build_student(arch, inherit, seed) for arch in students]
            outcomes = train_students(modules, self.dataset, fidelity.train, teacher=self.teacher_model,
                                      device=self.device, seed=seed, split=self.split,
                                      teacher_cache=self.teacher_logits)
        self.trainings += len(students)
        seconds = (time.perf_counter() - start) / len(students)
        self.trained_seconds += seconds * len(students)
        results = []
        for arch, out in zip(students, outcomes):
            results.append(EvalResult(
                valid=out.valid, arch_key=arch_key(arch), params=count_params(arch), macs=count_macs(arch),
                accuracy=out.accuracy, loss=out.loss, eval_seconds=seconds, invalid_reason=out.invalid_reason,
                extra={"best_epoch": out.best_epoch, "steps": out.steps},
            ))
        return results


    def evaluate_weights(self, student: Arch, state_dict: Mapping[str, torch.Tensor], train: bool = True,
                         seed: int | None = None) -> EvalResult:
        """Score a student that arrives with its own weights (a white-box agent's result).

        The student is checked like any other; with ``train`` it is distilled at this fidelity starting
        from ``state_dict``, otherwise only evaluated on the reward split. Never cached (the weights are
        the student's identity), always counted as a training.
        """
        seed = self.seed if seed is None else seed
        problem = self.submission_problem(student, state_dict)
        if problem is not None:
            return refused_result(student, problem)
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            try:
                module = self.module_with_weights(student, state_dict)
            except ValueError as exc:
                return refused_result(student, str(exc))
            if train:
                out = train_students([module], self.dataset, self.fidelity.train, teacher=self.teacher_model,
                                     device=self.device, seed=seed, split=self.split,
                                     teacher_cache=self.teacher_logits)[0]
                valid, acc, loss, reason = out.valid, out.accuracy, out.loss, out.invalid_reason
            else:
                acc, loss = evaluate(module, self.scored, self.dataset, device=self.device,
                                     max_items=self.fidelity.train.eval_max)
                valid, reason = bool(math.isfinite(loss)), None if math.isfinite(loss) else "non-finite loss"
        seconds = time.perf_counter() - start
        self.trainings += 1
        self.trained_seconds += seconds
        return EvalResult(valid=valid, arch_key=arch_key(student), params=count_params(student),
                          macs=count_macs(student), accuracy=float(acc) if valid else 0.0,
                          loss=float(loss) if valid else float("inf"), eval_seconds=seconds,
                          invalid_reason=reason, extra={"submitted": True, "trained": bool(train)})

    def module_with_weights(self, student: Arch, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
        """The student's module holding ``state_dict``, on the evaluator's device; ValueError when they do not
        fit each other."""
        module = build_module(student)
        try:
            module.load_state_dict(dict(state_dict))
        except (RuntimeError, TypeError, ValueError) as exc:
            raise ValueError(f"the submitted weights do not fit the submitted architecture: "
                             f"{str(exc).splitlines()[0]}") from None
        return module.to(self.device)

    def train_final(self, student: Arch, config: TrainConfig | None = None, seed: int | None = None,
                    data: Dataset | None = None, test_max: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
        """Train a student to keep, not just to score: build it, inherit as the evaluator does, distil it
        with ``config`` (default: the fidelity's shared final training, :meth:`Fidelity.final_config`; a
        given config is used as it is) and report validation and test
        accuracy beside the teacher's test accuracy. The global torch RNG is left as it was.

        ``data`` (default: the evaluator's) is what it trains on, e.g. ESNAC's full training on the training
        and validation images; the report's test accuracy is on the evaluator's test split, on at most
        ``test_max`` images (default: the fidelity's ``final`` cap)."""
        config = self.fidelity.final_config() if config is None else config
        seed = self.seed if seed is None else seed
        with torch.random.fork_rng(devices=[]):
            model = self.build_student(student, self.inherit, seed)
            result = train_model(model, self.dataset if data is None else data, config,
                                 teacher=self.teacher_model, device=self.device, seed=seed)
        # a capped (smoke/fast) final training also caps the test images; the report says how many
        test_max = (self.fidelity.final or {}).get("eval_max") if test_max is None else test_max
        report = self._kept_report(model, student, result, test_max)
        return model, {**report, "final_train": config.to_dict()}

    def train_protocol(self, student: Arch, weights: Mapping[str, torch.Tensor] | None = None,
                       seed: int | None = None, scratch: bool = False) -> tuple[nn.Module, dict[str, Any]]:
        """The operating-point protocol's fine-tune of a student (:meth:`Fidelity.protocol_recipe`, the same
        recipe for every method), reported like :meth:`train_final` plus the teacher's MACs, the recipe and
        where the weights started (``start``).

        The student starts from the teacher's weights by the recipe's ``inherit`` mode, or from ``weights``
        (a white-box agent's submitted state dict; ValueError when they do not fit), or with ``scratch`` from
        a fresh initialisation (the train-from-scratch baseline: Liu et al., "Rethinking the value of network
        pruning", ICLR 2019, arXiv:1810.05270). The recipe's ``eval_max`` caps the validation and test images.
        Fine-tunes of one seed share the teacher's logits (the exact :class:`~netcomp.distill.TeacherLogitCache`).
        The global torch RNG is left as it was."""
        recipe = self.fidelity.protocol_recipe()
        seed = self.seed if seed is None else seed
        with torch.random.fork_rng(devices=[]):
            if weights is not None and not scratch:
                model = self.module_with_weights(student, weights)
            else:
                model = self.build_student(student, "reinit" if scratch else recipe.inherit, seed)
            result = train_model(model, self.dataset, recipe.train, teacher=self.teacher_model,
                                 device=self.device, seed=seed, teacher_cache=self.teacher_logits)
        start = "scratch" if scratch else "submitted" if weights is not None else f"inherited ({recipe.inherit})"
        report = self._kept_report(model, student, result, recipe.train.eval_max)
        return model, {**report, "protocol": recipe.to_dict(), "start": start}

    def teacher_test_accuracy(self, test_max: int | None = None) -> float:
        """The teacher's accuracy on the first ``test_max`` test images (all if None), measured once per cap:
        every kept student's report sets its test accuracy beside it, and the teacher does not change."""
        if test_max not in self._teacher_test:
            self._teacher_test[test_max] = float(evaluate(self.teacher_model, self.dataset.test, self.dataset,
                                                          device=self.device, max_items=test_max)[0])
        return self._teacher_test[test_max]

    def _kept_report(self, model: nn.Module, student: Arch, result: TrainResult,
                     test_max: int | None) -> dict[str, Any]:
        """A trained student's report: validity, validation and TEST accuracy (on at most ``test_max`` test
        images, the teacher's on the same ones), params and MACs beside the teacher's, training seconds."""
        test_images = min(len(self.dataset.test.y), test_max or len(self.dataset.test.y))
        test_acc = evaluate(model, self.dataset.test, self.dataset, device=self.device,
                            max_items=test_max)[0] if result.valid else 0.0
        teacher_test = self.teacher_test_accuracy(test_max)
        params = count_params(student)
        return {
            "valid": bool(result.valid), "invalid_reason": result.invalid_reason,
            "val_accuracy": float(result.accuracy), "test_accuracy": float(test_acc),
            "teacher_test_accuracy": float(teacher_test), "params": int(params),
            "teacher_params": int(self.teacher_params), "macs": int(count_macs(student)),
            "teacher_macs": int(self.teacher_macs), "compression": 1.0 - params / self.teacher_params,
            "seconds": float(result.seconds), "test_images": int(test_images),
        }


def refused_result(student: Any, reason: str) -> EvalResult:
    """The invalid result of a submission that could not be scored (nothing trained, no seconds)."""
    if not isinstance(student, Arch):
        return EvalResult(False, "not-a-student", 0, 0, invalid_reason=reason)
    return EvalResult(False, _safe_key(student), _safe(count_params, student), _safe(count_macs, student),
                      invalid_reason=reason)


def _as_cached(result: EvalResult) -> EvalResult:
    """A cache hit: the stored result (eval_seconds stays the time its training took), flagged cached."""
    return EvalResult(**{**asdict(result), "cached": True})


def _safe(fn, arch: Arch) -> int:
    try:
        return fn(arch)
    except ValueError:
        return 0


def _safe_key(arch: Arch) -> str:
    try:
        return arch_key(arch)
    except ValueError:
        return "invalid"
