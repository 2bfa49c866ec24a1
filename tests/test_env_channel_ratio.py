"""The channel-ratio space (AMC/TAS keep ratios per channel group): checkers, budget wall, selection, rewards."""

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings

from envs.channel_ratio import GROUP_FEATURES, ChannelRatioEnv
from netcomp.metrics import count_macs, count_params
from netcomp.surgery import build_module, inherit_weights, set_widths
from tests.envcheck import action_cases, run_checkers

pytestmark = pytest.mark.usefixtures("one_thread")


def make(tiny, **kw):
    return ChannelRatioEnv(arch=kw.pop("arch", "resnet20"), device="cpu", **tiny, **kw)


def width_of(ratio: float, full: int) -> int:
    """The documented ratio -> width rule (no grouped convs in these nets): max(1, round half up)."""
    return max(1, math.floor(ratio * full + 0.5))


def ratio_of(a: float, lbound: float = 0.2) -> float:
    return lbound + (a + 1.0) / 2.0 * (1.0 - lbound)


@pytest.mark.parametrize(("mode", "budget"), [("oneshot", None), ("sequential", None), ("oneshot", 0.5),
                                              ("sequential", 0.5)])
def test_checkers_pass(tiny, mode, budget, recwarn):
    env = make(tiny, mode=mode, budget=budget, render_mode="ansi")
    run_checkers(env, recwarn)
    g = len(env.layers)
    assert env.action_space.shape == ((g,) if mode == "oneshot" else (1,))
    assert env.action_space.dtype == np.float32
    width = len(GROUP_FEATURES) + (3 if mode == "sequential" else 0)
    assert env.observation_space.shape == ((g, width) if mode == "oneshot" else (width,))


def test_layers_are_the_shrinkable_groups_in_node_order(tiny):
    env = make(tiny)
    assert env.layers == tuple(g.gid for g in env.arch.groups if g.shrinkable)
    assert "layer2.0.conv2" in env.layers and "layer2.1.conv2" not in env.layers  # one entry per residual group


def test_budget_wall_meets_the_budget_and_reports_raw_and_corrected_ratios(tiny):
    budget, lbound = 0.3, 0.2
    env = make(tiny, budget=budget)
    g, limit = len(env.layers), budget * count_macs(env.arch)
    rng = np.random.default_rng(0)
    actions = [np.ones(g)] + [rng.uniform(-1, 1, g) for _ in range(4)]
    corrected_any = False
    for action in actions:
        env.reset(seed=0)
        _, reward, _, _, info = env.step(action.astype(np.float32))
        student = env.student
        assert info["budget"] == budget and info["budget_met"]
        assert count_macs(student) <= limit and info["macs"] == count_macs(student)
        assert info["raw_ratios"] == pytest.approx([ratio_of(float(a)) for a in action.astype(np.float32)])
        assert all(c <= r + 1e-12 for c, r in zip(info["ratios"], info["raw_ratios"]))
        full = [env.arch.group(gid).width for gid in env.layers]
        widths = [width_of(r, w) for r, w in zip(info["ratios"], full)]
        assert list(info["widths"].values()) == widths
        assert [student.shapes[gid][0] for gid in env.layers] == widths
        # the wall is tight: a corrected group could not keep one more channel with every later one at lbound
        for t in range(g):
            if info["ratios"][t] < info["raw_ratios"][t] - 1e-12:
                corrected_any = True
                tail = [width_of(lbound, w) for w in full[t + 1:]]
                more = dict(zip(env.layers, [*widths[:t], widths[t] + 1, *tail]))
                assert count_macs(set_widths(env.arch, more)) > limit
        assert reward == info["accuracy"]  # amc-acc: the budget holds, so the accuracy is paid
    assert corrected_any


