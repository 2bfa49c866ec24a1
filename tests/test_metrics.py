"""Analytic params/MACs agree with the built module and with torch's flop counter; latency is measured."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from netcomp.metrics import count_macs, count_params, measure_latency
from netcomp.surgery import build_module, keep_channels, remove_layers, set_widths
from netcomp.zoo import ARCHS, build_arch


def flop_counter_macs(model, shape):
    with torch.device("meta"):
        x = torch.empty(1, *shape)
    model = model.to("meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2  # the counter reports FLOPs = 2 x MACs for conv and matmul


@pytest.mark.parametrize("name", ARCHS)
def test_macs_agree_with_flop_counter(name):
    arch = build_arch(name)
    assert count_macs(arch) == flop_counter_macs(build_module(arch), (3, 32, 32))


def test_macs_and_params_of_students_agree_with_the_module():
    teacher = build_arch("resnet20")
    students = [
        set_widths(teacher, {"conv1": 5, "layer2.0.conv1": 7}),
        keep_channels(teacher, {"layer3.0.conv2": list(range(0, 64, 3))}),
        remove_layers(teacher, ["layer1.1.conv1", "layer1.1.bn1", "layer2.2.relu1"]),
    ]
    for s in students:
        model = build_module(s)
        assert sum(p.numel() for p in model.parameters()) == count_params(s)
        assert count_macs(s) == flop_counter_macs(model, (3, 32, 32))
        assert count_macs(s) < count_macs(teacher)


def test_latency_is_a_positive_median():
    model = build_module(build_arch("lenet5", 1, 28, 10))
    t = measure_latency(model, (1, 28, 28), warmup=1, repeats=3)
    assert 0 < t < 1.0
