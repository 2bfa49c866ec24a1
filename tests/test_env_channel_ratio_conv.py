"""The channel-ratio space's TAS options: one width per conv (``granularity="conv"``) and per-stage depth."""

import math

import numpy as np
import pytest
import torch

from envs.channel_ratio import GROUP_FEATURES
from netcomp.metrics import count_macs, count_params
from netcomp.surgery import blocks_of, build_module, set_conv_widths, set_stage_depths, width_convs
from netcomp.zoo import build_arch
from tests.envcheck import run_checkers
from tests.test_env_channel_ratio import make, ratio_of, width_of
from tests.test_metrics import flop_counter_macs


@pytest.mark.parametrize(("mode", "granularity", "depth"), [
    ("oneshot", "conv", False), ("oneshot", "conv", True), ("sequential", "conv", True), ("oneshot", "group", True),
])
def test_checkers_pass(tiny, mode, granularity, depth, recwarn):
    env = make(tiny, mode=mode, granularity=granularity, depth=depth, render_mode="ansi")
    run_checkers(env, recwarn)
    n_widths = len(width_convs(env.arch)) if granularity == "conv" else len(env.cost.gids)
    entries = n_widths + (3 if depth else 0)
    assert len(env.layers) == entries
    assert env.action_space.shape == ((entries,) if mode == "oneshot" else (1,))
    width = len(GROUP_FEATURES) + (3 if mode == "sequential" else 0)
    assert env.observation_space.shape == ((entries, width) if mode == "oneshot" else (width,))


def test_conv_entries_are_the_main_convs_and_stages(tiny):
    env = make(tiny, granularity="conv", depth=True)
    convs = [n.name for n in env.arch.nodes if n.op == "conv" and n.role == "main"]
    assert env.layers == (*convs, "layer1", "layer2", "layer3")
    assert len(convs) == 19  # ResNet-20: the stem and 2 per block, TAS's 19 width logits


def test_students_have_the_widths_depths_params_and_macs_they_report(tiny):
    env = make(tiny, granularity="conv", depth=True)
    rng = np.random.default_rng(1)
    n = len(width_convs(env.arch))
    for _ in range(4):
        action = rng.uniform(-1, 1, len(env.layers)).astype(np.float32)
        env.reset(seed=0)
        *_, info = env.step(action)
        student = env.student
        full = [env.arch.node(c).out_channels for c in env.layers[:n]]
        expected = [width_of(ratio_of(float(a)), w) for a, w in zip(action[:n], full)]
        assert list(info["widths"].values()) == expected
        depths = {s: min(3, 1 + math.floor((float(a) + 1) / 2 * 3)) for s, a in zip(("layer1", "layer2", "layer3"),
                                                                                   action[n:])}
        assert info["depths"] == depths
        assert {s: len(b) for s, b in blocks_of(student).items()} == depths
        for conv, width in info["widths"].items():
            if conv in student.index:
                assert student.shapes[conv][0] == width
        model = build_module(student)
        assert sum(p.numel() for p in model.parameters()) == count_params(student) == info["params"]
        assert count_macs(student) == info["macs"] == flop_counter_macs(model, (3, 16, 16))


def test_projection_is_inserted_where_an_identity_shortcut_joins_two_widths():
    teacher = build_arch("resnet20")
    student = set_conv_widths(teacher, {"layer1.0.conv2": 9, "conv1": 16, "layer2.1.conv2": 12})
    # layer1.0: 16 in, 9 out -> a new 1x1 conv + BN; layer1.1 reads 9 and writes 16 -> another one
    for block, cin, cout in (("layer1.0", 16, 9), ("layer1.1", 9, 16), ("layer2.1", 32, 12), ("layer2.2", 12, 32)):
        conv = student.node(f"{block}.shortcut.conv")
        assert conv.kernel == 1 and conv.role == "shortcut" and f"{block}.shortcut.conv" not in teacher.index
        assert student.in_shape(conv.name)[0] == cin and student.shapes[conv.name][0] == cout
        assert student.node(f"{block}.shortcut.bn").inputs == (conv.name,)
    # an existing projection (stride 2) follows its block's last conv; blocks of equal widths stay identity
    assert student.shapes["layer2.0.shortcut.conv"][0] == 32
    assert "layer1.2.shortcut.conv" not in student.index
    model = build_module(student)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert count_macs(student) == flop_counter_macs(model, (3, 32, 32))


