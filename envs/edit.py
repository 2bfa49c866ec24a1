"""ESNAC's architecture edits (Cao et al. 2019): remove layers, shrink width classes, add skip connections."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
from gymnasium import spaces

from envs.base import CompressionEnv, check_box_action
from netcomp.arch import (
    ESNAC_BASE,
    ESNAC_MAX_LAYERS,
    ESNAC_TYPES,
    Arch,
    esnac_descriptor,
    esnac_edges,
    esnac_nodes,
    removable_layers,
)
from netcomp.surgery import add_skips, set_widths

#: ESNAC's sampler (options.py's ar_p1, ar_p2, ar_p3 in the reference code, github.com/Friedrich1006/ESNAC;
#: docs/methods.md#esnac-search-space-and-sampler): removal probability set, shrink-ratio range, skip probability set.
REMOVE_PROBS = (0.3, 0.4, 0.5, 0.6, 0.7)
SHRINK_RANGE = (0.0, 1.0)
SKIP_PROBS = (0.003, 0.005, 0.01, 0.03, 0.05)
#: Fixed scales of the numeric descriptor columns in the observation (k, s, p, then log2(1 + groups/in/out)).
_NUMERIC_SCALE = np.array([7.0, 4.0, 4.0, 11.0, 11.0, 11.0], np.float32)


def shrunk_width(width: int, ratio: float) -> int:
    """ESNAC's new width of a tensor of ``width`` channels shrunk by ``ratio``: max(1, floor((1 - r) w))."""
    return max(1, math.floor((1.0 - float(ratio)) * width + 1e-9))


