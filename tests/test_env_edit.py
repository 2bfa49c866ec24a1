"""The edit space (ESNAC's remove / shrink width classes / add skips) and ESNAC's descriptor."""

import numpy as np
import pytest
import torch

from envs.edit import EditEnv, shrunk_width
from netcomp.arch import (
    ESNAC_BASE,
    ESNAC_MAX_LAYERS,
    ESNAC_TYPES,
    esnac_descriptor,
    esnac_nodes,
)
from netcomp.metrics import count_params
from netcomp.surgery import build_module, inherit_weights, remove_layers
from netcomp.zoo import ARCHS, build_arch
from tests.envcheck import run_checkers

pytestmark = pytest.mark.usefixtures("one_thread")


def make(tiny, arch="resnet20", **kw):
    return EditEnv(arch=arch, device="cpu", **tiny, **kw)


def test_checkers_pass_and_the_action_is_the_three_operations(tiny, recwarn):
    env = make(tiny, render_mode="ansi")
    run_checkers(env, recwarn)
    r, g, p = len(env.removable), len(env.width_classes), len(env.skip_pairs)
    assert env.action_space.shape == (r + g + p,) and env.action_space.dtype == np.float32
    assert env.width_classes == (16, 32, 64)  # ResNet-20: one class per stage width
    assert env.observation_space.shape == (len(esnac_nodes(env.arch)), ESNAC_BASE + 2 * ESNAC_MAX_LAYERS)
    with pytest.raises(ValueError, match="oneshot"):
        make(tiny, mode="sequential")


def test_resnet18_has_esnacs_four_width_classes_and_60_nodes(tiny):
    env = make(tiny, arch="resnet18")
    assert env.width_classes == (64, 128, 256, 512)
    assert len(env.layers) == 60
    # shape-preserving only: BN, ReLU, stride-1 same-width convs; never the stem, strided/widening convs, head
    assert "layer1.0.conv2" in env.removable and "layer1.0.bn1" in env.removable
    for fixed in ("conv1", "layer2.0.conv1", "layer2.0.shortcut.conv", "pool", "flatten", "fc"):
        assert fixed not in env.removable


def test_removal_makes_those_nodes_identities_and_drops_their_parameters(tiny):
    env = make(tiny)
    removed = ["layer1.0.bn1", "layer1.1.conv2", "layer2.1.relu2"]
    student = env.student_for(env.make_action(removed=removed))
    for name in removed:
        assert name not in student.index
    bn = 2 * 16
    conv = 16 * 16 * 9
    assert count_params(env.arch) - count_params(student) == bn + conv
    # the removed post-add ReLU leaves the add feeding the next block
    assert "layer2.1.add" in student.node("layer2.2.conv1").inputs


def test_a_width_class_shrinks_every_tensor_of_that_width_together(tiny):
    env = make(tiny)
    ratio = 0.5
    student = env.student_for(env.make_action(ratios={16: ratio}))
    new = shrunk_width(16, ratio)
    assert new == 8
    model = build_module(student)
    assert tuple(model.get_submodule("conv1").weight.shape) == (8, 3, 3, 3)
    assert tuple(model.get_submodule("layer1.2.conv2").weight.shape) == (8, 8, 3, 3)
    assert tuple(model.get_submodule("layer2.0.conv1").weight.shape) == (32, 8, 3, 3)   # input-only member
    assert tuple(model.get_submodule("layer2.0.shortcut.conv").weight.shape) == (32, 8, 1, 1)
    assert tuple(model.get_submodule("layer3.0.conv1").weight.shape) == (64, 32, 3, 3)  # other classes kept
    # params by hand: every 16-wide tensor at 8 (stem, stage 1, stage-2 entry inputs)
    t = count_params(env.arch)
    stem = (16 - 8) * 3 * 9 + 2 * (16 - 8)
    stage1 = 6 * ((16 * 16 - 8 * 8) * 9 + 2 * (16 - 8))
    entry = (16 - 8) * 32 * 9 + (16 - 8) * 32
    assert t - count_params(student) == stem + stage1 + entry
    # ESNAC's rule floor((1 - r) w), at least 1
    assert shrunk_width(64, 0.999) == 1 and shrunk_width(64, 0.0) == 64 and shrunk_width(10, 0.35) == 6


