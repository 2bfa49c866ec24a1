"""Sparsity regularisers, threshold pruning and gradient masks (DeepHoyer, Yang, Wen & Li, ICLR 2020).

A small engine module with no gym inside: any training loop adds ``decay * penalty(tensors, name)`` to its
loss, prunes with :func:`prune_masks` / :func:`apply_masks`, and fine-tunes with :func:`mask_gradients`
called between ``backward()`` and ``optimizer.step()``. The method: arXiv:1908.09979, reference code
github.com/yanghr/DeepHoyer, summarised in docs/methods.md#deephoyer.

Regularisers of one tensor W (:data:`ELEMENTWISE`, :data:`STRUCTURAL`):

- ``l1``: sum |w|;  ``hoyer``: ||W||_1 / ||W||_2;  ``hs`` (Hoyer-Square): ||W||_1^2 / ||W||_2^2;
  ``tl1`` (transformed L1, a = 1): sum 2|w| / (1 + |w|).
- Two group families at once on a conv weight (N, C, k, k) or a linear weight (out, in): filters F_n (rows)
  and input channels K_c (columns). ``gl`` (group lasso): sum_n ||F_n|| + sum_c ||K_c||; ``group_hoyer``:
  (sum_n ||F_n|| + sum_c ||K_c||) / ||W||; ``ghs`` (Group-HS): [(sum_n ||F_n||)^2 + (sum_c ||K_c||)^2] / ||W||^2,
  one shared denominator.
- ``grouping="fibre"`` reproduces the reference's ImageNet / MNIST-CNN code, whose groups sum over dim 0
  and dim 1 only: (c, h, w) fibres across filters and (n, h, w) fibres across channels (equal to whole
  rows and columns for a 2-D tensor).

Scale invariance: hoyer, hs, group_hoyer and ghs do not change when W is multiplied by c != 0, so they
cannot be lowered by shrinking every weight together. HS's gradient vanishes at |w| = ||W||_2^2 / ||W||_1
(:func:`hoyer_threshold`): gradient descent shrinks smaller weights to 0 and grows larger ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch

ELEMENTWISE = ("l1", "hoyer", "hs", "tl1")
STRUCTURAL = ("gl", "group_hoyer", "ghs")
REGULARIZERS = (*ELEMENTWISE, *STRUCTURAL)
GROUPINGS = ("whole", "fibre")
PRUNE_RULES = ("threshold", "std")
#: Squared norms below this count as zero in group norms (keeps the gradient of an all-zero group finite).
_TINY = 1e-30


def _safe_norm(squares: torch.Tensor) -> torch.Tensor:
    """sqrt of summed squares, exactly 0 (with a zero gradient, not NaN) where the sum is 0."""
    return torch.sqrt(squares.clamp_min(_TINY)) * (squares > 0)


def group_norms(weight: torch.Tensor, grouping: str = "whole") -> tuple[torch.Tensor, torch.Tensor]:
    """(filter norms, input-channel norms) of a weight with ndim >= 2.

    ``whole``: ||W[n, ...]|| for each output n and ||W[:, c, ...]|| for each input c. ``fibre``: the
    reference's dim-0 / dim-1 sums, one norm per (c, h, w) and per (n, h, w) position.
    """
    if weight.dim() < 2:
        raise ValueError(f"group regularisers need a weight with ndim >= 2, got shape {tuple(weight.shape)}")
    if grouping not in GROUPINGS:
        raise ValueError(f"unknown grouping {grouping!r}; expected one of {GROUPINGS}")
    sq = weight.pow(2)
    if grouping == "fibre":
        return _safe_norm(sq.sum(dim=1)), _safe_norm(sq.sum(dim=0))
    rest = tuple(range(2, weight.dim()))
    return _safe_norm(sq.sum(dim=(1, *rest))), _safe_norm(sq.sum(dim=(0, *rest)))


def regularizer(name: str, grouping: str = "whole") -> Callable[[torch.Tensor], torch.Tensor]:
    """The function W -> R(W) (a 0-dim tensor) for a regulariser of :data:`REGULARIZERS`.

    The caller skips all-zero tensors (the ratios are 0/0 there); :func:`penalty` does.
    """
    if name not in REGULARIZERS:
        raise ValueError(f"unknown regularizer {name!r}; expected one of {REGULARIZERS}")
    if grouping not in GROUPINGS:
        raise ValueError(f"unknown grouping {grouping!r}; expected one of {GROUPINGS}")
    if name in ELEMENTWISE:
        return _ELEMENTWISE[name]

    def structural(w: torch.Tensor) -> torch.Tensor:
        filters, channels = group_norms(w, grouping)
        f, c = filters.sum(), channels.sum()
        if name == "gl":
            return f + c
        total = w.pow(2).sum()
        if name == "group_hoyer":
            return (f + c) / total.sqrt()
        return (f.pow(2) + c.pow(2)) / total

    return structural


_ELEMENTWISE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "l1": lambda w: w.abs().sum(),
    "hoyer": lambda w: w.abs().sum() / w.pow(2).sum().sqrt(),
    "hs": lambda w: w.abs().sum().pow(2) / w.pow(2).sum(),
    "tl1": lambda w: (2.0 * w.abs() / (1.0 + w.abs())).sum(),
}


def penalty(tensors: Iterable[torch.Tensor], name: str, grouping: str = "whole") -> torch.Tensor:
    """sum_l R(W_l) over the tensors, each computed on its own with no layer weighting; all-zero tensors
    (and, for structural regularisers, tensors with ndim < 2) are skipped."""
    fn = regularizer(name, grouping)
    total = None
    for w in tensors:
        if (name in STRUCTURAL and w.dim() < 2) or not bool((w != 0).any()):
            continue
        value = fn(w)
        total = value if total is None else total + value
    return total if total is not None else torch.zeros(())


def hoyer_threshold(weight: torch.Tensor) -> float:
    """HS's induced trimming threshold ||W||_2^2 / ||W||_1: the magnitude where its gradient vanishes."""
    w = weight.detach().double()
    return float(w.pow(2).sum() / w.abs().sum())


