"""Stable-Baselines3 PPO and A2C on the environments: the baselines a new RL agent is compared against."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, ClassVar

from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from agents.base import Agent


@dataclass
class SB3Config:
    """Hyper-parameters passed to the SB3 algorithm (SB3's defaults unless set)."""

    learning_rate: float = 3e-4   # optimiser step size
    n_steps: int = 64             # environment steps per rollout (per update)
    gamma: float = 1.0            # no discount: the only reward is the final one (N2N's MDP)
    ent_coef: float = 0.0         # entropy bonus
    batch_size: int = 64          # PPO minibatch size (ignored by A2C)
    n_epochs: int = 4             # PPO epochs per update (ignored by A2C)
    policy: str = "MlpPolicy"     # SB3 policy class name
    checkpoint_every: int = 1     # save the model every this many evaluations


class _StopAtBudget(BaseCallback):
    """Stops learning when the run's budget is spent and checkpoints between evaluations."""

    def __init__(self, agent: SB3Agent) -> None:
        super().__init__()
        self.agent = agent
        self.seen = agent.budget.used

    def _on_step(self) -> bool:
        used = self.agent.budget.used
        if used != self.seen and used % self.agent.config.checkpoint_every == 0:
            self.agent.checkpoint()
        self.seen = used
        return not self.agent.budget.exhausted


class SB3Agent(Agent):
    """An SB3 algorithm learning on the env (sequential mode by default); its own save/load for resume."""

    kind = "policy"
    spaces = ("removal", "shrinkage", "channel-ratio", "ranking-affine")
    modes = ("sequential", "oneshot")
    Config = SB3Config
    algorithm: ClassVar[type[BaseAlgorithm]] = PPO

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model = self._new_model()

    def _new_model(self) -> BaseAlgorithm:
        c = self.config
        extra = {"batch_size": c.batch_size, "n_epochs": c.n_epochs} if self.algorithm is PPO else {}
        return self.algorithm(c.policy, self.env, learning_rate=c.learning_rate, n_steps=c.n_steps, gamma=c.gamma,
                              ent_coef=c.ent_coef, seed=self.seed, device="cpu", verbose=0, **extra)

    def run(self) -> None:
        # SB3 counts environment steps; the budget counts evaluations, so learn until the callback stops it.
        self.model.learn(total_timesteps=10**9, callback=_StopAtBudget(self), reset_num_timesteps=False)

    def checkpoint(self) -> None:
        """Called between evaluations; the runner replaces it to save state."""

    def state(self) -> dict[str, Any]:
        buffer = io.BytesIO()
        self.model.save(buffer)
        return {**super().state(), "sb3_zip": buffer.getvalue()}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.model = self.algorithm.load(io.BytesIO(state["sb3_zip"]), env=self.env, device="cpu")

    def load_policy(self, path: str) -> None:
        """Start from a policy saved by another run (SB3's own zip format)."""
        self.model = self.algorithm.load(path, env=self.env, device="cpu")
        self.notes["transferred_from"] = str(path)

    def save_policy(self, path: str) -> None:
        self.model.save(path)


class PPOAgent(SB3Agent):
    """Proximal Policy Optimisation (SB3)."""

    name = "ppo"
    algorithm = PPO


class A2CAgent(SB3Agent):
    """Advantage Actor-Critic (SB3)."""

    name = "a2c"
    algorithm = A2C
