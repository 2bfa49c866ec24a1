"""Student surgery: transforms on the IR, IR -> real nn.Module, and weight inheritance.

Every transform takes an :class:`~netcomp.arch.Arch` and returns a new one; nothing mutates. The student is
then generated as a ``torch.fx.GraphModule`` (plain generated Python, no per-node interpretation at run
time) whose tensors are physically smaller than the teacher's. Bad *requests* (unknown layer, a width
larger than the layer has, indices out of range) raise ValueError; a request that is well-formed but yields
an unworkable network is reported by :func:`student_problem` as a reason string, not raised.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from netcomp.arch import (
    LAYER_OPS,
    Arch,
    ArchError,
    Node,
    arch_from_dict,
    arch_to_dict,
    drop_identities,
    without_layers,
)
from netcomp.files import torch_save_atomic
from netcomp.metrics import count_params

INHERIT_MODES = ("reinit", "first_k", "indices")


# ---------------------------------------------------------------------------- transforms
def _check_names(arch: Arch, names: Iterable[str], what: str, allowed_ops: Sequence[str]) -> None:
    for name in names:
        if name not in arch.index:
            raise ValueError(f"{what}: no layer {name!r} in this {arch.family or 'arch'}")
        if arch.node(name).op not in allowed_ops:
            raise ValueError(f"{what}: {name!r} is a {arch.node(name).op}, expected one of {tuple(allowed_ops)}")


def remove_layers(arch: Arch, names: Iterable[str]) -> Arch:
    """N2N stage-1 removal: each named layer becomes the identity and later layers fit the incoming width.

    A residual block whose main-branch layers are all removed computes ``relu(x + shortcut(x))`` (with an
    identity shortcut: ``relu(2x)``), as in N2N's rebuilt blocks.
    """
    names = set(names)
    _check_names(arch, names, "remove_layers", LAYER_OPS)
    return without_layers(arch, names)


def _producer_groups(arch: Arch, keys: Iterable[str], what: str) -> dict[str, str]:
    """Map each key (a group id or a conv/linear producing a group) to its group id, checking shrinkability."""
    out: dict[str, str] = {}
    for key in keys:
        gid = arch.group_of.get(key)
        if gid is None:
            raise ValueError(f"{what}: no layer or group {key!r}")
        group = arch.group(gid)
        if key != gid and key not in group.producers:
            raise ValueError(f"{what}: {key!r} does not set a width (its channels follow group {gid!r})")
        if not group.shrinkable:
            raise ValueError(f"{what}: the channels of {key!r} cannot change (input, logits, or derived width)")
        if gid in out.values():
            raise ValueError(f"{what}: {key!r} is coupled with another entry (group {gid!r}); give one per group")
        out[key] = gid
    return out


def _set_keep(arch: Arch, keep_by_group: Mapping[str, Sequence[int]]) -> Arch:
    """Give every producer of each group the given positions of its current channels."""
    new_nodes = []
    for node in arch.nodes:
        gid = arch.group_of.get(node.name)
        if gid in keep_by_group and node.op in ("conv", "linear") and not node.depthwise:
            old = node.keep if node.keep is not None else tuple(range(node.out_channels))
            keep = tuple(old[i] for i in keep_by_group[gid])
            node = replace(node, keep=keep, out_channels=len(keep))
        new_nodes.append(node)
    return arch.with_nodes(new_nodes)


def set_widths(arch: Arch, widths: Mapping[str, int]) -> Arch:
    """Shrink layers to the given widths, keeping their first channels (ESNAC/TAS inheritance).

    Keys are conv/linear layers or group ids; coupled layers (one residual group) shrink together, so give
    one entry per group. Widths must be between 1 and the current width. A group produced by a grouped conv
    keeps the first channels of every conv group, its width rounded up to a multiple of the groups (as
    ESNAC does for ShuffleNet).
    """
    groups = _producer_groups(arch, widths, "set_widths")
    keep = {}
    for key, gid in groups.items():
        width, current = int(widths[key]), arch.group(gid).width
        if not 1 <= width <= current:
            raise ValueError(f"set_widths: width {widths[key]} for {key!r} outside [1, {current}]")
        conv_groups = max(arch.node(p).groups for p in arch.group(gid).producers)
        per_group = -(-width // conv_groups)
        step = current // conv_groups
        keep[gid] = [g * step + i for g in range(conv_groups) for i in range(per_group)]
    return _set_keep(arch, keep)


def keep_channels(arch: Arch, indices: Mapping[str, Sequence[int]]) -> Arch:
    """Keep the given channel positions of each layer/group (LeGR, AMC, DeepHoyer: importance-ranked)."""
    groups = _producer_groups(arch, indices, "keep_channels")
    keep = {}
    for key, gid in groups.items():
        idx = [int(i) for i in indices[key]]
        current = arch.group(gid).width
        if not idx or sorted(set(idx)) != idx or idx[0] < 0 or idx[-1] >= current:
            raise ValueError(f"keep_channels: indices for {key!r} must be sorted, unique, non-empty and in "
                             f"[0, {current}); got {idx[:8]}{'...' if len(idx) > 8 else ''}")
        keep[gid] = idx
    return _set_keep(arch, keep)


def set_geometry(arch: Arch, geometry: Mapping[str, Mapping[str, int]]) -> Arch:
    """Change kernel / stride / padding of conv and pool layers (N2N stage-2 shrinkage of k, s, p)."""
    _check_names(arch, geometry, "set_geometry", ("conv", "maxpool", "avgpool"))
    nodes = []
    for node in arch.nodes:
        if node.name in geometry:
            change = dict(geometry[node.name])
            bad = set(change) - {"kernel", "stride", "padding"}
            if bad:
                raise ValueError(f"set_geometry: unknown attributes {sorted(bad)}; expected kernel, stride, padding")
            if any(int(v) < (0 if k == "padding" else 1) for k, v in change.items()):
                raise ValueError(f"set_geometry: bad values {change} for {node.name!r}")
            node = replace(node, **{k: int(v) for k, v in change.items()})
        nodes.append(node)
    return arch.with_nodes(nodes)


def add_skips(arch: Arch, pairs: Iterable[tuple[str, str]]) -> Arch:
    """ESNAC skip connections: the output of ``src`` is added to the input of ``dst`` (no parameters)."""
    extra: dict[str, list[str]] = {}
    for src, dst in pairs:
        if src not in arch.index or dst not in arch.index:
            raise ValueError(f"add_skips: unknown node in ({src!r}, {dst!r})")
        if arch.index[src] >= arch.index[dst] or arch.node(dst).op == "input":
            raise ValueError(f"add_skips: {src!r} must come before {dst!r}")
        extra.setdefault(dst, []).append(src)
    nodes = []
    for node in arch.nodes:
        srcs = extra.get(node.name)
        if srcs and node.op == "add":
            node = replace(node, inputs=node.inputs + tuple(s for s in srcs if s not in node.inputs))
        elif srcs:
            skip = Node(name=f"{node.name}.skip", op="add", inputs=(node.inputs[0], *srcs),
                        block=node.block, stage=node.stage)
            nodes.append(skip)
            node = replace(node, inputs=(skip.name, *node.inputs[1:]))
        nodes.append(node)
    return arch.with_nodes(nodes)


def blocks_of(arch: Arch) -> dict[str, list[str]]:
    """Residual blocks per stage, in order."""
    out: dict[str, list[str]] = {}
    for node in arch.nodes:
        if node.stage and node.block and node.block not in out.setdefault(node.stage, []):
            out[node.stage].append(node.block)
    return out


def residual_blocks(arch: Arch) -> tuple[str, ...]:
    """The blocks (in node order) that end in an add: those whose main path can be removed."""
    return tuple(dict.fromkeys(n.block for n in arch.nodes if n.block and n.op == "add"))


def remove_block_paths(arch: Arch, blocks: Iterable[str]) -> Arch:
    """Delete the main path of each named residual block and keep its shortcut: the block's add is left with
    the shortcut alone, so the block computes relu(shortcut(x)) (relu(x) with an identity shortcut).

    Unlike :func:`remove_layers` on the block's layers (which leaves ``relu(x + shortcut(x))``), this also
    works for a block with a projection shortcut (a stride or width change). ValueError for a name that is
    not one of :func:`residual_blocks`.
    """
    blocks = set(blocks)
    known = residual_blocks(arch)
    unknown = sorted(blocks - set(known))
    if unknown:
        raise ValueError(f"remove_block_paths: {unknown} are not residual blocks; blocks are {list(known)}")
    dropped: set[str] = set()
    for block in blocks:
        dropped |= _main_path(arch, block)
    nodes = [replace(n, inputs=tuple(i for i in n.inputs if i not in dropped))
             for n in arch.nodes if n.name not in dropped]
    return drop_identities(arch.with_nodes(nodes))


def _main_path(arch: Arch, block: str) -> set[str]:
    """The nodes of ``block`` that feed its add other than through the shortcut (role "main")."""
    add = next(n for n in arch.nodes if n.block == block and n.op == "add")
    path: set[str] = set()
    stack = [i for i in add.inputs if arch.node(i).block == block and arch.node(i).role == "main"]
    while stack:
        node = arch.node(stack.pop())
        if node.block == block and node.role == "main" and node.name not in path:
            path.add(node.name)
            stack.extend(node.inputs)
    return path


def set_stage_depths(arch: Arch, depths: Mapping[str, int]) -> Arch:
    """TAS depth: keep the first ``depth`` blocks of each named stage; later blocks are deleted."""
    stages = blocks_of(arch)
    alias: dict[str, str] = {}
    dropped: set[str] = set()
    for stage, depth in depths.items():
        if stage not in stages:
            raise ValueError(f"set_stage_depths: unknown stage {stage!r}; stages are {list(stages)}")
        if not 1 <= int(depth) <= len(stages[stage]):
            raise ValueError(f"set_stage_depths: depth {depth} for {stage!r} outside [1, {len(stages[stage])}]")
        dropped.update(stages[stage][int(depth):])
    for block in dropped:
        members = [n for n in arch.nodes if n.block == block]
        names = {n.name for n in members}
        entry = {i for n in members for i in n.inputs if i not in names}
        if len(entry) != 1:
            raise ValueError(f"set_stage_depths: block {block!r} has no single entry tensor")
        alias[members[-1].name] = entry.pop()
    nodes = []
    for node in arch.nodes:
        if node.block in dropped:
            continue
        nodes.append(replace(node, inputs=tuple(_resolve(alias, i) for i in node.inputs)))
    return arch.with_nodes(nodes)


def _resolve(alias: Mapping[str, str], name: str) -> str:
    while name in alias:
        name = alias[name]
    return name


# ---------------------------------------------------------------------------- validity
def student_problem(student: Arch, parent: Arch | None = None, min_linear_inputs: int = 1) -> str | None:
    """Why a student cannot be used, or None if it can.

    Reasons: shapes that do not work (spatial collapse, mismatched adds, too-wide linear), a linear layer
    with fewer than ``min_linear_inputs`` inputs (N2N shrink uses 10), or not fewer parameters than
    ``parent``.
    """
    try:
        shapes = student.shapes
    except ArchError as exc:
        return str(exc)
    for node in student.nodes:
        if node.op == "linear" and student.in_shape(node.name)[0] < min_linear_inputs:
            return f"linear {node.name!r} has {student.in_shape(node.name)[0]} inputs (< {min_linear_inputs})"
    if not shapes:
        return "empty network"
    if parent is not None and count_params(student) >= count_params(parent):
        return f"student has {count_params(student)} parameters, not fewer than its parent's {count_params(parent)}"
    return None


# ---------------------------------------------------------------------------- IR -> nn.Module
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: interleave the channels of ``groups`` groups."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


fx.wrap("channel_shuffle")

#: The module of each activation op.
ACTIVATION_MODULES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "silu": nn.SiLU, "sigmoid": nn.Sigmoid,
    "hardsigmoid": nn.Hardsigmoid,
}


def _make_module(arch: Arch, node: Node) -> nn.Module:
    in_shape = arch.in_shape(node.name)
    out = arch.shapes[node.name][0]
    if node.op == "conv":
        return nn.Conv2d(in_shape[0], out, node.kernel, node.stride, node.padding,
                         groups=arch.conv_groups(node), bias=node.bias)
    if node.op == "linear":
        return nn.Linear(in_shape[0], out, bias=node.bias)
    if node.op == "bn":
        return nn.BatchNorm2d(out) if len(in_shape) == 3 else nn.BatchNorm1d(out)
    if node.op in ACTIVATION_MODULES:
        return ACTIVATION_MODULES[node.op]()
    if node.op == "maxpool":
        return nn.MaxPool2d(node.kernel, node.stride, node.padding)
    if node.op == "avgpool":
        return nn.AvgPool2d(node.kernel, node.stride, node.padding)
    if node.op == "gap":
        return nn.AdaptiveAvgPool2d(1)
    raise AssertionError(node.op)


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent = root
    *parts, leaf = path.split(".")
    for part in parts:
        if not hasattr(parent, part):
            parent.add_module(part, nn.Module())
        parent = getattr(parent, part)
    parent.add_module(leaf, module)


def build_module(arch: Arch, device: str | torch.device | None = None) -> fx.GraphModule:
    """A real network for ``arch``: an fx.GraphModule whose submodules sit at the node names.

    With ``device`` the parameters are created and initialised there (no CPU initialisation and copy for a
    student trained on a GPU; on the CPU the weights are the same either way). Raises ArchError if the
    architecture is invalid (use :func:`student_problem` to ask first).
    """
    arch.shapes  # noqa: B018  (raise early with the node that fails)
    if device is not None:
        with torch.device(device):
            return build_module(arch)
    root = nn.Module()
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    for node in arch.nodes:
        ins = [env[i] for i in node.inputs]
        if node.op == "input":
            env[node.name] = graph.placeholder("x")
        elif node.op in LAYER_OPS:
            _set_submodule(root, node.name, _make_module(arch, node))
            env[node.name] = graph.call_module(node.name, (ins[0],))
        elif node.op in ("add", "mul"):
            value = ins[0]
            for other in ins[1:]:
                value = graph.call_function(operator.add if node.op == "add" else operator.mul, (value, other))
            env[node.name] = value
        elif node.op == "slice":
            env[node.name] = graph.call_function(torch.narrow, (ins[0], 1, node.start, node.out_channels))
        elif node.op == "concat":
            env[node.name] = graph.call_function(torch.cat, (tuple(ins), 1))
        elif node.op == "flatten":
            env[node.name] = graph.call_function(torch.flatten, (ins[0], 1))
        elif node.op == "shuffle":
            env[node.name] = graph.call_function(channel_shuffle, (ins[0], node.groups))
        else:  # identity
            env[node.name] = ins[0]
    graph.output(env[arch.nodes[-1].name])
    name = "".join(p.capitalize() for p in (arch.family or "student").split("_")) or "Student"
    return fx.GraphModule(root, graph, class_name=name)


def save_student(path: str | Path, arch: Arch, module: nn.Module, meta: Mapping[str, Any]) -> None:
    """Write a student as {arch (plain data), state_dict, meta}: rebuildable and loadable with weights_only.

    Written atomically: a kill leaves the previous file or the new one, never a truncated one."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    torch_save_atomic({"arch": arch_to_dict(arch), "state_dict": state, "meta": dict(meta)}, path)