def test_depth_keeps_the_first_blocks_and_the_next_stage_reads_the_last_kept_block():
    teacher = build_arch("resnet56")
    student = set_conv_widths(set_stage_depths(teacher, {"layer1": 2, "layer2": 5}),
                              {"layer1.1.conv2": 7, "layer2.4.conv2": 20})
    assert [len(b) for b in blocks_of(student).values()] == [2, 5, 9]
    assert student.in_shape("layer2.0.conv1")[0] == 7
    assert student.in_shape("layer3.0.shortcut.conv")[0] == 20
    model = build_module(student)
    assert count_macs(student) == flop_counter_macs(model, (3, 32, 32))


def test_released_tas_resnet20_config_has_its_stated_mflops():
    """C10 ResNet-20 of TAS's released configs: xchannels and estimated_FLOP 22.444472 (MACs / 1e6)."""
    xchannels = [3, 16, 6, 4, 4, 4, 4, 4, 32, 32, 12, 19, 32, 28, 64, 64, 64, 64, 64, 44]
    teacher = build_arch("resnet20")
    student = set_conv_widths(teacher, dict(zip(width_convs(teacher), xchannels[1:])))
    assert count_macs(student) / 1e6 == pytest.approx(22.444472, rel=1e-6)


def test_bad_options_are_refused(tiny):
    with pytest.raises(ValueError, match="granularity"):
        make(tiny, granularity="layer")
    with pytest.raises(ValueError, match="selection"):
        make(tiny, granularity="conv", selection="norm")
    with pytest.raises(ValueError, match="budget"):
        make(tiny, granularity="conv", budget=0.5)
    with pytest.raises(ValueError, match="depth"):
        make(tiny, depth="yes")
    with pytest.raises(ValueError, match="grouped"):
        width_convs(build_arch("shufflenet"))


# ------------------------------------------------------------------ granularity="stage" (a width per stage)
@pytest.mark.parametrize("mode", ["oneshot", "sequential"])
def test_stage_granularity_passes_the_checkers_with_a_width_and_a_depth_per_stage(tiny, mode, recwarn):
    env = make(tiny, mode=mode, granularity="stage", depth=True, render_mode="ansi")
    run_checkers(env, recwarn)
    assert env.layers == ("layer1.width", "layer2.width", "layer3.width", "layer1", "layer2", "layer3")


def test_a_stage_width_sets_every_group_of_its_stage_and_nothing_else(tiny):
    env = make(tiny, granularity="stage", depth=True, lbound=0.25)
    stage_of = {"layer1": 0, "layer2": 1, "layer3": 2}
    for gid, k in zip(env.cost.gids, env._stage_of_group):  # every ResNet-20 group lies in one stage
        producers = env.arch.group(gid).producers
        assert k == stage_of[next(env.arch.node(p).stage for p in producers if env.arch.node(p).stage)]
    action = np.array([-1.0, 1 / 3, 1.0, 1.0, -1.0, 0.0], np.float32)  # keep 1/4, 3/4, all; 3, 1, 2 blocks
    env.reset(seed=0)
    *_, info = env.step(action)
    full = dict(zip(env.cost.gids, env.cost.full.tolist()))
    ratio = {0: 0.25, 1: 0.75, 2: 1.0}
    assert info["widths"] == {g: width_of(ratio[k], full[g]) for g, k in zip(env.cost.gids, env._stage_of_group)}
    assert info["depths"] == {"layer1": 3, "layer2": 1, "layer3": 2}
    student = env.student
    assert {s: len(b) for s, b in blocks_of(student).items()} == info["depths"]
    assert student.shapes["conv1"][0] == width_of(0.25, 16)  # the stem follows the first stage's width
    assert student.shapes["layer3.0.conv1"][0] == 64 and student.shapes["layer2.0.conv2"][0] == width_of(0.75, 32)
    model = build_module(student)
    assert sum(p.numel() for p in model.parameters()) == count_params(student) == info["params"]
    assert count_macs(student) == info["macs"] == flop_counter_macs(model, (3, 16, 16))


def test_the_stage_grid_of_four_widths_and_three_depths_holds_1728_students(tiny):
    from itertools import product

    from netcomp.arch import arch_key

    env = make(tiny, granularity="stage", depth=True, lbound=0.25)
    levels = np.linspace(-1.0, 1.0, 4)
    keys = {arch_key(env.student_for(levels[[w1, w2, w3, d1, d2, d3]]))
            for w1, w2, w3 in product(range(4), repeat=3) for d1, d2, d3 in product((0, 1, 3), repeat=3)}
    assert len(keys) == 4 ** 3 * 3 ** 3


def test_a_network_without_stages_refuses_the_stage_granularity(tiny):
    with pytest.raises(ValueError, match="has no stages"):
        make({**tiny}, arch="lenet5", granularity="stage")
