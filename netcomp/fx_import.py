"""Your own model as a teacher: read any CNN that torch.fx can trace into the architecture IR.

Why: every space acts on an :class:`~netcomp.arch.Arch` (coupling groups, removable layers, descriptors), so
a user's network must become one. :func:`import_model` traces the module with ``torch.fx.symbolic_trace``
(the graph of the calls its ``forward`` makes), runs the trace once on a dummy batch to learn every tensor's
shape, maps each call to an IR node, tags residual blocks from the graph, builds the IR network
(:func:`netcomp.surgery.build_module`) and copies the weights into it. The result is checked: the IR-built
network must give the module's outputs on a random batch (eval mode), else :class:`ModelImportError`.

What is read (module or functional form):

- ``Conv2d`` (square kernel, stride and padding, no dilation; grouped and depthwise), ``BatchNorm2d`` /
  ``BatchNorm1d`` (affine, with running statistics), ``Linear``;
- activations ``ReLU``, ``ReLU6`` (or ``Hardtanh(0, 6)``), ``Hardswish``, ``SiLU``, ``Sigmoid``,
  ``Hardsigmoid``; anything else (GELU, LeakyReLU, PReLU, ...) is refused;
- ``MaxPool2d`` / ``AvgPool2d`` (square; ``ceil_mode`` only where it changes nothing at this image size),
  ``AdaptiveAvgPool2d`` to 1x1 (a global pool), to the map's own size (nothing) or to a divisor of it (an
  average pool); ``x.mean((2, 3))`` (a global pool, then a flatten unless ``keepdim``);
- ``flatten`` / ``view`` / ``reshape`` to (N, features); ShuffleNet's channel shuffle (view to
  (N, g, C/g, H, W), transpose(1, 2), view back); ``chunk`` / ``split`` along channels (IR ``slice`` nodes);
- ``+`` of two tensors of one shape (``add``), ``torch.cat`` along channels (``concat``), ``*`` of a map and
  a (C, 1, 1) gate (``mul``: squeeze-and-excitation);
- ``Dropout`` (all kinds), ``Identity``, torchvision's stochastic depth and ``contiguous`` read as nothing.
  So the IR student trains without the model's dropout and stochastic depth (the teacher is used in eval
  mode, where they do nothing).

BatchNorm's ``eps`` is folded into the running variance (``var + eps - 1e-5``), exact in eval mode; students
train with the IR's BatchNorm defaults (eps 1e-5, momentum 0.1).

Only what the output depends on is read: a branch whose result is never used (and its parameters) is dropped.

Blocks: each residual ``add`` whose inputs fork from one tensor is a block; its branch with the most layers is
the main path, every other branch a shortcut (``role="shortcut"``, e.g. torchvision's ``downsample``). The
block is named after the longest module path its layers share (``layer1.0``), and the activations right
after the add belong to it. Blocks whose outputs are one coupling group form a stage (``layer1``).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn

from netcomp.arch import ACTIVATIONS, LAYER_OPS, Arch, ArchError, Node, infer_shapes
from netcomp.errors import UserError

if TYPE_CHECKING:
    from netcomp.data import Dataset
    from netcomp.teachers import Teacher

#: The arch token of env ids whose teacher is the user's model (``netcomp/SPACE-custom-DATASET-v0``).
CUSTOM_ARCH = "custom"
#: What the importer reads, named in its errors.
SUPPORTED = ("Conv2d, BatchNorm2d/1d, Linear, ReLU, ReLU6, Hardswish, SiLU, Sigmoid, Hardsigmoid, MaxPool2d, "
             "AvgPool2d, AdaptiveAvgPool2d (to 1x1), mean over (H, W), flatten/view to (N, features), channel "
             "shuffle, chunk/split along channels, + (residual add), torch.cat along channels, * by a (C, 1, 1) "
             "gate, Dropout, Identity")
#: Largest |IR output - module output|, relative to the module's largest |output|, the import accepts.
OUTPUT_RTOL = 1e-4
_IR_BN_EPS = 1e-5


class ModelImportError(UserError):
    """A model that cannot be read into the IR: the message names the first failing node and what to change."""


# ---------------------------------------------------------------------------- values while converting
@dataclass(frozen=True)
class _Split:
    """The pieces of a chunk/split along channels: (start, channels) of each, taken by getitem."""

    src: str
    bounds: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class _Grouped:
    """A channel shuffle under way: the map viewed as (N, groups, C/groups, H, W), maybe transposed."""

    src: str
    groups: int
    transposed: bool


_SCALAR = "<not a tensor>"  # sizes, ints: read by reshapes, never IR nodes


# ---------------------------------------------------------------------------- shapes of the traced graph
class _ShapeRecorder(fx.Interpreter):
    """Runs the traced graph once and records each node's output shape (batch included)."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.shapes: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as exc:  # any failure of the user's code: name the node
            raise ModelImportError(f"running the traced model failed at node {n.name!r} ({_describe(n)}): "
                                   f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; check "
                                   f"that the model takes images of the data's channels and size") from None
        self.shapes[n] = _shape_of(result)
        return result