class EditEnv(CompressionEnv):
    """Edit the teacher's graph with ESNAC's three operations (Cao, Wang, Kitani, ICLR 2019).

    ## Description
    One action applies ESNAC's operations to the teacher: remove shape-preserving layers (they become the
    identity), shrink every tensor of one channel count by that width class's ratio (ESNAC's groups: every
    port of the same width shrinks together, so residual adds and added skips stay consistent; ResNet-18 and
    VGG have the 4 classes 64/128/256/512), and add parameter-free skip connections: the output of node i is
    added to the input of a later node j of the same teacher shape. The student is built physically,
    inherits the teacher's weights by truncation (its first channels, ESNAC's rule) with fresh BatchNorm
    running statistics (``copy_bn_stats=False``), is trained briefly by distillation and scored.

    ## Action Space
    Oneshot only (the edits are not per layer): ``Box(-1, 1, (R + G + P,), float32)`` (symmetric, as SB3
    recommends), the concatenation of
    - R removal entries, one per removable node (``env.removable``, ESNAC's rule: input shape equals output
      shape, never the first or last layer): > 0 removes it;
    - G shrink entries a, one per width class (``env.width_classes``, in order of first appearance), ESNAC's
      ratio r = (a + 1) / 2: every shrinkable tensor of that width keeps max(1, floor((1 - r) * width));
    - P skip entries, one per ordered pair (i, j) of ESNAC nodes, i < j, with the teacher's output shape of i
      equal to the input shape of j and no edge i -> j yet (``env.skip_pairs``): > 0 adds y_i into j's
      input. A skip into a removed node is ignored (counted in ``info["ignored_skips"]``).
    ``env.unwrapped.sample_action(rng)`` draws from ESNAC's sampler (removal probability from
    {0.3, ..., 0.7} per candidate, ratios uniform in [0, 1], skip probability from {0.003, ..., 0.05}).

    ## Observation Space
    ``Box(-10, 10, (n, 16 + 2 * max_layers), float32)``: the teacher's ESNAC descriptor (one row per node of
    :func:`netcomp.arch.esnac_nodes`), with the numeric columns scaled by fixed constants (kernel / 7,
    stride / 4, padding / 4, log2(1 + groups, in, out channels) / 11). It does not change during an episode.

    ## Rewards
    ``n2n`` by default, ESNAC's f(x) = C(2 - C) * A / A_T (C = 1 - params / teacher params); an invalid
    student (not smaller than the teacher, a broken shape) gets the ``penalty``, below every valid reward.

    ## Starting State
    The teacher, unchanged. Episodes are independent.

    ## Episode End
    After one step; always ``terminated``, never truncated. The final ``info`` holds the base contract
    plus ``removed`` (node names), ``ratios`` (per width class), ``widths`` (class width -> new width),
    ``skips`` ([i, j] node-name pairs added) and ``ignored_skips``.

    ## Arguments
    ``gymnasium.make("netcomp/edit-resnet20-synthetic-v0", fidelity="smoke", copy_bn_stats=False,
    max_layers=384, inherit="first_k", ...)``. ``max_layers`` is the length of the edge one-hots
    (ESNAC: 128; 384 here so every zoo model fits). Other arguments: see :class:`envs.base.CompressionEnv`.

    ## Version History
    - v0: initial version.
    """

    space = "edit"
    default_reward = "n2n"
    default_inherit = "first_k"
    modes = ("oneshot",)

    def __init__(self, arch: str = "resnet20", dataset: str = "synthetic", *, copy_bn_stats: bool = False,
                 max_layers: int = ESNAC_MAX_LAYERS, mode: str = "oneshot", **kwargs: Any) -> None:
        if mode != "oneshot":
            raise ValueError(f"the edit space has one mode, 'oneshot' (its skip edits are not per layer); got {mode!r}")
        if isinstance(max_layers, bool) or int(max_layers) < 1:
            raise ValueError(f"max_layers must be a positive integer, got {max_layers!r}")
        self.copy_bn_stats, self.max_layers = bool(copy_bn_stats), int(max_layers)
        self._plans: dict[int, dict[str, Any] | None] = {}  # descriptor_of_action's teacher facts by max_layers
        super().__init__(arch, dataset, mode=mode, **kwargs)

    # ------------------------------------------------------------------ hooks
    def _layers(self) -> tuple[str, ...]:
        arch = self.arch
        nodes = esnac_nodes(arch)
        if len(nodes) > self.max_layers:
            raise ValueError(f"{arch.family or 'the teacher'} has {len(nodes)} ESNAC nodes, more than "
                             f"max_layers={self.max_layers}; raise max_layers")
        self.removable = removable_layers(arch, "esnac")
        widths = [g.width for g in arch.groups if g.shrinkable]
        self.width_classes: tuple[int, ...] = tuple(dict.fromkeys(widths))
        edges = esnac_edges(arch)
        skippable = [n for n in nodes if arch.node(n).op not in ("concat", "shuffle")]
        self.skip_pairs: tuple[tuple[str, str], ...] = tuple(
            (i, j) for a, i in enumerate(nodes) for j in nodes[a + 1:]
            if j in skippable and arch.shapes[i] == arch.in_shape(j) and (i, j) not in edges)
        return nodes

    def _features(self) -> np.ndarray:
        d = esnac_descriptor(self.arch, None, self.max_layers)
        numeric = d[:, 10:ESNAC_BASE]
        numeric[:, 3:] = np.log2(1.0 + numeric[:, 3:])
        d[:, 10:ESNAC_BASE] = numeric / _NUMERIC_SCALE
        return d

    def _oneshot_space(self) -> spaces.Space:
        size = len(self.removable) + len(self.width_classes) + len(self.skip_pairs)
        return spaces.Box(-1.0, 1.0, (size,), np.float32)

    def _step_space(self) -> spaces.Space:  # pragma: no cover - refused in __init__
        raise ValueError("the edit space has no sequential mode")

    def _check_oneshot(self, action: Any) -> list[float]:
        return check_box_action(action, self.action_space).tolist()

    def _make_student(self, values: list[float]) -> tuple[Arch, dict[str, Any]]:
        removed, ratios, skips = self.split_action(values)
        gone = set(removed)
        kept = [p for p in skips if p[1] not in gone]
        student = self.student_of_edits(removed, ratios, kept)
        info = {
            "removed": removed, "ratios": [float(r) for r in ratios],
            "widths": {str(w): shrunk_width(w, r) for w, r in zip(self.width_classes, ratios)},
            "skips": [list(p) for p in kept], "ignored_skips": len(skips) - len(kept),
        }
        return student, info

    # ------------------------------------------------------------------ public helpers
    def split_action(self, action: Any) -> tuple[list[str], list[float], list[tuple[str, str]]]:
        """(removed node names, ratio per width class, skip pairs) of a one-shot action."""
        values = np.asarray(action, np.float64)
        r, g = len(self.removable), len(self.width_classes)
        removed = [n for n, v in zip(self.removable, values[:r]) if v > 0]
        skips = [p for p, v in zip(self.skip_pairs, values[r + g:]) if v > 0]
        return removed, [(float(v) + 1.0) / 2.0 for v in values[r:r + g]], skips

    def make_action(self, removed: list[str] = (), ratios: dict[int, float] | None = None,
                    skips: list[tuple[str, str]] = ()) -> np.ndarray:
        """The action vector of named edits (ratios keyed by class width; unnamed classes keep ratio 0)."""
        action = -np.ones(self.action_space.shape, np.float32)
        r, g = len(self.removable), len(self.width_classes)
        for name in removed:
            action[self.removable.index(name)] = 1.0
        for width, ratio in (ratios or {}).items():
            action[r + self.width_classes.index(width)] = 2.0 * ratio - 1.0
        for pair in skips:
            action[r + g + self.skip_pairs.index(tuple(pair))] = 1.0
        return action

    def student_of_edits(self, removed: list[str], ratios: list[float], skips: list[tuple[str, str]]) -> Arch:
        """The student of ESNAC's three edits: removed nodes become identities, skips are added, then every
        shrinkable tensor of a class's width shrinks by that class's ratio (first channels kept).

        The removed nodes stay in the graph as ``identity`` nodes under their names (free: no module, no
        parameters, the same :func:`netcomp.arch.arch_key`), as ESNAC's candidates keep their Identity nodes:
        so the student's ESNAC representation (:meth:`descriptor`) has every added skip, one from a removed
        node included, and agrees with :meth:`descriptor_of_action`."""
        gone = set(removed)
        arch = self.arch.with_nodes(replace(n, op="identity") if n.name in gone else n for n in self.arch.nodes)
        arch = add_skips(arch, skips)
        ratio_of = dict(zip(self.width_classes, ratios))
        widths = {}
        for group in arch.groups:
            if group.shrinkable and group.width in ratio_of:
                width = shrunk_width(group.width, ratio_of[group.width])
                if width < group.width:
                    widths[group.gid] = width
        return set_widths(arch, widths)

    def sample_action(self, rng: np.random.Generator | None = None) -> np.ndarray:
        """A candidate from ESNAC's random sampler (the reference's ``Architecture.comp_action_rand``;
        docs/methods.md#esnac-search-space-and-sampler); skips into removed nodes are never drawn.

        ``rng`` defaults to the action space's generator (seeded by ``action_space.seed``)."""
        rng = self.action_space.np_random if rng is None else rng
        r, g = len(self.removable), len(self.width_classes)
        p1, p3 = rng.choice(REMOVE_PROBS), rng.choice(SKIP_PROBS)
        remove = rng.random(r) < p1
        ratios = rng.uniform(*SHRINK_RANGE, size=g)
        skip = rng.random(len(self.skip_pairs)) < p3
        gone = {n for n, bit in zip(self.removable, remove) if bit}
        skip &= np.array([j not in gone for _, j in self.skip_pairs], bool)
        bits = np.concatenate([remove, skip]).astype(np.float32) * 2.0 - 1.0
        return np.concatenate([bits[:r], 2.0 * ratios - 1.0, bits[r:]]).astype(np.float32)

    def descriptor(self, student: Arch) -> np.ndarray:
        """ESNAC's representation of a student of this teacher (see :func:`netcomp.arch.esnac_descriptor`)."""
        return esnac_descriptor(self.arch, student, self.max_layers)

    def descriptor_of_action(self, action: Any, max_layers: int | None = None) -> np.ndarray | None:
        """ESNAC's representation straight from an action, without building the network (the reference's
        ``Architecture.comp_rep``; docs/methods.md#esnac-search-space-and-sampler), or None where that shortcut
        would not be exact (then use :meth:`descriptor` of the student).

        The teacher's descriptor with removed rows turned into Identity rows (their edges kept), the in/out
        channels of conv and linear rows set to their width class's new width, and each added skip i -> j set
        in the one-hots. A skip from a removed node stays an edge from that Identity row, as in ESNAC (the student
        keeps the removed node as an identity, so its descriptor agrees). Not exact, so None: grouped or
        depthwise convs (widths are rounded to the groups), and edits that join a shrinkable tensor to a fixed
        one (a skip or a removed conv between them).
        """
        plan = self._descriptor_plan(self.max_layers if max_layers is None else int(max_layers))
        if plan is None:
            return None
        removed, ratios, skips = self.split_action(check_box_action(action, self.action_space))
        gone = set(removed)
        skips = [p for p in skips if p[1] not in gone]
        if any(name in plan["unsafe"] for name in removed) or any(p in plan["unsafe"] for p in skips):
            return None
        d = plan["base"].copy()
        new = [shrunk_width(w, r) for w, r in zip(self.width_classes, ratios)]
        for row, col, cls, factor in plan["channels"]:
            d[row, col] = new[cls] * factor
        for name in removed:
            row = plan["pos"][name]
            d[row, :ESNAC_BASE] = 0.0
            d[row, ESNAC_TYPES.index("identity")] = 1.0
        width = (d.shape[1] - ESNAC_BASE) // 2
        for i, j in skips:
            a, b = plan["pos"][i], plan["pos"][j]
            d[b, ESNAC_BASE + b - a] = 1.0
            d[a, ESNAC_BASE + width + b - a] = 1.0
        return d

    def _descriptor_plan(self, max_layers: int) -> dict[str, Any] | None:
        """What :meth:`descriptor_of_action` needs from the teacher, computed once per max_layers."""
        if max_layers not in self._plans:
            self._plans[max_layers] = self._make_plan(max_layers)
        return self._plans[max_layers]

    def _make_plan(self, max_layers: int) -> dict[str, Any] | None:
        arch = self.arch
        if any(n.op == "conv" and (n.depthwise or n.groups != 1) for n in arch.nodes):
            return None
        cls_of = {g.gid: self.width_classes.index(g.width) for g in arch.groups
                  if g.shrinkable and g.width in self.width_classes}

        def cls(name: str) -> int | None:  # the width class a node's output tensor follows, if it shrinks
            return cls_of.get(arch.group_of.get(name, ""))

        pos = {name: i for i, name in enumerate(esnac_nodes(arch))}
        channels = []  # (row, column, class, factor): in/out channels that follow a width class
        for name in pos:
            node = arch.node(name)
            if node.op not in ("conv", "linear"):
                continue
            src = node.inputs[0]
            if arch.node(src).op == "flatten":  # a linear's inputs are its source map's channels x its area
                src = arch.node(src).inputs[0]
            if cls(name) is not None:
                channels.append((pos[name], 15, cls(name), 1))
            if cls(src) is not None:
                channels.append((pos[name], 14, cls(src), arch.in_shape(name)[0] // arch.shapes[src][0]))
        # a skip, or a removed conv, that joins a shrinking tensor to a fixed one couples them: not exact
        unsafe: set[Any] = {(i, j) for i, j in self.skip_pairs
                            if (cls(i) is None) != (cls(arch.node(j).inputs[0]) is None)}
        unsafe |= {n for n in self.removable
                   if arch.node(n).op == "conv" and (cls(n) is None) != (cls(arch.node(n).inputs[0]) is None)}
        return {"base": esnac_descriptor(arch, None, max_layers), "pos": pos, "channels": channels, "unsafe": unsafe}
