"""Random search: sample the action space uniformly, evaluate, keep the best. The floor every agent must beat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agents.base import Agent


@dataclass
class RandomConfig:
    """Random search's one knob: how many samples are scored together (one ``evaluate_many`` batch: trained
    on shared batches here, spread over the workers with ``--workers``). The samples and their scores do not
    depend on it. A training-seconds budget is spent one sample at a time (it ends at the first past it)."""

    batch: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise ValueError(f"batch must be an integer >= 1, got {self.batch!r}")


class RandomAgent(Agent):
    """Samples of the one-shot action space (seeded), one evaluation each, scored ``batch`` at a time, until
    the budget is spent.

    The space's own sampler (``env.sample_action``): uniform over the action space, except the edit space,
    which draws from ESNAC's sampler (uniform bits would add half of all possible skips)."""

    name = "random"
    kind = "blackbox"
    spaces = ("removal", "shrinkage", "channel-ratio", "ranking-affine", "edit")
    modes = ("oneshot",)
    Config = RandomConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.env.action_space.seed(self.seed)

    def run(self) -> None:
        sample = self.env.unwrapped.sample_action
        while not self.budget.exhausted:
            # a seconds budget stops at the first evaluation past its limit: one at a time
            n = 1 if self.budget.seconds is not None else min(self.config.batch, self.budget.left)
            self.evaluate_many([sample() for _ in range(n)])
            self.checkpoint()


    def state(self) -> dict[str, Any]:
        return {**super().state(), "space_rng": self.env.action_space.np_random.bit_generator.state}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.env.action_space.np_random.bit_generator.state = state["space_rng"]
