"""Teacher zoo: every family as an IR builder, for any input channels, image size and class count.

Definitions follow the CIFAR models the reference methods used:
- ``resnet18``/``resnet34``: CIFAR ResNet with BasicBlocks (64/128/256/512, strides 1/2/2/2) and 1x1-conv+BN
  projection shortcuts where width or stride changes (N2N/ESNAC).
- ``resnet20/32/56/110``: CIFAR ResNet (16/32/64, 3 stages of n blocks). Shortcut convention: projection
  ("option B": 1x1 conv stride 2 + BN) when width changes, as in TAS/DeepHoyer. LeGR's zero-padding
  ("option A") has no parameters, so these models are a few thousand parameters larger than option A.
- ``vgg11/16/19``: VGG with BN, 3x3 convs (with bias) and max pools, one linear classifier reading the
  flattened last feature map, with no global pool (N2N's and pytorch-classification's CIFAR VGG). At 32x32
  the map is 512x1x1, so the classifier has 512 inputs; removing a max pool multiplies them (512x2x2, ...)
  and removing all five gives 512x32x32 inputs, over N2N's LINEAR_THRESHOLD (an invalid student). Images
  smaller than 32 drop the last max pools that would collapse the map (28x28 keeps four: 28->14->7->3->1);
  larger images keep all five and flatten a larger map (64x64: 512x2x2).
- ``mobilenetv2``: CIFAR MobileNetV2 (stem and the 24-channel stage at stride 1), 1x1-conv+BN shortcut in
  stride-1 blocks whose width changes, 1280-wide head.
- ``shufflenet``: ShuffleNet v1 CIFAR variant (groups 2, widths 200/400/800, blocks 4/8/4); stride-2 units
  concatenate an average-pooled shortcut, and their bottleneck width is a quarter of the new channels.
- ``lenet5``: conv 6@5x5, max pool, conv 16@5x5, max pool, 120, 84, classes (ReLU). For 28x28 inputs the
  first conv pads by 2 (the usual MNIST variant), so both sizes give the classic 16x5x5 feature map.
- ``lenet5caffe``: "LeNet-5-Caffe", the MNIST LeNet-5 of DeepHoyer (Yang, Wen, Li, ICLR 2020, arXiv:1908.09979;
  ``LeNet_5`` in mnist/CNN/net/models.py of github.com/yanghr/DeepHoyer) and of the pruning papers it compares
  with: conv 20@5x5, max pool, conv 50@5x5, max pool, 500, classes (ReLU after every conv and the hidden
  linear; biases everywhere; no padding). On 1x28x28 the map is 50x4x4 = 800 features: 431,080 parameters,
  2.29 M MACs. (Named without a dash: env ids are ``space-arch-dataset`` and split the arch at its dash.)

Heads: ResNet, MobileNetV2 and ShuffleNet use a global average pool before their linear classifier, so
they work at any image size their downsampling allows with the same classifier. VGG and LeNet-5 flatten
their last feature map into the classifier (as their references do), so its width follows the image size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from netcomp.arch import Arch, Node


@dataclass
class _Builder:
    """Appends nodes in topological order, tracking the current tensor and block/stage tags."""

    nodes: list[Node] = field(default_factory=list)
    block: str = ""
    stage: str = ""

    def add(self, name: str, op: str, inputs: tuple[str, ...], role: str = "main", **kw) -> str:
        self.nodes.append(Node(name=name, op=op, inputs=inputs, role=role, block=self.block, stage=self.stage, **kw))
        return name

    def conv_bn(self, prefix: str, x: str, out: int, kernel: int, stride: int, padding: int, *, relu: bool = True,
                groups: int = 1, depthwise: bool = False, role: str = "main", bias: bool = False,
                names: tuple[str, str, str] | None = None) -> str:
        conv, bn, act = names or ("conv", "bn", "relu")
        x = self.add(f"{prefix}{conv}", "conv", (x,), role, out_channels=out, kernel=kernel, stride=stride,
                     padding=padding, groups=groups, depthwise=depthwise, bias=bias)
        x = self.add(f"{prefix}{bn}", "bn", (x,), role)
        if relu:
            x = self.add(f"{prefix}{act}", "relu", (x,), role)
        return x

    def head(self, x: str, num_classes: int, gap: bool = True) -> None:
        """Classifier: (global average pool,) flatten, one linear layer."""
        if gap:
            x = self.add("pool", "gap", (x,))
        x = self.add("flatten", "flatten", (x,))
        self.add("fc", "linear", (x,), out_channels=num_classes, bias=True)


def _basic_block(b: _Builder, prefix: str, x: str, cin: int, out: int, stride: int) -> str:
    """conv-bn-relu-conv-bn + shortcut, then add and ReLU. Projection when stride or width changes."""
    y = b.conv_bn(prefix, x, out, 3, stride, 1, names=("conv1", "bn1", "relu1"))
    y = b.conv_bn(prefix, y, out, 3, 1, 1, relu=False, names=("conv2", "bn2", ""))
    short = x
    if stride != 1 or cin != out:
        short = b.conv_bn(prefix, x, out, 1, stride, 0, relu=False, role="shortcut",
                          names=("shortcut.conv", "shortcut.bn", ""))
    s = b.add(f"{prefix}add", "add", (y, short))
    return b.add(f"{prefix}relu2", "relu", (s,))


def _resnet(blocks: tuple[int, ...], widths: tuple[int, ...], stem: int) -> Callable[[int, int, int], Arch]:
    def build(in_channels: int, image_size: int, num_classes: int) -> Arch:
        b = _Builder()
        x = b.add("input", "input", ())
        x = b.conv_bn("", x, stem, 3, 1, 1, names=("conv1", "bn1", "relu1"))
        cin = stem
        for s, (n, w) in enumerate(zip(blocks, widths)):
            b.stage = f"layer{s + 1}"
            for i in range(n):
                b.block = f"{b.stage}.{i}"
                stride = 2 if (s > 0 and i == 0) else 1
                x = _basic_block(b, f"{b.block}.", x, cin, w, stride)
                cin = w
        b.block = b.stage = ""
        b.head(x, num_classes)
        return Arch(tuple(b.nodes), in_channels, image_size, num_classes)
    return build


_VGG_CFG = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"),
}


def _vgg(cfg: tuple) -> Callable[[int, int, int], Arch]:
    def build(in_channels: int, image_size: int, num_classes: int) -> Arch:
        b = _Builder()
        x = b.add("input", "input", ())
        pools = sum(v == "M" for v in cfg)
        # Small images cannot take every max pool (MNIST 28 -> 0); skip the last ones that would collapse.
        allowed = max(0, min(pools, image_size.bit_length() - 1))
        conv_i = pool_i = 0
        for v in cfg:
            if v == "M":
                pool_i += 1
                if pool_i <= allowed:
                    x = b.add(f"features.pool{pool_i}", "maxpool", (x,), kernel=2, stride=2)
                continue
            conv_i += 1
            x = b.conv_bn(f"features.{conv_i}.", x, v, 3, 1, 1, bias=True)
        # The reference head: the last map is flattened straight into the classifier (no global pool), so
        # removing a max pool widens the linear layer (and can push it past LINEAR_THRESHOLD).
        b.head(x, num_classes, gap=False)
        return Arch(tuple(b.nodes), in_channels, image_size, num_classes)
    return build


# (expansion, out, blocks, stride): CIFAR strides (the 24-channel stage stays at stride 1).
_MBV2_CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
             (6, 320, 1, 1))


def _mobilenetv2(in_channels: int, image_size: int, num_classes: int) -> Arch:
    b = _Builder()
    x = b.add("input", "input", ())
    x = b.conv_bn("", x, 32, 3, 1, 1, names=("conv1", "bn1", "relu1"))
    cin, k = 32, 0
    for s, (t, out, n, stride0) in enumerate(_MBV2_CFG):
        b.stage = f"layers{s}"
        for i in range(n):
            stride = stride0 if i == 0 else 1
            b.block = f"layers.{k}"
            p = f"{b.block}."
            y = b.conv_bn(p, x, cin * t, 1, 1, 0, names=("conv1", "bn1", "relu1"))
            y = b.conv_bn(p, y, cin * t, 3, stride, 1, depthwise=True, names=("conv2", "bn2", "relu2"))
            y = b.conv_bn(p, y, out, 1, 1, 0, relu=False, names=("conv3", "bn3", ""))
            if stride == 1:
                short = x
                if cin != out:
                    short = b.conv_bn(p, x, out, 1, 1, 0, relu=False, role="shortcut",
                                      names=("shortcut.conv", "shortcut.bn", ""))
                y = b.add(f"{p}add", "add", (y, short))
            x, cin, k = y, out, k + 1
    b.block = b.stage = ""
    x = b.conv_bn("", x, 1280, 1, 1, 0, names=("conv2", "bn2", "relu2"))
    b.head(x, num_classes)
    return Arch(tuple(b.nodes), in_channels, image_size, num_classes)


def _shufflenet(in_channels: int, image_size: int, num_classes: int, groups: int = 2,
                widths: tuple[int, ...] = (200, 400, 800), blocks: tuple[int, ...] = (4, 8, 4)) -> Arch:
    b = _Builder()
    x = b.add("input", "input", ())
    x = b.conv_bn("", x, 24, 1, 1, 0, names=("conv1", "bn1", "relu1"))
    cin = 24
    for s, (w, n) in enumerate(zip(widths, blocks)):
        b.stage = f"layer{s + 1}"
        for i in range(n):
            b.block = p = f"{b.stage}.{i}"
            p += "."
            stride = 2 if i == 0 else 1
            out = w - cin if stride == 2 else w
            mid = out // 4
            g1 = 1 if cin == 24 else groups
            y = b.conv_bn(p, x, mid, 1, 1, 0, groups=g1, names=("conv1", "bn1", "relu1"))
            y = b.add(f"{p}shuffle", "shuffle", (y,), groups=g1)
            y = b.conv_bn(p, y, mid, 3, stride, 1, depthwise=True, names=("conv2", "bn2", "relu2"))
            y = b.conv_bn(p, y, out, 1, 1, 0, relu=False, groups=groups, names=("conv3", "bn3", ""))
            if stride == 2:
                short = b.add(f"{p}shortcut.pool", "avgpool", (x,), role="shortcut", kernel=3, stride=2, padding=1)
                y = b.add(f"{p}concat", "concat", (y, short))
            else:
                y = b.add(f"{p}add", "add", (y, x))
            x = b.add(f"{p}relu", "relu", (y,))
            cin = w
    b.block = b.stage = ""
    b.head(x, num_classes)
    return Arch(tuple(b.nodes), in_channels, image_size, num_classes)


def _lenet5(in_channels: int, image_size: int, num_classes: int) -> Arch:
    b = _Builder()
    pad = 2 if image_size == 28 else 0
    x = b.add("input", "input", ())
    x = b.add("conv1", "conv", (x,), out_channels=6, kernel=5, padding=pad, bias=True)
    x = b.add("relu1", "relu", (x,))
    x = b.add("pool1", "maxpool", (x,), kernel=2, stride=2)
    x = b.add("conv2", "conv", (x,), out_channels=16, kernel=5, bias=True)
    x = b.add("relu2", "relu", (x,))
    x = b.add("pool2", "maxpool", (x,), kernel=2, stride=2)
    x = b.add("flatten", "flatten", (x,))
    x = b.add("fc1", "linear", (x,), out_channels=120, bias=True)
    x = b.add("relu3", "relu", (x,))
    x = b.add("fc2", "linear", (x,), out_channels=84, bias=True)
    x = b.add("relu4", "relu", (x,))
    b.add("fc3", "linear", (x,), out_channels=num_classes, bias=True)
    return Arch(tuple(b.nodes), in_channels, image_size, num_classes)


def _lenet5_caffe(in_channels: int, image_size: int, num_classes: int) -> Arch:
    """DeepHoyer's MNIST LeNet-5 (20/50 convs, 500 hidden units); see the module docstring."""
    b = _Builder()
    x = b.add("input", "input", ())
    for i, width in ((1, 20), (2, 50)):
        x = b.add(f"conv{i}", "conv", (x,), out_channels=width, kernel=5, bias=True)
        x = b.add(f"relu{i}", "relu", (x,))
        x = b.add(f"pool{i}", "maxpool", (x,), kernel=2, stride=2)
    x = b.add("flatten", "flatten", (x,))
    x = b.add("fc1", "linear", (x,), out_channels=500, bias=True)
    x = b.add("relu3", "relu", (x,))
    b.add("fc2", "linear", (x,), out_channels=num_classes, bias=True)
    return Arch(tuple(b.nodes), in_channels, image_size, num_classes)


