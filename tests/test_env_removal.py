"""The removal space (N2N stage 1) and the base environment's contract."""

import numpy as np
import pytest

from envs.removal import RemovalEnv
from netcomp.arch import removable_layers
from netcomp.rewards import n2n_reward
from tests.envcheck import run_checkers

CONTRACT = ("valid", "accuracy", "teacher_accuracy", "params", "teacher_params", "macs", "teacher_macs",
            "compression", "reward", "arch_key", "eval_seconds")


def make(tiny, **kw):
    return RemovalEnv(arch=kw.pop("arch", "resnet20"), **tiny, **kw)


@pytest.mark.parametrize("mode", ["oneshot", "sequential"])
def test_checkers_pass(tiny, mode, recwarn):
    env = make(tiny, mode=mode, render_mode="ansi")
    run_checkers(env, recwarn)


def test_reward_is_the_n2n_formula_of_the_info(tiny):
    env = make(tiny)
    env.reset(seed=0)
    action = np.ones(len(env.layers), dtype=np.int8)
    layers = list(env.layers)
    for name in ("layer1.0.relu1", "layer2.1.bn1", "layer3.2.conv1", "layer3.2.bn1"):
        action[layers.index(name)] = 0
    _, reward, terminated, truncated, info = env.step(action)
    assert terminated and not truncated and info["valid"]
    assert set(CONTRACT) <= set(info)
    assert info["compression"] == pytest.approx(1 - info["params"] / info["teacher_params"])
    assert reward == pytest.approx(n2n_reward(info["compression"], info["accuracy"], info["teacher_accuracy"]))
    assert info["removed"] == ["layer1.0.relu1", "layer2.1.bn1", "layer3.2.conv1", "layer3.2.bn1"]


def test_unremovable_layers_are_forced_to_keep(tiny):
    env = make(tiny)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.zeros(len(env.layers), dtype=np.int8))
    fixed = set(env.layers) - set(removable_layers(env.arch, "n2n"))
    assert set(info["forced"]) == fixed
    assert "fc" in info["forced"] and "layer2.0.conv1" in info["forced"]


def test_removing_everything_removable_gives_a_runnable_student_or_a_clean_invalid_episode(tiny):
    for arch in ("resnet20", "vgg11", "lenet5", "mobilenetv2"):
        env = make(tiny, arch=arch)
        env.reset(seed=0)
        assert len(set(removable_layers(env.arch, "n2n")) & set(env.layers)) >= 2  # something to remove
        _, reward, terminated, _, info = env.step(np.zeros(len(env.layers), dtype=np.int8))
        assert terminated
        if info["valid"]:
            assert info["params"] < info["teacher_params"] and reward > -1
        else:
            assert reward == -1.0 and info["invalid_reason"]
        env.reset()  # still usable
        _, _, _, _, info = env.step(np.ones(len(env.layers), dtype=np.int8))
        assert not info["valid"] and "not fewer" in info["invalid_reason"]  # the unchanged teacher


def test_sequential_mode_pays_at_the_end_and_observes_context(tiny):
    env = make(tiny, mode="sequential")
    obs, _ = env.reset(seed=3)
    assert obs.shape == env.observation_space.shape
    assert len(env.layers) >= 3  # the loop below checks every step
    rewards = []
    for t in range(len(env.layers)):
        obs, reward, terminated, _, info = env.step(t % 2)
        rewards.append(reward)
        assert terminated == (t == len(env.layers) - 1)
        if not terminated:
            assert obs[-1] == t % 2            # previous action
            assert obs[-2] == pytest.approx(sum(1 for k in range(t + 1) if k % 2 == 0) / (t + 1))
    assert all(r == 0 for r in rewards[:-1]) and rewards[-1] == info["reward"]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(1)


def test_cache_returns_without_retraining(tiny):
    env = make(tiny)
    action = np.ones(len(env.layers), dtype=np.int8)
    action[list(env.layers).index("layer1.1.bn1")] = 0
    env.reset(seed=5)
    _, r1, _, _, i1 = env.step(action)
    trained = env.evaluator.trainings
    env.reset()
    _, r2, _, _, i2 = env.step(action)
    assert env.evaluator.trainings == trained and env.last_result.cached
    assert r1 == r2 and i1 == i2


def test_cache_persists_to_a_file(tiny, tmp_path):
    path = tmp_path / "cache.jsonl"
    action = np.ones(63, dtype=np.int8)
    action[4] = 0  # layer1.0.bn1
    env = make(tiny, cache_path=str(path))
    env.reset(seed=1)
    _, r1, _, _, _ = env.step(action)
    again = make(tiny, cache_path=str(path))
    again.reset(seed=1)
    _, r2, _, _, _ = again.step(action)
    assert again.evaluator.trainings == 0 and again.last_result.cached and r1 == r2


