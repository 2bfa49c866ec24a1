"""DeepHoyer's regularisers, threshold pruning and gradient masks (netcomp/sparsity.py)."""

from __future__ import annotations

import pytest
import torch

from netcomp.sparsity import (
    ELEMENTWISE,
    REGULARIZERS,
    alive_channels,
    apply_masks,
    density,
    group_norms,
    hoyer_threshold,
    mask_gradients,
    penalty,
    prune_masks,
    regularizer,
)

SCALE_INVARIANT = ("hoyer", "hs", "group_hoyer", "ghs")


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("grouping", ["whole", "fibre"])
@pytest.mark.parametrize("name", REGULARIZERS)
def test_scale_invariance(name, grouping):
    """HS, Hoyer, Group-Hoyer, Group-HS do not change under W -> cW; L1, TL1 and group lasso do."""
    w = rand(8, 4, 3, 3)
    fn = regularizer(name, grouping)
    for c in (0.01, -3.0, 250.0):
        same = torch.isclose(fn(c * w), fn(w), rtol=1e-9)
        assert bool(same) == (name in SCALE_INVARIANT), (name, c)


def test_values_dense_equal_magnitude_and_one_hot():
    """HS = n for a dense tensor of equal magnitudes and 1 for a one-hot one; Hoyer sqrt(n) and 1."""
    n = 37
    signs = torch.where(rand(n) > 0, 1.0, -1.0).double()
    dense, one_hot = 0.3 * signs, torch.zeros(n, dtype=torch.float64)
    one_hot[5] = -2.0
    assert regularizer("hs")(dense).item() == pytest.approx(n)
    assert regularizer("hs")(one_hot).item() == pytest.approx(1.0)
    assert regularizer("hoyer")(dense).item() == pytest.approx(n ** 0.5)
    assert regularizer("hoyer")(one_hot).item() == pytest.approx(1.0)
    assert regularizer("tl1")(dense).item() == pytest.approx(n * 2 * 0.3 / 1.3)


def test_group_hs_values():
    """Group-HS on a conv weight: N + C for equal filters and channels, 2 when one (n, c) kernel is nonzero."""
    n, c = 6, 4
    dense = torch.full((n, c, 3, 3), -0.7, dtype=torch.float64)
    assert regularizer("ghs")(dense).item() == pytest.approx(n + c)
    norm_f, norm_k, norm_w = 0.7 * 3 * c ** 0.5, 0.7 * 3 * n ** 0.5, 0.7 * 3 * (n * c) ** 0.5
    assert regularizer("group_hoyer")(dense).item() == pytest.approx((n * norm_f + c * norm_k) / norm_w)
    single = torch.zeros(n, c, 3, 3, dtype=torch.float64)
    single[2, 1] = rand(3, 3)
    assert regularizer("ghs")(single).item() == pytest.approx(2.0)
    # group lasso: sum of filter norms plus sum of channel norms
    w = rand(n, c, 3, 3)
    expected = w.flatten(1).norm(dim=1).sum() + w.transpose(0, 1).flatten(1).norm(dim=1).sum()
    assert regularizer("gl")(w).item() == pytest.approx(expected.item())


def test_fibre_grouping_sums_dims_0_and_1_and_equals_whole_for_linear():
    w = rand(5, 3, 2, 2)
    filters, channels = group_norms(w, "fibre")
    assert filters.shape == (5, 2, 2) and channels.shape == (3, 2, 2)
    assert torch.allclose(filters, w.pow(2).sum(dim=1).sqrt())
    fc = rand(7, 4)
    for name in ("gl", "ghs", "group_hoyer"):
        assert regularizer(name, "fibre")(fc).item() == pytest.approx(regularizer(name, "whole")(fc).item())
    assert regularizer("ghs", "fibre")(w).item() != pytest.approx(regularizer("ghs", "whole")(w).item())


