"""netcomp-gym environments: importing this package registers every ``netcomp/{space}-{arch}-{dataset}-v0``.

    import gymnasium as gym, envs
    env = gym.make("netcomp/removal-resnet20-synthetic-v0", fidelity="smoke", mode="sequential")
"""

from __future__ import annotations

import gymnasium as gym

from netcomp.data import DATASETS
from netcomp.zoo import ARCHS

#: Entry point of each action space (imported by gymnasium.make when first used).
SPACES: dict[str, str] = {
    "removal": "envs.removal:RemovalEnv",
    "shrinkage": "envs.shrinkage:ShrinkageEnv",
    "channel-ratio": "envs.channel_ratio:ChannelRatioEnv",
    "ranking-affine": "envs.ranking_affine:RankingAffineEnv",
    "edit": "envs.edit:EditEnv",
}


def env_id(space: str, arch: str, dataset: str) -> str:
    """The registered id of an environment."""
    return f"netcomp/{space}-{arch}-{dataset}-v0"


def parse_env_id(name: str) -> str:
    """Full id for a full or short name (``removal-resnet18-cifar10``); ValueError lists what is valid."""
    short = name.removeprefix("netcomp/").removesuffix("-v0")
    for space in SPACES:
        if short.startswith(space + "-"):
            rest = short[len(space) + 1:]
            arch, _, dataset = rest.partition("-")
            if arch in ARCHS and dataset in DATASETS:
                return env_id(space, arch, dataset)
    raise ValueError(f"unknown environment {name!r}; ids are SPACE-ARCH-DATASET with SPACE in "
                     f"{', '.join(SPACES)}, ARCH in {', '.join(ARCHS)}, DATASET in {', '.join(DATASETS)}")


def _register_all() -> None:
    for space, entry_point in SPACES.items():
        for arch in ARCHS:
            for dataset in DATASETS:
                eid = env_id(space, arch, dataset)
                if eid not in gym.registry:
                    gym.register(eid, entry_point=entry_point, kwargs={"arch": arch, "dataset": dataset})


_register_all()

__all__ = ["SPACES", "env_id", "parse_env_id"]
