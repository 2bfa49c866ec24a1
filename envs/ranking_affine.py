"""Ranking affine (LeGR): per-conv affine maps of filter norms, a global ranking, greedy pruning to a FLOPs target."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from envs.base import CompressionEnv, _check_choice, check_box_action
from envs.channel_ratio import check_fraction, conv_features, filter_norms, group_features
from netcomp.arch import Arch, prunable_layers
from netcomp.evaluator import check_target
from netcomp.metrics import GroupCostModel
from netcomp.surgery import keep_channels

#: What one (alpha, kappa) pair belongs to: a producer conv (LeGR) or a whole coupling group.
GENOMES = ("conv", "group")


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


@torch.no_grad()
def layer_norms(model: nn.Module, name: str) -> np.ndarray:
    """LeGR's l2_weight base score of one conv or linear layer: per filter, its squared L2 norm (no bias)."""
    weight = model.get_submodule(name).weight.detach().to("cpu", torch.float64)
    return weight.reshape(weight.shape[0], -1).pow(2).sum(dim=1).numpy()


def gene_convs(arch: Arch, cost: GroupCostModel) -> tuple[str, ...]:
    """The producers (conv, or linear) of the shrinkable groups of ``cost``, in node order."""
    producers = {p for gid in cost.gids for p in arch.group(gid).producers}
    return tuple(name for name in prunable_layers(arch) if name in producers)


