"""Any Stable-Baselines3 algorithm on the environments, its hyper-parameters written as RL Zoo writes them.

``--agent sb3`` with a config file whose ``agent_config`` names the algorithm and holds one RL Zoo entry (the
mapping under an env id in ``rl-baselines3-zoo/hyperparams/<algo>.yml``)::

    agent_config:
      algorithm: SAC            # A2C, DDPG, DQN, PPO, SAC or TD3
      hyperparams:              # the RL Zoo entry: policy, n_timesteps and the algorithm's constructor arguments
        policy: MlpPolicy
        learning_rate: lin_7.3e-4
        buffer_size: 10000
        learning_starts: 16
        policy_kwargs: {net_arch: [64, 64]}

What RL Zoo evaluates as Python is read as data here, never evaluated: ``policy_kwargs`` is a mapping (its
``activation_fn`` one of :data:`ACTIVATIONS` by name), ``lin_X`` is a learning rate falling linearly from X to
0, ``noise_type: normal`` with ``noise_std`` is Gaussian action noise (TD3, DDPG), and a number written as
text (``1e-3``, which YAML reads as a string) is a number. ``n_timesteps`` is the horizon SB3's schedules are
fractions of (DQN's ``exploration_fraction``, a ``lin_`` rate); without it, the run's budget in evaluations
times the episode's steps. The run stops at its budget, or at ``n_timesteps`` steps if that comes first.
Zoo keys that wrap the env (``n_envs``, ``normalize``, ``frame_stack``, ``env_wrapper``, ...) are refused: the
harness owns the env. The off-policy algorithms' replay buffer is part of the saved state, so a killed run
resumes with exactly the actions the uninterrupted run took, as ``ppo`` and ``a2c`` do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import stable_baselines3
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.save_util import recursive_getattr
from torch import nn

from agents.sb3 import SB3Agent, _RolloutCheckpoints

#: The algorithms ``algorithm:`` may name (stable_baselines3's own classes).
ALGORITHMS = ("A2C", "DDPG", "DQN", "PPO", "SAC", "TD3")
#: ``policy_kwargs: {activation_fn: NAME}``: the activation functions by name.
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU,
                                           "leaky_relu": nn.LeakyReLU, "silu": nn.SiLU}
#: RL Zoo keys that configure the env or the training loop, which the harness owns.
HARNESS_KEYS = ("n_envs", "normalize", "normalize_kwargs", "frame_stack", "env_wrapper", "vec_env_wrapper",
                "callback", "env", "seed", "device", "tensorboard_log")
#: The counters off-policy algorithms keep between steps (besides SB3's base ones).
COUNTERS = ("_n_calls", "exploration_rate", "_current_progress_remaining")


@dataclass
class AnySB3Config:
    """Which Stable-Baselines3 algorithm, and its hyper-parameters as one RL Zoo entry."""

    algorithm: str = "PPO"   # one of ALGORITHMS
    hyperparams: dict = field(default_factory=dict)  # RL Zoo keys: policy, n_timesteps, constructor arguments

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown SB3 algorithm {self.algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
        if not isinstance(self.hyperparams, Mapping):
            raise ValueError(f"hyperparams must be a mapping of RL Zoo keys, got {self.hyperparams!r}")
        owned = sorted(set(self.hyperparams) & set(HARNESS_KEYS))
        if owned:
            raise ValueError(f"hyperparams {owned} configure the env or the training loop, which the run owns; "
                             f"remove them (the run's --seed, --device and env settings apply)")
        constructor_arguments(self.hyperparams, None)  # bad values fail now, before anything trains

    @property
    def policy(self) -> str:
        """The SB3 policy class name (RL Zoo's ``policy`` key; MlpPolicy by default)."""
        return str(self.hyperparams.get("policy", "MlpPolicy"))


def constructor_arguments(hyperparams: Mapping[str, Any], action_space: Any) -> dict[str, Any]:
    """The algorithm's keyword arguments from an RL Zoo entry (without ``policy`` and ``n_timesteps``), read as
    data: numbers written as text, ``lin_X`` schedules, ``policy_kwargs`` and ``noise_type`` / ``noise_std``."""
    out = {k: _number(v) for k, v in hyperparams.items() if k not in ("policy", "n_timesteps", "noise_type",
                                                                         "noise_std")}
    for key, value in out.items():
        if isinstance(value, str) and value.startswith("lin_"):
            out[key] = linear_schedule(_number(value[4:]), key)
    if "policy_kwargs" in out:
        out["policy_kwargs"] = _policy_kwargs(out["policy_kwargs"])
    if isinstance(out.get("train_freq"), list):
        out["train_freq"] = tuple(out["train_freq"])
    noise = hyperparams.get("noise_type")
    if noise is not None:
        if noise != "normal":
            raise ValueError(f"noise_type {noise!r}: only 'normal' (Gaussian action noise) is supported")
        if action_space is not None:
            n = int(np.prod(action_space.shape))
            out["action_noise"] = NormalActionNoise(np.zeros(n), float(_number(hyperparams.get("noise_std", 0.1)))
                                                    * np.ones(n))
    return out


def _number(value: Any) -> Any:
    """A number written as text (YAML reads ``1e-3`` as a string) as a number; anything else unchanged."""
    if isinstance(value, str) and not value.startswith("lin_"):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def linear_schedule(start: Any, key: str) -> Callable[[float], float]:
    """RL Zoo's ``lin_X``: X at the start, falling linearly to 0 at the horizon (SB3 passes the progress left)."""
    if not isinstance(start, float | int):
        raise ValueError(f"{key}: lin_{start} is not lin_<number>")
    return lambda progress_remaining: float(progress_remaining) * float(start)


def _policy_kwargs(value: Any) -> dict[str, Any]:
    """``policy_kwargs`` as a mapping; RL Zoo's Python text (``"dict(net_arch=[64])"``) is refused, not run."""
    if not isinstance(value, Mapping):
        raise ValueError(f"policy_kwargs must be a mapping such as {{net_arch: [64, 64]}}, got {value!r} (text "
                         f"is never evaluated)")
    out = dict(value)
    if "activation_fn" in out:
        name = out["activation_fn"]
        if name not in ACTIVATIONS:
            raise ValueError(f"policy_kwargs activation_fn {name!r}; expected one of {', '.join(ACTIVATIONS)}")
        out["activation_fn"] = ACTIVATIONS[name]
    return out


class _EpisodeCheckpoints(_RolloutCheckpoints):
    """Checkpoints at a rollout boundary only once an evaluation finished since the last checkpoint (an
    off-policy rollout is a step or a few, so this saves once an episode rather than once a step)."""

    def __init__(self, agent: AnySB3Agent) -> None:
        super().__init__(agent)
        self.saved_at = -1

    def _on_rollout_start(self) -> None:
        if self.agent.budget.used != self.saved_at:
            self.saved_at = self.agent.budget.used
            self.agent.checkpoint()


class AnySB3Agent(SB3Agent):
    """Any Stable-Baselines3 algorithm (``algorithm``) with RL Zoo style hyper-parameters (``hyperparams``)."""

    name = "sb3"
    Config = AnySB3Config

    def _new_model(self) -> BaseAlgorithm:
        c = self.config
        self.algorithm = getattr(stable_baselines3, c.algorithm)
        try:
            return self.algorithm(c.policy, self.env, seed=self.seed, device="cpu", verbose=0,
                                  **constructor_arguments(c.hyperparams, self.env.action_space))
        except AssertionError as exc:  # SB3 asserts the action space it supports
            raise ValueError(f"{c.algorithm} cannot act on the {self.env.unwrapped.space} space in "
                             f"{self.env.unwrapped.mode} mode ({self.env.action_space}): {exc}") from None
        except TypeError as exc:
            raise ValueError(f"{c.algorithm} does not take these hyperparams: {exc}") from None

    @property
    def horizon(self) -> int:
        """The env steps SB3's schedules run over: ``n_timesteps``, else the budget's episodes times their steps
        (10**9 for a budget in seconds)."""
        if "n_timesteps" in self.config.hyperparams:
            return int(float(self.config.hyperparams["n_timesteps"]))
        base = self.env.unwrapped
        steps = 1 if base.mode == "oneshot" else len(base.layers)
        return 10**9 if self.budget.evaluations is None else self.budget.evaluations * steps

    def run(self) -> None:
        # SB3 adds the steps already taken to what learn() is given, so a resumed run asks for the rest: its
        # schedules keep the same horizon and it takes the same actions as the uninterrupted run.
        left = self.horizon - self.model.num_timesteps
        if self.budget.exhausted or left <= 0:
            return
        self._learn(left, _EpisodeCheckpoints(self))

    def _weights(self) -> dict[str, Any]:
        """Every tensor SB3 itself saves (networks, optimisers, SAC's entropy coefficient), the off-policy
        replay buffer and counters, and the action space's random state (warm-up actions sample it)."""
        m = self.model
        modules, tensors = m._get_torch_save_params()
        out = {"modules": {name: recursive_getattr(m, name).state_dict() for name in modules},
               "tensors": {name: recursive_getattr(m, name).detach().clone() for name in tensors},
               "counters": {name: getattr(m, name) for name in COUNTERS if hasattr(m, name)},
               "action_space_rng": m.action_space.np_random.bit_generator.state}
        if isinstance(m, OffPolicyAlgorithm) and m.replay_buffer is not None:
            out["replay"] = _buffer_state(m.replay_buffer)
        return out

    def _load_weights(self, state: dict[str, Any]) -> None:
        m = self.model
        for name, value in state["modules"].items():
            recursive_getattr(m, name).load_state_dict(value)
        for name, value in state["tensors"].items():
            with torch.no_grad():
                recursive_getattr(m, name).copy_(value)
        for name, value in state["counters"].items():
            setattr(m, name, value)
        m.action_space.np_random.bit_generator.state = state["action_space_rng"]
        if "replay" in state:
            _load_buffer(m.replay_buffer, state["replay"])


def _buffer_state(buffer: Any) -> dict[str, Any]:
    """The filled part of a replay buffer's arrays, with its position (plain tensors and ints)."""
    filled = buffer.buffer_size if buffer.full else buffer.pos
    arrays = {k: torch.as_tensor(v[:filled].copy()) for k, v in vars(buffer).items() if isinstance(v, np.ndarray)
              and v.ndim and len(v) == buffer.buffer_size}
    return {"pos": int(buffer.pos), "full": bool(buffer.full), "arrays": arrays}


def _load_buffer(buffer: Any, state: dict[str, Any]) -> None:
    """Write a saved replay buffer back into a fresh one of the same size."""
    for name, values in state["arrays"].items():
        getattr(buffer, name)[: len(values)] = values.numpy()
    buffer.pos, buffer.full = state["pos"], state["full"]
