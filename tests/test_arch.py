"""The IR: shapes, coupling groups found from the graph, removability rules, descriptors, canonical key."""

import numpy as np
import pytest

from netcomp.arch import (
    AMC_FEATURES,
    ESNAC_MAX_LAYERS,
    Arch,
    ArchError,
    Node,
    amc_features,
    arch_key,
    esnac_descriptor,
    esnac_nodes,
    n2n_descriptors,
    prunable_layers,
    removable_layers,
)
from netcomp.surgery import keep_channels, remove_layers, set_widths
from netcomp.zoo import build_arch


def producers_by_group(arch):
    return {frozenset(g.producers) for g in arch.groups if g.shrinkable}


def test_resnet18_coupling_groups():
    groups = producers_by_group(build_arch("resnet18"))
    assert frozenset({"conv1", "layer1.0.conv2", "layer1.1.conv2"}) in groups
    for s in (2, 3, 4):
        assert frozenset({f"layer{s}.0.conv2", f"layer{s}.0.shortcut.conv", f"layer{s}.1.conv2"}) in groups
    # each block's first conv is free, and nothing else is coupled
    for s in range(1, 5):
        for b in range(2):
            assert frozenset({f"layer{s}.{b}.conv1"}) in groups
    assert len(groups) == 4 + 8


def test_resnet56_has_one_group_per_stage_plus_one_per_block():
    arch = build_arch("resnet56")
    groups = producers_by_group(arch)
    assert len(groups) == 3 + 27
    stage3 = next(g for g in groups if "layer3.0.shortcut.conv" in g)
    assert stage3 == frozenset({f"layer3.{b}.conv2" for b in range(9)} | {"layer3.0.shortcut.conv"})


def test_coupling_is_found_from_the_graph_of_a_hand_made_network():
    # input -> a -> b ; a + b -> c ; (a and b must keep the same channels, c is free)
    nodes = (
        Node("input", "input"),
        Node("a", "conv", ("input",), out_channels=8, kernel=3, padding=1),
        Node("b", "conv", ("a",), out_channels=8, kernel=3, padding=1),
        Node("sum", "add", ("a", "b")),
        Node("c", "conv", ("sum",), out_channels=4, kernel=1),
        Node("pool", "gap", ("c",)),
        Node("flat", "flatten", ("pool",)),
        Node("fc", "linear", ("flat",), out_channels=3),
    )
    arch = Arch(nodes, 3, 8, 3)
    assert producers_by_group(arch) == {frozenset({"a", "b"}), frozenset({"c"})}
    student = set_widths(arch, {"b": 5})
    assert student.shapes["a"][0] == student.shapes["b"][0] == 5


def test_mobilenetv2_depthwise_conv_ties_its_expansion_and_residuals_tie_projections():
    arch = build_arch("mobilenetv2")
    group = arch.group(arch.group_of["layers.3.conv1"])
    assert {"layers.3.conv1", "layers.3.conv2", "layers.3.bn2"} <= set(group.members)
    assert group.producers == ("layers.3.conv1",)
    stage = arch.group(arch.group_of["layers.3.conv3"])  # 32-wide stage: blocks 3, 4, 5
    assert set(stage.producers) == {"layers.3.conv3", "layers.4.conv3", "layers.5.conv3"}


def test_shapes_are_inferred_and_bad_graphs_name_the_node():
    arch = build_arch("resnet18")
    assert arch.shapes["layer2.0.conv1"] == (128, 16, 16)
    assert arch.shapes["fc"] == (10,)
    bad = Arch(build_arch("lenet5", 1, 28).nodes, 1, 8, 10)
    with pytest.raises(ArchError, match="conv2.*collapses"):
        bad.shapes  # noqa: B018
    with pytest.raises(ArchError, match="unknown op"):
        Node("x", "softmax")


def test_n2n_removal_rule_on_resnet18():
    arch = build_arch("resnet18")
    removable = set(removable_layers(arch, "n2n"))
    fixed = set(arch.layers) - removable
    strided = {f"layer{s}.0.conv1" for s in (2, 3, 4)}
    shortcuts = {f"layer{s}.0.shortcut.{k}" for s in (2, 3, 4) for k in ("conv", "bn")}
    assert fixed == {"conv1", "fc", "pool"} | strided | shortcuts
    assert "layer1.0.conv1" in removable and "layer2.0.conv2" in removable