class RankingAffineEnv(CompressionEnv):
    """Learned global ranking of filters (LeGR, Chin et al. 2020).

    ## Description
    Every filter j of a shrinkable channel group g (LeGR's "chain": convs whose output channels are tied by
    residual adds or a depthwise conv) is ranked by a transformed score. Each producer conv l of the group
    has base scores s_lj, the squared L2 norm of its filter j, computed once from the teacher. With the
    default ``genome="conv"`` the agent picks an affine map per conv, as LeGR does (every conv, the stem
    included, and a linear layer if one produces a shrinkable group), and the group's score is the sum over
    its producers, ŝ_gj = sum_l (alpha_l s_lj + kappa_l). With ``genome="group"`` it picks one map per
    group, ŝ_gj = alpha_g s_gj + kappa_g with s_gj = sum_l s_lj. All filters are ranked in one global list,
    ascending by ŝ, and pruned from the bottom one at a time (each removal shrinks its group; the MACs are
    updated incrementally by a cost model) until the student's MACs are at most ``flops_target`` times the
    teacher's, or every group has used up its quota (minimum-channel rule: at most
    min(floor(n (1 - s)), n - 2) of n filters with the ``safeguard`` s = 0.1). The student keeps the
    surviving filters, inherits their weights by index, is fine-tuned briefly and scored by its validation
    loss. Depthwise convs are members of their group but not genes (they have no filter of their own width).

    ## Action Space
    The genes are :attr:`genes`: with ``genome="conv"`` the N producer convs of the shrinkable groups in
    node order (ResNet-20: 21, the stem, 18 block convs and 2 projection shortcuts); with
    ``genome="group"`` the G shrinkable group ids in node order (ResNet-20: 12).
    - oneshot: ``Box(-1, 1, (2N,), float32)`` (or ``(2G,)``): first the alpha entries a of all genes, then
      their kappa entries b (not interleaved).
    - sequential: ``Box(-1, 1, (2,), float32)``: (a, b) for the current gene, one step per gene; the greedy
      runs after the last step.
    The map is alpha = exp(2 a), in [e^-2, e^2] ~ [0.135, 7.39] (LeGR draws alpha = exp(N(0, 1))), and
    kappa = 3 b std, in [-3 std, 3 std], where std is the standard deviation of the gene's own base scores
    (a conv's s_l., or a group's summed s_g.): a fixed property of the teacher that makes b comparable
    across genes (LeGR draws kappa from N(0, std_l)). a = b = 0 is the identity, plain global L2-norm
    ranking, the same student under both genomes. A group produced by grouped convs (ShuffleNet) prunes in
    units of its granularity (the conv groups reading it), scored by the unit's mean ŝ. Actions outside the
    box, NaN, wrong shapes or non-numeric values raise ValueError.

    ## Observation Space
    One static row per gene with the 12 columns of :data:`envs.channel_ratio.GROUP_FEATURES` in both
    genomes. A group gene's row is that of :func:`envs.channel_ratio.group_features` (AMC's features of
    its first producer, the number of producers and the share of MACs the group's width controls). A conv
    gene's row holds the conv's own AMC features (is_conv, is_linear, log2 in/out channels, log2 map size,
    stride, kernel, log10 of its own MACs), its position over the genes, and of the group it produces:
    'depthwise' (a depthwise conv follows that width), log2(1 + producers) / 6 and the MACs share.
    - oneshot: ``Box(-10, 10, (N, 12), float32)`` (or ``(G, 12)``).
    - sequential: ``Box(-10, 10, (15,), float32)``: the current gene's 12 features plus (position in
      [0, 1], 0 (nothing is pruned before the last step), mean of the previous action).

    ## Rewards
    ``legr`` by default: minus the validation cross-entropy after the fidelity's fine-tune steps (LeGR's
    fitness; tau-hat steps of SGD in the "paper" fidelity). A student whose loss exceeds 10 x ln(classes)
    has diverged and is invalid; invalid students get the ``penalty``, by default -(that cap) - 1, below
    every valid reward.
    Sequential mode pays 0 until the last step.

    ## Starting State
    The teacher, unchanged. Episodes are independent.

    ## Episode End
    After one step (oneshot) or one step per gene (sequential); always ``terminated``, never truncated. The
    final ``info`` holds the base contract plus ``genome``, ``alpha`` and ``kappa`` (lists of floats, one per
    gene in :attr:`genes` order), ``target_macs``, ``flops_target``, ``widths`` (group id -> kept filters),
    ``pruned`` (filters removed) and ``met_target`` (False only when the quotas ran out first).

    ## Arguments
    ``gymnasium.make("netcomp/ranking-affine-resnet56-cifar100-v0", fidelity="smoke", mode="oneshot",
    genome="conv", flops_target=0.5, safeguard=0.1, reward="legr", inherit="indices", ...)``.
    ``genome`` is "conv" (one (alpha, kappa) per producer conv, LeGR) or "group" (one per coupling group);
    ``flops_target`` is the fraction of the teacher's MACs to keep, in (0, 1] (default: the ``target``'s
    ``macs`` when an operating-point target is given, else 0.5); ``safeguard`` in [0, 1).
    Other arguments: see :class:`envs.base.CompressionEnv`.

    ## Version History
    - v0: initial version; the ``genome`` argument was added later with the per-conv genome as its default
      (the first release had only the per-group genome, now ``genome="group"``).
    """

    space = "ranking-affine"
    default_reward = "legr"
    default_inherit = "indices"
    #: alpha = exp(ALPHA_SCALE * a); kappa = KAPPA_SCALE * b * std.
    ALPHA_SCALE: ClassVar[float] = 2.0
    KAPPA_SCALE: ClassVar[float] = 3.0

    def __init__(self, arch: str = "resnet20", dataset: str = "synthetic", *, genome: str = "conv",
                 flops_target: float | None = None, safeguard: float = 0.1, **kwargs: Any) -> None:
        _check_choice("genome", genome, GENOMES)
        self.genome = genome
        if flops_target is None:  # the operating point's MACs, if one is given (netcomp.evaluator.check_target)
            flops_target = (check_target(kwargs.get("target")) or {}).get("macs", 0.5)
        self.flops_target = check_fraction("flops_target", flops_target)
        try:
            self.safeguard = float(safeguard)
        except (TypeError, ValueError):
            raise ValueError(f"safeguard must be a number in [0, 1), got {safeguard!r}") from None
        if not 0.0 <= self.safeguard < 1.0:
            raise ValueError(f"safeguard must be a number in [0, 1), got {safeguard!r}")
        super().__init__(arch, dataset, **kwargs)
        model = self.teacher.model
        #: Ids of the shrinkable groups in node order (what the greedy shrinks).
        self.gids: tuple[str, ...] = self.cost.gids
        #: Per group: s_gj, the sum over its producers of the squared filter norms.
        self.scores = {gid: filter_norms(model, self.arch, gid, squared=True) for gid in self.gids}
        #: Per producer conv of a shrinkable group: s_lj, its own squared filter norms.
        self.conv_scores = {name: layer_norms(model, name) for gid in self.gids
                            for name in self.arch.group(gid).producers}
        base = self.conv_scores if genome == "conv" else self.scores
        #: Standard deviation of each gene's base scores (the unit of kappa), in :attr:`genes` order.
        self.score_std = np.array([float(np.std(base[g])) for g in self.genes])

    @property
    def genes(self) -> tuple[str, ...]:
        """What each (alpha, kappa) pair belongs to, in action order: conv names, or group ids."""
        return self.layers

    # ------------------------------------------------------------------ hooks
    def _layers(self) -> tuple[str, ...]:
        self.cost = GroupCostModel(self.arch)
        return gene_convs(self.arch, self.cost) if self.genome == "conv" else self.cost.gids

    def _features(self) -> np.ndarray:
        if self.genome == "conv":
            return conv_features(self.arch, self.cost, self.layers)
        return group_features(self.arch, self.cost)

    def _oneshot_space(self) -> spaces.Space:
        return spaces.Box(-1.0, 1.0, (2 * len(self.layers),), np.float32)

    def _step_space(self) -> spaces.Space:
        return spaces.Box(-1.0, 1.0, (2,), np.float32)

    def _check_oneshot(self, action: Any) -> list[tuple[float, float]]:
        arr = check_box_action(action, self.action_space)
        n = len(self.layers)
        return [(float(a), float(b)) for a, b in zip(arr[:n], arr[n:])]

    def _check_step(self, action: Any) -> tuple[float, float]:
        a, b = check_box_action(action, self.action_space)
        return float(a), float(b)

    def _make_student(self, values: list[tuple[float, float]]) -> tuple[Arch, dict[str, Any]]:
        alpha, kappa = self.affine(values)
        plan = self.prune_plan(alpha, kappa)
        info = {
            "genome": self.genome, "alpha": alpha.tolist(), "kappa": kappa.tolist(),
            "target_macs": plan.target_macs, "flops_target": self.flops_target, "widths": plan.widths,
            "pruned": len(plan.pruned), "met_target": plan.met_target,
        }
        return self.plan_student(plan), info

    def plan_student(self, plan: PrunePlan) -> Arch:
        """The student a :class:`PrunePlan` describes: the teacher keeping the plan's filters of each group."""
        changed = {gid: idx for gid, idx in plan.keep.items() if len(idx) < len(self.scores[gid])}
        return keep_channels(self.arch, changed)

    def identity_action(self) -> np.ndarray:
        """The one-shot action of the identity map (alpha = 1, kappa = 0): plain global L2-norm ranking."""
        return np.zeros(2 * len(self.layers), np.float64)

    def uniform_plan(self, flops_target: float | None = None, tol: float = 1e-6) -> tuple[PrunePlan, float]:
        """LeGR's uniform baseline: the same keep ratio r in every group, filters chosen by L2 norm.

        As the reference does, the greedy runs with the identity ranking, safeguard r (every group keeps
        max(n - floor(n (1 - r)), 2) of its n filters) and a target it cannot meet, so every quota is used
        up. r is the largest ratio whose student meets ``flops_target`` (default: the env's), found by
        bisection on the exact MACs (the reference solves a quadratic approximation of them). (plan, r).
        """
        target = self.flops_target if flops_target is None else check_fraction("flops_target", flops_target)
        ones, zeros = np.ones(len(self.layers)), np.zeros(len(self.layers))
        limit = target * self.evaluator.teacher_macs

        def plan_at(r: float) -> PrunePlan:
            return self.prune_plan(ones, zeros, flops_target=1e-9, safeguard=r)

        lo, hi = 1e-9, 1.0 - 1e-9  # plan_at(lo) prunes the most the quotas allow (2 filters a group)
        if plan_at(hi).macs <= limit:
            lo = hi
        while hi - lo > tol:
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if plan_at(mid).macs <= limit else (lo, mid)
        plan = plan_at(lo)
        return replace(plan, target_macs=float(limit), met_target=plan.macs <= limit), lo

    # ------------------------------------------------------------------ LeGR
    def affine(self, values: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
        """(alpha, kappa), one entry per gene in :attr:`genes` order, from the action pairs (a, b) in [-1, 1]."""
        ab = np.asarray(values, dtype=np.float64).reshape(len(self.layers), 2)
        return np.exp(self.ALPHA_SCALE * ab[:, 0]), self.KAPPA_SCALE * ab[:, 1] * self.score_std

    def group_scores(self, alpha: np.ndarray, kappa: np.ndarray) -> dict[str, np.ndarray]:
        """ŝ per shrinkable group and channel for per-gene (alpha, kappa) in :attr:`genes` order.

        genome "conv": ŝ_gj = sum over the group's producers l of (alpha_l s_lj + kappa_l);
        genome "group": ŝ_gj = alpha_g s_gj + kappa_g.
        """
        alpha, kappa = np.asarray(alpha, np.float64), np.asarray(kappa, np.float64)
        if alpha.shape != (len(self.layers),) or kappa.shape != (len(self.layers),):
            raise ValueError(f"alpha and kappa need one entry per gene ({len(self.layers)}), "
                             f"got shapes {alpha.shape} and {kappa.shape}")
        pos = {gene: i for i, gene in enumerate(self.layers)}
        if self.genome == "group":
            return {gid: alpha[pos[gid]] * self.scores[gid] + kappa[pos[gid]] for gid in self.gids}
        out = {}
        for gid in self.gids:
            total = np.zeros(len(self.scores[gid]))
            for name in self.arch.group(gid).producers:
                total = total + (alpha[pos[name]] * self.conv_scores[name] + kappa[pos[name]])
            out[gid] = total
        return out

    def prune_plan(self, alpha: np.ndarray, kappa: np.ndarray, flops_target: float | None = None,
                   safeguard: float | None = None) -> PrunePlan:
        """LeGR's greedy: prune the globally lowest transformed scores until the MACs meet the target.

        ``flops_target`` (default: the env's) is the fraction of the teacher's MACs to keep and ``safeguard``
        (default: the env's) the minimum-channel rule; the same (alpha, kappa) gives a plan for any target
        (LeGR's deployment at several FLOPs levels from one learned ranking), without rebuilding the env.
        """
        cost, gids = self.cost, self.gids
        fraction = self.flops_target if flops_target is None else check_fraction("flops_target", flops_target)
        guard = self.safeguard if safeguard is None else float(safeguard)
        group_scores = self.group_scores(alpha, kappa)
        units: list[list[np.ndarray]] = []  # per group: channel sets removed together, in pruning order
        entries = []  # (score, group, unit)
        quota = np.zeros(len(gids), dtype=np.int64)
        for i, gid in enumerate(gids):
            scores = group_scores[gid]
            step = cost.granularity[i]
            order = np.lexsort((np.arange(len(scores)), scores))  # ascending, ties to the lower index
            units.append([order[k:k + step] for k in range(0, len(order), step)])
            quota[i] = legr_quota(len(units[i]), guard)
            entries += [(float(scores[u].mean()), i, k) for k, u in enumerate(units[i])]
        entries.sort()  # ascending score; ties by group then position, deterministically
        target = fraction * self.evaluator.teacher_macs
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
