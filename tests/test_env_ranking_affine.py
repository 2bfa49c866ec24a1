"""The ranking-affine space (LeGR): checkers, the greedy's FLOPs target, global ranking, quotas, inheritance."""

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings

from envs.ranking_affine import RankingAffineEnv, legr_quota
from netcomp.metrics import count_macs
from netcomp.surgery import build_module, inherit_weights, keep_channels, set_widths
from tests.envcheck import action_cases, run_checkers


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny students train faster on one thread than on two contended ones (the CI box is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(tiny, **kw):
    return RankingAffineEnv(arch=kw.pop("arch", "resnet20"), device="cpu", **tiny, **kw)


def base_scores(env) -> dict[str, np.ndarray]:
    """LeGR's l2_weight chain score from the teacher's weights: per filter, the sum of squared L2 norms."""
    model = env.teacher.model
    return {gid: sum(model.get_submodule(p).weight.detach().double().flatten(1).pow(2).sum(1).numpy()
                     for p in env.arch.group(gid).producers) for gid in env.layers}


def student_keep(env, gid: str) -> list[int]:
    keep = env.student.node(env.arch.group(gid).producers[0]).keep
    return list(range(env.arch.group(gid).width)) if keep is None else list(keep)


def min_kept(n: int, s: float) -> int:
    """Filters a group of n must keep under LeGR's rule: quota min(floor(n(1-s)), n-2), or n-1 when s=0."""
    quota = max(0, min(math.floor(n * (1 - s)), n - 2)) if s > 0 else n - 1
    return n - quota


@pytest.mark.parametrize("mode", ["oneshot", "sequential"])
def test_checkers_pass(tiny, mode, recwarn):
    env = make(tiny, mode=mode, render_mode="ansi")
    run_checkers(env, recwarn)
    g = len(env.layers)
    assert env.action_space.shape == ((2 * g,) if mode == "oneshot" else (2,))
    assert env.action_space.dtype == np.float32
    assert env.reward_name == "legr" and env.evaluator.inherit == "indices"


def test_greedy_meets_its_flops_target_within_one_filter(tiny):
    env = make(tiny, flops_target=0.4)
    g = len(env.layers)
    rng = np.random.default_rng(0)
    actions = [np.zeros(2 * g)] + [rng.uniform(-1, 1, 2 * g) for _ in range(3)]
    for action in actions:
        env.reset(seed=0)
        _, _, _, _, info = env.step(action.astype(np.float32))
        student, target = env.student, info["target_macs"]
        assert target == pytest.approx(0.4 * count_macs(env.arch))
        assert info["macs"] == count_macs(student)
        assert info["widths"] == {gid: student.shapes[gid][0] for gid in env.layers}
        plan = env.prune_plan(np.array(info["alpha"]), np.array(info["kappa"]))
        assert plan.macs == count_macs(student) and info["pruned"] == len(plan.pruned)
        if info["met_target"]:
            assert count_macs(student) <= target
            gid, channel = plan.pruned[-1]  # putting the last pruned filter back would miss the target
            back = {k: sorted([*student_keep(env, k), channel]) if k == gid else student_keep(env, k)
                    for k in env.layers}
            assert count_macs(keep_channels(env.arch, back)) > target
        else:  # only when every group used up its quota
            assert count_macs(student) > target
            assert all(w == min_kept(env.arch.group(gid).width, 0.1) for gid, w in info["widths"].items())


def test_identity_action_is_plain_global_norm_ranking(tiny):
    env = make(tiny, flops_target=0.5)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.zeros(2 * len(env.layers), np.float32))
    assert info["alpha"] == [1.0] * len(env.layers) and info["kappa"] == [0.0] * len(env.layers)
    assert info["met_target"] and info["pruned"] > 0
    scores = base_scores(env)
    pruned, kept = [], []
    for gid in env.layers:
        keep = set(student_keep(env, gid))
        n = env.arch.group(gid).width
        pruned += [scores[gid][j] for j in range(n) if j not in keep]
        if len(keep) > min_kept(n, 0.1):  # a group whose quota ran out may keep low filters
            kept += [scores[gid][j] for j in keep]
    lowest = min(float(s.min()) for s in scores.values())
    assert min(pruned) == pytest.approx(lowest)       # the globally weakest filter goes first
    assert max(pruned) <= min(kept) + 1e-9            # everything removed ranks below everything kept