def _shape_of(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, tuple | list) and value and all(isinstance(v, torch.Tensor) for v in value):
        return tuple(tuple(v.shape) for v in value)
    return None


def _describe(n: fx.Node) -> str:
    """'call_module layer1.0.conv1 (Conv2d)', 'call_function flatten', 'call_method view'."""
    if n.op == "call_module":
        return f"call_module {n.target} ({type(n.graph.owning_module.get_submodule(n.target)).__name__})"
    if n.op in ("call_function", "call_method"):
        return f"{n.op} {_fname(n)}"
    return f"{n.op} {n.target}"


def _fname(n: fx.Node) -> str:
    return n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))


def _arg(n: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """Argument ``index`` (counting the tensor as 0) or keyword ``name`` of a call."""
    return n.args[index] if len(n.args) > index else n.kwargs.get(name, default)


def _square(value: Any, what: str) -> int:
    """An int from an int or an (a, a) pair; ValueError for a non-square pair."""
    if isinstance(value, int):
        return value
    if isinstance(value, tuple | list) and len(value) == 2 and value[0] == value[1]:
        return int(value[0])
    raise ValueError(f"{what} {value!r} is not square; the IR has square kernels, strides and paddings")


# ---------------------------------------------------------------------------- the converter
_IDENTITY_FUNCS = {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
                   "stochastic_depth", "contiguous", "clone", "detach"}
_ACT_FUNCS = {"relu": "relu", "relu_": "relu", "relu6": "relu6", "hardswish": "hardswish", "silu": "silu",
              "sigmoid": "sigmoid", "hardsigmoid": "hardsigmoid"}
_ACT_MODULES: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.ReLU6, "relu6"), (nn.ReLU, "relu"), (nn.Hardswish, "hardswish"), (nn.SiLU, "silu"),
    (nn.Sigmoid, "sigmoid"), (nn.Hardsigmoid, "hardsigmoid"),
)
_NOTHING_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                    nn.FeatureAlphaDropout, nn.Identity)


