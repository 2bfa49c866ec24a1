"""Channel ratio (AMC / TAS style): a continuous keep ratio for every shrinkable channel group of the teacher."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from envs.base import CompressionEnv, check_box_action
from netcomp.arch import AMC_FEATURES, Arch, amc_features, node_macs, prunable_layers
from netcomp.metrics import GroupCostModel, count_macs
from netcomp.surgery import blocks_of, keep_channels, set_conv_widths, set_stage_depths, set_widths, width_convs

#: Columns of the per-group observation row: AMC's layer features of the group's first producer (position
#: counted over groups), then log2(1 + number of producers) / 6 and the share of the teacher's MACs that
#: depend on the group's width. All are scaled by fixed constants, so a policy transfers across teachers.
GROUP_FEATURES = (*AMC_FEATURES, "log_producers", "macs_share")
SELECTIONS = ("norm", "first")
#: What one width entry of the action sets: a coupling group (AMC), a single conv (TAS), or every group of a
#: residual stage at once (NATS-Bench's size space; with ``depth=True`` TAS's width-and-depth per stage).
GRANULARITIES = ("group", "conv", "stage")
BUDGET_METRICS = ("macs", "params")


def group_features(arch: Arch, cost: GroupCostModel) -> np.ndarray:
    """One static feature row per shrinkable group (columns GROUP_FEATURES), in ``cost.gids`` order.

    A coupled residual group acts as one layer; it is described by its first producer's AMC row, with the
    position taken over groups, the 'depthwise' column meaning "a depthwise conv follows this group's
    width" (producers are never depthwise), and the MACs column counting every layer the group's width
    changes (a group shrinks all of them at once).
    """
    rows = amc_features(arch)
    row_of = {name: i for i, name in enumerate(prunable_layers(arch))}
    col = {name: i for i, name in enumerate(AMC_FEATURES)}
    total = max(1, cost.macs({}))
    out = np.zeros((len(cost.gids), len(GROUP_FEATURES)), np.float32)
    for i, gid in enumerate(cost.gids):
        group = arch.group(gid)
        row = rows[row_of[group.producers[0]]].copy()
        row[col["position"]] = i / max(1, len(cost.gids) - 1)
        row[col["depthwise"]] = float(any(arch.node(m).op == "conv" and arch.node(m).depthwise
                                          for m in group.members))
        row[col["log_macs"]] = np.log10(1.0 + cost.dependent_cost(i)) / 10.0
        share = cost.dependent_cost(i) / total
        out[i] = (*row, np.log2(1.0 + len(group.producers)) / 6.0, share)
    return out


@torch.no_grad()
def filter_norms(model: nn.Module, arch: Arch, gid: str, squared: bool = False) -> np.ndarray:
    """Per output channel of group ``gid``: the sum over its producers of each filter's L2 norm.

    ``squared`` sums squared norms instead (LeGR's l2_weight chain score). A filter is one output row of a
    conv (in/groups x k x k weights) or of a linear layer; biases are not part of the norm.
    """
    total = None
    for name in arch.group(gid).producers:
        weight = model.get_submodule(name).weight.detach().to("cpu", torch.float64)
        sq = weight.reshape(weight.shape[0], -1).pow(2).sum(dim=1)
        norm = sq if squared else sq.sqrt()
        total = norm if total is None else total + norm
    return total.numpy()


def conv_features(arch: Arch, cost: GroupCostModel, genes: tuple[str, ...]) -> np.ndarray:
    """One static row per gene conv, with the columns of GROUP_FEATURES (so both genomes have one width).

    The AMC columns are the conv's own (channels, map size, stride, kernel, log10 of its own MACs), except
    ``position`` (over the genes) and ``depthwise`` (a depthwise conv follows the width it produces); the
    last two columns describe the coupling group it produces: log2(1 + its producers) / 6 and the share of
    the teacher's MACs that group's width controls.
    """
    rows = amc_features(arch)
    row_of = {name: i for i, name in enumerate(prunable_layers(arch))}
    group_rows = group_features(arch, cost)
    pos = {gid: i for i, gid in enumerate(cost.gids)}
    col = {name: i for i, name in enumerate(GROUP_FEATURES)}
    own = [col[c] for c in AMC_FEATURES if c not in ("depthwise", "position")]
    out = np.zeros((len(genes), len(GROUP_FEATURES)), np.float32)
    for t, name in enumerate(genes):
        out[t] = group_rows[pos[arch.group_of[name]]]
        out[t, own] = rows[row_of[name], own]
        out[t, col["position"]] = t / max(1, len(genes) - 1)
    return out


def round_width(width: float, full: int, granularity: int = 1) -> int:
    """An integer width in [1, full]: rounded half up, then up to a multiple of ``granularity``."""
    w = max(1, int(math.floor(width + 0.5)))
    w = -(-w // granularity) * granularity
    return min(w, full)


def top_indices(scores: np.ndarray, k: int) -> list[int]:
    """Sorted positions of the ``k`` largest scores (ties go to the lower index)."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    return sorted(int(i) for i in order[:k])


class ChannelRatioEnv(CompressionEnv):
    """Keep a fraction of the channels of every channel group (AMC, He et al. 2018; TAS-style widths).

    ## Description
    The agent picks a keep ratio for each shrinkable channel group of the teacher. A group is a set of
    tensors whose channels are tied (a residual stage and its shortcut convs, a MobileNetV2 expansion conv
    and the depthwise conv after it): it shrinks as one layer. The student keeps, per group, the filters
    with the largest L2 norm summed over the group's producers (``selection="norm"``, AMC) or the first
    ones (``selection="first"``, TAS), inherits the teacher's weights for them, is trained briefly by
    distillation and scored. With a ``budget``, AMC's action wall clips each ratio, in group order, to the
    largest value that still lets the budget be met if every later group is pruned to ``lbound``.

    With ``granularity="conv"`` (TAS's space) an entry sets the width of one conv instead of one group:
    every main-path conv (:func:`netcomp.surgery.width_convs`, the stem included) keeps its first channels
    on its own, projection shortcuts follow their block's last conv, and a block whose identity shortcut
    now joins two widths gets a fresh 1x1 conv + BN projection (:func:`netcomp.surgery.set_conv_widths`).
    With ``granularity="stage"`` an entry sets the width of a whole residual stage: every channel group whose
    producers lie in that stage (its residual group, the stem's width with it for the first stage, and each
    block's inner width) keeps the same ratio, by the ``selection`` of the group space (a group with no
    producer in a stage keeps its width). With ``depth=True`` one more entry per stage (after the width
    entries) says how many of the stage's first blocks are kept.

    ## Action Space
    - oneshot: ``Box(-1, 1, (G,), float32)``, one entry per group (G groups, in node order).
    - sequential: ``Box(-1, 1, (1,), float32)`` for the current group, G steps.
    An entry a maps to the keep ratio r = lbound + (a + 1) / 2 * (1 - lbound), so a = -1 keeps ``lbound``
    and a = 1 keeps everything; a group of width w keeps max(1, round(r * w)) channels (rounded half up,
    then up to a multiple of the groups of any grouped conv reading it). Actions outside the box, NaN,
    wrong shapes or non-numeric values raise ValueError. ``granularity="conv"``: G is the number of
    width-setting convs (plus one per stage with ``depth=True``); ``granularity="stage"``: G is the number
    of stages (twice that with ``depth=True``); a stage entry a of a stage with n blocks
    keeps d = min(n, 1 + floor((a + 1) / 2 * n)) blocks (a = -1 keeps one block, a = 1 all of them).

    ## Observation Space
    - oneshot: ``Box(-10, 10, (G, 12), float32)``: per group the columns of ``GROUP_FEATURES``: AMC's
      features of its first producer (is_conv, is_linear, depthwise follower, log2 in/out channels, log2
      map size, stride, kernel over fixed constants, log10 of the MACs its width controls, position over
      groups), log2(1 + producers) / 6 and the share of the teacher's MACs its width controls.
      ``granularity="conv"``: a conv's row holds its own AMC features and its group's last two columns
      (as the ranking-affine space's conv genome); a stage row holds position, log10 of the stage's MACs,
      log2(1 + blocks) / 6 and the stage's share of the teacher's MACs (other columns 0); with
      ``granularity="stage"`` the width entries have the stage rows too.
    - sequential: ``Box(-10, 10, (15,), float32)``: the current group's 12 features plus (position in
      [0, 1], fraction of the teacher's MACs removed by the groups decided so far, previous keep ratio).

    ## Rewards
    ``amc-acc`` when a ``budget`` is given: the accuracy; a student that misses the budget (only possible
    when even ``lbound`` everywhere cannot meet it) is invalid. ``amc-flops`` without a budget:
    -(1 - accuracy) * log(MACs); ``accuracy`` with a ``target`` (and no budget). Any reward of
    :mod:`netcomp.rewards` can be named with ``reward=``.
    Invalid students (e.g. nothing pruned, so not smaller than the teacher in params and MACs) get the
    ``penalty``, below every valid reward: by default the reward's floor - 1 (``amc-flops``:
    -log(teacher MACs) - 1; ``amc-acc``: -1). Sequential mode pays 0 until the last step.

    ## Starting State
    The teacher, unchanged. Episodes are independent.

    ## Episode End
    After one step (oneshot) or G steps (sequential); always ``terminated``, never truncated. The final
    ``info`` holds the base contract plus ``raw_ratios`` (the action's ratios), ``ratios`` (after the
    budget wall), ``widths`` (group id -> kept channels), ``budget`` (or None), ``budget_metric`` and
    ``budget_met`` (True without a budget); with ``depth=True`` also ``depths`` (stage -> blocks kept).

    ## Arguments
    ``gymnasium.make("netcomp/channel-ratio-resnet20-cifar10-v0", fidelity="smoke", mode="oneshot",
    lbound=0.2, selection="norm", budget=None, budget_metric="macs", reward=None, inherit=None, ...)``.
    ``budget`` is the fraction of the teacher's MACs (or params, ``budget_metric="params"``) the student
    may keep, in (0, 1]. ``inherit`` defaults to "indices" ("first_k" with ``selection="first"``). Other
    arguments: see :class:`envs.base.CompressionEnv`. ``granularity="group"`` (default) or ``"conv"``;
    ``depth=False`` (default) or True. ``"conv"`` keeps the first channels (``selection`` defaults to and
    must be "first"), and the ``budget`` wall is only available with ``granularity="group"`` and no depth
    entries (ValueError otherwise).

    ## Version History
    - v0: initial version; ``granularity`` and ``depth`` options added (TAS's space), then
      ``granularity="stage"`` (a width per stage, the ResNet-20 width-and-depth table).
    """

    space = "channel-ratio"
    default_reward = "amc-flops"
    default_inherit = "indices"

    def __init__(self, arch: str = "resnet20", dataset: str = "synthetic", *, lbound: float = 0.2,
                 selection: str | None = None, budget: float | None = None, budget_metric: str = "macs",
                 reward: str | None = None, inherit: str | None = None, granularity: str = "group",
                 depth: bool = False, **kwargs: Any) -> None:
        self.lbound = check_fraction("lbound", lbound)
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {granularity!r}; expected one of {', '.join(GRANULARITIES)}")
        if not isinstance(depth, bool):
            raise ValueError(f"depth must be true or false, got {depth!r}")
        self.granularity, self.depth = granularity, depth
        if selection is None:
            selection = "first" if granularity == "conv" else "norm"
        if granularity == "conv" and selection != "first":
            raise ValueError(f"granularity='conv' keeps the first channels of each conv; selection {selection!r} "
                             f"is only available with granularity='group'")
        if budget is not None and (granularity != "group" or depth):
            raise ValueError("a budget (AMC's action wall) is only available with granularity='group' and "
                             "depth=False")
        if selection not in SELECTIONS:
            raise ValueError(f"unknown selection {selection!r}; expected one of {', '.join(SELECTIONS)}")
        if budget_metric not in BUDGET_METRICS:
            raise ValueError(f"unknown budget_metric {budget_metric!r}; expected one of {', '.join(BUDGET_METRICS)}")
        self.selection, self.budget_metric = selection, budget_metric
        self.budget = None if budget is None else check_fraction("budget", budget)
        if reward is None and self.budget is not None:
            reward = "amc-acc"  # else the base's default: amc-flops, or accuracy under a target
        if inherit is None:
            inherit = "first_k" if selection == "first" else "indices"
        self._raw: list[float] = []
        super().__init__(arch, dataset, reward=reward, inherit=inherit, **kwargs)
        self._scores = ({gid: filter_norms(self.teacher.model, self.arch, gid) for gid in self.cost.gids}
                        if self.selection == "norm" else {})  # the "first" selection needs no norms
        self._teacher_cost = self.cost.cost({}, self.budget_metric)

    # ------------------------------------------------------------------ hooks
    def _layers(self) -> tuple[str, ...]:
        self.cost = GroupCostModel(self.arch)
        stages = blocks_of(self.arch)
        #: Stage entries (with depth=True): stage name -> its number of blocks, in stage order.
        self.stages = {s: len(b) for s, b in stages.items()} if self.depth else {}
        if self.granularity == "stage":
            if not stages:
                raise ValueError(f"granularity='stage' sets one width per residual stage, and {self.arch.family} "
                                 f"has no stages; use granularity='group' or 'conv'")
            #: per group (in cost.gids order): the index of the stage whose width entry sets it (None: none)
            self._stage_of_group = [self._group_stage(gid, list(stages)) for gid in self.cost.gids]
            self.width_entries = tuple(f"{s}.width" for s in stages)
            self._full = [1] * len(stages)  # widths are per group here (no budget wall in this space)
            self._granularity = [1] * len(stages)
        elif self.granularity == "group":
            #: The entries that set widths (groups or convs), before the stage entries.
            self.width_entries = self.cost.gids
            self._full = self.cost.full.tolist()
            self._granularity = list(self.cost.granularity)
        else:
            self.width_entries = width_convs(self.arch)
            self._full = [self.arch.node(c).out_channels for c in self.width_entries]
            self._granularity = [1] * len(self.width_entries)
        self._min_widths = [self._width(self.lbound, i) for i in range(len(self.width_entries))]
        return (*self.width_entries, *self.stages)

    def _features(self) -> np.ndarray:
        if self.granularity == "stage":
            rows = stage_features(self.arch, [w.removesuffix(".width") for w in self.width_entries])
        elif self.granularity == "group":
            rows = group_features(self.arch, self.cost)
        else:
            rows = conv_features(self.arch, self.cost, self.width_entries)
        if not self.stages:
            return rows
        rows = np.concatenate([rows, stage_features(self.arch, list(self.stages))])
        rows[:, GROUP_FEATURES.index("position")] = np.arange(len(rows)) / max(1, len(rows) - 1)
        return rows

    def _oneshot_space(self) -> spaces.Space:
        return spaces.Box(-1.0, 1.0, (len(self.layers),), np.float32)

    def _step_space(self) -> spaces.Space:
        return spaces.Box(-1.0, 1.0, (1,), np.float32)

    def _check_oneshot(self, action: Any) -> list[float]:
        self._raw = [self.ratio_of(a) for a in check_box_action(action, self.action_space)]
        return [self._entry_value(r, t) for t, r in enumerate(self._raw)]

    def _entry_value(self, ratio: float, t: int) -> float:
        """A width entry's keep ratio, or for a stage entry the kept fraction of its blocks (depth / n)."""
        n_widths = len(self.width_entries)
        if t < n_widths:
            return ratio
        blocks = list(self.stages.values())[t - n_widths]
        return self.depth_of(ratio, blocks) / blocks

    def depth_of(self, ratio: float, blocks: int) -> int:
        """Blocks kept by a stage entry whose ratio is ``ratio`` (in [lbound, 1]) in a stage of ``blocks``."""
        u = (ratio - self.lbound) / (1.0 - self.lbound) if self.lbound < 1 else 1.0
        return int(min(blocks, 1 + math.floor(u * blocks)))

    def _check_step(self, action: Any) -> float:
        return self.ratio_of(check_box_action(action, self.action_space)[0])

    def _step_value(self, value: float, t: int) -> tuple[float, float]:
        if t == 0:
            self._raw = []
        self._raw.append(value)
        if self.granularity != "group" or self.stages:
            value = self._entry_value(value, t)
            full = [1.0] * len(self.layers)
            student = self.student_of_values([*self._values[:t], value, *full[t + 1:]])
            return value, 1.0 - count_macs(student) / self.evaluator.teacher_macs
        ratio = self._wall(value, t, self._values[:t])
        widths = [self._width(r, i) for i, r in enumerate([*self._values[:t], ratio])]
        macs = self.cost.macs(widths + self._full[t + 1:])
        return ratio, 1.0 - macs / self.evaluator.teacher_macs

    def _make_student(self, values: list[float]) -> tuple[Arch, dict[str, Any]]:
        raw = list(self._raw) if self.mode == "sequential" else list(values)
        if self.granularity != "group" or self.stages:
            return self._make_entry_student(values)
        ratios: list[float] = []
        for t, value in enumerate(values):  # idempotent on ratios that already passed the wall step by step
            ratios.append(self._wall(value, t, ratios))
        widths = [self._width(r, i) for i, r in enumerate(ratios)]
        met = self.budget is None or self.cost.cost(widths, self.budget_metric) <= self._allowed()
        info = {
            "raw_ratios": [float(r) for r in raw], "ratios": [float(r) for r in ratios],
            "widths": dict(zip(self.layers, widths)), "budget": self.budget,
            "budget_metric": self.budget_metric, "budget_met": bool(met),
        }
        return self.student_of_widths(widths), info

    def episode_state(self) -> dict[str, Any]:
        return {**super().episode_state(), "raw": [float(r) for r in self._raw]}

    def load_episode_state(self, state: Mapping[str, Any]) -> None:
        super().load_episode_state(state)
        self._raw = [float(r) for r in state["raw"]]

    def _make_entry_student(self, values: list[float]) -> tuple[Arch, dict[str, Any]]:
        """Student and info of the conv- or stage-granularity and/or depth space (no budget wall there)."""
        n = len(self.width_entries)
        depths = {s: round(v * b) for (s, b), v in zip(self.stages.items(), values[n:])}
        info = {  # raw ratios: the action's (self._raw in both modes), ratios: after the depth mapping
            "raw_ratios": [float(r) for r in self._raw], "ratios": [float(r) for r in values],
            "widths": self._entry_widths(values[:n]), "budget": None,
            "budget_metric": self.budget_metric, "budget_met": True,
        }
        if self.stages:
            info["depths"] = depths
        return self.student_of_values(values), info

    def student_of_values(self, values: list[float]) -> Arch:
        """The student of per-entry values (width ratios, then kept block fractions) of this env's space."""
        n = len(self.width_entries)
        depths = {s: round(v * b) for (s, b), v in zip(self.stages.items(), values[n:])}
        if self.granularity == "stage":
            return self._group_student(self._entry_widths(values[:n]), depths)
        widths = [self._width(r, i) for i, r in enumerate(values[:n])]
        return self.student_of_widths(widths, depths)

    def _entry_widths(self, ratios: list[float]) -> dict[str, int]:
        """The kept width of each width entry (a group or conv), or with ``granularity="stage"`` of each group
        its stage's ratio sets (a group outside every stage keeps its width)."""
        if self.granularity != "stage":
            return {key: self._width(r, i) for i, (key, r) in enumerate(zip(self.width_entries, ratios))}
        full, step = self.cost.full.tolist(), list(self.cost.granularity)
        return {gid: round_width(ratios[k] * full[j], full[j], step[j]) if k is not None else full[j]
                for j, (gid, k) in enumerate(zip(self.cost.gids, self._stage_of_group))}

    def _group_stage(self, gid: str, stages: list[str]) -> int | None:
        """The index of the stage of a group's first producer that lies in a stage (None: none does)."""
        for name in self.arch.group(gid).producers:
            stage = self.arch.node(name).stage
            if stage in stages:
                return stages.index(stage)
        return None

    # ------------------------------------------------------------------ public helpers
    def ratio_of(self, a: float) -> float:
        """The keep ratio in [lbound, 1] of an action entry in [-1, 1]."""
        return float(self.lbound + (float(a) + 1.0) / 2.0 * (1.0 - self.lbound))

    def student_of_widths(self, widths: list[int], depths: Mapping[str, int] | None = None) -> Arch:
        """The student keeping ``widths[i]`` channels of width entry i (a group, chosen by this env's
        ``selection``, or a conv, its first channels) and the first ``depths[stage]`` blocks of each stage."""
        changed = {key: w for key, w, full in zip(self.width_entries, widths, self._full) if w < full}
        cut = {s: d for s, d in (depths or {}).items() if d < self.stages.get(s, d + 1)}
        if self.granularity == "conv":
            student = set_stage_depths(self.arch, cut) if cut else self.arch
            return set_conv_widths(student, {k: w for k, w in changed.items() if k in student.index})
        return self._group_student(changed, depths)

    def _group_student(self, widths: Mapping[str, int], depths: Mapping[str, int] | None = None) -> Arch:
        """The student keeping ``widths[gid]`` channels of each named group (by ``selection``) and the first
        ``depths[stage]`` blocks of each stage."""
        full = dict(zip(self.cost.gids, self.cost.full.tolist()))
        changed = {gid: w for gid, w in widths.items() if w < full[gid]}
        cut = {s: d for s, d in (depths or {}).items() if d < self.stages.get(s, d + 1)}
        if self.selection == "first":
            student = set_widths(self.arch, changed)
        else:
            student = keep_channels(self.arch, {gid: self.kept_indices(gid, w) for gid, w in changed.items()})
        return set_stage_depths(student, cut) if cut else student

    def kept_indices(self, gid: str, width: int) -> list[int]:
        """The ``width`` channels of group ``gid`` with the largest summed filter L2 norm, sorted.

        A group produced by grouped convs keeps the same number of channels in every conv group.
        """
        scores = self._scores[gid]
        blocks = max(self.arch.node(p).groups for p in self.arch.group(gid).producers)
        if blocks == 1:
            return top_indices(scores, width)
        step, per = len(scores) // blocks, width // blocks
        return [b * step + i for b in range(blocks) for i in top_indices(scores[b * step:(b + 1) * step], per)]

    # ------------------------------------------------------------------ budget wall
    def _width(self, ratio: float, i: int) -> int:
        return round_width(ratio * self._full[i], self._full[i], self._granularity[i])

    def _allowed(self) -> float:
        return float(self.budget) * self._teacher_cost

    def _wall(self, ratio: float, t: int, decided: list[float]) -> float:
        """AMC's action wall: the largest ratio <= ``ratio`` for group t that keeps the budget reachable.

        Earlier groups take their decided ratios and later ones ``lbound``; if even ``lbound`` for group t
        cannot meet the budget the ratio becomes ``lbound`` (the episode then reports budget_met=False).
        """
        if self.budget is None:
            return ratio
        head = [self._width(r, i) for i, r in enumerate(decided)]
        tail = self._min_widths[t + 1:]
        allowed = self._allowed()

        def fits(width: int) -> bool:
            return self.cost.cost([*head, width, *tail], self.budget_metric) <= allowed

        wanted, lowest = self._width(ratio, t), self._min_widths[t]
        if fits(wanted):
            return ratio
        if not fits(lowest):
            return self.lbound
        step = self.cost.granularity[t]
        lo, hi = 0, (wanted - lowest) // step  # fits(lowest + lo * step) holds, fits(wanted) does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(lowest + mid * step) else (lo, mid)
        return min(ratio, (lowest + lo * step) / self._full[t])


def stage_features(arch: Arch, stages: list[str]) -> np.ndarray:
    """One row per stage (columns GROUP_FEATURES): log10 of its MACs, log2(1 + blocks) / 6, its MACs share."""
    blocks = blocks_of(arch)
    total = max(1, count_macs(arch))
    col = {name: i for i, name in enumerate(GROUP_FEATURES)}
    out = np.zeros((len(stages), len(GROUP_FEATURES)), np.float32)
    for i, stage in enumerate(stages):
        macs = sum(node_macs(arch, n.name) for n in arch.nodes if n.stage == stage)
        out[i, col["log_macs"]] = np.log10(1.0 + macs) / 10.0
        out[i, col["log_producers"]] = np.log2(1.0 + len(blocks[stage])) / 6.0
        out[i, col["macs_share"]] = macs / total
    return out


def check_fraction(name: str, value: Any) -> float:
    """A number in (0, 1], or ValueError naming the argument."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}") from None
    if not (math.isfinite(x) and 0.0 < x <= 1.0) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    return x