def test_affine_maps_move_filters_in_the_global_ranking(tiny):
    env = make(tiny, flops_target=0.5)
    g = len(env.layers)
    env.reset(seed=0)
    _, _, _, _, identity = env.step(np.zeros(2 * g, np.float32))
    full = {gid: env.arch.group(gid).width for gid in env.layers}
    victim = max(env.layers, key=lambda gid: full[gid] - identity["widths"][gid])  # the most pruned group
    i = env.layers.index(victim)
    raised = np.zeros(2 * g, np.float32)
    raised[g + i] = 1.0  # kappa part: shift the group's scores up by 3 std
    env.reset(seed=0)
    _, _, _, _, info = env.step(raised)
    std = float(np.std(base_scores(env)[victim]))
    assert info["kappa"][i] == pytest.approx(3 * std) and info["alpha"] == [1.0] * g
    assert info["widths"][victim] > identity["widths"][victim]
    lowered = np.zeros(2 * g, np.float32)
    lowered[i] = -1.0  # alpha part: exp(-2) shrinks the group's scores
    env.reset(seed=0)
    _, _, _, _, info = env.step(lowered)
    assert info["alpha"][i] == pytest.approx(math.exp(-2))
    assert info["widths"][victim] <= identity["widths"][victim]


@pytest.mark.parametrize("safeguard", [0.1, 0.0])
def test_quota_rule_bounds_what_each_group_keeps(tiny, safeguard):
    env = make(tiny)
    floor = {gid: min_kept(env.arch.group(gid).width, safeguard) for gid in env.layers}
    least = count_macs(set_widths(env.arch, floor)) / count_macs(env.arch)
    env = make(tiny, flops_target=least / 2, safeguard=safeguard)  # unreachable: every quota gets used up
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.zeros(2 * len(env.layers), np.float32))
    assert not info["met_target"] and info["macs"] > info["target_macs"]
    for gid, width in info["widths"].items():
        n = env.arch.group(gid).width
        assert width == min_kept(n, safeguard) == (max(n - math.floor(0.9 * n), 2) if safeguard else 1)


def test_quota_function_follows_legrs_minimum_channel_rule():
    # the reference's worked examples for s = 0.1 (16 -> keep 2, 32 -> 4, 64 -> 7) and the n - 2 cap
    assert [n - legr_quota(n, 0.1) for n in (16, 32, 64)] == [2, 4, 7]
    assert [legr_quota(n, 0.1) for n in (1, 2, 3, 5, 10)] == [0, 0, 1, 3, 8]
    assert [legr_quota(n, 0.0) for n in (1, 2, 16)] == [0, 1, 15]


def test_kept_filters_inherit_the_teachers_weights_exactly(tiny):
    env = make(tiny, flops_target=0.4)
    env.reset(seed=0)
    rng = np.random.default_rng(3)
    env.step(rng.uniform(-1, 1, 2 * len(env.layers)).astype(np.float32))
    student, teacher = env.student, env.teacher.model
    module = build_module(student)
    inherit_weights(module, student, teacher, env.arch, mode=env.evaluator.inherit)
    checked = 0
    for name in ("layer1.0.conv1", "layer2.0.conv2", "layer3.1.conv1", "layer2.0.shortcut.conv"):
        k_out = student_keep(env, env.arch.group_of[name])
        k_in = student_keep(env, env.arch.group_of[env.arch.node(name).inputs[0]])
        assert torch.equal(module.get_submodule(name).weight, teacher.get_submodule(name).weight[k_out][:, k_in])
        bn = name.replace("conv", "bn")
        for attr in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(getattr(module.get_submodule(bn), attr), getattr(teacher.get_submodule(bn), attr)[k_out])
        checked += len(k_out) < env.arch.group(env.arch.group_of[name]).width
    assert checked > 0  # at least one of them was really pruned
    k_fc = student_keep(env, env.arch.group_of[env.arch.node("fc").inputs[0]])
    assert torch.equal(module.get_submodule("fc").weight, teacher.get_submodule("fc").weight[:, k_fc])


