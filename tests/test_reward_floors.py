"""Under every reward and in every space an invalid student scores below every valid one."""

import math

import numpy as np
import pytest

from envs.channel_ratio import ChannelRatioEnv
from envs.ranking_affine import RankingAffineEnv
from envs.removal import RemovalEnv
from envs.shrinkage import ShrinkageEnv
from netcomp.rewards import REWARDS, RewardContext, invalid_penalty, reward_floor

CTX = RewardContext(teacher_accuracy=0.9, teacher_params=270_000, teacher_macs=40_000_000, num_classes=10)


@pytest.mark.parametrize("growth", [1.0, 16.0])
def test_each_floor_bounds_the_formula_at_its_worst_valid_student(growth):
    ctx = RewardContext(**{**CTX.__dict__, "max_growth": growth})
    params = ctx.teacher_params * growth - (1 if growth == 1.0 else 0)
    macs = ctx.teacher_macs * growth - (1 if growth == 1.0 else 0)
    worst = []
    for accuracy in (0.0, 0.5, 1.0):
        worst.append({"valid": True, "accuracy": accuracy, "teacher_accuracy": ctx.teacher_accuracy,
                      "compression": 1 - params / ctx.teacher_params, "params": params, "macs": macs,
                      "loss": ctx.max_loss, "max_loss": ctx.max_loss, "budget_met": True})
    for name, reward in REWARDS.items():
        floor = reward_floor(name, ctx)
        values = [reward.value(info) for info in worst]
        assert min(values) == pytest.approx(floor)          # the floor is reached, not just a bound
        assert invalid_penalty(name, ctx) == floor - 1.0 < min(values)


def test_a_penalty_at_or_above_the_floor_is_refused():
    assert invalid_penalty("n2n", CTX) == -1.0             # N2N's own value
    assert invalid_penalty("n2n", CTX, -2.0) == -2.0
    with pytest.raises(ValueError, match=r"penalty -1.0 must be below .*'amc-flops' \(-17.5"):
        invalid_penalty("amc-flops", CTX, -1.0)
    assert invalid_penalty("amc-flops", CTX) == pytest.approx(-math.log(40_000_000) - 1)
    assert invalid_penalty("legr", CTX) == pytest.approx(-10 * math.log(10) - 1)


SPACES = {
    # space: (env class, extra kwargs, an action that gives an invalid student (not smaller than the teacher))
    "removal": (RemovalEnv, {}, lambda env: np.ones(len(env.layers), np.int64)),
    "shrinkage": (ShrinkageEnv, {}, lambda env: np.full(len(env.layers), len(env.lookup) - 1)),
    "channel-ratio": (ChannelRatioEnv, {}, lambda env: np.ones(env.action_space.shape, np.float32)),
    "ranking-affine": (RankingAffineEnv, {"flops_target": 1.0}, lambda env: np.zeros(env.action_space.shape,
                                                                                      np.float32)),
}


@pytest.mark.parametrize("reward", list(REWARDS))
@pytest.mark.parametrize("space", list(SPACES))
def test_invalid_students_score_below_every_valid_student(tiny, space, reward):
    cls, kwargs, invalid_action = SPACES[space]
    env = cls(arch="resnet20", reward=reward, **kwargs, **tiny)
    env.reset(seed=0)
    bad = env.evaluate_many([invalid_action(env)])[0]
    if space == "ranking-affine":  # a FLOPs target of 1 prunes nothing; students come from a real target
        env = cls(arch="resnet20", reward=reward, **tiny)
        env.reset(seed=0)
    env.action_space.seed(0)
    infos = env.evaluate_many([env.action_space.sample() for _ in range(5)])
    valid = [i["reward"] for i in infos if i["valid"]]
    invalid = [bad["reward"]] + [i["reward"] for i in infos if not i["valid"]]
    assert not bad["valid"] and valid
    floor = reward_floor(reward, env.reward_context)
    assert all(r == env.penalty < floor for r in invalid)
    assert max(invalid) < min(valid) and min(valid) >= floor
