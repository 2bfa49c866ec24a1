"""Analytic params/MACs agree with the built module and with torch's flop counter; latency is measured."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from netcomp.arch import node_macs
from netcomp.metrics import GroupCostModel, count_macs, count_params, measure_latency
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


# ---------------------------------------------------------------------------- VGG students without a pool
@pytest.mark.parametrize("pools", [["features.pool1"], ["features.pool5"], ["features.pool3", "features.pool4"]])
def test_vgg_student_without_pools_counts_like_torch(pools):
    """No global pool in the VGG head: removing a max pool widens the classifier and multiplies later MACs."""
    teacher = build_arch("vgg19")
    student = remove_layers(teacher, pools)
    model = build_module(student)
    assert sum(p.numel() for p in model.parameters()) == count_params(student)
    assert count_macs(student) == flop_counter_macs(model, (3, 32, 32))
    side = 2 ** len(pools)
    assert student.in_shape("fc") == (512 * side * side,)
    assert count_params(student) - count_params(teacher) == 512 * (side * side - 1) * 10
    assert count_macs(student) > count_macs(teacher)


def test_group_cost_model_is_exact_for_a_group_feeding_a_larger_flatten():
    teacher = remove_layers(build_arch("vgg11"), ["features.pool5"])     # 512 x 2 x 2 into the classifier
    model = GroupCostModel(teacher)
    gid = teacher.group_of["features.8.conv"]
    for width in (1, 100, 512):
        student = set_widths(teacher, {gid: width})
        assert student.in_shape("fc") == (width * 4,)
        assert model.macs({gid: width}) == count_macs(student)
        assert model.params({gid: width}) == count_params(student)


# ---------------------------------------------------------------------------- layering: no import cycle
def _fresh_python(code):
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr


def test_metrics_imports_first_in_a_fresh_interpreter():
    _fresh_python("import netcomp.metrics, netcomp.arch, netcomp.zoo; "
                  "assert netcomp.metrics.node_macs is netcomp.arch.node_macs; "
                  "netcomp.arch.amc_features(netcomp.zoo.build_arch('resnet20'))")


def test_arch_imports_first_and_its_features_never_load_metrics():
    _fresh_python("import sys, netcomp.arch, netcomp.zoo; "
                  "netcomp.arch.amc_features(netcomp.zoo.build_arch('mobilenetv2')); "
                  "assert 'netcomp.metrics' not in sys.modules, 'arch pulled in metrics'; "
                  "import netcomp.metrics")


def test_arch_source_does_not_import_metrics():
    source = (Path(__file__).resolve().parents[1] / "netcomp" / "arch.py").read_text()
    assert not re.search(r"^\s*(from\s+netcomp(\.metrics|\s+import\s+.*\bmetrics\b)|import\s+netcomp\.metrics)",
                         source, flags=re.M)
    arch = build_arch("resnet20")
    assert count_macs(arch) == sum(node_macs(arch, n) for n in arch.index)   # metrics counts with arch's formula
