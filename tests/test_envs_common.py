"""Contracts shared by every space: registration, make kwargs, SB3 agents, vector envs, malformed actions."""

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import SubprocVecEnv

import envs
from tests.conftest import TINY

SPACES = tuple(envs.SPACES)


def _env_class(space):
    import importlib

    module, _, name = envs.SPACES[space].partition(":")
    return getattr(importlib.import_module(module), name)


#: spaces with a sequential mode (the edit space is one-shot only: its skip edits are not per layer)
SEQUENTIAL = tuple(s for s in SPACES if "sequential" in _env_class(s).modes)


def make(space, arch="lenet5", mode="oneshot", **kw):
    kw.setdefault("dataset_kwargs", dict(TINY))
    kw.setdefault("fidelity", "smoke")
    return gym.make(envs.env_id(space, arch, "synthetic"), mode=mode, **kw)


def test_every_id_is_registered_and_short_names_resolve():
    from netcomp.data import DATASETS
    from netcomp.zoo import ARCHS

    for space in SPACES:
        for arch in ARCHS:
            for dataset in DATASETS:
                assert envs.env_id(space, arch, dataset) in gym.registry
    assert envs.parse_env_id("removal-resnet18-cifar10") == "netcomp/removal-resnet18-cifar10-v0"
    assert envs.parse_env_id("netcomp/channel-ratio-vgg16-svhn-v0") == "netcomp/channel-ratio-vgg16-svhn-v0"
    with pytest.raises(ValueError, match="unknown environment 'removal-resnet9-cifar10'.*resnet18"):
        envs.parse_env_id("removal-resnet9-cifar10")
    with pytest.raises(gym.error.Error):
        gym.make("netcomp/removal-resnet9-cifar10-v0")


@pytest.mark.parametrize("space", SEQUENTIAL)
def test_make_passes_kwargs_through(space):
    env = make(space, mode="sequential", reward="amc-flops")
    assert env.unwrapped.mode == "sequential" and env.unwrapped.reward_name == "amc-flops"
    assert env.unwrapped.fidelity.name == "smoke"
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)


@pytest.mark.parametrize("space", SEQUENTIAL)
def test_ppo_learns_a_few_hundred_steps(space):
    env = make(space, arch="resnet20", mode="sequential")
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(256)
    assert model.num_timesteps >= 256


@pytest.mark.parametrize("space", SPACES)
def test_ppo_oneshot(space):
    env = make(space)
    model = PPO("MlpPolicy", env, n_steps=16, batch_size=16, n_epochs=1, seed=0, device="cpu")
    model.learn(32)
    assert model.num_timesteps >= 32


def test_a2c_sequential_under_a_vector_env():
    vec = make_vec_env(lambda: make("removal", arch="resnet20", mode="sequential"), n_envs=2, seed=0)
    model = A2C("MlpPolicy", vec, n_steps=8, seed=0, device="cpu")
    model.learn(64)
    assert model.num_timesteps >= 64


def _thunk(space, mode):
    return lambda: make(space, mode=mode)


def test_gymnasium_sync_and_async_vector_envs():
    # Async workers must be spawned: a forked child of a process that already ran torch can deadlock
    # in torch's thread pool (documented in the README).
    for vec in (gym.vector.SyncVectorEnv([_thunk("removal", "oneshot") for _ in range(2)]),
                gym.vector.AsyncVectorEnv([_thunk("removal", "oneshot") for _ in range(2)], context="spawn")):
        obs, _ = vec.reset(seed=0)
        _, rewards, terminated, _, infos = vec.step(vec.action_space.sample())
        assert obs.shape[0] == 2 and rewards.shape == (2,) and terminated.all()
        assert "valid" in infos
        vec.close()


def test_sb3_subproc_vec_env():
    vec = SubprocVecEnv([_thunk("shrinkage", "sequential") for _ in range(2)], start_method="spawn")
    vec.reset()
    for _ in range(3):
        _, rewards, _, _ = vec.step(np.array([vec.action_space.sample() for _ in range(2)]))
    assert rewards.shape == (2,)
    vec.close()


def malformed(space_shape):
    """Actions that no space accepts: wrong shapes, NaN/inf, strings, nested junk."""
    size = int(np.prod(space_shape)) if space_shape else 1
    return st.one_of(
        st.none(),
        st.text(max_size=3),
        st.lists(st.floats(allow_nan=True), min_size=size + 1, max_size=size + 3),
        st.just(np.full(space_shape or (), np.nan)),
        st.just(np.full(space_shape or (), np.inf)),
        st.just(np.zeros((size + 1,))),
        st.just(np.array([["x"]])),
    )


@pytest.mark.parametrize(("space", "mode"), [(s, m) for s in SPACES for m in _env_class(s).modes])
def test_malformed_actions_always_raise_value_error(space, mode):
    env = make(space, mode=mode).unwrapped
    env.reset(seed=0)
    shape = env.action_space.shape

    @settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
    @given(malformed(shape))
    def check(action):
        with pytest.raises(ValueError):
            env.step(action)

    check()


@pytest.mark.parametrize("space", SPACES)
def test_random_actions_never_crash_and_always_end_cleanly(space):
    env = make(space).unwrapped
    env.reset(seed=0)
    env.action_space.seed(0)
    checked = 0

    @settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.integers(0, 2**31 - 1))
    def check(seed):
        nonlocal checked
        env.action_space.seed(seed)
        action = env.action_space.sample()
        values = env._check_oneshot(action)       # every sampled action is accepted ...
        # one value per layer (the edit space: one per action entry, its edits are not per layer)
        assert len(values) == (env.action_space.shape[0] if space == "edit" else len(env.layers))
        env._make_student(values)                 # ... and turns into a student without raising
        checked += 1

    check()
    for _ in range(20):                            # and a few go through the whole step
        env.reset()
        _, reward, terminated, _, info = env.step(env.action_space.sample())
        assert terminated and isinstance(reward, float)
        assert info["valid"] or info["invalid_reason"]
    assert checked >= 1000


def test_default_device_spreads_vector_workers_over_gpus(monkeypatch):
    import multiprocessing

    import torch

    from envs.base import default_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    process = multiprocessing.current_process()
    assert default_device() == "cuda:0"                      # the main process
    devices = []
    for k in (1, 2, 3):                                       # workers 1, 2, 3 as multiprocessing numbers them
        monkeypatch.setattr(process, "_identity", (k,))
        devices.append(default_device())
    assert devices == ["cuda:0", "cuda:1", "cuda:0"]