def test_reward_is_minus_the_validation_loss(tiny):
    env = make(tiny)
    env.reset(seed=0)
    _, reward, _, _, info = env.step(np.zeros(2 * len(env.layers), np.float32))
    assert info["valid"] and reward == pytest.approx(-info["loss"])


def test_sequential_mode_maps_each_pair_and_prunes_at_the_end(tiny):
    env = make(tiny, mode="sequential")
    env.reset(seed=0)
    g = len(env.layers)
    pairs = np.random.default_rng(1).uniform(-1, 1, (g, 2)).astype(np.float32)
    for t in range(g):
        obs, reward, terminated, _, info = env.step(pairs[t])
        assert terminated == (t == g - 1)
        if not terminated:
            assert reward == 0.0 and obs[-1] == pytest.approx(pairs[t].astype(np.float64).mean())
    stds = [float(np.std(s)) for s in base_scores(env).values()]
    assert info["alpha"] == pytest.approx(np.exp(2 * pairs[:, 0].astype(np.float64)))
    assert info["kappa"] == pytest.approx(3 * pairs[:, 1].astype(np.float64) * stds)
    oneshot = make(tiny)
    oneshot.reset(seed=0)
    _, _, _, _, same = oneshot.step(np.concatenate([pairs[:, 0], pairs[:, 1]]))  # alpha part, then kappa part
    assert same["widths"] == info["widths"] and same["arch_key"] == info["arch_key"]


def test_bad_arguments_raise_value_error(tiny):
    for kw, word in ((dict(flops_target=0.0), "flops_target"), (dict(flops_target=1.5), "flops_target"),
                     (dict(safeguard=1.0), "safeguard"), (dict(safeguard="x"), "safeguard")):
        with pytest.raises(ValueError, match=word):
            make(tiny, **kw)


@pytest.mark.parametrize("mode", ["oneshot", "sequential"])
def test_bad_actions_raise_value_error_naming_the_space(tiny, mode):
    env = make(tiny, mode=mode)
    env.reset(seed=0)
    n = env.action_space.shape[0]
    bad = [np.zeros(n + 1, np.float32), np.zeros((n // 2, 2), np.float32), np.full(n, np.nan, np.float32),
           np.full(n, 1.5, np.float32), np.full(n, -np.inf), np.array(["a"] * n), np.ones(n, bool), None, "0.5",
           {"a": 1}, [[0.1], [0.2, 0.3]], np.ones(n) * 1j]
    for action in bad:
        with pytest.raises(ValueError, match=re.escape(str(env.action_space))):
            env.step(action)


def test_random_and_malformed_actions_never_crash_oneshot(tiny):
    env = make(tiny)
    pattern = re.escape(str(env.action_space))

    @settings(max_examples=100, deadline=None, database=None)
    @given(case=action_cases(2 * len(env.layers)))
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
        assert info["met_target"] == (info["macs"] <= info["target_macs"])
        assert info["valid"] or info["invalid_reason"]

    check()


def test_random_and_malformed_actions_never_crash_sequential(tiny):
    env = make(tiny, mode="sequential")
    pattern = re.escape(str(env.action_space))

    @settings(max_examples=200, deadline=None, database=None)
    @given(case=action_cases(2))
    def check(case):
        action, valid = case
        env.reset(seed=0)
        if not valid:
            with pytest.raises(ValueError, match=pattern):
                env.step(action)
            action = np.zeros(2, np.float32)  # the refused step left the episode where it was
        obs, reward, terminated, _, _ = env.step(action)
        assert not terminated and reward == 0.0
        assert env.observation_space.contains(obs) and obs[-3] == pytest.approx(1 / (len(env.layers) - 1))

    check()


def test_sb3_ppo_learns_for_a_few_steps(tiny):
    from stable_baselines3 import PPO

    env = make(tiny)
    model = PPO("MlpPolicy", env, n_steps=8, batch_size=8, n_epochs=1, device="cpu", seed=0)
    model.learn(16)
    assert model.num_timesteps == 16