class _Converter:
    """Maps the traced graph's nodes to IR nodes in order (see the module docstring for what it reads)."""

    def __init__(self, gm: fx.GraphModule, shapes: dict[fx.Node, Any]) -> None:
        self.gm, self.shapes = gm, shapes
        self.nodes: list[Node] = []
        self.values: dict[fx.Node, Any] = {}
        self.targets: dict[str, str] = {}       # IR name -> the module path it came from
        self.scopes: dict[str, str] = {}        # IR name -> the module whose forward made the call
        self.scope = ""
        self.with_params: set[str] = set()      # module paths already read (a layer with weights is read once)
        self.slices: dict[tuple[str, int], str] = {}
        self.used: set[str] = set()

    # ------------------------------------------------------------------ driving
    def run(self) -> str:
        """Convert every node; the IR name of the output."""
        output = None
        for n in self.gm.graph.nodes:
            if n.op == "output":
                output = self._output(n)
                continue
            stack = n.meta.get("nn_module_stack") or {}
            self.scope = str(next(reversed(stack))) if stack else ""
            try:
                self.values[n] = self._convert(n)
            except ModelImportError:
                raise
            except (ValueError, KeyError, TypeError) as exc:
                raise self._fail(n, str(exc)) from None
        return output

    def _convert(self, n: fx.Node) -> Any:
        if n.op == "placeholder":
            if any(v.op == "input" for v in self.nodes):
                raise ValueError("the model takes more than one input; the IR takes one image batch")
            return self._emit("input", "input", ())
        if n.op == "get_attr":
            raise ValueError(f"forward reads the tensor {n.target!r} directly; the IR knows weights only inside "
                             f"layers (use a module such as nn.Conv2d or nn.Linear)")
        shape = self.shapes.get(n)
        if shape is None:
            return _SCALAR  # sizes and other plain values: read by the reshapes that use them
        if n.op == "call_module":
            return self._module(n, self.gm.get_submodule(n.target))
        return self._function(n, _fname(n))

    def _output(self, n: fx.Node) -> str:
        value = self.values.get(n.args[0]) if isinstance(n.args[0], fx.Node) else None
        if not isinstance(value, str):
            raise self._fail(n, "the model must return one tensor of logits (N, classes), not a tuple or dict "
                                "(e.g. auxiliary outputs: build the model without them)")
        return value

    def _fail(self, n: fx.Node, why: str) -> ModelImportError:
        return ModelImportError(f"cannot read node {n.name!r} ({_describe(n)}) into the IR: {why}. The IR reads "
                                f"{SUPPORTED}; change the model there (or wrap what it does in one of those)")

    def _emit(self, name: str | None, op: str, inputs: tuple[str, ...], target: str | None = None, **kw: Any) -> str:
        """Append an IR node under a unique name (by default ``<scope>.<op>``: ``layer1.0.add``) and return it."""
        name = name or (f"{self.scope}.{op}" if self.scope else op)
        base, k = name, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        self.nodes.append(Node(name=name, op=op, inputs=inputs, **kw))
        self.scopes[name] = self.scope
        if target is not None:
            self.targets[name] = target
        return name

    def _tensor(self, arg: Any) -> str:
        """The IR name of a tensor argument; ValueError for anything else."""
        value = self.values.get(arg) if isinstance(arg, fx.Node) else None
        if not isinstance(value, str) or value == _SCALAR:
            raise ValueError(f"an operand is {'a constant' if not isinstance(arg, fx.Node) else 'not an image tensor'}"
                             f" ({arg!r}); the IR combines layer outputs only")
        return value

    # ------------------------------------------------------------------ modules
    def _module(self, n: fx.Node, m: nn.Module) -> Any:
        target = str(n.target)
        if any(True for _ in m.parameters(recurse=False)):
            if target in self.with_params:
                raise ValueError(f"module {target} is called twice; each IR layer has its own weights")
            self.with_params.add(target)
        x = n.args[0] if n.args else None
        for cls, op in _ACT_MODULES:
            if isinstance(m, cls):
                return self._emit(target, op, (self._tensor(x),), target)
        if isinstance(m, nn.Hardtanh):
            return self._hardtanh(n, float(m.min_val), float(m.max_val), target)
        if isinstance(m, _NOTHING_MODULES):
            return self._tensor(x)
        handlers: dict[type, Callable[[fx.Node, Any, str], Any]] = {
            nn.Conv2d: self._conv, nn.Linear: self._linear, nn.BatchNorm2d: self._bn, nn.BatchNorm1d: self._bn,
            nn.MaxPool2d: self._maxpool_module, nn.AvgPool2d: self._avgpool_module,
            nn.AdaptiveAvgPool2d: self._adaptive_module, nn.Flatten: self._reshape_module,
        }
        handler = handlers.get(type(m))
        if handler is None:
            raise ValueError(f"the IR has no layer like {type(m).__name__}")
        return handler(n, m, target)

    def _conv(self, n: fx.Node, m: nn.Conv2d, target: str) -> str:
        if m.dilation != (1, 1) or m.padding_mode != "zeros":
            raise ValueError(f"dilation {m.dilation} / padding mode {m.padding_mode!r}; the IR's convs have "
                             f"dilation 1 and zero padding")
        kernel, stride = _square(m.kernel_size, "kernel"), _square(m.stride, "stride")
        padding = m.padding
        if isinstance(padding, str):  # 'valid', or 'same' with an odd kernel (an even one pads unevenly)
            if padding == "same" and kernel % 2 == 0:
                raise ValueError(f"padding='same' with the even kernel {kernel} pads one side more; the IR pads "
                                 f"evenly")
            padding = 0 if padding == "valid" else kernel // 2
        depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
        return self._emit(target, "conv", (self._tensor(n.args[0]),), target, out_channels=m.out_channels,
                          kernel=kernel, stride=stride, padding=_square(padding, "padding"),
                          groups=1 if depthwise else m.groups, depthwise=depthwise, bias=m.bias is not None)

    def _linear(self, n: fx.Node, m: nn.Linear, target: str) -> str:
        if len(self.shapes[n.args[0]]) != 2:
            raise ValueError(f"a linear layer reads a tensor of shape {self.shapes[n.args[0]]}; flatten it to "
                             f"(N, features) first")
        return self._emit(target, "linear", (self._tensor(n.args[0]),), target, out_channels=m.out_features,
                          bias=m.bias is not None)

    def _bn(self, n: fx.Node, m: nn.modules.batchnorm._BatchNorm, target: str) -> str:
        if not (m.affine and m.track_running_stats):
            raise ValueError("a BatchNorm without affine weights or running statistics; the IR's BatchNorms "
                             "have both")
        return self._emit(target, "bn", (self._tensor(n.args[0]),), target)

    def _maxpool_module(self, n: fx.Node, m: nn.MaxPool2d, target: str) -> str:
        if m.dilation not in (1, (1, 1)) or m.return_indices:
            raise ValueError("a max pool with dilation or returned indices")
        return self._pool(n, "maxpool", m.kernel_size, m.stride, m.padding, target)

    def _avgpool_module(self, n: fx.Node, m: nn.AvgPool2d, target: str) -> str:
        if m.divisor_override is not None or (not m.count_include_pad and m.padding not in (0, (0, 0))):
            raise ValueError("an average pool with divisor_override or count_include_pad=False; the IR's average "
                             "pools count the padding")
        return self._pool(n, "avgpool", m.kernel_size, m.stride, m.padding, target)

    def _pool(self, n: fx.Node, op: str, kernel: Any, stride: Any, padding: Any, target: str | None) -> str:
        """A max/average pool; a ceil_mode that changes the output size at this image size is refused."""
        k = _square(kernel, "kernel")
        s = _square(stride if stride not in (None, ()) else k, "stride")
        p = _square(padding, "padding")
        in_shape, out_shape = self.shapes[n.args[0]], self.shapes[n]
        if (in_shape[2] + 2 * p - k) // s + 1 != out_shape[2]:
            raise ValueError(f"ceil_mode gives a {out_shape[2]}x{out_shape[3]} map where the IR's pools give "
                             f"{(in_shape[2] + 2 * p - k) // s + 1}; use ceil_mode=False or another image size")
        return self._emit(target, op, (self._tensor(n.args[0]),), target, kernel=k, stride=s, padding=p)

    def _adaptive_module(self, n: fx.Node, m: nn.AdaptiveAvgPool2d, target: str) -> str:
        return self._adaptive(n, target)

    def _adaptive(self, n: fx.Node, target: str | None) -> str:
        """A global pool (to 1x1), nothing (to the map's own size) or an average pool (to a divisor of it)."""
        x = self._tensor(n.args[0])
        (_, _, h, w), (_, _, oh, ow) = self.shapes[n.args[0]], self.shapes[n]
        if (oh, ow) == (1, 1):
            return self._emit(target, "gap", (x,), target)
        if (oh, ow) == (h, w):
            return x
        if h == w and oh == ow and h % oh == 0:
            return self._emit(target, "avgpool", (x,), target, kernel=h // oh, stride=h // oh)
        raise ValueError(f"an adaptive average pool from {h}x{w} to {oh}x{ow}; the IR pools to 1x1, to the same "
                         f"size or to a divisor of it. Use another image size (e.g. 224 for torchvision's VGG, whose "
                         f"pool is to 7x7), or make the pool nn.AdaptiveAvgPool2d(1) and the next linear layer's "
                         f"inputs the channel count")

    def _reshape_module(self, n: fx.Node, m: nn.Module, target: str) -> Any:
        return self._reshape(n)

    # ------------------------------------------------------------------ functions and methods
    def _function(self, n: fx.Node, name: str) -> Any:
        if name in _IDENTITY_FUNCS:
            return self._passthrough(n)
        if name in _ACT_FUNCS:
            return self._emit(None, _ACT_FUNCS[name], (self._tensor(n.args[0]),))
        handlers: dict[str, Callable[[fx.Node], Any]] = {
            "add": self._add, "iadd": self._add, "add_": self._add, "mul": self._mul, "imul": self._mul,
            "mul_": self._mul, "cat": self._cat, "concat": self._cat, "concatenate": self._cat,
            "flatten": self._reshape, "view": self._reshape, "reshape": self._reshape,
            "transpose": self._transpose, "chunk": self._split, "split": self._split, "getitem": self._getitem,
            "mean": self._mean, "adaptive_avg_pool2d": lambda n: self._adaptive(n, None),
            "max_pool2d": self._maxpool_function, "avg_pool2d": self._avgpool_function,
            "hardtanh": lambda n: self._hardtanh(n, _arg(n, 1, "min_val", -1.0), _arg(n, 2, "max_val", 1.0), None),
            "hardtanh_": lambda n: self._hardtanh(n, _arg(n, 1, "min_val", -1.0), _arg(n, 2, "max_val", 1.0), None),
        }
        if name not in handlers:
            raise ValueError(f"the IR has no op like {name!r}")
        return handlers[name](n)

    def _passthrough(self, n: fx.Node) -> Any:
        value = self.values.get(n.args[0])
        if isinstance(value, _Grouped) or (isinstance(value, str) and value != _SCALAR):
            return value
        raise ValueError("it reads no image tensor")

    def _hardtanh(self, n: fx.Node, low: float, high: float, target: str | None) -> str:
        if (float(low), float(high)) != (0.0, 6.0):
            raise ValueError(f"hardtanh({low}, {high}); the IR knows it only as ReLU6 = hardtanh(0, 6)")
        return self._emit(target, "relu6", (self._tensor(n.args[0]),), target)

    def _add(self, n: fx.Node) -> str:
        a, b = self._tensor(n.args[0]), self._tensor(n.args[1])
        if _arg(n, 2, "alpha", 1) != 1 or self.shapes[n.args[0]] != self.shapes[n.args[1]]:
            raise ValueError(f"an add of shapes {self.shapes[n.args[0]]} and {self.shapes[n.args[1]]} (alpha "
                             f"{_arg(n, 2, 'alpha', 1)}); the IR adds tensors of one shape")
        return self._emit(None, "add", (a, b))

    def _mul(self, n: fx.Node) -> str:
        a, b = self._tensor(n.args[0]), self._tensor(n.args[1])
        return self._emit(None, "mul", (a, b))  # the shapes are checked by the IR (a map times a gate)

    def _cat(self, n: fx.Node) -> str:
        parts = tuple(self._tensor(t) for t in n.args[0])
        dim = _arg(n, 1, "dim", 0)
        if len(self.shapes[n]) != 4 or dim not in (1, -3):
            raise ValueError(f"a concatenation along dim {dim} of {len(self.shapes[n])}-d tensors; the IR "
                             f"concatenates image maps along channels (dim 1)")
        return self._emit(None, "concat", parts)

    def _reshape(self, n: fx.Node) -> Any:
        """A flatten to (N, features), or a step of a channel shuffle."""
        value = self.values.get(n.args[0])
        src, out = self.shapes[n.args[0]], self.shapes[n]
        if isinstance(value, _Grouped):
            if value.transposed and len(out) == 4 and out[1] == src[1] * src[2]:
                return self._emit(None, "shuffle", (value.src,), groups=value.groups)
            raise ValueError(f"a reshape of a grouped view {src} to {out} that is not a channel shuffle")
        x = self._tensor(n.args[0])
        if out == src:
            return x
        if len(src) == 4 and out == (src[0], src[1] * src[2] * src[3]):
            return self._emit(None, "flatten", (x,))
        if len(src) == 4 and len(out) == 5 and out[0] == src[0] and out[1] * out[2] == src[1] and out[3:] == src[2:]:
            return _Grouped(x, out[1], False)
        raise ValueError(f"a reshape from {src} to {out}; the IR flattens (N, C, H, W) to (N, C*H*W) and views "
                         f"channels as groups only for a channel shuffle")

    def _transpose(self, n: fx.Node) -> _Grouped:
        value = self.values.get(n.args[0])
        dims = {_arg(n, 1, "dim0"), _arg(n, 2, "dim1")}
        if not isinstance(value, _Grouped) or value.transposed or dims != {1, 2}:
            raise ValueError("a transpose that is not the middle step of a channel shuffle")
        return _Grouped(value.src, value.groups, True)

    def _split(self, n: fx.Node) -> _Split:
        x, src, pieces = self._tensor(n.args[0]), self.shapes[n.args[0]], self.shapes[n]
        dim = _arg(n, 2, "dim", 0)
        if len(src) != 4 or dim not in (1, -3) or any(p[0] != src[0] or p[2:] != src[2:] for p in pieces):
            raise ValueError(f"a chunk/split along dim {dim}; the IR splits image maps along channels (dim 1)")
        starts = [sum(p[1] for p in pieces[:i]) for i in range(len(pieces))]
        return _Split(x, tuple((s, p[1]) for s, p in zip(starts, pieces)))

    def _getitem(self, n: fx.Node) -> str:
        value, index = self.values.get(n.args[0]), n.args[1]
        if not isinstance(value, _Split) or not isinstance(index, int):
            raise ValueError("indexing a tensor; the IR takes channel pieces only from chunk/split")
        key = (value.src, index)
        if key not in self.slices:
            start, width = value.bounds[index]
            self.slices[key] = self._emit(None, "slice", (value.src,), out_channels=width, start=start)
        return self.slices[key]

    def _mean(self, n: fx.Node) -> str:
        x, src = self._tensor(n.args[0]), self.shapes[n.args[0]]
        dims = _arg(n, 1, "dim")
        dims = {int(d) % 4 for d in (dims if isinstance(dims, tuple | list) else (dims,))} if dims is not None else {}
        if len(src) != 4 or dims != {2, 3}:
            raise ValueError(f"a mean over dims {dims or 'all'}; the IR averages over (H, W) only (a global pool)")
        pooled = self._emit(None, "gap", (x,))
        return pooled if _arg(n, 2, "keepdim", False) else self._emit(None, "flatten", (pooled,))

    def _maxpool_function(self, n: fx.Node) -> str:
        if _arg(n, 4, "dilation", 1) not in (1, (1, 1)) or _arg(n, 6, "return_indices", False):
            raise ValueError("a max pool with dilation or returned indices")
        return self._pool(n, "maxpool", _arg(n, 1, "kernel_size"), _arg(n, 2, "stride"), _arg(n, 3, "padding", 0),
                          None)

    def _avgpool_function(self, n: fx.Node) -> str:
        padding = _arg(n, 3, "padding", 0)
        if _arg(n, 6, "divisor_override") is not None or (not _arg(n, 5, "count_include_pad", True)
                                                         and padding not in (0, (0, 0))):
            raise ValueError("an average pool with divisor_override or count_include_pad=False")
        return self._pool(n, "avgpool", _arg(n, 1, "kernel_size"), _arg(n, 2, "stride"), padding, None)


# ---------------------------------------------------------------------------- blocks, roles, stages
def _ancestors(nodes: list[Node]) -> dict[str, frozenset[str]]:
    """Each node's ancestors, itself included."""
    out: dict[str, frozenset[str]] = {}
    for node in nodes:
        out[node.name] = frozenset({node.name}).union(*(out[i] for i in node.inputs))
    return out


def _common_path(paths: list[str]) -> str:
    """The longest dotted module path every one of ``paths`` starts with ('' if none)."""
    parts = [p.split(".") for p in paths]
    common: list[str] = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def _layer_count(names: frozenset[str], ops: dict[str, str]) -> int:
    return sum(ops[n] in LAYER_OPS for n in names)


def tag_blocks(arch: Arch, targets: dict[str, str], scopes: dict[str, str]) -> Arch:
    """Tag residual blocks (``block``), their shortcut branches (``role="shortcut"``) and stages (``stage``)
    from the graph. A block is named after the module whose forward makes its add (``scopes``: IR name -> that
    module's path), else the longest module path its layers share (``targets``: IR name -> module path)."""
    nodes = list(arch.nodes)
    anc = _ancestors(nodes)
    pos = {n.name: i for i, n in enumerate(nodes)}
    ops = {n.name: n.op for n in nodes}
    block_of: dict[str, str] = {}
    shortcut: set[str] = set()
    ends: dict[str, str] = {}  # block -> its add
    for add in (n for n in nodes if n.op == "add" and len(n.inputs) > 1):
        fork = max(frozenset.intersection(*(anc[i] for i in add.inputs)), key=pos.__getitem__)
        branches = [anc[i] - anc[fork] for i in add.inputs]
        main = max(range(len(branches)), key=lambda b: (_layer_count(branches[b], ops), -b))
        body = frozenset().union(*branches)
        base = scopes.get(add.name) or _common_path([targets[m] for m in body if m in targets]) or add.name
        name, k = base, 1
        while name in ends:
            name, k = f"{base}_{k}", k + 1
        ends[name] = add.name
        members = set(body) | {add.name} | _trailing(arch, add.name)
        for m in members - block_of.keys():
            block_of[m] = name
        shortcut |= frozenset().union(*(b for i, b in enumerate(branches) if i != main))
    stages = _stages(arch, ends)
    return arch.with_nodes(replace(n, block=block_of.get(n.name, ""), stage=stages.get(block_of.get(n.name), ""),
                                   role="shortcut" if n.name in shortcut else "main") for n in nodes)


def _trailing(arch: Arch, add: str) -> set[str]:
    """The activations right after an add that only it feeds (ResNet's ReLU after the sum)."""
    out, current = set(), add
    while len(arch.consumers[current]) == 1:
        nxt = arch.node(arch.consumers[current][0])
        if nxt.op not in ACTIVATIONS or len(nxt.inputs) != 1:
            break
        out.add(nxt.name)
        current = nxt.name
    return out


def _stages(arch: Arch, ends: dict[str, str]) -> dict[str, str]:
    """Block -> stage: blocks whose adds are one coupling group form a stage, named after their common module
    path when that names it alone (``layer2``), else ``stage<k>``."""
    by_group: dict[str, list[str]] = {}
    for block, add in ends.items():
        by_group.setdefault(arch.group_of[add], []).append(block)
    names = []
    for blocks in by_group.values():
        names.append(_common_path(blocks) if len(blocks) > 1 else blocks[0].rpartition(".")[0])
    out = {}
    for k, (blocks, name) in enumerate(zip(by_group.values(), names)):
        unique = name and names.count(name) == 1 and name not in ends
        for block in blocks:
            out[block] = name if unique else f"stage{k}"
    return out


# ---------------------------------------------------------------------------- import
def trace(model: nn.Module) -> fx.GraphModule:
    """``torch.fx.symbolic_trace`` of the model in eval mode; ModelImportError saying what to change."""
    try:
        return fx.symbolic_trace(model.eval())
    except Exception as exc:  # fx raises many kinds (TraceError, TypeError, NotImplementedError, ...)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelImportError(f"torch.fx cannot trace {type(model).__name__}: {type(exc).__name__}: {first}. "
                               f"Tracing needs a forward without data-dependent Python control flow (an `if` or "
                               f"loop on tensor values or shapes): move it out of forward, or wrap that helper "
                               f"with torch.fx.wrap") from None


