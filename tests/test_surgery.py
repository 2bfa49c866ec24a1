"""Transforms yield runnable, physically smaller students; weight inheritance copies the right slices."""

import pytest
import torch

from netcomp.arch import ArchError, removable_layers
from netcomp.metrics import count_params, node_params
from netcomp.surgery import (
    add_skips,
    build_module,
    inherit_weights,
    keep_channels,
    remove_layers,
    set_geometry,
    set_stage_depths,
    set_widths,
    student_problem,
)
from netcomp.zoo import ARCHS, build_arch


def run(arch, batch=2):
    model = build_module(arch).eval()
    return model(torch.randn(batch, arch.in_channels, arch.image_size, arch.image_size))


def randomise_bn(model):
    """Give BN layers non-trivial statistics so that copying them is checked, not assumed."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


# ---------------------------------------------------------------------------- every transform, every family
@pytest.mark.parametrize("name", ARCHS)
def test_removing_every_other_removable_layer_gives_a_runnable_smaller_student(name):
    teacher = build_arch(name)
    removable = removable_layers(teacher, "n2n")
    student = remove_layers(teacher, removable[::2])
    reason = student_problem(student, teacher)
    if reason is None:
        assert run(student).shape == (2, 10)
        assert count_params(student) < count_params(teacher)
    else:  # a removal may break an add or grow a linear layer: reported, never raised
        assert any(word in reason for word in ("add", "concat", "not fewer", "(> 50000)"))


@pytest.mark.parametrize("name", ARCHS)
def test_halving_every_shrinkable_group_shrinks_params(name):
    teacher = build_arch(name)
    widths = {g.gid: max(1, g.width // 2) for g in teacher.groups if g.shrinkable}
    student = set_widths(teacher, widths)
    assert student_problem(student, teacher) is None
    assert run(student).shape == (2, 10)
    assert count_params(student) < 0.6 * count_params(teacher)
    for gid, width in widths.items():   # grouped convs round up to a multiple of their groups
        groups = max(teacher.node(p).groups for p in teacher.group(gid).producers)
        assert width <= student.shapes[gid][0] < width + groups


def test_width_change_costs_exactly_the_parameters_it_removes():
    teacher = build_arch("resnet20")
    student = set_widths(teacher, {"layer2.1.conv1": 20})  # a free group: conv1 + bn1 of one block, conv2's input
    conv1 = 32 * 32 * 9
    expected = conv1 - 20 * 32 * 9 + (2 * 32 - 2 * 20) + (32 * 32 * 9 - 32 * 20 * 9)
    assert count_params(teacher) - count_params(student) == expected


def test_shrinking_one_member_of_a_coupled_group_shrinks_all_of_it():
    teacher = build_arch("resnet18")
    student = set_widths(teacher, {"layer2.1.conv2": 100})
    for name in ("layer2.0.conv2", "layer2.0.shortcut.conv", "layer2.1.conv2", "layer2.1.add", "layer3.0.conv1"):
        assert student.shapes[name][0] == 100 or student.in_shape(name)[0] == 100
    assert run(student).shape == (2, 10)


def test_remove_whole_residual_block_gives_identity_plus_shortcut():
    teacher = build_arch("resnet20")
    main = [n for n in teacher.layers if n.startswith("layer1.1.") and n != "layer1.1.relu2"]
    student = remove_layers(teacher, main)
    add = student.node("layer1.1.add")
    assert add.inputs == ("layer1.0.relu2", "layer1.0.relu2")      # relu(x + x), N2N's empty block
    model = build_module(student).eval()
    seen = {}
    model.get_submodule("layer1.0.relu2").register_forward_hook(lambda m, i, o: seen.update(x=o))
    model.get_submodule("layer1.1.relu2").register_forward_hook(lambda m, i, o: seen.update(y=o))
    model(torch.randn(2, 3, 32, 32))
    assert torch.allclose(seen["y"], torch.relu(2 * seen["x"]))  # the block really computes relu(2x)
    projection = [n for n in teacher.layers if n.startswith("layer2.0.") and teacher.node(n).role == "main"
                  and n != "layer2.0.relu2" and n != "layer2.0.conv1"]
    s2 = remove_layers(teacher, projection)
    assert student_problem(s2, teacher) is None  # stride-2 conv kept; shortcut keeps the sum valid


def test_add_skips_adds_a_parameter_free_connection():
    teacher = build_arch("resnet20")
    student = add_skips(teacher, [("layer1.0.relu2", "layer1.2.conv1")])
    assert "layer1.2.conv1.skip" in student.index
    assert count_params(student) == count_params(teacher)
    assert run(student).shape == (2, 10)
    with pytest.raises(ValueError, match="must come before"):
        add_skips(teacher, [("layer1.2.conv1", "layer1.0.conv1")])


def test_stage_depths_drop_whole_blocks():
    teacher = build_arch("resnet56")
    student = set_stage_depths(teacher, {"layer1": 3, "layer2": 9, "layer3": 1})
    dropped = [n.name for n in teacher.nodes if n.block.startswith("layer1.") and int(n.block.split(".")[1]) >= 3]
    dropped += [n.name for n in teacher.nodes if n.block.startswith("layer3.") and int(n.block.split(".")[1]) >= 1]
    expected = count_params(teacher) - sum(node_params(teacher, n) for n in dropped)
    assert count_params(student) == expected
    assert run(student).shape == (2, 10)
    with pytest.raises(ValueError, match="depth 0"):
        set_stage_depths(teacher, {"layer1": 0})
    with pytest.raises(ValueError, match="unknown stage"):
        set_stage_depths(teacher, {"layer9": 1})


def test_geometry_changes_kernel_stride_padding():
    teacher = build_arch("vgg11")
    student = set_geometry(teacher, {"features.2.conv": {"kernel": 1, "padding": 0}})
    assert count_params(teacher) - count_params(student) == 128 * 64 * 8
    assert run(student).shape == (2, 10)
    with pytest.raises(ValueError, match="unknown attributes"):
        set_geometry(teacher, {"features.2.conv": {"dilation": 2}})


# ---------------------------------------------------------------------------- invalid students
def test_invalid_students_are_reported_with_a_reason():
    lenet = build_arch("lenet5", 1, 128, 10)
    too_wide = remove_layers(lenet, ["pool1", "pool2"])
    assert "linear 'fc1'" in student_problem(too_wide, lenet) and "50000" in student_problem(too_wide, lenet)
    collapsed = set_geometry(build_arch("lenet5", 1, 28, 10), {"conv2": {"stride": 40}})
    assert "collapses" in student_problem(collapsed)
    teacher = build_arch("resnet20")
    assert "not fewer" in student_problem(add_skips(teacher, [("conv1", "layer1.0.conv2")]), teacher)
    broken = set_widths(teacher, {"layer1.0.conv1": 4})
    broken = remove_layers(broken, ["layer1.0.conv2", "layer1.0.bn2"])   # the add now joins 4 and 16 channels
    assert "add 'layer1.0.add'" in student_problem(broken, teacher)


def test_bad_requests_raise_value_errors_naming_the_problem():
    teacher = build_arch("resnet20")
    with pytest.raises(ValueError, match="no layer 'nope'"):
        remove_layers(teacher, ["nope"])
    with pytest.raises(ValueError, match=r"outside \[1, 16\]"):
        set_widths(teacher, {"conv1": 17})
    with pytest.raises(ValueError, match=r"outside \[1, 16\]"):
        set_widths(teacher, {"conv1": 0})
    with pytest.raises(ValueError, match="coupled"):
        set_widths(teacher, {"conv1": 8, "layer1.0.conv2": 8})
    with pytest.raises(ValueError, match="cannot change"):
        set_widths(teacher, {"fc": 5})
    with pytest.raises(ValueError, match="does not set a width"):
        set_widths(teacher, {"layer1.0.bn1": 5})
    with pytest.raises(ValueError, match="sorted, unique"):
        keep_channels(teacher, {"conv1": [3, 1]})
    with pytest.raises(ValueError, match="sorted, unique"):
        keep_channels(teacher, {"conv1": [0, 16]})
    with pytest.raises(ValueError, match="unknown inheritance mode"):
        inherit_weights(build_module(teacher), teacher, build_module(teacher), teacher, mode="copy")


# ---------------------------------------------------------------------------- weight inheritance
@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("mode", ["indices", "first_k"])
def test_an_unchanged_student_inherits_the_teacher_exactly(name, mode):
    arch = build_arch(name)
    teacher = randomise_bn(build_module(arch)).eval()
    student = build_module(arch).eval()
    origin = inherit_weights(student, arch, teacher, arch, mode=mode)
    assert set(origin.values()) == {"inherited"}
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(student(x), teacher(x), atol=1e-5)


def test_keep_channels_copies_exactly_the_kept_slices():
    t_arch = build_arch("resnet20")
    teacher = randomise_bn(build_module(t_arch)).eval()
    keep_in, keep_mid = [0, 3, 5, 6, 9, 15], [1, 2, 7]
    s_arch = keep_channels(t_arch, {"conv1": keep_in, "layer1.0.conv1": keep_mid})
    student = build_module(s_arch).eval()
    inherit_weights(student, s_arch, teacher, t_arch, mode="indices")
    get = lambda m, n: m.get_submodule(n)  # noqa: E731
    assert torch.equal(get(student, "conv1").weight, get(teacher, "conv1").weight[keep_in])
    w1, w2 = get(teacher, "layer1.0.conv1").weight, get(teacher, "layer1.0.conv2").weight
    assert torch.equal(get(student, "layer1.0.conv1").weight, w1[keep_mid][:, keep_in])
    assert torch.equal(get(student, "layer1.0.conv2").weight, w2[keep_in][:, keep_mid])
    assert torch.equal(get(student, "layer1.0.bn1").running_var, get(teacher, "layer1.0.bn1").running_var[keep_mid])
    assert torch.equal(get(student, "layer1.2.bn2").weight, get(teacher, "layer1.2.bn2").weight[keep_in])
    assert torch.equal(get(student, "layer2.0.shortcut.conv").weight,
                       get(teacher, "layer2.0.shortcut.conv").weight[:, keep_in])


def test_dropping_dead_channels_keeps_the_function():
    """If the consumers ignore some channels, removing exactly those channels leaves the output unchanged."""
    t_arch = build_arch("vgg11")
    teacher = randomise_bn(build_module(t_arch)).eval()
    dead = list(range(1, 128, 2))
    teacher.get_submodule("features.3.conv").weight.data[:, dead] = 0.0   # conv3 ignores half of conv2's outputs
    s_arch = keep_channels(t_arch, {"features.2.conv": list(range(0, 128, 2))})
    student = build_module(s_arch).eval()
    inherit_weights(student, s_arch, teacher, t_arch, mode="indices")
    x = torch.randn(3, 3, 32, 32)
    assert torch.allclose(student(x), teacher(x), atol=1e-4)
    assert count_params(s_arch) < count_params(t_arch)


def test_first_k_truncates_and_bn_stats_can_stay_fresh():
    t_arch = build_arch("resnet20")
    teacher = randomise_bn(build_module(t_arch)).eval()
    s_arch = set_widths(t_arch, {"layer1.0.conv1": 5})
    student = build_module(s_arch)
    inherit_weights(student, s_arch, teacher, t_arch, mode="first_k", bn_stats=False)
    w_t = teacher.get_submodule("layer1.0.conv2").weight
    assert torch.equal(student.get_submodule("layer1.0.conv2").weight, w_t[:, :5])
    bn = student.get_submodule("layer1.0.bn1")
    assert torch.equal(bn.weight, teacher.get_submodule("layer1.0.bn1").weight[:5])
    assert torch.equal(bn.running_var, torch.ones(5))  # fresh statistics (ESNAC)


def test_reinit_and_layers_whose_input_changed_stay_fresh():
    t_arch = build_arch("vgg11")
    teacher = build_module(t_arch)
    s_arch = remove_layers(t_arch, ["features.2.conv", "features.2.bn", "features.2.relu"])  # 128-wide conv gone
    student = build_module(s_arch)
    origin = inherit_weights(student, s_arch, teacher, t_arch, mode="indices")
    assert origin["features.3.conv"] == "fresh"        # now reads 64 channels of another tensor
    assert origin["features.1.conv"] == "inherited"
    assert set(inherit_weights(student, s_arch, teacher, t_arch, mode="reinit").values()) == {"fresh"}


def test_grouped_and_depthwise_convs_inherit_per_group():
    t_arch = build_arch("shufflenet")
    teacher = build_module(t_arch).eval()
    s_arch = set_widths(t_arch, {"layer2.1.conv1": 25})    # a 2-group conv feeding a shuffle and a depthwise conv
    assert s_arch.shapes["layer2.1.conv1"][0] == 26          # rounded up to a multiple of the 2 groups
    student = build_module(s_arch).eval()
    origin = inherit_weights(student, s_arch, teacher, t_arch, mode="indices")
    assert set(origin.values()) == {"inherited"}
    half = t_arch.shapes["layer2.1.conv1"][0] // 2                   # teacher filters per conv group
    # the kept filters are the first 13 of each of the two conv groups
    kept = list(range(13)) + list(range(half, half + 13))
    assert torch.equal(student.get_submodule("layer2.1.conv1").weight,
                       teacher.get_submodule("layer2.1.conv1").weight[kept])
    # the shuffled, depthwise-filtered channels follow: conv2 (depthwise) keeps the matching teacher filters
    w_dw_t = teacher.get_submodule("layer2.1.conv2").weight
    shuffled = [kept[(j % 2) * 13 + j // 2] for j in range(26)]          # student shuffle reads these teacher channels
    teacher_pos = [(p % half) * 2 + p // half for p in shuffled]          # where the teacher's shuffle put them
    assert torch.equal(student.get_submodule("layer2.1.conv2").weight, w_dw_t[teacher_pos])
    assert run(s_arch).shape == (2, 10)


# ---------------------------------------------------------------------------- VGG: a conv group feeding a flatten
def test_removing_all_five_vgg_pools_makes_the_classifier_too_wide():
    teacher = build_arch("vgg19")
    student = remove_layers(teacher, [f"features.pool{i}" for i in range(1, 6)])
    reason = student_problem(student, teacher)
    assert reason is not None and "linear 'fc'" in reason and "524288" in reason and "50000" in reason
    with pytest.raises(ArchError, match="524288 inputs"):
        student.shapes  # noqa: B018


def vgg_teachers():
    """VGG-11 teachers whose last map is larger than 1x1: a pool removed at 32x32, and a 64x64 input."""
    return {"no_pool5": remove_layers(build_arch("vgg11"), ["features.pool5"]), "64px": build_arch("vgg11", 3, 64, 10)}


@pytest.mark.parametrize("which", ["no_pool5", "64px"])
def test_keeping_channels_of_the_last_conv_selects_the_matching_classifier_columns(which):
    t_arch = vgg_teachers()[which]
    area = t_arch.in_shape("flatten")[1] * t_arch.in_shape("flatten")[2]
    assert area == 4
    teacher = randomise_bn(build_module(t_arch)).eval()
    kept = [0, 3, 4, 10, 77, 200, 511]
    s_arch = keep_channels(t_arch, {"features.8.conv": kept})
    assert s_arch.in_shape("fc") == (len(kept) * area,)
    student = build_module(s_arch).eval()
    origin = inherit_weights(student, s_arch, teacher, t_arch, mode="indices")
    assert set(origin.values()) == {"inherited"}
    columns = [c * area + k for c in kept for k in range(area)]   # channel c -> columns c*H*W .. c*H*W+H*W-1
    w_t = teacher.get_submodule("fc").weight
    assert torch.equal(student.get_submodule("fc").weight, w_t[:, columns])
    # the teacher with the dropped channels' classifier columns zeroed computes the student's function
    dropped = [c * area + k for c in range(512) if c not in kept for k in range(area)]
    w_t.data[:, dropped] = 0.0
    x = torch.randn(2, 3, t_arch.image_size, t_arch.image_size)
    assert torch.allclose(student(x), teacher(x), atol=1e-4)


def test_first_k_and_reinit_with_a_larger_flatten():
    t_arch = vgg_teachers()["no_pool5"]
    teacher = build_module(t_arch).eval()
    s_arch = set_widths(t_arch, {"features.8.conv": 100})
    student = build_module(s_arch).eval()
    assert set(inherit_weights(student, s_arch, teacher, t_arch, mode="first_k").values()) == {"inherited"}
    assert torch.equal(student.get_submodule("fc").weight, teacher.get_submodule("fc").weight[:, :400])
    assert set(inherit_weights(student, s_arch, teacher, t_arch, mode="reinit").values()) == {"fresh"}
    # indices mode: the same first channels, so the same columns
    student2 = build_module(s_arch).eval()
    inherit_weights(student2, s_arch, teacher, t_arch, mode="indices")
    assert torch.equal(student2.get_submodule("fc").weight, student.get_submodule("fc").weight)
    assert run(s_arch).shape == (2, 10)


def test_a_student_whose_map_grew_gets_a_fresh_classifier():
    t_arch = build_arch("vgg11")                                  # 512x1x1 into the classifier
    teacher = build_module(t_arch)
    s_arch = remove_layers(t_arch, ["features.pool5"])            # 512x2x2: the teacher's columns do not fit
    student = build_module(s_arch)
    origin = inherit_weights(student, s_arch, teacher, t_arch, mode="indices")
    assert origin["fc"] == "fresh" and origin["features.8.conv"] == "inherited"
