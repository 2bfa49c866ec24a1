"""Layer shrinkage (N2N stage 2): a discrete shrink factor for the width of each conv layer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from envs.base import CompressionEnv, check_int_action
from envs.removal import n2n_features
from netcomp.arch import Arch, prunable_layers
from netcomp.surgery import remove_layers, set_widths

#: N2N's lookup of shrink factors (0.5 repeated on purpose, as in the reference code).
N2N_LOOKUP = (0.25, 0.5, 0.5, 0.5, 0.5, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass(frozen=True)
class ShrinkRoles:
    """Which layers of a (stage-1) network decide a width under N2N's stage-2 rules.

    ``layers``: the conv/linear layers an action refers to (depthwise convs follow their input and are not
    listed); ``leader_of``: the layer that decides each shrinkable coupling group's width (its first
    producer) -> group id; ``fixed``: layers N2N never shrinks; ``acting``: leaders that are not fixed.
    """

    layers: tuple[str, ...]
    leader_of: dict[str, str]
    fixed: frozenset[str]
    acting: tuple[str, ...]


def shrink_roles(parent: Arch) -> ShrinkRoles:
    """N2N's stage-2 roles (docs/methods.md#n2n-actions) for a network, read from its graph.

    Plain layers (outside residual blocks): a conv with stride != 1 and every linear layer are fixed. Inside
    a residual block N2N's block rule applies instead: every conv may shrink, stride-2 convs included (the
    inner conv takes its own width; the block's output width is decided at projection blocks, or by the
    first remaining conv of a projection block whose second conv stage 1 removed). Coupled layers (joined
    by adds) shrink together, following their group's first producer, so a whole stage shrinks as one
    (N2N: 'block widths can only change at projection blocks').
    """
    layers = tuple(n for n in prunable_layers(parent) if not parent.node(n).depthwise)
    leader_of: dict[str, str] = {}
    for group in parent.groups:
        if group.shrinkable and group.producers:
            leader_of[group.producers[0]] = group.gid

    def is_fixed(name: str) -> bool:
        node = parent.node(name)
        return node.op == "linear" or (node.stride != 1 and not node.block)

    fixed = frozenset(n for n in layers if is_fixed(n))
    acting = tuple(n for n in layers if n in leader_of and n not in fixed)
    return ShrinkRoles(layers, leader_of, fixed, acting)


class ShrinkageEnv(CompressionEnv):
    """Shrink the width of each conv layer of a teacher (N2N stage 2, Ashok et al. 2018).

    ## Description
    The agent picks, for every conv/linear layer, an index into N2N's lookup of shrink factors; the layer
    keeps max(floor(width * factor), ``min_width``) output channels. Layers joined by residual adds form
    one coupling group and shrink together: the group's first layer (N2N: the projection block's second
    conv, or the stem for the first stage) decides its width, and the other members follow
    (``info["coupled"]``). As in N2N, linear layers and strided convs outside residual blocks never shrink
    (``info["fixed"]``); inside a block every conv may shrink, stride-2 convs included (N2N's block rule,
    :func:`shrink_roles`), so no stage is frozen whatever stage 1 removed.
    ``removed`` starts from a stage-1 student (layers already removed); compression is measured against
    the original teacher. The student is re-initialised (N2N) by default and distilled.

    ## Action Space
    - oneshot: ``MultiDiscrete([K] * L)``, K = len(lookup) (11), one index per conv/linear layer.
    - sequential: ``Discrete(K)`` for the current layer, L steps.

    ## Observation Space
    - oneshot: ``Box(-10, 10, (L, 8))``: N2N's layer descriptor scaled by fixed constants, and a flag
      that is 1 for layers whose action decides a width.
    - sequential: ``Box(-10, 10, (11,))``: the current layer's row plus (position, fraction of the
      teacher's parameters removed so far by the chosen factors, previous factor).

    ## Rewards
    ``n2n`` by default (C(2 - C) * A / A_T); -1 for invalid students (a linear with fewer than 10 or more
    than 50,000 inputs, a collapsed map, not smaller than the teacher). Sequential mode pays 0 until the end.

    ## Starting State
    The teacher (or the stage-1 student given by ``removed``), unchanged.

    ## Episode End
    After one step (oneshot) or L steps (sequential); always ``terminated``.

    ## Arguments
    As :class:`envs.base.CompressionEnv`, plus ``lookup`` (shrink factors), ``min_width`` (10, N2N) and
    ``removed`` (layer names removed before shrinking).

    ## Version History
    - v0: initial version. Only the output width shrinks; N2N's kernel/stride/padding slots are not
      searched (see docs/deviations.md).
    """

    space = "shrinkage"
    default_reward = "n2n"
    default_inherit = "reinit"

    def __init__(self, *args: Any, lookup: Sequence[float] = N2N_LOOKUP, min_width: int = 10,
                 removed: Sequence[str] | None = None, **kwargs: Any) -> None:
        lookup = tuple(float(f) for f in lookup)
        if not lookup or any(not 0 < f <= 1 for f in lookup):
            raise ValueError(f"lookup factors must lie in (0, 1]; got {lookup}")
        if min_width < 1:
            raise ValueError(f"min_width must be >= 1, got {min_width}")
        self.lookup, self.min_width, self.removed = lookup, int(min_width), tuple(removed or ())
        super().__init__(*args, **kwargs)

    def _min_linear_inputs(self) -> int:
        return 10

    def _layers(self) -> tuple[str, ...]:
        self.parent = remove_layers(self.arch, self.removed) if self.removed else self.arch
        plan = shrink_roles(self.parent)
        self.leader_of, self.fixed, self.acting = plan.leader_of, plan.fixed, plan.acting
        return plan.layers

    def _features(self) -> np.ndarray:
        rows = n2n_features(self.parent, set(self.acting))
        index = {name: i for i, name in enumerate(self.parent.layers)}
        return rows[[index[n] for n in self.layers]]

    def _oneshot_space(self) -> spaces.Space:
        return spaces.MultiDiscrete([len(self.lookup)] * len(self.layers))

    def _step_space(self) -> spaces.Space:
        return spaces.Discrete(len(self.lookup))

    def _check_oneshot(self, action: Any) -> list[int]:
        return check_int_action(action, self.action_space, len(self.lookup)).tolist()

    def _check_step(self, action: Any) -> int:
        return int(check_int_action(action, self.action_space, len(self.lookup)))

    def _widths(self, values: Sequence[int]) -> dict[str, int]:
        widths = {}
        for name, idx in zip(self.layers, values):
            if name in self.acting:
                width = self.parent.shapes[name][0]
                widths[name] = min(width, max(int(width * self.lookup[idx]), self.min_width))
        return widths

    def _step_value(self, value: int, t: int) -> tuple[int, float]:
        # 'reduced': the fraction of the teacher's parameters the chosen widths remove so far (others kept)
        chosen = [*self._values, value] + [len(self.lookup) - 1] * (len(self.layers) - t - 1)
        student = set_widths(self.parent, self._widths(chosen))
        params, _ = self.student_cost(student)
        return value, 1.0 - params / self.evaluator.teacher_params

    def _make_student(self, values: list[int]) -> tuple[Arch, dict[str, Any]]:
        widths = self._widths(values)
        coupled = [n for n in self.layers if n not in self.leader_of and n not in self.fixed]
        info = {"widths": widths, "factors": [self.lookup[v] for v in values],
                "fixed": sorted(self.fixed), "coupled": coupled, "removed": list(self.removed)}
        return set_widths(self.parent, widths), info
