"""What ``run_agent.py --list`` prints, as plain data: the env ids' parts and every ``--agent`` name.

Listing must answer at once, and the real sources (``envs.SPACES``, ``netcomp.zoo.ARCHS``,
``netcomp.data.DATASETS``, ``runner.registry.AGENTS`` and each agent class's ``kind``, ``spaces`` and
``modes``) import torch, which takes seconds. So the facts are written out here, and
``tests/test_cli_list.py`` checks them against those sources: adding an agent, space, arch or dataset without
a line here fails that test, naming what is missing. This module imports nothing of the project.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The action spaces (``envs.SPACES``), each with what an action says and the method it comes from.
SPACES: dict[str, str] = {
    "removal": "keep/remove bit per layer (N2N)",
    "shrinkage": "shrink index per layer (N2N)",
    "channel-ratio": "keep ratio per channel group or conv, + blocks per stage (AMC, TAS, DeepHoyer)",
    "ranking-affine": "(alpha, kappa) per conv of a global filter ranking (LeGR)",
    "edit": "remove nodes, shrink width classes, add skips (ESNAC; one-shot only)",
}

#: The teacher architectures of the zoo (``netcomp.zoo.ARCHS``), in its order.
ARCHS: tuple[str, ...] = ("lenet5", "lenet5caffe", "vgg11", "vgg16", "vgg19", "resnet18", "resnet34", "resnet20",
                          "resnet32", "resnet56", "resnet110", "mobilenetv2", "shufflenet")

#: The datasets (``netcomp.data.DATASETS``), in its order.
DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "mnist", "fashionmnist", "svhn", "synthetic", "imagefolder")

_ALL = ("removal", "shrinkage", "channel-ratio", "ranking-affine", "edit")
_NO_EDIT = _ALL[:4]


@dataclass(frozen=True)
class AgentInfo:
    """One ``--agent`` name's listing: its class's ``kind``, ``spaces`` and ``modes``, and one line on it."""

    kind: str
    spaces: tuple[str, ...]
    modes: tuple[str, ...]
    summary: str


#: Every registered agent (``runner.registry.AGENTS``), in its order.
AGENTS: dict[str, AgentInfo] = {
    "n2n": AgentInfo("policy", ("removal",), ("oneshot",),
                     "N2N: REINFORCE layer removal, then layer shrinkage (ICLR 2018)"),
    "esnac": AgentInfo("blackbox", ("edit", "removal", "shrinkage"), ("oneshot",),
                       "ESNAC: Bayesian optimisation with a learned architecture kernel (ICLR 2019)"),
    "legr": AgentInfo("blackbox", ("ranking-affine",), ("oneshot",),
                      "LeGR: evolution of per-conv affine maps of a global filter ranking (CVPR 2020)"),
    "l2-global": AgentInfo("blackbox", ("ranking-affine",), ("oneshot",),
                           "LeGR's baseline: global L2-norm filter ranking, one evaluation"),
    "uniform": AgentInfo("blackbox", ("ranking-affine",), ("oneshot",),
                         "LeGR's baseline: the same keep ratio in every layer"),
    "uniform-random": AgentInfo("blackbox", ("ranking-affine",), ("oneshot",),
                                "the uniform keep ratio with random channels (pruning studies' random baseline)"),
    "tas": AgentInfo("whitebox", ("channel-ratio",), ("oneshot",),
                     "TAS: differentiable width/depth search, then KD training (NeurIPS 2019)"),
    "hoyer": AgentInfo("whitebox", ("channel-ratio",), ("oneshot",),
                       "DeepHoyer: Hoyer-square sparsity, prune, fine-tune (ICLR 2020)"),
    "random": AgentInfo("blackbox", _ALL, ("oneshot",), "uniform samples of the one-shot action space"),
    "ppo": AgentInfo("policy", _NO_EDIT, ("sequential", "oneshot"), "Stable-Baselines3 PPO"),
    "a2c": AgentInfo("policy", _NO_EDIT, ("sequential", "oneshot"), "Stable-Baselines3 A2C"),
    "sb3": AgentInfo("policy", _NO_EDIT, ("sequential", "oneshot"),
                     "any Stable-Baselines3 algorithm (SAC, DQN, TD3, ...) with RL Zoo style hyper-parameters"),
    "tpe": AgentInfo("blackbox", _ALL, ("oneshot",), "Optuna's multivariate TPE"),
    "cmaes": AgentInfo("blackbox", _ALL, ("oneshot",), "CMA-ES (Optuna)"),
    "gp": AgentInfo("blackbox", _ALL, ("oneshot",), "Gaussian-process Bayesian optimisation (Optuna)"),
    "nsga2": AgentInfo("blackbox", _ALL, ("oneshot",), "NSGA-II on accuracy and size (Optuna)"),
    "asha": AgentInfo("blackbox", _ALL, ("oneshot",), "asynchronous successive halving over the KD steps"),
}


def listing() -> str:
    """The text of ``run_agent.py --list``: the env id's parts, then one line per agent."""
    lines = ["Environments: netcomp/{space}-{arch}-{dataset}-v0 (short form space-arch-dataset)", "  spaces:"]
    lines += [f"    {name:<15} {what}" for name, what in SPACES.items()]
    lines += [f"  archs:    {', '.join(ARCHS)}, custom (your model: --teacher-model MODULE:CALLABLE)",
              f"  datasets: {', '.join(DATASETS)} (imagefolder: --data-root DIR of class folders)", "",
              "Agents (--agent NAME, or your own: --agent FILE.py:Class):"]
    for name, info in AGENTS.items():
        lines.append(f"  {name:<10} {info.kind:<9} {info.summary}")
        lines.append(f"  {'':<10} {'':<9} spaces: {', '.join(info.spaces)}; modes: {', '.join(info.modes)}")
    return "\n".join(lines)
