"""Reward functions by name. Each maps an evaluated student's numbers to one float.

- ``n2n``: C(2 - C) * A / A_T, with C = 1 - params/teacher_params (N2N, ESNAC's f(x)).
- ``amc-acc``: the accuracy, paid only when the budget is met (AMC's budget-constrained reward; the
  environment's action wall makes the budget hold).
- ``amc-flops``: -(1 - A) * log(MACs) (AMC's FLOPs-aware reward).
- ``legr``: -(validation loss) after the short fine-tune (LeGR's fitness).
An invalid student gets the penalty (-1 by default) under every reward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any


def n2n_reward(compression: float, accuracy: float, teacher_accuracy: float) -> float:
    """N2N's reward C(2 - C) * A / A_T; accuracies as fractions, C in [0, 1)."""
    if teacher_accuracy <= 0:
        raise ValueError(f"teacher_accuracy must be > 0, got {teacher_accuracy}")
    return compression * (2.0 - compression) * accuracy / teacher_accuracy


def _n2n(info: Mapping[str, Any]) -> float:
    return n2n_reward(info["compression"], info["accuracy"], info["teacher_accuracy"])


def _amc_acc(info: Mapping[str, Any]) -> float | None:
    return info["accuracy"] if info.get("budget_met", True) else None


def _amc_flops(info: Mapping[str, Any]) -> float:
    return -(1.0 - info["accuracy"]) * math.log(max(info["macs"], 1))


def _legr(info: Mapping[str, Any]) -> float:
    return -float(info["loss"])


REWARDS: dict[str, Callable[[Mapping[str, Any]], float | None]] = {
    "n2n": _n2n, "amc-acc": _amc_acc, "amc-flops": _amc_flops, "legr": _legr,
}


def check_reward_name(name: str) -> str:
    """Return ``name`` if it is a known reward, else raise ValueError listing them."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; expected one of {', '.join(REWARDS)}")
    return name


def compute_reward(name: str, info: Mapping[str, Any], penalty: float = -1.0) -> float:
    """The reward ``name`` for an episode's info (``valid``, ``accuracy``, ``compression``, ...).

    Invalid students, and students that break a hard budget, get ``penalty``.
    """
    reward = REWARDS[check_reward_name(name)]
    value = reward(info) if info.get("valid", False) else None
    return float(penalty if value is None else value)