ZOO: dict[str, Callable[[int, int, int], Arch]] = {
    "lenet5": _lenet5,
    "lenet5caffe": _lenet5_caffe,
    "vgg11": _vgg(_VGG_CFG["vgg11"]),
    "vgg16": _vgg(_VGG_CFG["vgg16"]),
    "vgg19": _vgg(_VGG_CFG["vgg19"]),
    "resnet18": _resnet((2, 2, 2, 2), (64, 128, 256, 512), 64),
    "resnet34": _resnet((3, 4, 6, 3), (64, 128, 256, 512), 64),
    "resnet20": _resnet((3, 3, 3), (16, 32, 64), 16),
    "resnet32": _resnet((5, 5, 5), (16, 32, 64), 16),
    "resnet56": _resnet((9, 9, 9), (16, 32, 64), 16),
    "resnet110": _resnet((18, 18, 18), (16, 32, 64), 16),
    "mobilenetv2": _mobilenetv2,
    "shufflenet": _shufflenet,
}
ARCHS: tuple[str, ...] = tuple(ZOO)


def build_arch(name: str, in_channels: int = 3, image_size: int = 32, num_classes: int = 10) -> Arch:
    """The IR of zoo model ``name`` for the given input and class count.

    Raises ValueError for an unknown name (listing the zoo) or impossible sizes.
    """
    if name not in ZOO:
        raise ValueError(f"unknown architecture {name!r}; the zoo has {', '.join(ARCHS)}")
    if in_channels < 1 or image_size < 4 or num_classes < 2:
        raise ValueError(f"bad input spec: in_channels={in_channels}, image_size={image_size}, "
                         f"num_classes={num_classes} (need >=1, >=4, >=2)")
    arch = ZOO[name](in_channels, image_size, num_classes)
    arch = Arch(arch.nodes, arch.in_channels, arch.image_size, arch.num_classes, family=name)
    arch.shapes  # noqa: B018  (validate now: a bad size fails here with the node that collapses)
    return arch
