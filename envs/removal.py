"""Layer removal (N2N stage 1): keep or remove each layer of the teacher."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from envs.base import CompressionEnv, check_int_action
from netcomp.arch import Arch, n2n_descriptors, removable_layers
from netcomp.surgery import remove_block_paths, remove_layers, residual_blocks

#: Fixed scales of the N2N descriptor columns (type, kernel, stride, padding, log2(1+outputs), skip start, end).
N2N_SCALE = np.array([10.0, 7.0, 4.0, 4.0, 11.0, 8.0, 8.0], np.float32)
#: What one action entry keeps or removes: a layer (N2N) or a residual block's main path.
GRANULARITIES = ("layer", "block")


def n2n_features(arch: Arch, removable: set[str]) -> np.ndarray:
    """N2N's per-layer descriptor scaled by fixed constants, plus a 'removable' flag column."""
    d = n2n_descriptors(arch)
    d[:, 4] = np.log2(1.0 + d[:, 4])
    flags = np.array([[name in removable] for name in arch.layers], np.float32)
    return np.concatenate([d / N2N_SCALE, flags], axis=1)


def block_features(arch: Arch, blocks: tuple[str, ...]) -> np.ndarray:
    """One row per residual block, with the columns of :func:`n2n_features`: the row of the block's first
    main-path layer (its first conv: kernel, stride, padding, outputs, skip positions), flagged removable."""
    rows = n2n_features(arch, set(arch.layers))
    index = {name: i for i, name in enumerate(arch.layers)}
    first = [next(n.name for n in arch.nodes if n.block == b and n.role == "main" and n.name in index)
             for b in blocks]
    return rows[[index[name] for name in first]]


class RemovalEnv(CompressionEnv):
    """Remove layers from a teacher network (N2N stage 1, Ashok et al. 2018).

    ## Description
    The teacher's layers (conv, BN, ReLU, pools, linear; N2N's tokens) are shown to the agent, which keeps
    or removes each. Removed layers become the identity and later layers are fitted to the incoming width;
    a residual block whose layers are all removed computes relu(x + shortcut(x)). The student is
    re-initialised (N2N) by default, trained briefly by distillation, and scored.

    ## Action Space
    - oneshot: ``MultiBinary(L)``, one bit per layer: 1 keeps it, 0 removes it.
    - sequential: ``Discrete(2)`` for the current layer, L steps.
    Layers N2N never removes (the first and last layer, strided convs, linears, average pools, shortcut
    layers) are forced to keep; ``info["forced"]`` lists those the action asked to remove.
    ``granularity="block"``: one entry per residual block (B blocks; ``MultiBinary(B)`` / B steps of
    ``Discrete(2)``): 0 deletes the block's main path and keeps its shortcut, so the block computes
    relu(shortcut(x)) (:func:`netcomp.surgery.remove_block_paths`); every block is removable (ResNet-20:
    9 blocks, 2^9 = 512 students). ``info["removed"]`` then lists the removed blocks.

    ## Observation Space
    - oneshot: ``Box(-10, 10, (L, 8))``: per layer N2N's descriptor (type, kernel, stride, padding,
      log2(1 + outputs), skip start, skip end) divided by fixed constants, and a removable flag.
    - sequential: ``Box(-10, 10, (11,))``: the current layer's 8 features plus (position in [0, 1],
      fraction of layers removed so far, previous action).
    ``granularity="block"``: one row per block, the row of its first main-path conv (flagged removable).

    ## Rewards
    ``n2n`` by default: C(2 - C) * A / A_T with C = 1 - params/teacher params; -1 (``penalty``) for an
    invalid student (a broken add, a linear over 50,000 inputs, not smaller than the teacher).
    Sequential mode pays 0 until the last step.

    ## Starting State
    The teacher, unchanged. Episodes are independent (the state does not carry over).

    ## Episode End
    After one step (oneshot) or L steps (sequential); always ``terminated``, never truncated.

    ## Arguments
    ``gymnasium.make("netcomp/removal-resnet20-synthetic-v0", fidelity="smoke", mode="oneshot",
    reward="n2n", device=None, data_root=None, teacher=None, inherit="reinit", penalty=None,
    cache_path=None, granularity="layer")``; see :class:`envs.base.CompressionEnv`. ``granularity="block"``
    needs a network with residual blocks (ValueError otherwise). N2N's stage 2 (the shrinkage env) takes
    removed layers, not blocks: an N2N run on the block space acts in stage 1 only (``stage2_fraction: 0``).

    ## Version History
    - v0: initial version; ``granularity="block"`` added (issue 23, the ResNet-20 removal table).
    """

    space = "removal"
    default_reward = "n2n"
    default_inherit = "reinit"

    def __init__(self, arch: str = "resnet20", dataset: str = "synthetic", *, granularity: str = "layer",
                 **kwargs: Any) -> None:
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {granularity!r}; expected one of {', '.join(GRANULARITIES)}")
        self.granularity = granularity
        super().__init__(arch, dataset, **kwargs)

    def _layers(self) -> tuple[str, ...]:
        if self.granularity == "block":
            blocks = residual_blocks(self.arch)
            if not blocks:
                raise ValueError(f"granularity='block' needs residual blocks; {self.arch.family or 'this arch'} "
                                 f"has none")
            self.removable = set(blocks)
            return blocks
        self.removable = set(removable_layers(self.arch, "n2n"))
        return self.arch.layers

    def _features(self) -> np.ndarray:
        if self.granularity == "block":
            return block_features(self.arch, self.layers)
        return n2n_features(self.arch, self.removable)

    def _oneshot_space(self) -> spaces.Space:
        return spaces.MultiBinary(len(self.layers))

    def _step_space(self) -> spaces.Space:
        return spaces.Discrete(2)

    def _check_oneshot(self, action: Any) -> list[int]:
        return check_int_action(action, self.action_space, 2).tolist()

    def _check_step(self, action: Any) -> int:
        return int(check_int_action(action, self.action_space, 2))

    def _step_value(self, value: int, t: int) -> tuple[int, float]:
        removed = sum(1 for v in [*self._values, value] if v == 0)
        return value, removed / (t + 1)

    def _make_student(self, values: list[int]) -> tuple[Arch, dict[str, Any]]:
        asked = [name for name, keep in zip(self.layers, values) if keep == 0]
        if self.granularity == "block":
            return remove_block_paths(self.arch, asked), {"removed": asked, "forced": []}
        removed = [n for n in asked if n in self.removable]
        forced = [n for n in asked if n not in self.removable]
        return remove_layers(self.arch, removed), {"removed": removed, "forced": forced}
