"""Architecture IR: a network as a graph of layer nodes, plus everything derived from that graph.

Every model in the project (teachers and students) is an :class:`Arch`; real ``nn.Module`` objects are
generated from it (:mod:`netcomp.surgery`). Keeping the network as data lets the engine reason about it
without running it: shapes, channel-coupling groups (tensors joined by residual adds), which layers may be
removed, per-layer descriptors for the agents, parameter and MAC counts, and a canonical key.

Conventions
- ``Arch.nodes`` is in topological order; the first node is the single ``input`` and the last node
  produces the logits.
- Node names are stable dotted module paths ("layer1.0.conv1"); the built module stores the node's weights
  under that path, so a student inherits a teacher's weights by name.
- A conv/linear node's ``keep`` says which of the *teacher's* output channels it kept (weight inheritance);
  ``None`` means all of them (or a fresh layer).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

#: Elementwise activations the IR knows: the zoo uses "relu"; the others come with imported models
#: (netcomp.fx_import): MobileNetV2's ReLU6, MobileNetV3's hard-swish and hard-sigmoid, EfficientNet's SiLU
#: and the sigmoid gate of squeeze-and-excitation blocks.
ACTIVATIONS = ("relu", "relu6", "hardswish", "silu", "sigmoid", "hardsigmoid")
#: Ops that the IR knows. "gap" is a global average pool to 1x1 (works for any image size). "mul" multiplies
#: a (C, H, W) tensor by a (C, 1, 1) gate (squeeze-and-excitation); "slice" takes ``out_channels`` channels
#: from channel ``start`` on (ShuffleNetV2's channel split).
OPS = (
    "input", "conv", "bn", "relu", "maxpool", "avgpool", "gap", "linear",
    "flatten", "add", "identity", "concat", "shuffle",
    *ACTIVATIONS[1:], "mul", "slice",
)
#: Ops whose output channels are their input's channels, index for index.
PASSTHROUGH_OPS = ("bn", "relu", "maxpool", "avgpool", "gap", "identity", *ACTIVATIONS[1:])
#: Ops that count as a "layer" for agents (N2N tokens, removal/shrink targets, descriptors).
LAYER_OPS = ("conv", "bn", "relu", "maxpool", "avgpool", "gap", "linear", *ACTIVATIONS[1:])
#: Linear layers wider than this are invalid (N2N's LINEAR_THRESHOLD).
LINEAR_THRESHOLD = 50_000

Shape = tuple[int, ...]


class ArchError(ValueError):
    """An architecture that cannot be built: the message says which node and why."""


@dataclass(frozen=True)
class Node:
    """One layer (or wiring op) of an architecture.

    Attributes are only meaningful for the ops that use them: ``out_channels``, ``bias`` for conv and
    linear; ``kernel``/``stride``/``padding`` for conv and pools; ``groups`` for conv (``depthwise``
    makes groups follow the input width) and for shuffle. ``role`` is "main" or "shortcut" (projection
    shortcut layers), ``block`` and ``stage`` tag residual blocks and stages for block-level surgery.
    ``start`` is a slice's first channel.
    """

    name: str
    op: str
    inputs: tuple[str, ...] = ()
    out_channels: int = 0
    kernel: int = 0
    stride: int = 1
    padding: int = 0
    groups: int = 1
    depthwise: bool = False
    bias: bool = False
    role: str = "main"
    block: str = ""
    stage: str = ""
    keep: tuple[int, ...] | None = None
    start: int = 0

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ArchError(f"node {self.name!r}: unknown op {self.op!r}; expected one of {OPS}")


@dataclass(frozen=True)
class ChannelGroup:
    """Tensors whose channels must stay aligned (joined by adds or a depthwise conv).

    ``producers`` are the conv/linear nodes whose output width is the group's width; shrinking the group
    means giving all of them the same kept channels. ``shrinkable`` is False for the image channels, the
    logits and widths derived from other groups (concat, shuffle).
    """

    gid: str
    width: int
    producers: tuple[str, ...]
    members: tuple[str, ...]
    shrinkable: bool


@dataclass(frozen=True)
class Arch:
    """A network: nodes in topological order plus the input it expects and the classes it predicts."""

    nodes: tuple[Node, ...]
    in_channels: int
    image_size: int
    num_classes: int
    family: str = ""

    # ------------------------------------------------------------------ lookup
    @cached_property
    def index(self) -> dict[str, int]:
        """Position of each node by name."""
        idx = {n.name: i for i, n in enumerate(self.nodes)}
        if len(idx) != len(self.nodes):
            raise ArchError("duplicate node names")
        return idx

    def node(self, name: str) -> Node:
        """The node called ``name`` (KeyError with the valid names' count if absent)."""
        try:
            return self.nodes[self.index[name]]
        except KeyError:
            raise KeyError(f"no node {name!r} in this {self.family or 'arch'} ({len(self.nodes)} nodes)") from None

    @cached_property
    def consumers(self) -> dict[str, tuple[str, ...]]:
        """Names of the nodes that read each node's output."""
        out: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                out[i].append(n.name)
        return {k: tuple(v) for k, v in out.items()}

    @property
    def output(self) -> Node:
        return self.nodes[-1]

    # ------------------------------------------------------------------ shapes
    @cached_property
    def shapes(self) -> dict[str, Shape]:
        """Output shape of every node, without batch: (C, H, W) or (F,). Raises ArchError if invalid."""
        return infer_shapes(self)

    def in_shape(self, name: str) -> Shape:
        """Shape of the (first) tensor a node reads."""
        node = self.node(name)
        if not node.inputs:
            return (self.in_channels, self.image_size, self.image_size)
        return self.shapes[node.inputs[0]]

    def in_channels_of(self, name: str) -> int:
        return self.in_shape(name)[0]

    def conv_groups(self, node: Node) -> int:
        """Effective groups of a conv node (depthwise convs follow their input width)."""
        return self.in_channels_of(node.name) if node.depthwise else node.groups

    # ------------------------------------------------------------------ layers
    @cached_property
    def layers(self) -> tuple[str, ...]:
        """Names of the layer nodes (LAYER_OPS) in order: the sequence agents act on."""
        return tuple(n.name for n in self.nodes if n.op in LAYER_OPS)

    @cached_property
    def groups(self) -> tuple[ChannelGroup, ...]:
        return channel_groups(self)

    @cached_property
    def group_of(self) -> dict[str, str]:
        """Channel-group id of every node's output (flat tensors without channels map to '')."""
        out = {}
        for g in self.groups:
            for m in g.members:
                out[m] = g.gid
        return out

    def group(self, gid: str) -> ChannelGroup:
        for g in self.groups:
            if g.gid == gid:
                return g
        raise KeyError(f"no channel group {gid!r}; groups are {[g.gid for g in self.groups]}")

    @cached_property
    def removal_breaks(self) -> frozenset[str]:
        """Layers whose removal on its own leaves a network whose shapes do not work.

        A width-changing 1x1 conv inside a residual block (the add would join two widths), a pool whose
        removal makes the classifier wider than LINEAR_THRESHOLD, ... Only layers whose output shape differs
        from their input's can break anything, so only those are tried (computed once per architecture).
        """
        out = set()
        for name in self.layers:
            if self.in_shape(name) == self.shapes[name]:
                continue
            try:
                infer_shapes(without_layers(self, [name]))
            except ArchError:
                out.add(name)
        return frozenset(out)

    def with_nodes(self, nodes: Iterable[Node]) -> Arch:
        """A copy with other nodes (derived caches are recomputed lazily)."""
        return replace(self, nodes=tuple(nodes))


# ---------------------------------------------------------------------------- shape inference
def _spatial_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def infer_shapes(arch: Arch, strict: bool = True) -> dict[str, Shape]:
    """Propagate shapes through the graph; ArchError names the first node that cannot work.

    ``strict=False`` never raises for a node's inputs: a node that cannot work gets the shape it declares
    (:func:`_declared_shape`), so an invalid network still has the widths its layers ask for (ESNAC's
    representation of an invalid student reads them). A graph that is not topologically ordered still raises.
    """
    shapes: dict[str, Shape] = {}
    for node in arch.nodes:
        ins = []
        for i in node.inputs:
            if i not in shapes:
                raise ArchError(f"node {node.name!r} reads {i!r}, which is not an earlier node")
            ins.append(shapes[i])
        try:
            shapes[node.name] = _node_shape(arch, node, ins)
        except ArchError:
            if strict:
                raise
            shapes[node.name] = _declared_shape(node, ins)
    last = shapes[arch.nodes[-1].name]
    if strict and last != (arch.num_classes,):
        raise ArchError(f"the output has shape {last}, expected ({arch.num_classes},)")
    return shapes


def _declared_shape(node: Node, ins: list[Shape]) -> Shape:
    """The shape a node that cannot work asks for: a conv its width at its first input's (stepped) size, a
    linear its width, a concat the sum of its inputs' channels, anything else its first input's shape."""
    x = ins[0] if ins else (0,)
    if node.op == "linear":
        return (node.out_channels,)
    if node.op == "concat":
        return (sum(s[0] for s in ins), *x[1:])
    if node.op == "slice":
        return (node.out_channels, *x[1:])
    if node.op == "conv" and len(x) == 3:
        size = (_spatial_out(s, node.kernel, node.stride, node.padding) for s in x[1:])
        return (x[0] if node.depthwise else node.out_channels, *size)
    return x


def _node_shape(arch: Arch, node: Node, ins: list[Shape]) -> Shape:
    op = node.op
    if op == "input":
        return (arch.in_channels, arch.image_size, arch.image_size)
    if not ins:
        raise ArchError(f"node {node.name!r} ({op}) has no input")
    x = ins[0]
    if op == "linear":
        if len(x) != 1:
            raise ArchError(f"linear {node.name!r} needs a flat input, got shape {x}")
        if x[0] > LINEAR_THRESHOLD:
            raise ArchError(f"linear {node.name!r} has {x[0]} inputs (> {LINEAR_THRESHOLD})")
        return (node.out_channels,)
    if op == "flatten":
        return (int(np.prod(x)),)
    if op in ("add", "concat"):
        return _merge_shape(node, ins)
    if op == "mul":
        return _gate_shape(node, ins)
    if (op in ACTIVATIONS or op in ("identity", "bn")) and len(x) == 1:
        return x
    if len(x) != 3:
        raise ArchError(f"{op} {node.name!r} needs a (C, H, W) input, got shape {x}")
    c, h, w = x
    if op == "conv":
        return _conv_shape(node, c, h, w)
    if op in ("maxpool", "avgpool"):
        oh, ow = (_spatial_out(s, node.kernel, node.stride, node.padding) for s in (h, w))
        if oh < 1 or ow < 1:
            raise ArchError(f"{op} {node.name!r}: spatial size {h}x{w} collapses to {oh}x{ow}")
        return (c, oh, ow)
    if op == "gap":
        return (c, 1, 1)
    if op == "slice":
        return _slice_shape(node, c, h, w)
    if op == "shuffle" and c % node.groups:
        raise ArchError(f"shuffle {node.name!r}: {c} channels not divisible by {node.groups} groups")
    return x  # bn, activations, identity, shuffle


def _slice_shape(node: Node, c: int, h: int, w: int) -> Shape:
    if node.out_channels < 1 or node.start < 0 or node.start + node.out_channels > c:
        raise ArchError(f"slice {node.name!r} takes channels [{node.start}, {node.start + node.out_channels}) "
                        f"of a {c}-channel input")
    return (node.out_channels, h, w)


def _gate_shape(node: Node, ins: list[Shape]) -> Shape:
    """A mul's output: its inputs have one channel count and each either the largest map or a 1x1 gate."""
    full = max(ins, key=lambda s: s[1] * s[2] if len(s) == 3 else 0)
    if any(len(s) != 3 or s[0] != full[0] or s[1:] not in (full[1:], (1, 1)) for s in ins):
        raise ArchError(f"mul {node.name!r} joins tensors of shapes {ins}; expected one shape, or a (C, 1, 1) gate")
    return full


def _conv_shape(node: Node, c: int, h: int, w: int) -> Shape:
    groups = c if node.depthwise else node.groups
    out = c if node.depthwise else node.out_channels  # depthwise convs follow their input width
    if out < 1:
        raise ArchError(f"conv {node.name!r} has {out} output channels")
    if c % groups or out % groups:
        raise ArchError(f"conv {node.name!r}: {c} in / {out} out channels not divisible by {groups} groups")
    oh, ow = (_spatial_out(s, node.kernel, node.stride, node.padding) for s in (h, w))
    if oh < 1 or ow < 1:
        raise ArchError(f"conv {node.name!r}: spatial size {h}x{w} collapses to {oh}x{ow}")
    return (out, oh, ow)


def _merge_shape(node: Node, ins: list[Shape]) -> Shape:
    if node.op == "add":
        if any(s != ins[0] for s in ins):
            raise ArchError(f"add {node.name!r} joins tensors of different shapes {ins}")
        return ins[0]
    if any(len(s) != 3 or s[1:] != ins[0][1:] for s in ins):
        raise ArchError(f"concat {node.name!r} joins tensors of different spatial sizes {ins}")
    return (sum(s[0] for s in ins), *ins[0][1:])


# ---------------------------------------------------------------------------- channel coupling
class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def _is_passthrough(arch: Arch, node: Node) -> bool:
    """True if the node's output channels are its input's channels, index for index."""
    if node.op in PASSTHROUGH_OPS or node.op in ("add", "mul"):
        return True
    if node.op == "conv" and node.depthwise:
        return True
    if node.op == "flatten":
        shape = arch.in_shape(node.name)
        return len(shape) == 3 and shape[1:] == (1, 1)
    return False


def channel_groups(arch: Arch) -> tuple[ChannelGroup, ...]:
    """Coupling groups found from the graph: every add ties its inputs, passthrough ops keep channels."""
    shapes = arch.shapes
    uf = _UnionFind()
    for node in arch.nodes:
        uf.find(node.name)
        if node.inputs and _is_passthrough(arch, node):
            for i in node.inputs:
                uf.union(node.inputs[0], i)
            uf.union(node.inputs[0], node.name)
    members: dict[str, list[str]] = {}
    for node in arch.nodes:
        members.setdefault(uf.find(node.name), []).append(node.name)
    groups = []
    for names in members.values():
        nodes = [arch.node(n) for n in names]
        producers = tuple(n.name for n in nodes if n.op in ("conv", "linear") and not n.depthwise)
        fixed = any(n.op in ("input", "concat", "shuffle", "slice") for n in nodes) or arch.nodes[-1].name in names
        # a concat's width is the sum of its inputs' (and a slice takes fixed channel positions): changing one
        # would break the tensors coupled to it
        fixed = fixed or any(arch.node(c).op in ("concat", "slice") for n in names for c in arch.consumers[n])
        groups.append(ChannelGroup(
            gid=names[0], width=shapes[names[0]][0], producers=producers,
            members=tuple(names), shrinkable=bool(producers) and not fixed,
        ))
    return tuple(groups)


# ---------------------------------------------------------------------------- removability
def removable_layers(arch: Arch, rule: str = "n2n") -> tuple[str, ...]:
    """Layers an agent may remove.

    - ``n2n``: N2N stage 1: everything but the first and last layer, strided convs, linears, average
      pools and projection-shortcut layers (N2N never acts on shortcuts). Removing a stride-1 conv that
      changes width is allowed when the next layers can be fitted to the incoming width.
    - ``esnac``: ESNAC: layers whose input and output shapes are equal (BN, ReLU, same-width stride-1
      convs, shortcut BNs), never the first or last layer.

    Under both rules a layer is listed only if removing it alone leaves a network whose shapes work
    (:attr:`Arch.removal_breaks`): e.g. MobileNetV2's width-changing 1x1 convs inside residual blocks are
    not removable, since the block's add would join two different widths.
    """
    layers = arch.layers
    first, last = layers[0], layers[-1]
    if rule not in ("n2n", "esnac"):
        raise ValueError(f"unknown removal rule {rule!r}; expected 'n2n' or 'esnac'")
    out = []
    for name in layers:
        node = arch.node(name)
        if name in (first, last) or name in arch.removal_breaks:
            continue
        if rule == "n2n":
            fixed = (
                (node.op == "conv" and node.stride != 1)
                or node.op in ("linear", "avgpool", "gap")
                or node.role == "shortcut"
            )
        else:
            fixed = arch.in_shape(name) != arch.shapes[name] or node.op in ("linear", "gap")
        if not fixed:
            out.append(name)
    return tuple(out)


def without_layers(arch: Arch, names: Iterable[str]) -> Arch:
    """The raw removal transform: each named node becomes the identity and its consumers read its input.

    No checks (see :func:`netcomp.surgery.remove_layers`, which validates the names); shapes are inferred
    lazily, so an unworkable result raises ArchError only when its shapes are asked for.
    """
    names = set(names)
    return drop_identities(arch.with_nodes(replace(n, op="identity") if n.name in names else n for n in arch.nodes))


# ---------------------------------------------------------------------------- descriptors
#: N2N's layer-type index (reference code order), kept so that N2N policies read the same integers.
N2N_TYPE = {"conv": 1, "maxpool": 2, "relu": 3, "bn": 4, "linear": 5, "avgpool": 8, "gap": 8,
            **dict.fromkeys(ACTIVATIONS[1:], 3)}  # N2N knows one activation: every other one reads as ReLU
#: ESNAC's 10-way one-hot order.
ESNAC_TYPES = ("identity", "flatten", "concat", "shuffle", "conv", "maxpool", "avgpool", "relu", "bn", "linear")
#: Ops outside ESNAC's ten types and the type they read as: a global pool is an average pool, every
#: activation a ReLU, a channel slice a wiring op like a concat.
ESNAC_ALIAS = {"gap": "avgpool", "slice": "concat", **dict.fromkeys(ACTIVATIONS[1:], "relu")}


def _geometry(node: Node, in_shape: Shape) -> tuple[int, int, int]:
    """(kernel, stride, padding) as N2N reads them; a global pool acts as a pool over the whole map."""
    if node.op == "gap":
        size = in_shape[1]
        return size, size, 0
    if node.op in ("conv", "maxpool", "avgpool"):
        return node.kernel, node.stride, node.padding
    return 0, 0, 0


def _skip_positions(arch: Arch) -> dict[str, tuple[int, int]]:
    """N2N skip features: the j-th of n main-branch layers of a residual block gets (j, n-1-j)."""
    out: dict[str, tuple[int, int]] = {}
    blocks: dict[str, list[str]] = {}
    for name in arch.layers:
        node = arch.node(name)
        if node.block and node.role == "main":
            blocks.setdefault(node.block, []).append(name)
    for names in blocks.values():
        for j, name in enumerate(names):
            out[name] = (j, len(names) - 1 - j)
    return out


def n2n_descriptors(arch: Arch) -> np.ndarray:
    """One row per layer: (type, kernel, stride, padding, outputs, skip start, skip end), raw integers.

    Raw values as N2N feeds them; #outputs is out_channels for conv/linear and 0 otherwise.
    """
    skips = _skip_positions(arch)
    rows = []
    for name in arch.layers:
        node = arch.node(name)
        k, s, p = _geometry(node, arch.in_shape(name))
        outputs = arch.shapes[name][0] if node.op in ("conv", "linear") else 0
        rows.append((N2N_TYPE[node.op], k, s, p, outputs, *skips.get(name, (0, 0))))
    return np.asarray(rows, dtype=np.float32).reshape(-1, 7)


#: ESNAC's one-hot length for edge distances, raised from the reference's 128 so that every zoo model fits
#: (ResNet-110 has 334 ESNAC nodes, ResNet-56 and ShuffleNet 172, MobileNetV2 153). One constant for every
#: teacher, so a learned embedding transfers.
ESNAC_MAX_LAYERS = 384
#: Width of an ESNAC node vector: 10-way type one-hot, (k, s, p, groups, in, out), in and out distance one-hots.
ESNAC_BASE = 16


def esnac_nodes(arch: Arch) -> tuple[str, ...]:
    """ESNAC's node sequence: every node but the input, the adds and identities, in order.

    ESNAC has no add node: a node sums all its inputs, so a residual add is the input of the ReLU after it.
    Our adds are folded the same way (see :func:`esnac_edges`); ResNet-18 gives ESNAC's 60 nodes, VGG-19 55.
    A squeeze-and-excitation ``mul`` is folded like an add.
    """
    return tuple(n.name for n in arch.nodes if n.op not in ("input", "add", "mul", "identity"))


def esnac_edges(arch: Arch, rows: Iterable[str] | None = None) -> set[tuple[str, str]]:
    """ESNAC's edges (i -> j) between ``rows`` (default :func:`esnac_nodes`): data edges seen through every
    other node (adds, identities that are not rows)."""
    rows = set(esnac_nodes(arch) if rows is None else rows)
    sources: dict[str, set[str]] = {}
    for node in arch.nodes:
        srcs: set[str] = set()
        for i in node.inputs:
            srcs |= {i} if i in rows else sources.get(i, set())
        sources[node.name] = srcs
    return {(s, n) for n in rows for s in sources[n]}


def _bypassed(teacher: Arch, edges: set[tuple[str, str]], kept: set[str]) -> dict[str, set[str]]:
    """For each node, the nodes reachable along teacher edges whose interior nodes the student deleted
    (are not in ``kept``): the edges that a deletion, not an added skip, puts into a student's graph."""
    succ: dict[str, list[str]] = {}
    for s, d in edges:
        succ.setdefault(s, []).append(d)
    out = {}
    for start in esnac_nodes(teacher):
        seen, stack = set(), list(succ.get(start, ()))
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n not in kept:
                stack.extend(succ.get(n, ()))
        out[start] = seen
    return out


def esnac_descriptor(teacher: Arch, student: Arch | None = None, max_layers: int = ESNAC_MAX_LAYERS) -> np.ndarray:
    """ESNAC's representation of a student: one 16 + 2 * max_layers row per node of the *teacher*.

    Rows follow the teacher's fixed node sequence (:func:`esnac_nodes`); a layer the student removed is an
    Identity row (type one-hot only) that keeps the teacher's edges, so every student of one teacher has the
    same length. A row is the 10-way type one-hot (ESNAC_TYPES; a global pool reads as AvgPool2d), then raw
    (kernel, stride, padding, groups, in_channels, out_channels), in/out channels filled for conv and linear
    only, then a one-hot 'distance back' (i - j) for every edge j -> i and 'distance forward' (j - i) for
    every edge i -> j. Raw values, no normalisation, as ESNAC. ``student=None`` describes the teacher.

    Edges are the teacher's plus every other edge of the student between rows it kept. A removed row that
    the student keeps as an ``identity`` node of the same name (the edit space's students, as ESNAC's
    candidates) keeps its own edges, so every added skip is an edge, one from a removed node included. A row
    the student deleted (another space's surgery) is seen through: a student edge along a teacher path
    through deleted rows is the deletion's, not a new edge. An invalid student (shapes that do not work)
    still has a representation: its channel columns are the widths its layers declare.
    """
    student = teacher if student is None else student
    rows = esnac_nodes(teacher)
    if len(rows) > max_layers:
        raise ValueError(f"{len(rows)} nodes exceed max_layers={max_layers}; raise max_layers")
    pos = {name: i for i, name in enumerate(rows)}
    kept = {name for name in student.index if name in pos}
    t_edges = esnac_edges(teacher)
    edges = set(t_edges)
    if student is not teacher:
        reach = _bypassed(teacher, t_edges, kept)
        edges |= {(s, d) for s, d in esnac_edges(student, kept) if d not in reach[s]}
    shapes = _shapes_of(student)
    out = np.zeros((len(rows), ESNAC_BASE + 2 * max_layers), dtype=np.float32)
    for i, name in enumerate(rows):
        node = student.node(name) if name in kept else None
        if node is None or node.op == "identity":
            out[i, ESNAC_TYPES.index("identity")] = 1.0
            continue
        out[i, ESNAC_TYPES.index(ESNAC_ALIAS.get(node.op, node.op))] = 1.0
        out[i, 10:16] = _esnac_attributes(node, shapes[node.inputs[0]], shapes[name])
    for s, d in edges:
        out[pos[d], ESNAC_BASE + pos[d] - pos[s]] = 1.0
        out[pos[s], ESNAC_BASE + max_layers + pos[d] - pos[s]] = 1.0
    return out


def _shapes_of(arch: Arch) -> dict[str, Shape]:
    """The network's shapes, or, where they do not work, the shapes its nodes declare."""
    try:
        return arch.shapes
    except ArchError:
        return infer_shapes(arch, strict=False)


def _esnac_attributes(node: Node, in_shape: Shape, out_shape: Shape) -> tuple[int, ...]:
    """ESNAC's (kernel, stride, padding, groups, in_channels, out_channels) of a node; channels (and groups)
    for conv and linear only."""
    k, s, p = _geometry(node, in_shape)
    if node.op not in ("conv", "linear"):
        return k, s, p, 0, 0, 0
    groups = (in_shape[0] if node.depthwise else node.groups) if node.op == "conv" else 0
    return k, s, p, groups, in_shape[0], out_shape[0]


#: Fixed scales for normalised features (never per-teacher statistics, so a policy transfers).
FEATURE_SCALE = {"log2_channels": 11.0, "log2_size": 9.0, "kernel": 7.0, "stride": 4.0, "log10_macs": 10.0}
AMC_FEATURES = ("is_conv", "is_linear", "depthwise", "log_in", "log_out", "log_size", "stride", "kernel",
                "log_macs", "position")


def node_macs(arch: Arch, name: str) -> int:
    """Multiply-accumulates of one node for one image (conv and linear only; BN, ReLU, pools, adds are free).

    Lives with the IR (not in :mod:`netcomp.metrics`, which re-exports it) because the agents' per-layer
    features need it and metrics builds on this module.
    """
    node = arch.node(name)
    out = arch.shapes[name]
    if node.op == "conv":
        cin = arch.in_shape(name)[0]
        return out[0] * (cin // arch.conv_groups(node)) * node.kernel**2 * out[1] * out[2]
    if node.op == "linear":
        return out[0] * arch.in_shape(name)[0]
    return 0


def amc_features(arch: Arch) -> np.ndarray:
    """AMC-style static feature row per prunable layer (conv/linear), scaled by fixed constants.

    Columns are AMC_FEATURES; environments append running context (reduced so far, previous action).
    """
    names = prunable_layers(arch)
    sc = FEATURE_SCALE
    rows = []
    for t, name in enumerate(names):
        node = arch.node(name)
        cin, cout = arch.in_shape(name)[0], arch.shapes[name][0]
        size = arch.in_shape(name)[1] if len(arch.in_shape(name)) == 3 else 1
        rows.append((
            float(node.op == "conv"), float(node.op == "linear"), float(node.depthwise),
            np.log2(cin) / sc["log2_channels"], np.log2(cout) / sc["log2_channels"],
            np.log2(size) / sc["log2_size"], node.stride / sc["stride"], node.kernel / sc["kernel"],
            np.log10(1.0 + node_macs(arch, name)) / sc["log10_macs"], t / max(1, len(names) - 1),
        ))
    return np.asarray(rows, dtype=np.float32).reshape(-1, len(AMC_FEATURES))


def prunable_layers(arch: Arch) -> tuple[str, ...]:
    """Conv and linear layers in order (the layers channel-ratio and ranking agents act on)."""
    return tuple(n for n in arch.layers if arch.node(n).op in ("conv", "linear"))


# ---------------------------------------------------------------------------- canonical form and key
def drop_identities(arch: Arch) -> Arch:
    """Remove identity nodes by rewiring their consumers to their input; single-input adds likewise."""
    alias: dict[str, str] = {}
    nodes = []
    for node in arch.nodes:
        inputs = tuple(alias.get(i, i) for i in node.inputs)
        if node.op == "identity" or (node.op in ("add", "mul") and len(inputs) == 1):
            alias[node.name] = inputs[0]
            continue
        nodes.append(replace(node, inputs=inputs))
    return arch.with_nodes(nodes)


def arch_key(arch: Arch, with_origin: bool = False) -> str:
    """Canonical hash of a network: the same student gives the same key whatever action produced it.

    Names are ignored (structure only). ``with_origin`` adds the teacher node names and kept channel
    indices, for students whose inherited weights depend on where they came from.
    """
    arch = drop_identities(arch)
    pos = {n.name: i for i, n in enumerate(arch.nodes)}
    rows: list[Sequence] = [(arch.in_channels, arch.image_size, arch.num_classes)]
    for node in arch.nodes:
        row = [node.op, [pos[i] for i in node.inputs], arch.shapes[node.name][0],
               node.kernel, node.stride, node.padding, node.groups, node.depthwise, node.bias]
        if node.op == "slice":  # only for slices, so that every other network keeps its key
            row.append(node.start)
        if with_origin:
            row += [node.name, list(node.keep) if node.keep is not None else None]
        rows.append(row)
    return hashlib.sha1(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- serialisation
def arch_to_dict(arch: Arch) -> dict:
    """A plain-data form of an architecture (JSON- and weights_only-safe), for saved students and runs."""
    defaults = Node("_", "input")
    nodes = []
    for node in arch.nodes:
        row = {"name": node.name, "op": node.op}
        for f in ("inputs", "out_channels", "kernel", "stride", "padding", "groups", "depthwise", "bias", "role",
                  "block", "stage", "keep", "start"):
            value = getattr(node, f)
            if value != getattr(defaults, f):
                row[f] = list(value) if isinstance(value, tuple) else value
        nodes.append(row)
    return {"family": arch.family, "in_channels": arch.in_channels, "image_size": arch.image_size,
            "num_classes": arch.num_classes, "nodes": nodes}


def arch_from_dict(data: dict) -> Arch:
    """Inverse of :func:`arch_to_dict`; ArchError if the data does not describe a valid network."""
    try:
        nodes = []
        for row in data["nodes"]:
            row = dict(row)
            for f in ("inputs", "keep"):
                if row.get(f) is not None:
                    row[f] = tuple(int(v) if f == "keep" else str(v) for v in row[f])
            nodes.append(Node(**row))
        arch = Arch(tuple(nodes), int(data["in_channels"]), int(data["image_size"]), int(data["num_classes"]),
                    family=str(data.get("family", "")))
    except (KeyError, TypeError) as exc:
        raise ArchError(f"not an architecture description: {exc}") from exc
    arch.shapes  # noqa: B018  (validate)
    return arch
