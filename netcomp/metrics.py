"""Cost metrics of an architecture: parameters and MACs computed analytically from the IR, and latency.

MACs follow TAS/LeGR: multiply-accumulates of conv and linear layers only (BN, ReLU, pools and adds are
free). Parameters count every trainable tensor, BN affine included (N2N/ESNAC).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from netcomp.arch import Arch


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


def node_macs(arch: Arch, name: str) -> int:
    """Multiply-accumulates of one node for one image (conv and linear only)."""
    node = arch.node(name)
    out = arch.shapes[name]
    if node.op == "conv":
        cin = arch.in_shape(name)[0]
        return out[0] * (cin // arch.conv_groups(node)) * node.kernel**2 * out[1] * out[2]
    if node.op == "linear":
        return out[0] * arch.in_shape(name)[0]
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
