"""The shrinkage space (N2N stage 2): lookup factors, coupling, fixed layers, starting from a removal."""

import numpy as np
import pytest

from envs.shrinkage import N2N_LOOKUP, ShrinkageEnv
from netcomp.rewards import n2n_reward
from tests.envcheck import run_checkers


def make(tiny, **kw):
    return ShrinkageEnv(arch=kw.pop("arch", "resnet20"), **tiny, **kw)


@pytest.mark.parametrize("mode", ["oneshot", "sequential"])
def test_checkers_pass(tiny, mode, recwarn):
    env = make(tiny, mode=mode, render_mode="ansi")
    run_checkers(env, recwarn)


def test_widths_follow_the_lookup_with_the_minimum_width(tiny):
    env = make(tiny)
    env.reset(seed=0)
    action = np.full(len(env.layers), N2N_LOOKUP.index(0.5))
    _, reward, _, _, info = env.step(action)
    student = env.student
    for name, width in info["widths"].items():
        teacher_width = env.arch.shapes[name][0]
        assert width == max(int(teacher_width * 0.5), 10)
        assert student.shapes[name][0] == width
    assert info["valid"]
    assert reward == pytest.approx(n2n_reward(info["compression"], info["accuracy"], info["teacher_accuracy"]))


def test_shrinkage_respects_coupling(tiny):
    env = make(tiny)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    _, _, _, _, info = env.step(rng.integers(0, len(N2N_LOOKUP), len(env.layers)))
    student = env.student
    for group in env.arch.groups:   # every member of a coupled group has the same width
        widths = {student.shapes[m][0] for m in group.members if m in student.index and len(student.shapes[m]) == 3}
        assert len(widths) <= 1
    stage2 = ["layer2.0.conv2", "layer2.0.shortcut.conv", "layer2.1.conv2", "layer2.2.conv2"]
    assert {"layer2.1.conv2", "layer2.2.conv2"} <= set(info["coupled"])   # follow layer2.0.conv2
    assert "layer2.0.shortcut.conv" in info["coupled"]                     # strided, follows its group
    assert len({student.shapes[n][0] for n in stage2}) == 1
    # N2N's block rule: strided convs inside blocks decide their own width; only the linear is fixed
    assert info["fixed"] == ["fc"]
    assert {"layer2.0.conv1", "layer3.0.conv1"} <= set(env.unwrapped.acting)
    expected = max(int(32 * N2N_LOOKUP[info_action(env, info, "layer2.0.conv1")]), 10)
    assert student.shapes["layer2.0.conv1"][0] == expected


def info_action(env, info, name):
    """The lookup index the episode's action gave layer ``name``."""
    return N2N_LOOKUP.index(info["factors"][env.layers.index(name)])


def test_shrinkage_starts_from_a_stage_one_student(tiny):
    removed = ["layer1.1.conv1", "layer1.1.bn1", "layer1.1.relu1"]
    env = make(tiny, removed=removed)
    env.reset(seed=0)
    assert "layer1.1.conv1" not in env.layers
    _, _, _, _, info = env.step(np.full(len(env.layers), len(N2N_LOOKUP) - 1))  # factor 1: no shrink
    assert info["valid"] and info["removed"] == removed
    assert info["teacher_params"] == env.evaluator.teacher_params  # compression against the teacher


def test_a_linear_with_too_few_inputs_is_invalid(tiny):
    env = make(tiny, arch="vgg11", min_width=1, lookup=(0.01, 1.0))   # last conv 512 -> 5 channels
    env.reset(seed=0)
    _, reward, _, _, info = env.step(np.zeros(len(env.layers), dtype=np.int64))
    assert not info["valid"] and "(< 10)" in info["invalid_reason"]
    assert reward == -1.0


def test_bad_arguments_and_actions(tiny):
    with pytest.raises(ValueError, match="lookup"):
        make(tiny, lookup=(0.0, 1.0))
    env = make(tiny)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="MultiDiscrete"):
        env.step(np.full(len(env.layers), 11))
    with pytest.raises(ValueError, match="MultiDiscrete"):
        env.step(np.full(3, 1))


def _all_at_quarter(parent):
    from envs.shrinkage import shrink_roles
    from netcomp.surgery import set_widths

    roles = shrink_roles(parent)
    return set_widths(parent, {n: max(int(parent.shapes[n][0] * 0.25), 10) for n in roles.acting})


def test_n2n_block_rule_gives_the_reference_compression_on_resnet18():
    from netcomp.metrics import count_params
    from netcomp.zoo import build_arch

    teacher = build_arch("resnet18")
    student = _all_at_quarter(teacher)
    # N2N's block rule shrinks every block's inner conv, stride-2 blocks included: about 0.937 (0.859 when
    # the projection blocks' conv1 stayed fixed).
    assert 1 - count_params(student) / count_params(teacher) == pytest.approx(0.937, abs=0.002)
    assert student.shapes["layer2.0.conv1"][0] == 32


@pytest.mark.parametrize("arch", ["resnet18", "resnet20"])
def test_no_stage_is_frozen_after_any_stage1_removal(arch):
    from netcomp.arch import removable_layers
    from netcomp.surgery import remove_layers
    from netcomp.zoo import build_arch

    teacher = build_arch(arch)
    removable = removable_layers(teacher, "n2n")
    removals = [[name] for name in removable]
    # whole conv-bn pairs too (the case that froze a stage: a projection block's conv2 and bn2 removed)
    removals += [[name, name.replace("conv", "bn")] for name in removable if ".conv" in name]
    for removed in removals:
        parent = remove_layers(teacher, removed)
        student = _all_at_quarter(parent)
        for node in parent.nodes:
            if node.op == "add":  # the width of every stage's residual stream shrinks
                assert student.shapes[node.name][0] < parent.shapes[node.name][0], (removed, node.name)
            if node.op == "conv" and node.block and node.role == "main":  # every block conv shrinks
                assert student.shapes[node.name][0] < parent.shapes[node.name][0], (removed, node.name)