def test_budget_on_params_and_an_unreachable_budget(tiny):
    env = make(tiny, budget=0.3, budget_metric="params")
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.ones(len(env.layers), np.float32))
    assert info["budget_met"] and count_params(env.student) <= 0.3 * count_params(env.arch)
    assert count_macs(env.student) > 0.3 * count_macs(env.arch)  # it was the params that were budgeted

    env = make(tiny, budget=0.001, penalty=-2.0)  # even every group at lbound keeps far more
    env.reset(seed=0)
    _, reward, _, _, info = env.step(np.ones(len(env.layers), np.float32))
    # a student the budget-constrained reward cannot pay is an invalid episode, with the reason
    assert not info["valid"] and not info["budget_met"] and "budget is not met" in info["invalid_reason"]
    assert info["ratios"] == pytest.approx([0.2] * len(env.layers))
    assert reward == -2.0


def test_sequential_wall_applies_step_by_step_and_observes_the_reduced_macs(tiny):
    budget = 0.3
    env = make(tiny, mode="sequential", budget=budget)
    obs, _ = env.reset(seed=0)
    teacher_macs = count_macs(env.arch)
    seen = []
    for t in range(len(env.layers)):
        obs, reward, terminated, _, info = env.step(np.ones(1, np.float32))
        assert terminated == (t == len(env.layers) - 1)
        if not terminated:
            assert reward == 0.0
            seen.append(obs.copy())
    assert info["budget_met"] and count_macs(env.student) <= budget * teacher_macs
    assert info["raw_ratios"] == pytest.approx([1.0] * len(env.layers))
    assert min(info["ratios"]) < 1.0
    widths = list(info["widths"].values())
    for t, row in enumerate(seen):
        decided = set_widths(env.arch, dict(zip(env.layers[: t + 1], widths[: t + 1])))
        assert row[-3] == pytest.approx((t + 1) / (len(env.layers) - 1))          # position
        assert row[-2] == pytest.approx(1 - count_macs(decided) / teacher_macs, abs=1e-6)  # reduced so far
        assert row[-1] == pytest.approx(info["ratios"][t])                        # previous (corrected) ratio


def test_norm_selection_keeps_the_highest_norm_filters_and_inherits_them(tiny):
    env = make(tiny)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.full(len(env.layers), -0.5, np.float32))
    student, teacher = env.student, env.teacher.model
    for gid in env.layers:
        group = env.arch.group(gid)
        norms = sum(torch.linalg.vector_norm(teacher.get_submodule(p).weight.detach().flatten(1), dim=1)
                    for p in group.producers)
        keep = student.node(group.producers[0]).keep
        assert all(student.node(p).keep == keep for p in group.producers)
        assert len(keep) == info["widths"][gid] == width_of(0.4, group.width) and list(keep) == sorted(keep)
        dropped = sorted(set(range(group.width)) - set(keep))
        assert norms[list(keep)].min() >= norms[dropped].max()
    assert env.evaluator.inherit == "indices"
    module = build_module(student)
    inherit_weights(module, student, teacher, env.arch, mode=env.evaluator.inherit)
    name = "layer2.1.conv1"
    k_out = list(student.node(name).keep)
    k_in = list(student.node(env.arch.group_of[env.arch.node(name).inputs[0]]).keep)
    expected = teacher.get_submodule(name).weight[k_out][:, k_in]
    assert torch.equal(module.get_submodule(name).weight, expected)


def test_first_selection_keeps_the_first_channels(tiny):
    env = make(tiny, selection="first")
    assert env.evaluator.inherit == "first_k"
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.full(len(env.layers), -0.5, np.float32))
    for gid in env.layers:
        assert env.student.node(gid).keep == tuple(range(info["widths"][gid]))


def test_reward_is_the_named_formula_of_the_info(tiny):
    env = make(tiny)
    assert env.reward_name == "amc-flops"
    env.reset(seed=0)
    _, reward, _, _, info = env.step(np.zeros(len(env.layers), np.float32))
    assert info["valid"] and info["budget"] is None and info["budget_met"]
    assert reward == pytest.approx(-(1 - info["accuracy"]) * math.log(info["macs"]))
    assert make(tiny, budget=0.5).reward_name == "amc-acc"
    env = make(tiny, budget=0.5, reward="n2n")
    env.reset(seed=0)
    _, reward, _, _, info = env.step(np.zeros(len(env.layers), np.float32))
    c = 1 - info["params"] / info["teacher_params"]
    assert reward == pytest.approx(c * (2 - c) * info["accuracy"] / info["teacher_accuracy"])