def test_a_skip_adds_the_source_into_the_destinations_input_without_parameters(tiny):
    env = make(tiny)
    pair = ("layer1.0.relu1", "layer1.1.conv2")
    assert pair in env.skip_pairs
    student = env.student_for(env.make_action(skips=[pair]))
    add = student.node(student.node("layer1.1.conv2").inputs[0])
    assert add.op == "add" and set(add.inputs) == {"layer1.1.relu1", "layer1.0.relu1"}
    assert count_params(student) == count_params(env.arch)
    # the built student computes conv2(relu1_b + relu1_a): compare with the teacher's modules by hand
    teacher = build_module(env.arch).eval()
    model = build_module(student).eval()
    inherit_weights(model, student, teacher, env.arch, mode="first_k")
    x = torch.randn(2, *env.arch.shapes["input"])
    assert not torch.allclose(model(x), teacher(x))
    # pairs compare the TEACHER's shapes and skip existing edges
    assert ("layer1.0.bn2", "layer1.0.relu2") not in env.skip_pairs
    assert all(env.arch.shapes[i] == env.arch.in_shape(j) for i, j in env.skip_pairs)


def test_a_skip_into_a_removed_node_is_ignored_and_counted(tiny):
    env = make(tiny)
    pair = next(p for p in env.skip_pairs if p[1] in env.removable)
    env.reset(seed=0)
    _, _, _, _, info = env.step(env.make_action(removed=[pair[1]], skips=[pair]))
    assert info["ignored_skips"] == 1 and info["skips"] == []


def test_weights_are_truncated_and_bn_statistics_are_fresh_unless_asked(tiny):
    for copy_stats in (False, True):
        env = make(tiny, copy_bn_stats=copy_stats)
        student = env.student_for(env.make_action(ratios={16: 0.5}))
        model = env.evaluator.build_student(student, env.evaluator.inherit, 0)
        t_bn, s_bn = env.teacher.model.get_submodule("bn1"), model.get_submodule("bn1")
        t_conv, s_conv = env.teacher.model.get_submodule("layer1.0.conv1"), model.get_submodule("layer1.0.conv1")
        assert torch.equal(s_conv.weight, t_conv.weight[:8, :8])          # the first channels
        assert torch.equal(s_bn.weight, t_bn.weight[:8])
        assert torch.equal(s_bn.running_mean, t_bn.running_mean[:8]) == copy_stats
        if not copy_stats:
            assert torch.equal(s_bn.running_mean, torch.zeros(8))


def test_the_sampler_draws_esnacs_candidates(tiny):
    env = make(tiny)
    rng = np.random.default_rng(0)
    r, g = len(env.removable), len(env.width_classes)
    actions = np.stack([env.sample_action(rng) for _ in range(400)])
    assert env.action_space.contains(actions[0])
    removal_rate = (actions[:, :r] > 0).mean()
    assert 0.4 < removal_rate < 0.6                     # p1 uniform over {0.3, ..., 0.7}
    assert -0.05 < actions[:, r:r + g].mean() < 0.05    # ratios uniform in [0, 1], entries 2r - 1
    assert (actions[:, r + g:] > 0).mean() < 0.05       # p3 at most 0.05
    for a in actions[:50]:                              # never a skip into a removed node
        removed, _, skips = env.split_action(a)
        assert not {j for _, j in skips} & set(removed)


def test_an_untouched_teacher_is_an_invalid_episode_with_a_reason(tiny):
    env = make(tiny)
    env.reset(seed=0)
    _, reward, _, _, info = env.step(env.make_action())
    assert not info["valid"] and "not fewer" in info["invalid_reason"] and reward == env.penalty


# ---------------------------------------------------------------------------- the descriptor
def _row(names, name):
    return names.index(name)


