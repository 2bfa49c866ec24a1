"""Random search: sample the action space uniformly, evaluate, keep the best. The floor every agent must beat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agents.base import Agent


@dataclass
class RandomConfig:
    """Random search has no knobs beyond the budget and seed."""


class RandomAgent(Agent):
    """Samples of the one-shot action space (seeded), one evaluation each, until the budget is spent.

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
        while not self.budget.exhausted:
            self.evaluate(self.env.unwrapped.sample_action())
            self.checkpoint()

    def checkpoint(self) -> None:
        """Called after every evaluation; the runner replaces it to save state."""

    def state(self) -> dict[str, Any]:
        return {**super().state(), "space_rng": self.env.action_space.np_random.bit_generator.state}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.env.action_space.np_random.bit_generator.state = state["space_rng"]
