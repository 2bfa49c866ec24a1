"""The edit space (ESNAC's remove / shrink width classes / add skips) and ESNAC's descriptor."""

import numpy as np
import pytest
import torch

from envs.edit import EditEnv, shrunk_width
from netcomp.arch import (
    ESNAC_BASE,
    ESNAC_MAX_LAYERS,
    ESNAC_TYPES,
    arch_key,
    esnac_descriptor,
    esnac_nodes,
)
from netcomp.metrics import count_params
from netcomp.surgery import build_module, inherit_weights, remove_layers, student_problem
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
    for name in removed:  # kept under their names as identities (ESNAC's Identity nodes): no module
        assert student.node(name).op == "identity" and name not in dict(build_module(student).named_modules())
    bn = 2 * 16
    conv = 16 * 16 * 9
    assert count_params(env.arch) - count_params(student) == bn + conv
    # the removed post-add ReLU leaves the add feeding the next block
    assert student.node("layer2.2.conv1").inputs == ("layer2.1.relu2",)
    assert student.node("layer2.1.relu2").inputs == ("layer2.1.add",)
    assert arch_key(student) == arch_key(remove_layers(env.arch, removed))  # the same network


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


def test_a_skip_from_a_removed_node_stays_an_edge_of_its_identity_row(tiny):
    env = make(tiny)
    i, j = next((i, j) for i, j in env.skip_pairs if i in env.removable)
    action = env.make_action(removed=[i], skips=[(i, j)])
    d = env.descriptor_of_action(action)
    names = list(esnac_nodes(env.arch))
    a, b = names.index(i), names.index(j)
    assert d[a, ESNAC_TYPES.index("identity")] == 1 and d[b, ESNAC_BASE + b - a] == 1
    student = env.student_for(action)                            # i stays in the student as an identity
    assert student.node(i).op == "identity" and i in student.node(student.node(j).inputs[0]).inputs
    assert np.array_equal(env.descriptor(student), d)
    with pytest.raises(ValueError):
        env.descriptor_of_action(np.zeros(3))


def test_no_shortcut_where_it_would_not_be_exact(tiny):
    env = make(tiny, arch="mobilenetv2")                       # depthwise convs: widths follow the groups
    assert env.descriptor_of_action(env.sample_action(np.random.default_rng(0))) is None


# ---------------------------------------------------------------------------- property: both paths agree
#: One zoo model per family with an edit space (every zoo family has one), at a small image size.
FAMILIES = ("lenet5", "lenet5caffe", "vgg11", "resnet20", "resnet18", "mobilenetv2", "shufflenet")


def graph_env(arch: str, image_size: int = 16) -> EditEnv:
    """An edit env with only its graph (no data, no teacher): the env's own action layout and student builder."""
    env = EditEnv.__new__(EditEnv)
    env.arch, env.mode = build_arch(arch, image_size=image_size), "oneshot"
    env.max_layers, env._plans = ESNAC_MAX_LAYERS, {}
    env._layers()
    env.action_space = env._oneshot_space()
    return env


def esnac_structure(env: EditEnv, action: np.ndarray) -> np.ndarray:
    """ESNAC's representation of an action without its channel columns, by definition: the teacher's rows,
    removed rows as Identity rows, the teacher's edges plus every added skip (a skip from a removed node
    included, as an edge of its Identity row)."""
    d = esnac_descriptor(env.arch, None, env.max_layers)
    removed, _, skips = env.split_action(action)
    pos = {name: i for i, name in enumerate(esnac_nodes(env.arch))}
    for name in removed:
        d[pos[name], :ESNAC_BASE] = 0.0
        d[pos[name], ESNAC_TYPES.index("identity")] = 1.0
    for i, j in skips:
        if j not in removed:
            a, b = pos[i], pos[j]
            d[b, ESNAC_BASE + b - a] = d[a, ESNAC_BASE + env.max_layers + b - a] = 1.0
    d[:, 10:ESNAC_BASE] = 0.0
    return d


def sampled_actions(env: EditEnv, count: int, seed: int = 0) -> list[np.ndarray]:
    """ESNAC's sampler, with more skips than it draws (many from removed nodes or beside removed paths)."""
    rng = np.random.default_rng(seed)
    r, g = len(env.removable), len(env.width_classes)
    out = []
    for _ in range(count):
        a = env.sample_action(rng)
        extra = rng.random(len(env.skip_pairs)) < min(1.0, 4.0 / max(1, len(env.skip_pairs)))
        a[r + g:][extra] = 1.0
        out.append(a)
    return out


def test_a_skip_beside_a_path_through_removed_nodes_is_an_edge_of_the_student():
    # stem bn1/relu1 and block layer1.0 removed: the teacher path conv1 -> ... -> layer1.1.relu2 runs
    # through removed nodes only; the skip conv1 -> layer1.1.relu2 is still a new edge (conv1 counted twice)
    env = graph_env("resnet20")
    removed = ["bn1", "relu1"] + [n for n in env.removable if n.startswith("layer1.0.")]
    plain = env.make_action(removed=removed)
    skipped = env.make_action(removed=removed, skips=[("conv1", "layer1.1.relu2")])
    a, b = env.student_for(plain), env.student_for(skipped)
    assert arch_key(a) != arch_key(b)
    assert not np.array_equal(env.descriptor(a), env.descriptor(b))
    assert np.array_equal(env.descriptor(b), env.descriptor_of_action(skipped))
    names = list(esnac_nodes(env.arch))
    i, j = names.index("conv1"), names.index("layer1.1.relu2")
    assert env.descriptor(b)[j, ESNAC_BASE + j - i] == 1 and env.descriptor(a)[j, ESNAC_BASE + j - i] == 0


@pytest.mark.parametrize("arch", FAMILIES)
def test_every_sampled_action_has_the_same_descriptor_from_the_action_and_from_the_student(arch):
    env = graph_env(arch)
    actions = sampled_actions(env, 60)
    bad, exact, invalid = [], 0, 0
    for t, a in enumerate(actions):
        student = env.student_for(a)
        invalid += student_problem(student) is not None   # an invalid student still has its representation
        built = env.descriptor(student)
        fast = env.descriptor_of_action(a)
        structure = built.copy()
        structure[:, 10:ESNAC_BASE] = 0.0
        agree = np.array_equal(structure, esnac_structure(env, a))
        if fast is not None:
            exact += 1
            agree = agree and np.array_equal(fast, built)
        if not agree:
            bad.append(t)
    assert not bad, f"{arch}: {len(bad)} of {len(actions)} sampled actions disagree ({exact} with the fast path)"
    # the shortcut is exact (so compared) wherever the teacher has no grouped convs, mostly even with skips
    assert exact >= (0 if arch in ("mobilenetv2", "shufflenet") else 30), exact
    if arch == "shufflenet":  # widths that its grouped 1x1 convs cannot split: invalid, yet represented
        assert invalid > len(actions) // 2