def import_model(model: nn.Module, in_channels: int, image_size: int) -> tuple[Arch, fx.GraphModule]:
    """(IR, IR-built module with the model's weights) of a traceable CNN taking (in_channels, size, size).

    The built module's outputs are checked against the model's (eval mode) on a random batch.
    ModelImportError names the first node the IR cannot express and what to change.
    """
    from netcomp.surgery import build_module

    model = model.eval()
    gm = trace(model)
    recorder = _ShapeRecorder(gm)
    with torch.no_grad():
        recorder.run(torch.zeros(2, in_channels, image_size, image_size))
    converter = _Converter(gm, recorder.shapes)
    output = converter.run()
    arch = _arch_of(converter.nodes, output, in_channels, image_size)
    check_shapes(arch, converter)
    arch = tag_blocks(arch, converter.targets, converter.scopes)
    built = build_module(arch, device="meta").to_empty(device="cpu")  # no initialisation: every tensor is copied
    copy_weights(built, model, arch, converter.targets)
    check_outputs(built, model, in_channels, image_size)
    return arch, built.eval()


def _arch_of(nodes: list[Node], output: str, in_channels: int, image_size: int) -> Arch:
    """The IR of the converted nodes that the output depends on (dead branches dropped), validated."""
    needed = _ancestors(nodes)[output]
    kept = tuple(n for n in nodes if n.name in needed)
    out = infer_shapes(Arch(kept, in_channels, image_size, 0), strict=False)[output]
    if len(out) != 1:
        raise ModelImportError(f"the model returns a tensor of shape (N, {', '.join(map(str, out))}); the IR "
                               f"expects logits (N, classes): flatten them")
    arch = Arch(kept, in_channels, image_size, out[0], family=CUSTOM_ARCH)
    try:
        arch.shapes  # noqa: B018  (validate: the first node that does not work)
    except ArchError as exc:
        raise ModelImportError(f"the imported graph does not work in the IR: {exc}") from None
    return arch