def test_seeded_episodes_repeat_exactly_on_cpu(tiny):
    action = np.ones(63, dtype=np.int8)
    action[[4, 9, 20]] = 0
    results = []
    for _ in range(2):
        env = make(tiny)  # fresh env, fresh in-memory cache: the student really trains twice
        env.reset(seed=11)
        results.append(env.step(action)[1:])
    assert results[0][0] == results[1][0]
    info0, info1 = (dict(r[3]) for r in results)
    info0.pop("eval_seconds"), info1.pop("eval_seconds")
    assert info0 == info1
    seeds = set()
    for seed in (11, 11, 12):
        env.reset(seed=seed)
        seeds.add(env.train_seed)
    assert len(seeds) == 2  # the episode seed decides the student's training seed


@pytest.mark.parametrize("bad", [
    np.ones(5, dtype=np.int8),                    # wrong shape
    np.full(63, 2),                               # out of range
    np.full(63, np.nan),                          # NaN
    np.full(63, 0.5),                             # not integers
    np.array(["a"] * 63),                         # wrong dtype
    None,
])
def test_bad_actions_raise_value_errors_naming_the_space(tiny, bad):
    env = make(tiny)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="MultiBinary"):
        env.step(bad)


def test_bad_constructor_arguments_list_the_valid_ones(tiny):
    with pytest.raises(ValueError, match="unknown arch 'resnet9'.*resnet20"):
        RemovalEnv(arch="resnet9", **tiny)
    with pytest.raises(ValueError, match="unknown mode"):
        make(tiny, mode="batch")
    with pytest.raises(ValueError, match="unknown reward 'acc'.*n2n"):
        make(tiny, reward="acc")
    with pytest.raises(ValueError, match="unknown fidelity 'slow'.*smoke"):
        RemovalEnv(arch="resnet20", dataset="synthetic", fidelity="slow")
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        RemovalEnv(arch="resnet20", dataset="imagenet")


def test_render_ansi_shows_the_layer_table(tiny):
    env = make(tiny, render_mode="ansi")
    env.reset(seed=0)
    action = np.ones(63, dtype=np.int8)
    action[list(env.layers).index("layer1.0.bn1")] = 0
    env.step(action)
    text = env.render()
    row = next(line for line in text.splitlines() if line.startswith("layer1.0.bn1"))
    assert row.split()[-1] == "removed" and "reward" in text
    with pytest.warns(UserWarning, match="render_mode"):
        assert RemovalEnv(arch="resnet20", **tiny).render() is None  # no render_mode: warns, returns None


# ---------------------------------------------------------------------------- granularity="block"
@pytest.mark.parametrize("mode", ["oneshot", "sequential"])
def test_block_granularity_passes_the_checkers(tiny, mode, recwarn):
    run_checkers(make(tiny, mode=mode, granularity="block"), recwarn)


def test_block_granularity_has_one_bit_per_residual_block(tiny):
    env = make(tiny, granularity="block")
    assert env.action_space.n == 9 and env.observation_space.shape == (9, 8)
    assert env.layers == tuple(f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3))
    assert env.removable == set(env.layers) and np.all(env.observation_space.sample() <= 10)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.ones(9, np.int8))
    assert not info["valid"] and "not fewer" in info["invalid_reason"]  # every block kept: the teacher
    keep = np.ones(9, np.int8)
    keep[[0, 3]] = 0  # layer1.0 (identity shortcut) and layer2.0 (projection shortcut)
    _, reward, _, _, info = env.step(keep)
    assert info["valid"] and info["removed"] == ["layer1.0", "layer2.0"] and info["forced"] == []
    names = {n.name for n in env.student.nodes}
    assert not any(n.startswith(("layer1.0.conv", "layer1.0.bn", "layer2.0.conv", "layer2.0.bn")) for n in names)
    assert {"layer2.0.shortcut.conv", "layer2.0.shortcut.bn", "layer2.0.relu2"} <= names
    assert "layer1.1.conv1" in names and reward > env.penalty


def test_removing_every_block_leaves_the_stem_the_projections_and_the_head(tiny):
    env = make(tiny, granularity="block")
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.zeros(9, np.int8))
    convs = [n.name for n in env.student.nodes if n.op == "conv"]
    assert info["valid"] and convs == ["conv1", "layer2.0.shortcut.conv", "layer3.0.shortcut.conv"]


def test_block_granularity_needs_residual_blocks(tiny):
    with pytest.raises(ValueError, match="needs residual blocks; lenet5"):
        make(tiny, arch="lenet5", granularity="block")
    with pytest.raises(ValueError, match="unknown granularity 'stage'"):
        make(tiny, granularity="stage")