def test_hs_gradient_sign_around_induced_threshold():
    """d HS / d w_j has the sign of w_j (descent shrinks it) below ||W||^2/||W||_1 and the opposite above."""
    w = rand(200, seed=3).requires_grad_(True)
    regularizer("hs")(w).backward()
    theta = hoyer_threshold(w)
    mag, push = w.detach().abs(), w.grad * torch.sign(w.detach())
    assert bool((push[mag < theta * 0.999] > 0).all()) and bool((push[mag > theta * 1.001] < 0).all())
    assert (mag < theta).any() and (mag > theta).any()
    # the paper's closed form (2 ||W||_1 / ||W||_2^2) (sign(w) - w ||W||_1 / ||W||_2^2)
    l1, l2sq = mag.sum(), w.detach().pow(2).sum()
    assert torch.allclose(w.grad, 2 * l1 / l2sq * (torch.sign(w.detach()) - w.detach() * l1 / l2sq))
    # Hoyer (L1/L2) has the same stationary magnitude
    v = w.detach().clone().requires_grad_(True)
    regularizer("hoyer")(v).backward()
    assert bool(((v.grad * torch.sign(v.detach()))[mag < theta * 0.999] > 0).all())


def test_penalty_sums_layers_skips_zero_and_vectors():
    a, b = rand(4, 3, 3, 3, seed=1), rand(10, 8, seed=2)
    zero, bias = torch.zeros(5, 5, dtype=torch.float64), rand(6, seed=4)
    for name in ("ghs", "gl"):
        total = penalty([a, zero, b, bias], name)
        assert total.item() == pytest.approx(regularizer(name)(a).item() + regularizer(name)(b).item())
    assert penalty([a, bias, zero], "hs").item() == pytest.approx(
        regularizer("hs")(a).item() + regularizer("hs")(bias).item())
    assert penalty([zero], "ghs").item() == 0.0


def test_group_norm_gradient_finite_with_a_dead_group():
    w = rand(4, 3, 3, 3)
    w[1] = 0.0
    w.requires_grad_(True)
    regularizer("ghs")(w).backward()
    assert torch.isfinite(w.grad).all()


def test_prune_rules():
    w = {"a": torch.tensor([0.5, -1e-5, 2e-4, 0.0]), "b": torch.tensor([[1.0, -0.1], [3.0, 0.2]])}
    masks = prune_masks(w, "threshold", threshold=1e-4)
    assert masks["a"].tolist() == [True, False, True, False]
    std_b = float(w["b"].std())
    masks = prune_masks(w, "std", std_scale=0.25)
    assert masks["b"].tolist() == (w["b"].abs() >= 0.25 * std_b).tolist()
    assert masks["b"].tolist() == [[True, False], [True, False]]  # tau = 0.25 * 1.43 = 0.36


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_masked_finetune_keeps_zeros_through_momentum_and_weight_decay(optimizer):
    """Thresholding then training with masked gradients: pruned entries stay exactly 0; the others move."""
    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 5))
    tensors = {n: p for n, p in model.named_parameters() if p.dim() > 1}
    masks = prune_masks(tensors, "std", std_scale=1.0)
    apply_masks(tensors, masks)
    before = {n: p.detach().clone() for n, p in tensors.items()}
    opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2) if optimizer == "sgd"
           else torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-2))
    for _ in range(20):
        x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        mask_gradients(tensors, masks)
        opt.step()
    for n, p in tensors.items():
        assert bool((p[~masks[n]] == 0).all())
        assert not torch.equal(p[masks[n]], before[n][masks[n]])
    nonzero, total = density(tensors.values())
    assert nonzero == sum(int(m.sum()) for m in masks.values()) and total == sum(m.numel() for m in masks.values())


def test_alive_channels():
    w = torch.zeros(4, 3, 2, 2)
    w[1, 2, 0, 1] = 1.0
    w[3, 2, 1, 1] = -1.0
    assert alive_channels(w) == (1, 2)
    assert alive_channels(torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])) == (1, 1)


def test_bad_names():
    with pytest.raises(ValueError, match="unknown regularizer 'hx'"):
        regularizer("hx")
    with pytest.raises(ValueError, match="grouping"):
        regularizer("ghs", "rows")
    with pytest.raises(ValueError, match="prune rule"):
        prune_masks({}, "median")
    assert set(ELEMENTWISE) < set(REGULARIZERS)
