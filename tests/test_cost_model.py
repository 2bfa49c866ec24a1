"""GroupCostModel: MACs and params as a function of group widths equal counting the real student."""

import numpy as np
import pytest

from netcomp.metrics import GroupCostModel, count_macs, count_params
from netcomp.surgery import set_widths
from netcomp.zoo import build_arch


def random_widths(model: GroupCostModel, rng: np.random.Generator) -> np.ndarray:
    """Widths in [1, full], multiples of each group's granularity (so every grouped conv stays valid)."""
    step = np.array(model.granularity)
    return rng.integers(1, model.full // step + 1) * step


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "vgg11", "shufflenet", "lenet5"])
def test_cost_model_equals_counting_the_student(name):
    arch = build_arch(name, 3, 28 if name == "lenet5" else 32, 10)
    model = GroupCostModel(arch)
    assert model.gids == tuple(g.gid for g in arch.groups if g.shrinkable)
    assert model.macs({}) == count_macs(arch) and model.params({}) == count_params(arch)
    rng = np.random.default_rng(0)
    for _ in range(8):
        widths = random_widths(model, rng)
        student = set_widths(arch, dict(zip(model.gids, widths.tolist())))
        assert model.macs(widths) == count_macs(student)
        assert model.params(widths) == count_params(student)
        assert model.cost(dict(zip(model.gids, widths.tolist())), "params") == count_params(student)


def test_widths_below_the_granularity_round_like_set_widths():
    arch = build_arch("shufflenet")
    model = GroupCostModel(arch)
    grouped = [i for i, gid in enumerate(model.gids) if max(arch.node(p).groups for p in arch.group(gid).producers) > 1]
    assert grouped and set(model.granularity) == {2}  # ShuffleNet's g=2 convs and shuffles need even widths
    i = grouped[0]
    odd = {model.gids[i]: 7}
    assert model.macs(odd) == count_macs(set_widths(arch, odd)) == model.macs({model.gids[i]: 8})


def test_incremental_delta_matches_two_full_evaluations():
    arch = build_arch("mobilenetv2")
    model = GroupCostModel(arch)
    rng = np.random.default_rng(1)
    for _ in range(20):
        widths = random_widths(model, rng)
        i = int(rng.integers(len(widths)))
        new = int(rng.integers(1, model.full[i] + 1))
        changed = widths.copy()
        changed[i] = new
        for metric in ("macs", "params"):
            assert model.delta(widths, i, new, metric) == model.cost(changed, metric) - model.cost(widths, metric)


@pytest.mark.parametrize("name", ["mobilenetv2", "shufflenet"])
def test_tracker_follows_single_group_changes_exactly(name):
    arch = build_arch(name)
    model = GroupCostModel(arch)
    rng = np.random.default_rng(2)
    tracker = model.tracker()
    assert (tracker.macs, tracker.params) == (count_macs(arch), count_params(arch))
    for _ in range(30):
        i = int(rng.integers(len(model.gids)))
        step = model.granularity[i]
        tracker.set(i, step * int(rng.integers(1, model.full[i] // step + 1)))
        assert (tracker.macs, tracker.params) == (model.macs(tracker.widths), model.params(tracker.widths))
    student = set_widths(arch, dict(zip(model.gids, tracker.widths)))
    assert (tracker.macs, tracker.params) == (count_macs(student), count_params(student))
    with pytest.raises(ValueError, match="outside"):
        tracker.set(0, 0)


def test_dependent_cost_is_the_cost_that_scales_with_the_group_width():
    arch = build_arch("resnet20")
    model = GroupCostModel(arch)
    total = model.macs({})
    for i, gid in enumerate(model.gids):
        # no resnet20 layer reads and writes the same group, so its cost is linear in each group's width:
        # halving a (even) width saves exactly half of the cost that depends on it
        half = model.macs({gid: int(model.full[i]) // 2})
        assert total - half == model.dependent_cost(i) // 2 > 0
    assert model.dependent_cost(0, "params") > 0


def test_bad_widths_raise_value_error():
    model = GroupCostModel(build_arch("resnet20"))
    with pytest.raises(ValueError, match="not a shrinkable group"):
        model.macs({"fc": 3})
    with pytest.raises(ValueError, match="one per group"):
        model.macs([4, 4])
    with pytest.raises(ValueError, match=r"\[1, teacher width\]"):
        model.macs({"conv1": 0})
    with pytest.raises(ValueError, match=r"\[1, teacher width\]"):
        model.macs({"conv1": 17})
    with pytest.raises(ValueError, match="metric"):
        model.cost({}, "latency")
