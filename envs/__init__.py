"""netcomp-gym environments: importing this package registers every ``netcomp/{space}-{arch}-{dataset}-v0``.

    import gymnasium as gym, envs
    env = gym.make("netcomp/removal-resnet20-synthetic-v0", fidelity="smoke", mode="sequential")

``fidelity="table"`` makes the env's table env (rewards looked up in a tabular benchmark: envs/table.py).
"""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym

from netcomp.checks import did_you_mean
from netcomp.data import DATASETS
from netcomp.fx_import import CUSTOM_ARCH
from netcomp.zoo import ARCHS

#: The archs of env ids: the zoo's, and ``custom`` (your own model: ``teacher_model=``, netcomp.fx_import).
ENV_ARCHS: tuple[str, ...] = (*ARCHS, CUSTOM_ARCH)

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
            if arch in ENV_ARCHS and dataset in DATASETS:
                return env_id(space, arch, dataset)
    known = [f"{space}-{arch}-{dataset}" for space in SPACES for arch in ENV_ARCHS for dataset in DATASETS]
    raise ValueError(f"unknown environment {name!r}{did_you_mean(short, known)}; ids are SPACE-ARCH-DATASET with "
                     f"SPACE in "
                     f"{', '.join(SPACES)}, ARCH in {', '.join(ENV_ARCHS)}, DATASET in {', '.join(DATASETS)}")


def make_space_env(space: str, **kwargs: Any) -> gym.Env:
    """The env of ``space`` (what every registered id makes): its table env when ``fidelity="table"``."""
    from envs.table import make_env

    return make_env(SPACES[space], **kwargs)


def _register_all() -> None:
    for space in SPACES:
        for arch in ENV_ARCHS:
            for dataset in DATASETS:
                eid = env_id(space, arch, dataset)
                if eid not in gym.registry:
                    gym.register(eid, entry_point=functools.partial(make_space_env, space),
                                 kwargs={"arch": arch, "dataset": dataset})


_register_all()

__all__ = ["ENV_ARCHS", "SPACES", "env_id", "parse_env_id"]