def test_keeping_everything_is_an_invalid_episode_not_an_error(tiny):
    env = make(tiny)
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(np.ones(len(env.layers), np.float32))
    assert terminated and not info["valid"] and "not fewer" in info["invalid_reason"]
    # amc-flops pays a valid student at least -log(teacher MACs); the invalid one gets one less
    assert reward == env.penalty == pytest.approx(-math.log(info["teacher_macs"]) - 1.0)


def test_bad_arguments_raise_value_error(tiny):
    for kw, word in ((dict(lbound=0.0), "lbound"), (dict(lbound="x"), "lbound"), (dict(selection="l1"), "selection"),
                     (dict(budget=1.5), "budget"), (dict(budget=float("nan")), "budget"),
                     (dict(budget_metric="latency"), "budget_metric")):
        with pytest.raises(ValueError, match=word):
            make(tiny, **kw)


def bad_actions(n: int) -> list:
    return [np.zeros(n + 1, np.float32), np.zeros((n, 1), np.float32), np.full(n, np.nan, np.float32),
            np.full(n, 1.5, np.float32), np.full(n, -np.inf), np.array(["a"] * n), np.ones(n, bool), None,
            "0.5", {"a": 1}, [[0.1], [0.2, 0.3]], np.ones(n) * 1j]


@pytest.mark.parametrize("mode", ["oneshot", "sequential"])
def test_bad_actions_raise_value_error_naming_the_space(tiny, mode):
    env = make(tiny, mode=mode)
    env.reset(seed=0)
    n = env.action_space.shape[0]
    for action in bad_actions(n):
        with pytest.raises(ValueError, match=re.escape(str(env.action_space))):
            env.step(action)


def test_random_and_malformed_actions_never_crash_oneshot(tiny):
    env = make(tiny, budget=0.5)
    pattern = re.escape(str(env.action_space))

    @settings(max_examples=100, deadline=None, database=None)
    @given(case=action_cases(len(env.layers)))
    def check(case):
        action, valid = case
        env.reset(seed=0)
        if not valid:
            with pytest.raises(ValueError, match=pattern):
                env.step(action)
            return
        obs, reward, terminated, truncated, info = env.step(action)
        assert terminated and not truncated and math.isfinite(reward)
        assert env.observation_space.contains(obs)
        assert info["budget_met"] and info["macs"] <= 0.5 * info["teacher_macs"]
        assert info["valid"] or info["invalid_reason"]

    check()


def test_random_and_malformed_actions_never_crash_sequential(tiny):
    env = make(tiny, mode="sequential", budget=0.5)
    pattern = re.escape(str(env.action_space))

    @settings(max_examples=200, deadline=None, database=None)
    @given(case=action_cases(1))
    def check(case):
        action, valid = case
        env.reset(seed=0)
        if not valid:
            with pytest.raises(ValueError, match=pattern):
                env.step(action)
            action = np.zeros(1, np.float32)  # the refused step left the episode where it was
        obs, reward, terminated, _, _ = env.step(action)
        assert not terminated and reward == 0.0
        assert env.observation_space.contains(obs) and obs[-3] == pytest.approx(1 / (len(env.layers) - 1))

    check()


def test_sb3_ppo_learns_for_a_few_steps(tiny):
    from stable_baselines3 import PPO

    env = make(tiny)
    model = PPO("MlpPolicy", env, n_steps=8, batch_size=8, n_epochs=1, device="cpu", seed=0)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(16)
    assert model.num_timesteps == 16
    assert any(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters()))  # PPO updated the policy
    rewards = model.rollout_buffer.rewards  # the env paid a real reward on every one-shot episode
    assert np.isfinite(rewards).all() and (rewards != 0).all()