def load_student(path: str | Path) -> tuple[fx.GraphModule, Arch, dict]:
    """A saved student: (module with its weights, its architecture, its metadata)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    arch = arch_from_dict(blob["arch"])
    module = build_module(arch)
    module.load_state_dict(blob["state_dict"])
    return module, arch, blob["meta"]


# ---------------------------------------------------------------------------- weight inheritance
Provenance = tuple[str, tuple[int, ...]] | None


def provenance(arch: Arch, teacher: Arch) -> dict[str, Provenance]:
    """For every node of ``arch``, which teacher channels its output holds: (teacher channel space, indices).

    A channel space is a teacher coupling group (or a flat feature space); None means the channels do not
    correspond to any teacher tensor (e.g. a tensor mixing two unrelated widths after a removal).
    """
    t_group = teacher.group_of
    prov: dict[str, Provenance] = {}
    for node in arch.nodes:
        ins = [prov.get(i) for i in node.inputs]
        prov[node.name] = _node_provenance(arch, teacher, t_group, node, ins)
    return prov


def _node_provenance(arch: Arch, teacher: Arch, t_group: Mapping[str, str], node: Node,
                     ins: list[Provenance]) -> Provenance:
    op = node.op
    in_teacher = node.name in teacher.index
    if op == "input":
        return ("input", tuple(range(arch.in_channels)))
    if op in ("conv", "linear") and not node.depthwise:
        if not in_teacher:
            return None
        return (t_group[node.name], node.keep if node.keep is not None else tuple(range(arch.shapes[node.name][0])))
    if op in ("add", "mul"):
        return ins[0] if all(p == ins[0] for p in ins) else None
    if op == "slice":
        return _slice_provenance(arch, teacher, t_group, node, ins[0])
    if op == "flatten" and len(arch.in_shape(node.name)) == 3 and arch.in_shape(node.name)[1:] != (1, 1):
        return _flatten_provenance(arch, teacher, t_group, node, ins[0])
    if op == "concat":
        return _concat_provenance(teacher, t_group, node, ins)
    if op == "shuffle":
        return _shuffle_provenance(arch, teacher, t_group, node, ins[0])
    return ins[0]  # channel-preserving ops (bn, relu, pools, depthwise conv, identity, 1x1 flatten)


def _flatten_provenance(arch: Arch, teacher: Arch, t_group: Mapping[str, str], node: Node,
                        src: Provenance) -> Provenance:
    if src is None or node.name not in teacher.index:
        return None
    hw = arch.in_shape(node.name)[1:]
    if teacher.in_shape(node.name)[1:] != hw:
        return None
    area = hw[0] * hw[1]
    return (t_group[node.name], tuple(c * area + k for c in src[1] for k in range(area)))


def _concat_provenance(teacher: Arch, t_group: Mapping[str, str], node: Node, ins: list[Provenance]) -> Provenance:
    if node.name not in teacher.index or any(p is None for p in ins):
        return None
    t_node = teacher.node(node.name)
    idx: list[int] = []
    offset = 0
    for p, t_in in zip(ins, t_node.inputs):
        if p[0] != t_group[t_in]:  # a teacher tensor's channel space is its coupling group
            return None
        idx += [offset + i for i in p[1]]
        offset += teacher.shapes[t_in][0]
    return (t_group[node.name], tuple(idx))


def _slice_provenance(arch: Arch, teacher: Arch, t_group: Mapping[str, str], node: Node,
                      src: Provenance) -> Provenance:
    """A slice of a tensor that holds all of its teacher tensor's channels, in order, takes the same channels as
    the teacher's slice; anything else does not correspond to a teacher tensor."""
    if src is None or node.name not in teacher.index:
        return None
    t_node = teacher.node(node.name)
    if list(src[1]) != list(range(teacher.shapes[t_node.inputs[0]][0])) or (node.start, node.out_channels) != (
            t_node.start, t_node.out_channels):
        return None
    return (t_group[node.name], tuple(range(node.out_channels)))


