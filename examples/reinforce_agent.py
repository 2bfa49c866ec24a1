"""reinforce_agent.py: REINFORCE with a linear softmax policy, one step per layer (sequential mode)."""
from dataclasses import dataclass

import numpy as np

from agents.base import Agent

POLICY_FORMAT = 1  # the version of this agent's policy.pt


@dataclass
class ReinforceConfig:
    lr: float = 0.05             # step size of the policy-gradient ascent
    baseline_decay: float = 0.9  # the baseline: a moving average of the episodes' returns


class ReinforceAgent(Agent):
    name = "reinforce"
    kind = "policy"                     # it steps the env itself
    spaces = ("removal", "shrinkage")   # one Discrete action per layer
    modes = ("sequential",)             # the observation describes the current layer
    has_policy = True                   # it saves policy.pt; --load-policy starts another run from one
    Config = ReinforceConfig

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        n_actions, n_features = self.env.action_space.n, self.env.observation_space.shape[0]
        self.weights = np.zeros((n_actions, n_features + 1))  # logits = weights @ [obs, 1]: uniform at first
        self.baseline = None

    def run(self) -> None:
        while not self.budget.exhausted:  # one episode is one evaluation of the budget
            obs, _ = self.env.reset()
            grad, episode_return, done = np.zeros_like(self.weights), 0.0, False
            while not done:
                x = np.append(obs, 1.0)
                logits = self.weights @ x
                p = np.exp(logits - logits.max())
                p /= p.sum()
                action = self.rng.choice(len(p), p=p)
                grad += np.outer(np.eye(len(p))[action] - p, x)  # d log p(action) / d weights
                obs, reward, terminated, truncated, _ = self.env.step(action)
                episode_return += reward  # the student's reward arrives at the last layer
                done = terminated or truncated
            baseline = episode_return if self.baseline is None else self.baseline
            self.weights += self.config.lr * (episode_return - baseline) * grad
            decay = self.config.baseline_decay
            self.baseline = decay * baseline + (1 - decay) * episode_return
            self.checkpoint()  # the harness saves state() here: a killed run resumes after this episode

    def state(self) -> dict:
        return {**super().state(), "weights": self.weights.tolist(), "baseline": self.baseline}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.weights, self.baseline = np.array(state["weights"]), state["baseline"]

    def save_policy(self, path: str) -> None:  # the observation has the same size on every teacher: it transfers
        self.write_policy(path, POLICY_FORMAT, {"weights": self.weights.tolist()})

    def load_policy(self, path: str, trust_pickle: bool = False) -> None:
        blob = self.read_policy(path, POLICY_FORMAT, ["weights"])  # checks agent, space and mode; prints origin
        weights = np.array(blob["weights"])
        if weights.shape != self.weights.shape:
            raise ValueError(f"{path} holds weights of shape {weights.shape}; this env needs {self.weights.shape}")
        self.weights = weights
