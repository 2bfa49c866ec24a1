"""Stable-Baselines3 PPO and A2C on the environments: the baselines a new RL agent is compared against.

Resume and policy files hold weights and plain data only (loaded with ``torch.load(weights_only=True)``):
never SB3's zip, whose cloudpickled parts run code when loaded. The agent checkpoints at every rollout
boundary (before SB3 collects a rollout), with the policy, its optimiser, SB3's counters, the last
observation, the random states and the env's episode progress; a resumed run restarts from the last
rollout boundary and replays the evaluations after it from the cache, taking exactly the actions the
uninterrupted run took (the run's record checks it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger

from agents.base import Agent

#: Version of the state and policy files written by SB3Agent.
SB3_FORMAT = 1


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


class _RolloutCheckpoints(BaseCallback):
    """Checkpoints the agent at every rollout boundary and stops learning when the budget is spent."""

    def __init__(self, agent: SB3Agent) -> None:
        super().__init__()
        self.agent = agent

    def _on_rollout_start(self) -> None:
        self.agent.checkpoint()

    def _on_step(self) -> bool:
        return not self.agent.budget.exhausted


class SB3Agent(Agent):
    """An SB3 algorithm learning on the env (sequential mode by default); weights-only save/load for resume."""

    kind = "policy"
    spaces = ("removal", "shrinkage", "channel-ratio", "ranking-affine")
    modes = ("sequential", "oneshot")
    has_policy = True
    loads_policies_of = ("ppo", "a2c", "sb3")  # one file format; the algorithm is checked on load
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
        if self.budget.exhausted:
            return
        self._learn(10**9, _RolloutCheckpoints(self))

    def _learn(self, total_timesteps: int, callback: BaseCallback) -> None:
        """SB3's ``learn`` with a logger that writes nowhere. SB3's own logger (``verbose=0``) writes nothing
        either, but makes an empty ``SB3-<date>`` folder in the system's temp directory at every call, which
        each run would leave behind; the run directory's TensorBoard log is written by the harness."""
        self.model.set_logger(Logger(folder=None, output_formats=[]))
        self.model.learn(total_timesteps=total_timesteps, callback=callback, reset_num_timesteps=False)


    # ------------------------------------------------------------------ resume
    def state(self) -> dict[str, Any]:
        m = self.model
        return {
            **super().state(), "format": SB3_FORMAT, "algorithm": self.algorithm.__name__, **self._weights(),
            "num_timesteps": int(m.num_timesteps), "n_updates": int(getattr(m, "_n_updates", 0)),
            "episode_num": int(m._episode_num),
            "last_obs": None if m._last_obs is None else torch.as_tensor(np.asarray(m._last_obs)),
            "last_episode_starts": None if m._last_episode_starts is None
            else torch.as_tensor(np.asarray(m._last_episode_starts)),
            "torch_rng": torch.get_rng_state(), "numpy_rng": _numpy_state(), "python_rng": random.getstate(),
            "episode": self.env.unwrapped.episode_state(), "recorder_actions": list(self.env._actions),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        if state.get("format") != SB3_FORMAT or state.get("algorithm") != self.algorithm.__name__:
            raise ValueError(f"the checkpoint holds no {self.algorithm.__name__} state of format {SB3_FORMAT} "
                             f"(it may come from an older version that stored SB3 zips; start a new run)")
        self.model = self._new_model()
        m = self.model
        self._load_weights(state)
        m.num_timesteps, m._episode_num = state["num_timesteps"], state["episode_num"]
        if hasattr(m, "_n_updates"):
            m._n_updates = state["n_updates"]
        if state["last_obs"] is not None:
            m.env.reset()  # SB3's Monitor wants a reset before a step; then the saved episode continues
            self.env.unwrapped.load_episode_state(state["episode"])
            self.env._actions = list(state["recorder_actions"])
            m._last_obs = state["last_obs"].numpy()
            m._last_episode_starts = state["last_episode_starts"].numpy()
        torch.set_rng_state(state["torch_rng"])
        _set_numpy_state(state["numpy_rng"])
        random.setstate(_as_python_state(state["python_rng"]))

    def _weights(self) -> dict[str, Any]:
        """The learned tensors of the state: the policy and its optimiser (extended by :class:`AnySB3Agent`)."""
        return {"policy": self.model.policy.state_dict(), "optimizer": self.model.policy.optimizer.state_dict()}

    def _load_weights(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_weights` saved into the freshly built model."""
        self.model.policy.load_state_dict(state["policy"])
        self.model.policy.optimizer.load_state_dict(state["optimizer"])

    # ------------------------------------------------------------------ transfer
    def save_policy(self, path: str | Path) -> None:
        """The policy's weights and what they expect (loadable with weights_only=True)."""
        meta = {"observation_shape": list(self.env.observation_space.shape),
                "action_space": repr(self.env.action_space), "policy_class": self.config.policy}
        self.write_policy(path, SB3_FORMAT, {"algorithm": self.algorithm.__name__,
                                             "policy": self.model.policy.state_dict()}, meta)

    def load_policy(self, path: str | Path, trust_pickle: bool = False) -> None:
        """Start from a policy saved by another run: our weights-only file, or (only with ``trust_pickle``) an
        SB3 zip, which cloudpickle unpickles and so may run code."""
        path = Path(path)
        if path.suffix == ".zip":
            if not trust_pickle:
                raise ValueError(f"{path} is an SB3 zip: loading it unpickles code that can run on this machine; "
                                 f"pass --trust-pickle if you trust its source, or use a policy.pt of a netcomp run")
            self.model = self.algorithm.load(path, env=self.env, device="cpu")
            self.notes["transferred_from"] = str(path)
            return
        blob = self.read_policy(path, SB3_FORMAT, ("policy",))
        if blob.get("algorithm") not in (None, self.algorithm.__name__):
            raise ValueError(f"{path} holds a {blob['algorithm']} policy; this run's agent is "
                             f"{self.algorithm.__name__}")
        try:
            self.model.policy.load_state_dict(blob["policy"])
        except RuntimeError as exc:
            raise ValueError(f"the policy in {path} ({blob.get('meta')}) does not fit this env's spaces "
                             f"(observation {self.env.observation_space.shape}, action {self.env.action_space})"
                             f": {exc}") from exc


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.as_tensor(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _set_numpy_state(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["cached"]))


def _as_python_state(state: Any) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss


class PPOAgent(SB3Agent):
    """Proximal Policy Optimisation (SB3)."""

    name = "ppo"
    algorithm = PPO


class A2CAgent(SB3Agent):
    """Advantage Actor-Critic (SB3)."""

    name = "a2c"
    algorithm = A2C