def _shuffle_provenance(arch: Arch, teacher: Arch, t_group: Mapping[str, str], node: Node,
                        src: Provenance) -> Provenance:
    if src is None or node.name not in teacher.index:
        return None
    g = node.groups
    c_s, c_t = arch.shapes[node.name][0], teacher.shapes[node.name][0]
    s_perm = [(j % g) * (c_s // g) + j // g for j in range(c_s)]   # output j reads input s_perm[j]
    t_inv = {(j % g) * (c_t // g) + j // g: j for j in range(c_t)}  # teacher input channel -> output channel
    return (t_group[node.name], tuple(t_inv[src[1][s_perm[j]]] for j in range(c_s)))


@torch.no_grad()
def inherit_weights(student: nn.Module, s_arch: Arch, teacher: nn.Module, t_arch: Arch,
                    mode: str = "indices", bn_stats: bool = True) -> dict[str, str]:
    """Copy the teacher's weights into a student built from ``s_arch``; returns each layer's origin.

    Modes:
    - ``reinit``: keep the student's fresh initialisation (N2N).
    - ``first_k``: truncate every tensor to the student's size, ignoring where channels came from
      (ESNAC/TAS "keep the first channels").
    - ``indices``: copy exactly the teacher channels each layer kept (LeGR/AMC/DeepHoyer); a layer whose
      input no longer corresponds to the teacher's (after a removal) stays freshly initialised.
    ``bn_stats`` also copies BN running statistics (ESNAC does not).
    """
    if mode not in INHERIT_MODES:
        raise ValueError(f"unknown inheritance mode {mode!r}; expected one of {INHERIT_MODES}")
    origin = {}
    s_prov = provenance(s_arch, t_arch) if mode == "indices" else {}
    t_prov = provenance(t_arch, t_arch) if mode == "indices" else {}
    for node in s_arch.nodes:
        if node.op not in ("conv", "linear", "bn"):
            continue
        origin[node.name] = "fresh"
        if mode == "reinit" or node.name not in t_arch.index:
            continue
        s_mod, t_mod = student.get_submodule(node.name), teacher.get_submodule(node.name)
        if mode == "first_k":
            copied = _copy_first_k(s_mod, t_mod, bn_stats)
        else:
            copied = _copy_indices(node, s_arch, t_arch, s_mod, t_mod, s_prov, t_prov, bn_stats)
        if copied:
            origin[node.name] = "inherited"
    return origin


def _tensors(mod: nn.Module, bn_stats: bool) -> list[tuple[str, torch.Tensor]]:
    names = ["weight", "bias"]
    if bn_stats and isinstance(mod, nn.modules.batchnorm._BatchNorm):
        names += ["running_mean", "running_var"]
    return [(n, getattr(mod, n)) for n in names if getattr(mod, n, None) is not None]


def _copy_first_k(s_mod: nn.Module, t_mod: nn.Module, bn_stats: bool) -> bool:
    pairs = []
    for name, s_t in _tensors(s_mod, bn_stats):
        t_t = getattr(t_mod, name, None)
        if t_t is None or t_t.dim() != s_t.dim() or any(a > b for a, b in zip(s_t.shape, t_t.shape)):
            return False
        if s_t.dim() == 4 and s_t.shape[2:] != t_t.shape[2:]:
            return False
        pairs.append((s_t, t_t[tuple(slice(0, n) for n in s_t.shape)]))
    for s_t, src in pairs:
        s_t.copy_(src)
    return True


def _copy_indices(node: Node, s_arch: Arch, t_arch: Arch, s_mod: nn.Module, t_mod: nn.Module,
                  s_prov: Mapping[str, Provenance], t_prov: Mapping[str, Provenance], bn_stats: bool) -> bool:
    out_p = s_prov.get(node.name)
    if out_p is None or out_p[0] != t_prov[node.name][0]:
        return False
    if node.op == "bn":
        for name, s_t in _tensors(s_mod, bn_stats):
            s_t.copy_(_take(getattr(t_mod, name), 0, out_p[1]))
        return True
    in_p, t_in_p = s_prov.get(node.inputs[0]), t_prov[t_arch.node(node.name).inputs[0]]
    if in_p is None or in_p[0] != t_in_p[0] or s_mod.weight.shape[2:] != t_mod.weight.shape[2:]:
        return False
    weight = _select_weight(node, s_arch, t_arch, t_mod.weight, out_p[1], in_p[1], s_mod.weight)
    if weight is None:
        return False
    s_mod.weight.copy_(weight)
    if s_mod.bias is not None and t_mod.bias is not None:
        s_mod.bias.copy_(_take(t_mod.bias, 0, out_p[1]))
    return True


def _take(tensor: torch.Tensor, dim: int, indices: Sequence[int]) -> torch.Tensor:
    """``tensor`` restricted to ``indices`` along ``dim``: the tensor itself when they are all of it in order
    (the common case of an untouched layer: no gather), else an index_select on the tensor's device."""
    n = tensor.shape[dim]
    if len(indices) == n and (n == 0 or (indices[0] == 0 and indices[-1] == n - 1 and _is_range(indices))):
        return tensor
    return tensor.index_select(dim, torch.as_tensor(indices, dtype=torch.long, device=tensor.device))


def _is_range(indices: Sequence[int]) -> bool:
    return all(b == a + 1 for a, b in zip(indices, indices[1:]))


def _select_weight(node: Node, s_arch: Arch, t_arch: Arch, t_w: torch.Tensor, out_idx: Sequence[int],
                   in_idx: Sequence[int], s_w: torch.Tensor) -> torch.Tensor | None:
    """The teacher weight rows/columns for the kept output and input channels, per conv group."""
    if node.op == "linear" or (s_arch.conv_groups(node) == 1 and t_arch.conv_groups(t_arch.node(node.name)) == 1):
        return _take(_take(t_w, 0, out_idx), 1, in_idx)
    if node.depthwise:
        return _take(t_w, 0, out_idx) if list(out_idx) == list(in_idx) else None
    out_t = torch.tensor(out_idx, dtype=torch.long, device=t_w.device)
    # grouped conv: copy the entries whose input channel lies in the same teacher group as the output
    g_s, g_t = s_arch.conv_groups(node), t_arch.conv_groups(t_arch.node(node.name))
    cin_s, cin_t = s_w.shape[1], t_w.shape[1]
    per_group_t = t_w.shape[0] // g_t
    group_t = out_t // per_group_t                                            # [O]
    group_s = torch.arange(len(out_idx), device=t_w.device) // (s_w.shape[0] // g_s)             # [O]
    t_in = torch.tensor(in_idx, dtype=torch.long, device=t_w.device)[
        group_s[:, None] * cin_s + torch.arange(cin_s, device=t_w.device)[None, :]]
    same_group = (t_in // cin_t) == group_t[:, None]                          # [O, cin_s]
    local_t = (t_in - group_t[:, None] * cin_t).clamp(0, cin_t - 1)
    picked = t_w[out_t[:, None], local_t]                                     # [O, cin_s, k, k]
    return torch.where(same_group[:, :, None, None], picked, s_w)


# ---------------------------------------------------------------------------- per-conv widths (TAS)
def width_convs(arch: Arch) -> tuple[str, ...]:
    """The convs whose width a per-conv search (TAS) sets: every plain conv on the main path, stem included.

    Projection shortcuts follow the last main conv of their block, depthwise convs their input, and the
    classifier keeps the class count, so none of them is listed. ValueError for grouped convs (a width per
    conv would break their divisibility), which no per-conv space supports.
    """
    out = []
    for node in arch.nodes:
        if node.op != "conv":
            continue
        if node.groups > 1 and not node.depthwise:
            raise ValueError(f"per-conv widths: {node.name!r} is a grouped conv ({node.groups} groups); "
                             f"per-conv widths support plain and depthwise convs only")
        if node.role == "main" and not node.depthwise:
            out.append(node.name)
    return tuple(out)


def _last_main_conv(arch: Arch) -> dict[str, str]:
    """Block -> its last main-path, non-depthwise conv (the conv whose width is the block's output width)."""
    out: dict[str, str] = {}
    for node in arch.nodes:
        if node.block and node.op == "conv" and node.role == "main" and not node.depthwise:
            out[node.block] = node.name
    return out


def set_conv_widths(arch: Arch, widths: Mapping[str, int]) -> Arch:
    """TAS's plain network: every named conv keeps its first ``widths[name]`` channels, on its own.

    Widths are per conv (:func:`width_convs`), not per coupling group, so a residual add may join two
    widths. A projection shortcut takes its block's output width (the block's last main conv); a block with
    an identity shortcut whose input width differs from its output width gets a fresh 1x1 conv + BN
    projection (``<block>.shortcut.conv`` / ``.bn``, role "shortcut"), as TAS's infer-shape network does.
    Missing convs keep their width. ValueError for unknown convs or widths outside [1, current].
    """
    valid = set(width_convs(arch))
    for name, width in widths.items():
        if name not in valid:
            raise ValueError(f"set_conv_widths: {name!r} is not a width-setting conv; they are {sorted(valid)[:6]}...")
        if not 1 <= int(width) <= arch.node(name).out_channels:
            raise ValueError(f"set_conv_widths: width {width} for {name!r} outside [1, {arch.node(name).out_channels}]")
    last = _last_main_conv(arch)
    nodes: list[Node] = []
    chans: dict[str, int] = {}
    for node in arch.nodes:
        if node.op == "conv" and not node.depthwise:
            source = last.get(node.block, node.name) if node.role == "shortcut" else node.name
            node = _with_width(node, int(widths.get(source, arch.node(source).out_channels)))
        if node.op == "add":
            node = _project_add(arch, node, chans, nodes)
        nodes.append(node)
        chans[node.name] = _channels(arch, node, chans)
    return arch.with_nodes(nodes)


def _with_width(node: Node, width: int) -> Node:
    if width == node.out_channels:
        return node
    old = node.keep if node.keep is not None else tuple(range(node.out_channels))
    return replace(node, out_channels=width, keep=tuple(old[:width]))


def _channels(arch: Arch, node: Node, chans: Mapping[str, int]) -> int:
    """Output channels of a node from its inputs' (no shape inference: the graph is being rewritten)."""
    if node.op == "input":
        return arch.in_channels
    if node.op in ("conv", "linear") and not node.depthwise:
        return node.out_channels
    if node.op == "concat":
        return sum(chans[i] for i in node.inputs)
    if node.op in ("add", "mul"):
        return max(chans[i] for i in node.inputs)
    if node.op == "slice":
        return node.out_channels
    return chans[node.inputs[0]]


def _project_add(arch: Arch, node: Node, chans: dict[str, int], nodes: list[Node]) -> Node:
    """An add whose inputs differ in width: each input from outside the block (an identity shortcut) gets a
    1x1 conv + BN projection to the main branch's width, appended to ``nodes`` before the add."""
    widths = [chans[i] for i in node.inputs]
    if len(set(widths)) == 1:
        return node
    inside = [i for i in node.inputs if i in arch.index and arch.node(i).block == node.block]
    if not inside:
        raise ValueError(f"set_conv_widths: add {node.name!r} joins widths {widths} and has no main branch")
    target = chans[inside[0]]
    inputs = []
    for i in node.inputs:
        if chans[i] != target and i not in inside:
            prefix = f"{node.block}.shortcut" if node.block else f"{node.name}.proj"
            conv = Node(f"{prefix}.conv", "conv", (i,), out_channels=target, kernel=1, role="shortcut",
                        block=node.block, stage=node.stage)
            bn = Node(f"{prefix}.bn", "bn", (conv.name,), role="shortcut", block=node.block, stage=node.stage)
            nodes += [conv, bn]
            chans[conv.name] = chans[bn.name] = target
            i = bn.name
        inputs.append(i)
    return replace(node, inputs=tuple(inputs))
