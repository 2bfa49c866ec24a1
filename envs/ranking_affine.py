"""Ranking affine (LeGR): per-group affine maps of filter norms, a global ranking, greedy pruning to a FLOPs target."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces

from envs.base import CompressionEnv, check_box_action
from envs.channel_ratio import check_fraction, filter_norms, group_features
from netcomp.arch import Arch
from netcomp.metrics import GroupCostModel
from netcomp.surgery import keep_channels


@dataclass(frozen=True)
class PrunePlan:
    """The outcome of LeGR's greedy for one (alpha, kappa): what each group keeps and what was pruned.

    ``pruned`` lists (group id, channel) in the order the greedy removed them; ``macs`` is the student's cost.
    """

    widths: dict[str, int]
    keep: dict[str, list[int]]
    pruned: list[tuple[str, int]]
    macs: int
    target_macs: float
    met_target: bool


def legr_quota(n: int, safeguard: float) -> int:
    """How many of a group's ``n`` units LeGR may prune (its minimum-channel rule).

    safeguard s > 0: min(floor(n (1 - s)), n - 2), so at least max(n - floor(n (1 - s)), 2) stay;
    s = 0: n - 1, so one stays. Never negative.
    """
    if safeguard > 0:
        return max(0, min(math.floor(n * (1.0 - safeguard)), n - 2))
    return max(0, n - 1)


class RankingAffineEnv(CompressionEnv):
    """Learned global ranking of filters (LeGR, Chin et al. 2020).

    ## Description
    Every filter j of a shrinkable channel group g (LeGR's "chain": convs whose output channels are tied by
    residual adds or a depthwise conv) has a base score s_gj, the sum over the group's producers of the
    squared L2 norm of filter j, computed once from the teacher. The agent picks an affine map per group,
    ŝ_gj = alpha_g * s_gj + kappa_g. All filters are ranked in one global list, ascending by ŝ, and pruned
    from the bottom one at a time (each removal shrinks its group; the MACs are updated incrementally by a
    cost model) until the student's MACs are at most ``flops_target`` times the teacher's, or every group
    has used up its quota (minimum-channel rule: at most min(floor(n (1 - s)), n - 2) of n filters with the
    ``safeguard`` s = 0.1). The student keeps the surviving filters, inherits their weights by index, is
    fine-tuned briefly and scored by its validation loss.

    ## Action Space
    - oneshot: ``Box(-1, 1, (2G,), float32)`` for G groups in node order: first the G alpha entries a_g,
      then the G kappa entries b_g (not interleaved).
    - sequential: ``Box(-1, 1, (2,), float32)``: (a_g, b_g) for the current group, G steps; the greedy
      runs after the last step.
    The map is alpha_g = exp(2 a_g) and kappa_g = 3 b_g std_g, where std_g is the standard deviation of
    group g's base scores: a fixed property of the teacher that makes b comparable across groups (LeGR
    draws kappa_g from N(0, std_g)). a = b = 0 is the identity: plain global L2-norm ranking. A group
    produced by grouped convs (ShuffleNet) prunes in units of its granularity (the conv groups reading
    it), scored by the unit's mean ŝ. Actions outside the box, NaN, wrong shapes or non-numeric values
    raise ValueError.

    ## Observation Space
    - oneshot: ``Box(-10, 10, (G, 12), float32)``: per group the fixed-scale features of
      :data:`envs.channel_ratio.GROUP_FEATURES` (AMC's layer features of the group's first producer, the
      number of producers and the share of MACs the group's width controls).
    - sequential: ``Box(-10, 10, (15,), float32)``: the current group's 12 features plus (position in
      [0, 1], 0 (nothing is pruned before the last step), mean of the previous action).

    ## Rewards
    ``legr`` by default: minus the validation cross-entropy after the fidelity's fine-tune steps (LeGR's
    fitness; tau-hat steps of SGD in the "paper" fidelity). Invalid students get the ``penalty`` (-1).
    Sequential mode pays 0 until the last step.

    ## Starting State
    The teacher, unchanged. Episodes are independent.

    ## Episode End
    After one step (oneshot) or G steps (sequential); always ``terminated``, never truncated. The final
    ``info`` holds the base contract plus ``alpha`` and ``kappa`` (lists per group), ``target_macs``,
    ``flops_target``, ``widths`` (group id -> kept filters), ``pruned`` (filters removed) and
    ``met_target`` (False only when the quotas ran out first).

    ## Arguments
    ``gymnasium.make("netcomp/ranking-affine-resnet56-cifar100-v0", fidelity="smoke", mode="oneshot",
    flops_target=0.5, safeguard=0.1, reward="legr", inherit="indices", ...)``. ``flops_target`` is the
    fraction of the teacher's MACs to keep, in (0, 1]; ``safeguard`` in [0, 1). Other arguments: see
    :class:`envs.base.CompressionEnv`.

    ## Version History
    - v0: initial version.
    """

    space = "ranking-affine"
    default_reward = "legr"
    default_inherit = "indices"
    #: alpha = exp(ALPHA_SCALE * a); kappa = KAPPA_SCALE * b * std_g.
    ALPHA_SCALE: ClassVar[float] = 2.0
    KAPPA_SCALE: ClassVar[float] = 3.0

    def __init__(self, arch: str = "resnet20", dataset: str = "synthetic", *, flops_target: float = 0.5,
                 safeguard: float = 0.1, **kwargs: Any) -> None:
        self.flops_target = check_fraction("flops_target", flops_target)
        try:
            self.safeguard = float(safeguard)
        except (TypeError, ValueError):
            raise ValueError(f"safeguard must be a number in [0, 1), got {safeguard!r}") from None
        if not 0.0 <= self.safeguard < 1.0:
            raise ValueError(f"safeguard must be a number in [0, 1), got {safeguard!r}")
        super().__init__(arch, dataset, **kwargs)
        self.scores = {gid: filter_norms(self.teacher.model, self.arch, gid, squared=True) for gid in self.layers}
        self.score_std = np.array([float(np.std(self.scores[gid])) for gid in self.layers])

    # ------------------------------------------------------------------ hooks
    def _layers(self) -> tuple[str, ...]:
        self.cost = GroupCostModel(self.arch)
        return self.cost.gids

    def _features(self) -> np.ndarray:
        return group_features(self.arch, self.cost)

    def _oneshot_space(self) -> spaces.Space:
        return spaces.Box(-1.0, 1.0, (2 * len(self.layers),), np.float32)

    def _step_space(self) -> spaces.Space:
        return spaces.Box(-1.0, 1.0, (2,), np.float32)

    def _check_oneshot(self, action: Any) -> list[tuple[float, float]]:
        arr = check_box_action(action, self.action_space)
        g = len(self.layers)
        return [(float(a), float(b)) for a, b in zip(arr[:g], arr[g:])]

    def _check_step(self, action: Any) -> tuple[float, float]:
        a, b = check_box_action(action, self.action_space)
        return float(a), float(b)

    def _make_student(self, values: list[tuple[float, float]]) -> tuple[Arch, dict[str, Any]]:
        alpha, kappa = self.affine(values)
        plan = self.prune_plan(alpha, kappa)
        changed = {gid: idx for gid, idx in plan.keep.items() if len(idx) < len(self.scores[gid])}
        info = {
            "alpha": alpha.tolist(), "kappa": kappa.tolist(), "target_macs": plan.target_macs,
            "flops_target": self.flops_target, "widths": plan.widths, "pruned": len(plan.pruned),
            "met_target": plan.met_target,
        }
        return keep_channels(self.arch, changed), info

    # ------------------------------------------------------------------ LeGR
    def affine(self, values: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
        """(alpha, kappa) per group from the action pairs (a_g, b_g) in [-1, 1]."""
        ab = np.asarray(values, dtype=np.float64).reshape(len(self.layers), 2)
        return np.exp(self.ALPHA_SCALE * ab[:, 0]), self.KAPPA_SCALE * ab[:, 1] * self.score_std

    def prune_plan(self, alpha: np.ndarray, kappa: np.ndarray) -> PrunePlan:
        """LeGR's greedy: prune the globally lowest transformed scores until the MACs meet the target."""
        cost, gids = self.cost, self.layers
        units: list[list[np.ndarray]] = []  # per group: channel sets removed together, in pruning order
        entries = []  # (score, group, unit)
        quota = np.zeros(len(gids), dtype=np.int64)
        for i, gid in enumerate(gids):
            scores = alpha[i] * self.scores[gid] + kappa[i]
            step = cost.granularity[i]
            order = np.lexsort((np.arange(len(scores)), scores))  # ascending, ties to the lower index
            units.append([order[k:k + step] for k in range(0, len(order), step)])
            quota[i] = legr_quota(len(units[i]), self.safeguard)
            entries += [(float(scores[u].mean()), i, k) for k, u in enumerate(units[i])]
        entries.sort()  # ascending score; ties by group then position, deterministically
        target = self.flops_target * self.evaluator.teacher_macs
        running = cost.tracker()  # teacher widths; MACs updated layer by layer as groups shrink
        pruned: list[tuple[str, int]] = []
        removed: list[set[int]] = [set() for _ in gids]
        for _, i, k in entries:
            if running.macs <= target:
                break
            if quota[i] == 0:
                continue
            running.set(i, running.widths[i] - cost.granularity[i])
            quota[i] -= 1
            for c in units[i][k]:
                removed[i].add(int(c))
                pruned.append((gids[i], int(c)))
        keep = {gid: [c for c in range(int(cost.full[i])) if c not in removed[i]] for i, gid in enumerate(gids)}
        return PrunePlan(widths=dict(zip(gids, running.widths)), keep=keep, pruned=pruned, macs=running.macs,
                         target_macs=float(target), met_target=running.macs <= target)