def test_esnac_removal_rule_keeps_only_shape_preserving_layers():
    arch = build_arch("resnet18")
    removable = removable_layers(arch, "esnac")
    assert all(arch.in_shape(n) == arch.shapes[n] for n in removable)
    assert "layer2.0.shortcut.bn" in removable and "layer2.0.conv1" not in removable
    with pytest.raises(ValueError, match="unknown removal rule"):
        removable_layers(arch, "nope")


def test_n2n_descriptors():
    arch = build_arch("resnet18")
    d = n2n_descriptors(arch)
    assert d.shape == (len(arch.layers), 7)
    conv1 = d[arch.layers.index("conv1")]
    assert tuple(conv1[:5]) == (1, 3, 1, 1, 64)   # type conv, k3, s1, p1, 64 outputs
    assert tuple(d[arch.layers.index("bn1")][:5]) == (4, 0, 0, 0, 0)
    # skip features: the 5 main-branch layers of a block plus its post-add ReLU count 0..5 / 5..0
    block = [n for n in arch.layers if n.startswith("layer1.0.")]
    assert [tuple(d[arch.layers.index(n), 5:]) for n in block] == [(j, 5 - j) for j in range(6)]
    assert tuple(d[arch.layers.index("pool")][:3]) == (8, 4, 4)  # global pool reads as AvgPool2d(4)


def test_esnac_descriptor_encodes_types_attributes_and_edges():
    arch = build_arch("resnet18")
    v = esnac_descriptor(arch)
    assert v.shape == (60, 16 + 2 * ESNAC_MAX_LAYERS)   # ESNAC's 60 nodes: no input, adds folded
    names = list(esnac_nodes(arch))
    i_relu2 = names.index("layer1.0.relu2")
    # the post-add ReLU reads bn2 (1 back) and the stem ReLU (further back): the add is its input sum
    back = np.nonzero(v[i_relu2, 16:16 + ESNAC_MAX_LAYERS])[0]
    assert 1 in back and len(back) == 2
    with pytest.raises(ValueError, match="max_layers"):
        esnac_descriptor(build_arch("resnet110"), max_layers=128)


def test_an_invalid_network_has_the_shapes_its_layers_declare_and_an_esnac_descriptor():
    from dataclasses import replace

    from netcomp.arch import infer_shapes

    t = build_arch("resnet20")
    # layer1.0.conv2 at 8 channels: the block's add joins 8 and 16 channels, so the network cannot work
    bad = t.with_nodes(replace(n, out_channels=8) if n.name == "layer1.0.conv2" else n for n in t.nodes)
    with pytest.raises(ArchError, match="add 'layer1.0.add'"):
        infer_shapes(bad)
    shapes = infer_shapes(bad, strict=False)
    assert shapes["layer1.0.bn2"] == (8, 32, 32) and shapes["layer1.0.add"] == (8, 32, 32)  # the first input's
    assert shapes["fc"] == (10,)
    d = esnac_descriptor(t, bad)
    row = list(esnac_nodes(t)).index("layer1.0.conv2")
    assert tuple(d[row, 14:16]) == (16, 8) and np.array_equal(d[:, 16:], esnac_descriptor(t)[:, 16:])


def test_amc_features_use_fixed_scales_so_they_transfer():
    small, big = build_arch("resnet20"), build_arch("resnet56")
    f_small, f_big = amc_features(small), amc_features(big)
    assert f_small.shape == (len(prunable_layers(small)), len(AMC_FEATURES))
    # the same layer (stem conv) has the same features in both teachers, except its relative position (0 in both)
    assert np.allclose(f_small[0], f_big[0])
    assert f_small.min() >= 0 and f_small.max() <= 1.5


