"""Random search: sample the action space uniformly, evaluate, keep the best. The floor every agent must beat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agents.base import Agent
from netcomp.checks import as_int


@dataclass
class RandomConfig:
    """Random search's knobs: how many samples are scored together (``batch``: one ``evaluate_many`` batch,
    trained on shared batches here, spread over the workers with ``--workers``; the samples and their scores
    do not depend on it; a training-seconds budget is spent one sample at a time, ending at the first past
    it), and under an env's operating-point ``target`` how many draws may be rejected as over the target
    before one is scored anyway (``tries``: it is then invalid, "over target", and trains nothing)."""

    batch: int = 4
    tries: int = 100

    def __post_init__(self) -> None:
        for name in ("batch", "tries"):
            setattr(self, name, as_int("RandomConfig", name, getattr(self, name), 1))


class RandomAgent(Agent):
    """Samples of the one-shot action space (seeded), one evaluation each, scored ``batch`` at a time, until
    the budget is spent.

    The space's own sampler (``env.sample_action``): uniform over the action space, except the edit space,
    which draws from ESNAC's sampler (uniform bits would add half of all possible skips). Under an
    operating-point ``target`` only feasible students are scored: a draw whose student is over the target
    (told before training, ``env.within_target``) is rejected and redrawn, at most ``tries`` times."""

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
            # a seconds budget stops at the first evaluation past its limit: one at a time
            n = 1 if self.budget.seconds is not None else min(self.config.batch, self.budget.left)
            draws = [self.sample() for _ in range(n)]
            self.evaluate_many([action for action, _ in draws])
            self.checkpoint()
            if self.budget.evaluations is None and not all(feasible for _, feasible in draws):
                # an over-target student trains nothing, so it would never spend a seconds-only budget
                self.notes["stopped"] = (f"no student at or below the target in {self.config.tries} draws; a "
                                         f"training-seconds budget cannot be spent on students that never train")
                break

    def sample(self) -> tuple[Any, bool]:
        """One draw of the space's sampler and whether its student is feasible; under a target, the first of
        ``tries`` draws whose student is at or below it (else the last draw, infeasible)."""
        env = self.env.unwrapped
        for _ in range(self.config.tries):
            action = env.sample_action()
            if env.within_target(action):
                return action, True
        return action, False

    def state(self) -> dict[str, Any]:
        return {**super().state(), "space_rng": self.env.action_space.np_random.bit_generator.state}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.env.action_space.np_random.bit_generator.state = state["space_rng"]