def check_shapes(arch: Arch, converter: _Converter) -> None:
    """Every IR tensor that stands for a traced node has that node's shape; ModelImportError naming the first
    node that does not (a misread layer), so a wrong reading fails here, before any output is compared."""
    for n, value in converter.values.items():
        if isinstance(value, str) and value in arch.index and n.op != "placeholder":
            want = converter.shapes[n][1:]
            if arch.shapes[value] != want:
                raise converter._fail(n, f"the IR reads it as shape {arch.shapes[value]}, the model computes {want}")


@torch.no_grad()
def copy_weights(built: nn.Module, model: nn.Module, arch: Arch, targets: dict[str, str]) -> None:
    """Copy every conv, linear and BatchNorm tensor of ``model`` into ``built`` (BatchNorm eps folded into the
    running variance, so eval-mode outputs are the model's)."""
    for node in arch.nodes:
        if node.op not in ("conv", "linear", "bn"):
            continue
        src, dst = model.get_submodule(targets[node.name]), built.get_submodule(node.name)
        dst.weight.copy_(src.weight)
        if src.bias is not None:
            dst.bias.copy_(src.bias)
        if node.op == "bn":
            dst.running_mean.copy_(src.running_mean)
            dst.running_var.copy_(src.running_var + (src.eps - _IR_BN_EPS))
            dst.num_batches_tracked.copy_(src.num_batches_tracked)