@torch.no_grad()
def prune_masks(tensors: Mapping[str, torch.Tensor], rule: str = "threshold", threshold: float = 1e-4,
                std_scale: float = 0.25) -> dict[str, torch.Tensor]:
    """Keep-masks (bool, True = kept) for each named tensor: |w| >= tau.

    ``threshold``: one fixed tau for every tensor (the reference's prun_tune_T, CIFAR and ImageNet).
    ``std``: tau_l = ``std_scale`` * std(W_l) per tensor (prun_tune_V, Han et al.'s sensitivity rule).
    """
    if rule not in PRUNE_RULES:
        raise ValueError(f"unknown prune rule {rule!r}; expected one of {PRUNE_RULES}")
    def tau(w: torch.Tensor) -> float:
        if rule == "threshold" or w.numel() < 2:
            return threshold if rule == "threshold" else 0.0
        return std_scale * float(w.float().std())

    return {name: w.abs() >= tau(w) for name, w in tensors.items()}


@torch.no_grad()
def apply_masks(tensors: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned entries in place (NaN entries of a diverged tensor, never kept, become 0 too)."""
    for name, mask in masks.items():
        tensors[name].masked_fill_(~mask, 0.0)


@torch.no_grad()
def mask_gradients(tensors: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    """Multiply each tensor's gradient by its mask (call after backward, before the optimiser step).

    With a fresh optimiser, momentum and weight decay then keep the zeros at zero: a zero weight with a
    zero gradient gets a zero update from SGD (momentum buffer and decay term are 0) and from Adam.
    """
    for name, mask in masks.items():
        grad = tensors[name].grad
        if grad is not None:
            grad.mul_(mask.to(grad.dtype))


def density(tensors: Iterable[torch.Tensor]) -> tuple[int, int]:
    """(nonzeros, total elements) over the tensors."""
    nonzero = total = 0
    for w in tensors:
        nonzero += int((w != 0).sum())
        total += w.numel()
    return nonzero, total


def alive_channels(weight: torch.Tensor) -> tuple[int, int]:
    """(alive input channels, alive filters) of a conv or linear weight: those with any nonzero entry."""
    nz = weight.detach() != 0
    rest = tuple(range(2, weight.dim()))
    return int(nz.any(dim=(0, *rest)).sum()), int(nz.any(dim=(1, *rest)).sum())