def test_esnac_descriptor_layout_on_resnet18_by_hand():
    teacher = build_arch("resnet18")
    names = list(esnac_nodes(teacher))
    assert len(names) == 60 and "layer1.0.add" not in names   # adds are folded into the next ReLU's input
    d = esnac_descriptor(teacher)
    assert d.shape == (60, 16 + 2 * ESNAC_MAX_LAYERS)
    back, fwd = ESNAC_BASE, ESNAC_BASE + ESNAC_MAX_LAYERS
    conv1 = d[0]
    assert conv1[ESNAC_TYPES.index("conv")] == 1 and conv1[:10].sum() == 1
    assert tuple(conv1[10:16]) == (3, 1, 1, 1, 3, 64)               # k, s, p, groups, in, out
    assert tuple(d[_row(names, "bn1"), 10:16]) == (0,) * 6          # channels only for conv / linear
    # layer1.0.relu2 (row 8) sums bn2 (row 7, 1 back) and the stem ReLU (row 2, 6 back)
    r = _row(names, "layer1.0.relu2")
    assert r == 8 and set(np.nonzero(d[r, back:fwd])[0]) == {1, 6}
    assert d[r, ESNAC_TYPES.index("relu")] == 1                     # the add is not typed as Identity
    assert set(np.nonzero(d[2, fwd:])[0]) == {1, 6}                 # stem ReLU -> conv1 of block 1 and relu2
    # projection block: source -> shortcut conv -> shortcut bn -> relu2
    sc = _row(names, "layer2.0.shortcut.conv")
    assert tuple(d[sc, 10:16]) == (1, 2, 0, 1, 64, 128)
    assert d[_row(names, "pool"), ESNAC_TYPES.index("avgpool")] == 1
    assert d[_row(names, "fc"), ESNAC_TYPES.index("linear")] == 1 and tuple(d[-1, 14:16]) == (512, 10)

    # a student: bn1 of block 1 removed, width class 64 shrunk to 32, a skip stem ReLU -> layer1.0.conv2
    env_like = EditEnv.__new__(EditEnv)  # use the env's edit logic without data: only the graph is needed
    env_like.arch, env_like.removable = teacher, ()
    env_like.width_classes = (64, 128, 256, 512)
    student = env_like.student_of_edits(["layer1.0.bn1"], [0.5, 0, 0, 0], [("relu1", "layer1.0.conv2")])
    s = esnac_descriptor(teacher, student)
    assert s.shape == d.shape
    i = _row(names, "layer1.0.bn1")
    assert s[i, :ESNAC_BASE].tolist() == [1.0] + [0.0] * 15         # Identity row, nothing else ...
    assert np.array_equal(s[i, back:], d[i, back:])                 # ... and the teacher's edges
    j = _row(names, "layer1.0.relu1")
    assert set(np.nonzero(s[j, back:fwd])[0]) == {1}                # no bypass edge conv1 -> relu1 added
    c2 = _row(names, "layer1.0.conv2")
    assert set(np.nonzero(s[c2, back:fwd])[0]) == {1, c2 - 2}       # the added skip from the stem ReLU
    assert tuple(s[0, 14:16]) == (3, 32) and tuple(s[c2, 14:16]) == (32, 32)
    assert tuple(s[sc, 14:16]) == (32, 128)                          # input-only member of class 64


def test_every_zoo_model_fits_max_layers():
    for name in ARCHS:
        assert len(esnac_nodes(build_arch(name))) <= ESNAC_MAX_LAYERS, name
    with pytest.raises(ValueError, match="max_layers"):
        esnac_descriptor(build_arch("resnet110"), max_layers=128)


def test_a_removal_space_student_has_the_same_descriptor_as_the_same_edit():
    teacher = build_arch("resnet20")
    removed = ["layer1.0.bn1", "layer2.2.relu1", "layer3.1.conv2"]
    env_like = EditEnv.__new__(EditEnv)
    env_like.arch, env_like.width_classes = teacher, (16, 32, 64)
    by_edit = env_like.student_of_edits(removed, [0, 0, 0], [])
    assert np.array_equal(esnac_descriptor(teacher, remove_layers(teacher, removed)),
                          esnac_descriptor(teacher, by_edit))


@pytest.mark.parametrize("arch", ["resnet20", "vgg11", "lenet5"])
def test_the_descriptor_straight_from_an_action_is_the_built_students(tiny, arch):
    env = make(tiny, arch=arch)
    rng = np.random.default_rng(1)
    r, g = len(env.removable), len(env.width_classes)
    checked = 0
    for t in range(30):
        a = env.sample_action(rng)
        a[r + g:][rng.random(len(env.skip_pairs)) < 0.1] = 1.0  # more skips than the sampler draws
        # removals with skips: a skip from a removed node, or beside a path through removed nodes, is an
        # edge only in ESNAC's representation (the built graph cannot show it; see the next test)
        a[:r] = -1.0 if t % 2 else a[:r]
        a[r + g:] = a[r + g:] if t % 2 else -1.0
        fast = env.descriptor_of_action(a)
        if fast is None:
            continue
        assert np.array_equal(fast, env.descriptor(env.student_for(a)))
        checked += 1
    assert checked >= 20


def test_a_skip_from_a_removed_node_stays_an_edge_of_its_identity_row(tiny):
    env = make(tiny)
    i, j = next((i, j) for i, j in env.skip_pairs if i in env.removable)
    action = env.make_action(removed=[i], skips=[(i, j)])
    d = env.descriptor_of_action(action)
    names = list(esnac_nodes(env.arch))
    a, b = names.index(i), names.index(j)
    assert d[a, ESNAC_TYPES.index("identity")] == 1 and d[b, ESNAC_BASE + b - a] == 1
    built = env.descriptor(env.student_for(action))              # the built graph has it from i's input
    assert built[b, ESNAC_BASE + b - a] == 0
    with pytest.raises(ValueError):
        env.descriptor_of_action(np.zeros(3))


def test_no_shortcut_where_it_would_not_be_exact(tiny):
    env = make(tiny, arch="mobilenetv2")                       # depthwise convs: widths follow the groups
    assert env.descriptor_of_action(env.sample_action(np.random.default_rng(0))) is None
