"""Reward functions by name. Each maps an evaluated student's numbers to one float, and knows its floor.

- ``n2n``: C(2 - C) * A / A_T, with C = 1 - params/teacher_params (N2N, ESNAC's f(x)).
- ``amc-acc``: the accuracy, paid only when the budget is met (AMC's budget-constrained reward; the
  environment's action wall makes the budget hold).
- ``amc-flops``: -(1 - A) * log(MACs) (AMC's FLOPs-aware reward).
- ``legr``: -(validation loss) after the short fine-tune (LeGR's fitness).
- ``accuracy``: the validation accuracy alone; the default under an operating-point target (the env option
  ``target``), where size is a constraint a valid student meets rather than a term of the reward (AMC's
  resource-constrained setting, LeGR's FLOPs target).

Invalid students must score below every valid student under every reward, or a search learns to produce
them (``amc-flops`` pays valid students about -13 to -18, so a flat -1 for "invalid" would win). Each reward
therefore has a **floor**: the lowest value a valid student can reach, derived from the formula and the
bounds the evaluator enforces on a valid student (:class:`RewardContext`: accuracy in [0, 1], params and
MACs at most ``max_growth`` times the teacher's, strictly below it when ``max_growth`` is 1, and for
``legr`` a validation loss of at most :data:`LEGR_MAX_LOSS_FACTOR` x ln(classes)). An invalid student gets
``penalty``, which must lie below the floor; by default it is ``floor - 1`` (so -1 for ``n2n``, N2N's own
value). A reward that cannot be paid for a valid student (AMC's budget not met, LeGR's loss above its
cap) makes the episode invalid with the reason (``Reward.problem``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: A LeGR student whose validation cross-entropy exceeds this multiple of ln(classes) (chance level) has
#: diverged in all but name; it is invalid, which gives the ``legr`` reward a floor.
LEGR_MAX_LOSS_FACTOR = 10.0


@dataclass(frozen=True)
class RewardContext:
    """What bounds a valid student's reward: the teacher's numbers and the evaluator's size limits.

    ``max_growth``: a valid student's params (and MACs, for rewards that pay for MACs) are below the
    teacher's when 1.0 (``require_smaller``), else at most ``max_growth`` times the teacher's.
    """

    teacher_accuracy: float
    teacher_params: int
    teacher_macs: int
    num_classes: int
    max_growth: float = 1.0

    @property
    def max_loss(self) -> float:
        """The largest validation loss a valid ``legr`` student may have."""
        return LEGR_MAX_LOSS_FACTOR * math.log(max(2, self.num_classes))


@dataclass(frozen=True)
class Reward:
    """A reward: its formula, its floor over valid students, and the cost a valid student must beat.

    ``value(info)`` returns None when the reward cannot be paid (the student is then invalid, with
    ``problem(info)`` as the reason). ``size_metrics`` are the costs in which a valid student must be
    smaller than the teacher (params always; MACs too for rewards that pay for MACs).
    """

    name: str
    value: Callable[[Mapping[str, Any]], float | None]
    floor: Callable[[RewardContext], float]
    size_metrics: tuple[str, ...] = ("params",)
    problem: Callable[[Mapping[str, Any]], str] = lambda info: "the reward cannot be paid"


def n2n_reward(compression: float, accuracy: float, teacher_accuracy: float) -> float:
    """N2N's reward C(2 - C) * A / A_T; accuracies as fractions, C in [0, 1)."""
    if teacher_accuracy <= 0:
        raise ValueError(f"teacher_accuracy must be > 0, got {teacher_accuracy}")
    return compression * (2.0 - compression) * accuracy / teacher_accuracy


def _n2n(info: Mapping[str, Any]) -> float:
    return n2n_reward(info["compression"], info["accuracy"], info["teacher_accuracy"])


def _n2n_floor(ctx: RewardContext) -> float:
    # C(2 - C) is increasing on C < 1; A / A_T >= 0. With C >= 0 the floor is 0 (A = 0); a student allowed to
    # grow has C >= 1 - max_growth < 0, and the lowest value is then at A = 1.
    c_min = 1.0 - ctx.max_growth
    if c_min >= 0:
        return 0.0
    return c_min * (2.0 - c_min) / max(ctx.teacher_accuracy, 1e-12)


def _amc_acc(info: Mapping[str, Any]) -> float | None:
    return info["accuracy"] if info.get("budget_met", True) else None


def _amc_flops(info: Mapping[str, Any]) -> float:
    return -(1.0 - info["accuracy"]) * math.log(max(info["macs"], 1))


def _amc_flops_floor(ctx: RewardContext) -> float:
    return -math.log(max(ctx.teacher_macs * ctx.max_growth, 1.0))  # A = 0 at the largest MACs allowed


def _legr(info: Mapping[str, Any]) -> float | None:
    loss = info.get("loss")
    if loss is None or not math.isfinite(float(loss)):
        return None
    cap = info.get("max_loss")
    return None if cap is not None and float(loss) > cap else -float(loss)


REWARDS: dict[str, Reward] = {
    "n2n": Reward("n2n", _n2n, _n2n_floor),
    "amc-acc": Reward("amc-acc", _amc_acc, lambda ctx: 0.0, ("params", "macs"),
                      lambda info: f"the {info.get('budget_metric', 'cost')} budget is not met"),
    "amc-flops": Reward("amc-flops", _amc_flops, _amc_flops_floor, ("params", "macs")),
    "legr": Reward("legr", _legr, lambda ctx: -ctx.max_loss, ("params", "macs"),
                   lambda info: f"validation loss {info.get('loss')} is above LeGR's cap {info.get('max_loss')} "
                                f"({LEGR_MAX_LOSS_FACTOR:g} x ln(classes)): the student diverged"),
    "accuracy": Reward("accuracy", lambda info: info["accuracy"], lambda ctx: 0.0),
}
#: The default reward of an env with an operating-point target.
TARGET_REWARD = "accuracy"


def check_reward_name(name: str) -> str:
    """Return ``name`` if it is a known reward, else raise ValueError listing them."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; expected one of {', '.join(REWARDS)}")
    return name


def reward_floor(name: str, ctx: RewardContext) -> float:
    """The lowest value reward ``name`` pays a valid student under the bounds of ``ctx``."""
    return float(REWARDS[check_reward_name(name)].floor(ctx))


def invalid_penalty(name: str, ctx: RewardContext, penalty: float | None = None) -> float:
    """The reward of an invalid student: ``penalty`` (default: floor - 1), checked to lie below the floor."""
    floor = reward_floor(name, ctx)
    if penalty is None:
        return floor - 1.0
    penalty = float(penalty)
    if not penalty < floor:
        raise ValueError(f"penalty {penalty} must be below the lowest reward a valid student can get under "
                         f"{name!r} ({floor:.4f} for this teacher); leave penalty=None for {floor - 1.0:.4f}")
    return penalty


def compute_reward(name: str, info: Mapping[str, Any], penalty: float) -> float:
    """The reward ``name`` for an episode's info (``valid``, ``accuracy``, ``compression``, ...).

    Invalid students, and students the reward cannot be paid to, get ``penalty``, which the caller must
    choose below the reward's floor (see :func:`invalid_penalty`); there is no default on purpose.
    """
    reward = REWARDS[check_reward_name(name)]
    value = reward.value(info) if info.get("valid", False) else None
    return float(penalty if value is None else value)
