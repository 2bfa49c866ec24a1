"""``--agent sb3``: any Stable-Baselines3 algorithm from an RL Zoo style YAML (examples/dqn.yml, examples/sac.yml)
runs, saves its policy, resumes a killed run exactly, and refuses what it cannot do before training."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from agents.sb3_zoo import AnySB3Config, constructor_arguments
from netcomp.jsonl import read_jsonl
from runner.recorder import read_records
from tests.conftest import TINY, cli

ROOT = Path(__file__).resolve().parent.parent
#: Small enough that learning, target updates and exploration decay all happen within a 6-episode budget.
SMALL = {"learning_starts": 4, "buffer_size": 500, "batch_size": 8, "train_freq": 2, "target_update_interval": 4}


def config_file(tmp_path: Path, example: str, **overrides) -> Path:
    """A --config with the tiny synthetic run settings and examples/<example>'s agent_config (overridden)."""
    agent = yaml.safe_load((ROOT / "examples" / example).read_text())["agent_config"]
    agent["hyperparams"] = {**agent["hyperparams"], **overrides}
    path = tmp_path / f"{example}.config.yaml"
    path.write_text(yaml.safe_dump({"run": {"fidelity": "smoke", "threads": 1, "export": False,
                                            "dataset_kwargs": dict(TINY)}, "agent_config": agent}))
    return path


def policy_algorithm(out: Path) -> str:
    return torch.load(out / "policy.pt", map_location="cpu", weights_only=True)["algorithm"]


@pytest.mark.parametrize("space,example,algorithm", [("removal", "dqn.yml", "DQN"),
                                                     ("channel-ratio", "sac.yml", "SAC")])
def test_an_example_yaml_runs_its_algorithm_in_sequential_mode(space, example, algorithm, tmp_path):
    out = tmp_path / "run"
    overrides = {k: v for k, v in SMALL.items() if algorithm == "DQN" or k != "target_update_interval"}
    assert cli("--env", f"{space}-resnet20-synthetic", "--agent", "sb3", "--mode", "sequential", "--budget", 4,
               "--config", config_file(tmp_path, example, **overrides), "--out", out) == 0
    assert [r["index"] for r in read_records(out / "evaluations.jsonl")] == [0, 1, 2, 3]
    assert all(isinstance(r["action"], list) for r in read_records(out / "evaluations.jsonl"))  # one per layer
    assert policy_algorithm(out) == algorithm
    assert yaml.safe_load((out / "config.yaml").read_text())["agent_config"]["algorithm"] == algorithm


def test_an_algorithm_that_cannot_act_on_the_space_is_refused(tmp_path, capsys):
    code = cli("--env", "channel-ratio-resnet20-synthetic", "--agent", "sb3", "--mode", "sequential", "--budget", 2,
               "--config", config_file(tmp_path, "dqn.yml"), "--out", tmp_path / "run")
    assert code == 2 and "DQN cannot act on the channel-ratio space" in capsys.readouterr().err


@pytest.mark.parametrize("agent_config,message", [
    ({"algorithm": "TQC"}, "unknown SB3 algorithm 'TQC'"),
    ({"hyperparams": {"policy_kwargs": "dict(net_arch=[64])"}}, "policy_kwargs must be a mapping"),
    ({"hyperparams": {"n_envs": 8}}, "configure the env or the training loop"),
    ({"hyperparams": {"noise_type": "ornstein-uhlenbeck"}}, "only 'normal'"),
])
def test_bad_settings_are_refused_before_anything_trains(agent_config, message, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"run": {"fidelity": "smoke", "dataset_kwargs": dict(TINY)},
                                    "agent_config": agent_config}))
    out = tmp_path / "run"
    assert cli("--env", "removal-resnet20-synthetic", "--agent", "sb3", "--budget", 2, "--config", path,
               "--out", out) == 2
    assert message in capsys.readouterr().err
    assert not read_records(out / "evaluations.jsonl")


def test_rl_zoo_values_are_read_as_data():
    args = constructor_arguments({"policy": "MlpPolicy", "n_timesteps": 1e5, "learning_rate": "lin_1e-3",
                                  "tau": "5e-3", "train_freq": [1, "episode"],
                                  "policy_kwargs": {"net_arch": [8], "activation_fn": "tanh"}}, None)
    assert set(args) == {"learning_rate", "tau", "train_freq", "policy_kwargs"}   # policy, n_timesteps: not kwargs
    assert args["tau"] == 0.005 and args["train_freq"] == (1, "episode")
    assert args["learning_rate"](1.0) == pytest.approx(1e-3) and args["learning_rate"](0.25) == pytest.approx(2.5e-4)
    assert args["policy_kwargs"]["activation_fn"] is torch.nn.Tanh
    assert AnySB3Config("SAC", {"policy": "MlpPolicy"}).policy == "MlpPolicy"


def _command(out: Path, config: Path) -> list[str]:
    return [sys.executable, str(ROOT / "run_agent.py"), "--env", "removal-resnet20-synthetic", "--agent", "sb3",
            "--mode", "sequential", "--budget", "6", "--seed", "3", "--config", str(config), "--out", str(out)]


def test_a_killed_dqn_run_resumes_to_exactly_the_uninterrupted_record(tmp_path):
    config = config_file(tmp_path, "dqn.yml", **SMALL)
    reference = tmp_path / "reference"
    subprocess.run(_command(reference, config), check=True, cwd=ROOT, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen(_command(out, config), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(read_jsonl(out / "evaluations.jsonl", repair=False)) < 3 and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert 3 <= len(read_records(out / "evaluations.jsonl")) < 6, "the run must be killed in the middle"
    done = subprocess.run([sys.executable, str(ROOT / "run_agent.py"), "--resume", str(out)], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    keys = ("index", "action", "arch_key", "reward")
    assert [{k: r[k] for k in keys} for r in read_records(out / "evaluations.jsonl")] == \
        [{k: r[k] for k in keys} for r in read_records(reference / "evaluations.jsonl")]