def test_arch_key_identifies_the_same_student():
    t = build_arch("resnet20")
    a = set_widths(t, {"conv1": 8})
    b = set_widths(t, {"layer1.2.conv2": 8})          # same coupled group, other member
    c = set_widths(t, {"conv1": 9})
    assert arch_key(a) == arch_key(b) != arch_key(c)
    # the order of a removal request does not matter; a different removal is a different student
    assert arch_key(remove_layers(t, ["layer1.0.bn1", "layer2.1.relu1"])) == arch_key(
        remove_layers(t, ["layer2.1.relu1", "layer1.0.bn1"]))
    assert arch_key(remove_layers(t, ["layer1.0.relu1"])) != arch_key(remove_layers(t, ["layer1.1.relu1"]))
    # first-k widths and keeping the first k indices are the same student, with or without origin
    assert arch_key(keep_channels(t, {"conv1": range(8)}), True) == arch_key(a, True)
    # with_origin tells apart students whose inherited channels differ
    k1 = keep_channels(t, {"conv1": [0, 1, 2]})
    k2 = keep_channels(t, {"conv1": [3, 4, 5]})
    assert arch_key(k1) == arch_key(k2)
    assert arch_key(k1, with_origin=True) != arch_key(k2, with_origin=True)


def test_arch_round_trips_through_plain_data():
    import json

    from netcomp.arch import arch_from_dict, arch_to_dict

    student = keep_channels(remove_layers(build_arch("mobilenetv2"), ["layers.2.relu1"]), {"conv1": [1, 5, 9]})
    data = json.loads(json.dumps(arch_to_dict(student)))
    again = arch_from_dict(data)
    assert again == student and arch_key(again, True) == arch_key(student, True)
    with pytest.raises(ArchError, match="not an architecture"):
        arch_from_dict({"nodes": [{"nope": 1}]})


# ---------------------------------------------------------------------------- removal gives a working network
@pytest.mark.parametrize("name", ["mobilenetv2", "resnet20", "vgg11", "shufflenet", "lenet5"])
@pytest.mark.parametrize("rule", ["n2n", "esnac"])
def test_every_removable_layer_removed_alone_gives_working_shapes(name, rule):
    arch = build_arch(name)
    for layer in removable_layers(arch, rule):
        remove_layers(arch, [layer]).shapes  # noqa: B018  (raises ArchError if the student cannot work)


def test_mobilenetv2_residual_width_changing_convs_are_not_removable():
    arch = build_arch("mobilenetv2")
    removable = set(removable_layers(arch, "n2n"))
    # layers.4: stride 1, identity shortcut (32 -> 32): without conv3 the add would join 192 and 32 channels
    assert arch.node("layers.4.add").inputs[1] == "layers.3.bn3"
    for conv3 in ("layers.4.conv3", "layers.1.conv3", "layers.3.conv3", "layers.16.conv3"):
        assert conv3 not in removable
        with pytest.raises(ArchError, match="add"):
            remove_layers(arch, [conv3]).shapes  # noqa: B018
    # the expansion conv can go: the depthwise conv and conv3 are fitted to the block's input width
    assert "layers.4.conv1" in removable and "layers.4.bn3" in removable
    assert remove_layers(arch, ["layers.4.conv1"]).shapes["layers.4.conv2"][0] == 32
    assert arch.removal_breaks is arch.removal_breaks  # computed once per architecture


def test_removal_rule_drops_pools_whose_removal_makes_the_classifier_too_wide():
    small = build_arch("vgg11")            # 32x32: without one pool the classifier reads 512x2x2: fine
    assert "features.pool1" in removable_layers(small, "n2n")
    large = build_arch("vgg11", 3, 256, 10)  # 256x256: without pool1 the classifier would read 512x16x16
    assert large.in_shape("fc") == (512 * 8 * 8,)
    assert "features.pool1" not in removable_layers(large, "n2n")
    assert "features.pool1" in large.removal_breaks


def test_channel_groups_stop_at_a_flatten_of_a_larger_map():
    teacher = build_arch("vgg11")                                    # 512x1x1: flatten passes channels through
    assert teacher.group_of["flatten"] == teacher.group_of["features.8.conv"]
    student = remove_layers(teacher, ["features.pool5"])              # 512x2x2: flatten mixes channels and space
    group = student.group(student.group_of["features.8.conv"])
    assert group.shrinkable and group.producers == ("features.8.conv",)
    assert "features.8.relu" in group.members and "flatten" not in group.members
    flat = student.group(student.group_of["flatten"])
    assert not flat.shrinkable and flat.width == 2048