@torch.no_grad()
def check_outputs(built: nn.Module, model: nn.Module, in_channels: int, image_size: int) -> float:
    """The largest |difference| of the two networks' outputs on a random batch, relative to the model's largest
    |output|; ModelImportError above :data:`OUTPUT_RTOL` (a misread op)."""
    x = torch.randn(2, in_channels, image_size, image_size, generator=torch.Generator().manual_seed(0))
    want, got = model.eval()(x), built.eval()(x)
    diff = float((want - got).abs().max() / want.abs().max().clamp_min(1e-12))
    if not diff <= OUTPUT_RTOL:
        raise ModelImportError(f"the imported network's outputs differ from the model's by {diff:.3g} (relative; "
                               f"> {OUTPUT_RTOL:g}): an op was misread. Please report this with the model")
    return diff


# ---------------------------------------------------------------------------- the user's model as a teacher
def load_callable(ref: str) -> Callable[..., Any]:
    """The callable a ``MODULE:CALLABLE`` (or ``FILE.py:CALLABLE``) reference names, e.g.
    ``torchvision.models:resnet18``; ModelImportError for a malformed reference, a missing module or name."""
    where, sep, attr = str(ref).rpartition(":")
    if not sep or not where or not attr:
        raise ModelImportError(f"teacher model {ref!r} is not MODULE:CALLABLE (e.g. torchvision.models:resnet18 "
                               f"or my_models.py:build)")
    try:
        if where.endswith(".py"):
            path = Path(where).expanduser().resolve()
            spec = importlib.util.spec_from_file_location(f"netcomp_user_model_{path.stem}", path)
            if spec is None or spec.loader is None or not path.is_file():
                raise ModuleNotFoundError(f"no file {path}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ImportError as exc:
        raise ModelImportError(f"teacher model {ref!r}: cannot import {where!r} ({exc})") from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ModelImportError(f"teacher model {ref!r}: {where!r} has no {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ModelImportError(f"teacher model {ref!r}: {attr!r} is not callable")
    return target


def _takes_num_classes(fn: Callable[..., Any]) -> bool:
    """Whether a callable accepts ``num_classes=`` (by name or through ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "num_classes" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def make_model(model: str | nn.Module | Callable[..., Any], num_classes: int, seed: int = 0) -> nn.Module:
    """The user's network: a module as it is, or what a callable (or its ``MODULE:CALLABLE`` reference)
    returns, called with ``num_classes=`` when it takes it, under a fixed torch seed (so a random initialisation
    is the same in every process: a replay rebuilds the same teacher) without touching the global RNG."""
    if isinstance(model, nn.Module):
        return model
    fn = load_callable(model) if isinstance(model, str) else model
    kwargs = {"num_classes": num_classes} if _takes_num_classes(fn) else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        built = fn(**kwargs)
    if not isinstance(built, nn.Module):
        raise ModelImportError(f"teacher model {model!r} returned a {type(built).__name__}, not a torch nn.Module")
    return built


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state dict file (``torch.load(weights_only=True)``: a plain state dict, or a dict holding one under
    ``state_dict`` or ``model``; a ``module.`` prefix of DataParallel is dropped) into ``model``, strictly."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher weights {path} do not exist (--teacher FILE: the model's state dict)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails in many ways on foreign files
        raise ModelImportError(f"{path} is not a state dict that torch.load(weights_only=True) reads "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    for key in ("state_dict", "model"):
        if isinstance(blob, dict) and isinstance(blob.get(key), dict):
            blob = blob[key]
    if not isinstance(blob, dict) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise ModelImportError(f"{path} holds no state dict of tensors (save one with torch.save(model.state_dict(),"
                               f" path))")
    if blob and all(k.startswith("module.") for k in blob):
        blob = {k.removeprefix("module."): v for k, v in blob.items()}
    missing, unexpected = model.state_dict().keys() - blob.keys(), blob.keys() - model.state_dict().keys()
    if missing or unexpected:
        raise ModelImportError(f"{path} does not fit {type(model).__name__}: missing {sorted(missing)[:4]}, "
                               f"unexpected {sorted(unexpected)[:4]} (of {len(missing)} / {len(unexpected)})")
    try:
        model.load_state_dict(blob)
    except RuntimeError as exc:
        raise ModelImportError(f"{path} does not fit {type(model).__name__}: {str(exc).splitlines()[-1]}") from None


def imported_teacher(model: str | nn.Module | Callable[..., Any], dataset: Dataset,
                     weights: str | Path | None = None, seed: int = 0) -> Teacher:
    """A :class:`netcomp.teachers.Teacher` for the user's model on ``dataset``: the model (see :func:`make_model`)
    with the ``weights`` file loaded, imported into the IR (:func:`import_model`).

    Without ``weights`` the teacher keeps the weights the callable gave it, with a warning: for a constructor
    such as ``torchvision.models:resnet18`` that is a random initialisation, an untrained teacher whose
    accuracy and rewards mean nothing (fine for a smoke test). ModelImportError for a model whose class count
    is not the data's.
    """
    from netcomp.teachers import Teacher, weights_sha256

    ref = model if isinstance(model, str) else getattr(model, "__name__", type(model).__name__)
    module = make_model(model, dataset.num_classes, seed)
    if weights is not None:
        load_weights(module, weights)
    else:
        warnings.warn(f"teacher model {ref}: no weights file (--teacher FILE / teacher=...), so the teacher keeps "
                      f"the weights the callable gave it (torch seed {seed}); for a constructor that is a random "
                      f"initialisation: an UNTRAINED teacher, whose accuracy and rewards mean nothing",
                      stacklevel=2)
    arch, built = import_model(module, dataset.channels, dataset.image_size)
    if arch.num_classes != dataset.num_classes:
        raise ModelImportError(f"teacher model {ref} predicts {arch.num_classes} classes but {dataset.name} has "
                               f"{dataset.num_classes}: give the callable a num_classes argument, or load weights "
                               f"of a model with {dataset.num_classes} outputs")
    digest = weights_sha256(built)
    meta = {"arch": CUSTOM_ARCH, "model": ref, "dataset": dataset.name, "in_channels": dataset.channels,
            "image_size": dataset.image_size, "num_classes": dataset.num_classes,
            "recipe": f"imported {digest[8:24]}", "seed": None if weights is not None else seed,
            "weights": None if weights is None else str(weights), "trained": weights is not None,
            "split": {"train": len(dataset.train), "val": len(dataset.val), "test": len(dataset.test)}}
    return Teacher(arch, built, meta, path=None if weights is None else Path(weights))


def custom_teacher(arch: str, teacher_model: Any, teacher: Any, dataset: Dataset, seed: int = 0) -> Teacher:
    """The teacher of an env whose arch is :data:`CUSTOM_ARCH` (the envs' entry point): ``teacher_model`` is
    required there and refused with a zoo arch; ``teacher`` is the weights file (or None)."""
    if teacher_model is None:
        raise UserError(f"the {CUSTOM_ARCH!r} arch compresses your own model: give teacher_model= (run_agent.py "
                        f"--teacher-model MODULE:CALLABLE, e.g. torchvision.models:resnet18; on --resume and "
                        f"--validate again: a run directory never names code to import)")
    if arch != CUSTOM_ARCH:
        raise UserError(f"teacher_model= goes with the {CUSTOM_ARCH!r} arch (e.g. --env "
                        f"channel-ratio-{CUSTOM_ARCH}-{dataset.name}), not with the zoo's {arch!r}")
    if teacher is not None and not isinstance(teacher, str | Path):
        raise UserError(f"with teacher_model=, teacher= is the model's weights file, not a {type(teacher).__name__}")
    if teacher is not None and str(teacher) == "recipe":
        raise UserError("teacher='recipe' trains a zoo teacher; your own model takes a weights file (or none)")
    return imported_teacher(teacher_model, dataset, weights=teacher, seed=seed)
