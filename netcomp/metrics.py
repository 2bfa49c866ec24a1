"""Cost metrics of an architecture: parameters and MACs computed analytically from the IR, and latency.

MACs follow TAS/LeGR: multiply-accumulates of conv and linear layers only (BN, ReLU, pools and adds are
free). Parameters count every trainable tensor, BN affine included (N2N/ESNAC).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from netcomp.arch import Arch, Node, node_macs  # node_macs lives with the IR (its features need it)


def node_params(arch: Arch, name: str) -> int:
    """Trainable parameters of one node."""
    node = arch.node(name)
    cin = arch.in_shape(name)[0]
    cout = arch.shapes[name][0]
    if node.op == "conv":
        groups = arch.conv_groups(node)
        return cout * (cin // groups) * node.kernel**2 + (cout if node.bias else 0)
    if node.op == "linear":
        return cout * cin + (cout if node.bias else 0)
    if node.op == "bn":
        return 2 * cout
    return 0


def count_params(arch: Arch) -> int:
    """Total trainable parameters (equals sum of p.numel() of the built module)."""
    return sum(node_params(arch, n.name) for n in arch.nodes)


def count_macs(arch: Arch) -> int:
    """Total conv + linear MACs for one image."""
    return sum(node_macs(arch, n.name) for n in arch.nodes)


@dataclass(frozen=True)
class LayerRow:
    """One row of the layer table: what `python -m netcomp summary` prints."""

    name: str
    op: str
    out_shape: tuple[int, ...]
    params: int
    macs: int
    attrs: str


def layer_table(arch: Arch) -> list[LayerRow]:
    """Every non-input node with its output shape, parameters, MACs and attributes."""
    rows = []
    for node in arch.nodes[1:]:
        attrs = []
        if node.op in ("conv", "maxpool", "avgpool"):
            attrs.append(f"k{node.kernel} s{node.stride} p{node.padding}")
        if node.op == "conv" and arch.conv_groups(node) > 1:
            attrs.append("dw" if node.depthwise else f"g{node.groups}")
        if node.op == "slice":
            attrs.append(f"channels {node.start}:{node.start + node.out_channels}")
        if node.role != "main":
            attrs.append(node.role)
        if len(node.inputs) > 1:
            attrs.append("<- " + ", ".join(node.inputs))
        rows.append(LayerRow(node.name, node.op, arch.shapes[node.name], node_params(arch, node.name),
                             node_macs(arch, node.name), " ".join(attrs)))
    return rows


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], device: str | torch.device = "cpu",
                    batch_size: int = 1, warmup: int = 5, repeats: int = 20) -> float:
    """Median forward latency in seconds: CUDA events on GPU, perf_counter on CPU, after warm-up."""
    device = torch.device(device)
    model = model.to(device).eval()
    x = torch.randn(batch_size, *input_shape, device=device)
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            model(x)
        for _ in range(repeats):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(x)
                end.record()
                torch.cuda.synchronize(device)
                times.append(start.elapsed_time(end) / 1000.0)
            else:
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---------------------------------------------------------------------------- cost as a function of group widths
class GroupCostModel:
    """MACs and parameters of ``arch`` as a cheap function of the widths of its shrinkable channel groups.

    Agents that decide widths group by group (an AMC budget wall, LeGR's greedy pruning) need the cost of
    many candidate width vectors; building and counting a student :class:`Arch` for each is far too slow.
    Every tensor's channel count is an affine function of the group widths (a group sets its producers'
    widths; BN, ReLU, pools, adds and depthwise convs pass channels through; a flatten multiplies them by the
    map area; a concat sums them), so each conv, linear and BN layer's cost is a product of two such forms
    and the model is exact: ``macs(w) == count_macs(set_widths(arch, w))`` and likewise for params.

    Widths are given as a mapping ``gid -> width`` (missing groups keep the teacher's width) or as a vector in
    :attr:`gids` order. As in :func:`netcomp.surgery.set_widths`, the width of a group produced by grouped
    convs is rounded up to a multiple of their groups; :attr:`granularity` is the step a width must take
    so that every grouped conv or shuffle reading the group stays divisible (1 for most networks).
    """

    def __init__(self, arch: Arch) -> None:
        self.arch = arch
        groups = tuple(g for g in arch.groups if g.shrinkable)
        #: Ids of the shrinkable groups in node order (the order of width vectors).
        self.gids: tuple[str, ...] = tuple(g.gid for g in groups)
        #: The teacher's width of each group.
        self.full = np.array([g.width for g in groups], dtype=np.int64)
        self._pos = {gid: i for i, gid in enumerate(self.gids)}
        self._round = np.array([max(arch.node(p).groups for p in g.producers) for g in groups], dtype=np.int64)
        n = len(groups)
        forms: dict[str, tuple[np.ndarray, int]] = {}
        rows: list[tuple] = []  # (in coef, in const, out coef, out const, k2, spatial, groups, depthwise, bias, op)
        granularity = [int(r) for r in self._round]
        for node in arch.nodes:
            forms[node.name] = form = self._channel_form(node, forms, n)
            if node.op not in ("conv", "linear", "bn", "shuffle"):
                continue
            src = forms[node.inputs[0]]
            if node.op == "shuffle" or (node.op == "conv" and not node.depthwise and node.groups > 1):
                for i in np.flatnonzero(src[0]):  # widths feeding a grouped op must stay divisible by its groups
                    granularity[i] = math.lcm(granularity[i], node.groups)
            if node.op == "shuffle":
                continue
            out = arch.shapes[node.name]
            spatial = out[1] * out[2] if len(out) == 3 else 1
            k2 = node.kernel**2 if node.op == "conv" else 1
            rows.append((src[0], src[1], form[0], form[1], k2, spatial, node.groups if node.op == "conv" else 1,
                         node.op == "conv" and node.depthwise, bool(node.bias), node.op))
        self.granularity: tuple[int, ...] = tuple(granularity)
        t = len(rows)
        self._a_in = np.array([r[0] for r in rows], dtype=np.int64).reshape(t, n)
        self._b_in = np.array([r[1] for r in rows], dtype=np.int64)
        self._a_out = np.array([r[2] for r in rows], dtype=np.int64).reshape(t, n)
        self._b_out = np.array([r[3] for r in rows], dtype=np.int64)
        self._k2 = np.array([r[4] for r in rows], dtype=np.int64)
        self._spatial = np.array([r[5] for r in rows], dtype=np.int64)
        self._conv_groups = np.array([r[6] for r in rows], dtype=np.int64)
        self._depthwise = np.array([r[7] for r in rows], dtype=bool)
        self._bias = np.array([r[8] for r in rows], dtype=np.int64)
        self._is_bn = np.array([r[9] == "bn" for r in rows], dtype=bool)
        #: For each group, the rows whose cost depends on its width (for incremental updates).
        self._rows_of = [np.flatnonzero((self._a_in[:, i] != 0) | (self._a_out[:, i] != 0)) for i in range(n)]

    def _channel_form(self, node: Node, forms: dict[str, tuple[np.ndarray, int]], n: int) -> tuple[np.ndarray, int]:
        """(coefficients over the group widths, constant) of a node's output channel count."""
        zero = np.zeros(n, dtype=np.int64)
        if node.op == "input":
            return zero, self.arch.in_channels
        if node.op in ("conv", "linear") and not node.depthwise:
            gid = self.arch.group_of[node.name]
            if gid in self._pos:
                coef = zero.copy()
                coef[self._pos[gid]] = 1
                return coef, 0
            return zero, self.arch.shapes[node.name][0]
        if node.op == "concat":
            return sum((forms[i][0] for i in node.inputs), zero), sum(forms[i][1] for i in node.inputs)
        if node.op == "slice":  # fixed channel positions of a fixed-width input (a slice's input never shrinks)
            return zero, self.arch.shapes[node.name][0]
        coef, const = forms[node.inputs[0]]
        in_shape = self.arch.in_shape(node.name)
        if node.op == "flatten" and len(in_shape) == 3:
            area = in_shape[1] * in_shape[2]
            return coef * area, const * area
        return coef, const  # passthrough ops, adds, depthwise convs and shuffles keep their input's channels

    # ------------------------------------------------------------------ widths
    def widths(self, widths: Mapping[str, int] | Sequence[int] | np.ndarray) -> np.ndarray:
        """A width vector in :attr:`gids` order, rounded like set_widths; ValueError for bad keys or values."""
        if isinstance(widths, Mapping):
            vec = self.full.copy()
            for gid, width in widths.items():
                if gid not in self._pos:
                    raise ValueError(f"GroupCostModel: {gid!r} is not a shrinkable group; groups are {self.gids}")
                vec[self._pos[gid]] = int(width)
        else:
            vec = np.asarray(widths, dtype=np.int64).reshape(-1)
            if vec.shape != self.full.shape:
                raise ValueError(f"GroupCostModel: {vec.size} widths given, expected {len(self.gids)} (one per group)")
        if np.any(vec < 1) or np.any(vec > self.full):
            raise ValueError(f"GroupCostModel: widths must lie in [1, teacher width]; got {vec.tolist()}")
        return -(-vec // self._round) * self._round

    def _row_costs(self, w: np.ndarray, rows: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
        """(MACs, params) of the selected rows for rounded width vectors: one column of ``w`` per vector."""
        w = w.reshape(len(self.gids), -1)
        cin = self._a_in[rows] @ w + self._b_in[rows, None]
        cout = self._a_out[rows] @ w + self._b_out[rows, None]
        per_out = np.where(self._depthwise[rows, None], 1, cin // self._conv_groups[rows, None]) * self._k2[rows, None]
        is_bn = self._is_bn[rows, None]
        macs = np.where(is_bn, 0, per_out * cout * self._spatial[rows, None])
        params = np.where(is_bn, 2 * cout, per_out * cout + self._bias[rows, None] * cout)
        return macs.sum(axis=0), params.sum(axis=0)

    def macs(self, widths: Mapping[str, int] | Sequence[int] | np.ndarray) -> int:
        """Conv + linear MACs of the network with these group widths (equals count_macs of the student)."""
        return int(self._row_costs(self.widths(widths), slice(None))[0][0])

    def params(self, widths: Mapping[str, int] | Sequence[int] | np.ndarray) -> int:
        """Trainable parameters of the network with these group widths (equals count_params of the student)."""
        return int(self._row_costs(self.widths(widths), slice(None))[1][0])

    def cost(self, widths: Mapping[str, int] | Sequence[int] | np.ndarray, metric: str = "macs") -> int:
        """``macs`` or ``params`` by name (ValueError for another metric)."""
        if metric not in ("macs", "params"):
            raise ValueError(f"unknown cost metric {metric!r}; expected 'macs' or 'params'")
        return self.macs(widths) if metric == "macs" else self.params(widths)

    def delta(self, widths: Sequence[int] | np.ndarray, index: int, new_width: int,
              metric: str = "macs") -> int:
        """The change in cost when group ``index`` goes from its width in ``widths`` to ``new_width``.

        Only the layers that read or write that group are recomputed, so a greedy that changes one group at a
        time (LeGR) pays for a few layers per step instead of the whole network.
        """
        if metric not in ("macs", "params"):
            raise ValueError(f"unknown cost metric {metric!r}; expected 'macs' or 'params'")
        old = self.widths(widths)
        if not 1 <= int(new_width) <= self.full[index]:
            raise ValueError(f"GroupCostModel: width {new_width} outside [1, {self.full[index]}]")
        step = self._round[index]
        both = np.stack([old, old], axis=1)
        both[index, 1] = -(-int(new_width) // step) * step
        costs = self._row_costs(both, self._rows_of[index])[0 if metric == "macs" else 1]
        return int(costs[1] - costs[0])

    def tracker(self, widths: Mapping[str, int] | Sequence[int] | np.ndarray | None = None) -> CostTracker:
        """A running cost that follows one group's width change at a time (teacher widths by default)."""
        return CostTracker(self, self.widths({} if widths is None else widths))

    def dependent_cost(self, index: int, metric: str = "macs") -> int:
        """Cost, at the teacher's widths, of the layers whose cost depends on group ``index``'s width.

        The share of the network a group controls (AMC's per-layer FLOPs feature, for a coupled group).
        """
        if metric not in ("macs", "params"):
            raise ValueError(f"unknown cost metric {metric!r}; expected 'macs' or 'params'")
        costs = self._row_costs(self.full, self._rows_of[index])
        return int(costs[0 if metric == "macs" else 1][0])


class CostTracker:
    """MACs and params of a width vector, updated in place as single groups change width.

    A greedy that removes one filter at a time (LeGR) asks for the cost after every removal; the tracker
    keeps every layer's input and output channel counts and recomputes only the few layers that read or
    write the changed group, in plain integer arithmetic. Always equal to ``model.macs(tracker.widths)``.
    """

    def __init__(self, model: GroupCostModel, widths: np.ndarray) -> None:
        self.model = model
        self.widths = [int(w) for w in widths]
        m = model
        full = np.asarray(self.widths, dtype=np.int64)
        self._cin = (m._a_in @ full + m._b_in).tolist()
        self._cout = (m._a_out @ full + m._b_out).tolist()
        self._k2, self._spatial, self._groups = m._k2.tolist(), m._spatial.tolist(), m._conv_groups.tolist()
        self._dw, self._bias, self._bn = m._depthwise.tolist(), m._bias.tolist(), m._is_bn.tolist()
        self._coef = [[(int(r), int(m._a_in[r, i]), int(m._a_out[r, i])) for r in rows]
                      for i, rows in enumerate(m._rows_of)]
        costs = [self._row(r) for r in range(len(self._cin))]
        self._row_macs = [c[0] for c in costs]
        self._row_params = [c[1] for c in costs]
        self.macs = sum(self._row_macs)
        self.params = sum(self._row_params)

    def _row(self, r: int) -> tuple[int, int]:
        cin, cout = self._cin[r], self._cout[r]
        if self._bn[r]:
            return 0, 2 * cout
        per_out = (1 if self._dw[r] else cin // self._groups[r]) * self._k2[r]
        return per_out * cout * self._spatial[r], per_out * cout + self._bias[r] * cout

    def set(self, index: int, width: int) -> None:
        """Give group ``index`` a new width (rounded like set_widths) and update the totals."""
        full, step = int(self.model.full[index]), int(self.model._round[index])
        if not 1 <= int(width) <= full:
            raise ValueError(f"CostTracker: width {width} for group {index} outside [1, {full}]")
        new = -(-int(width) // step) * step
        diff = new - self.widths[index]
        self.widths[index] = new
        for r, a_in, a_out in self._coef[index]:
            self._cin[r] += diff * a_in
            self._cout[r] += diff * a_out
            macs, params = self._row(r)
            self.macs += macs - self._row_macs[r]
            self.params += params - self._row_params[r]
            self._row_macs[r], self._row_params[r] = macs, params
