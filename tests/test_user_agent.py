"""A user's own agent: the README's example runs exactly as printed, by file path; bad references are errors."""

import json
import re
from pathlib import Path

import pytest

from agents.random_search import RandomAgent
from runner.recorder import read_records
from runner.registry import get_agent
from tests.conftest import cli

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_agent() -> str:
    """The python block of the README's "Benchmark your agent" section."""
    section = README.read_text().split("## Benchmark your agent", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_agent_runs_from_its_file_and_resumes_finished(tiny_config, tmp_path):
    path = tmp_path / "my_agent.py"
    path.write_text(readme_agent())
    out = tmp_path / "run"
    ref = f"{path}:EvolutionAgent"
    assert cli("--env", "removal-resnet20-synthetic", "--agent", ref, "--budget", 6, "--config", tiny_config,
               "--out", out) == 0
    records = read_records(out / "evaluations.jsonl")
    assert [r["index"] for r in records] == list(range(6))
    # children of the teacher (all ones) differ from it in the flipped bits only
    assert all(sum(1 - b for b in r["action"]) >= 1 for r in records[:4])
    assert (out / "summary.json").exists()
    assert cli("--resume", out) == 2                 # a run directory never chooses code: --agent is asked for
    assert cli("--resume", out, "--agent", ref) == 0                # finished: nothing to do, no error


def test_an_agent_by_module_path_and_bad_references(tmp_path):
    assert get_agent("agents.random_search:RandomAgent") is RandomAgent
    with pytest.raises(ValueError, match="does not exist"):
        get_agent(str(tmp_path / "missing.py") + ":X")
    (tmp_path / "not_agent.py").write_text("class X:\n    pass\n")
    with pytest.raises(ValueError, match="not an agents.base.Agent"):
        get_agent(f"{tmp_path / 'not_agent.py'}:X")
    with pytest.raises(ValueError, match="cannot import"):
        get_agent("no_such_package.mod:X")
    with pytest.raises(ValueError, match="unknown agent"):
        get_agent("nope")


def readme_blocks(language: str) -> list[str]:
    """The README's code blocks of ``language`` in the "Benchmark your agent" section, in order."""
    section = README.read_text().split("## Benchmark your agent", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def test_the_readme_policy_agent_is_the_example_file_and_learns_from_sequential_episodes(tiny_config, tmp_path):
    import numpy as np
    import torch
    import yaml

    example = README.parent / "examples" / "reinforce_agent.py"
    assert readme_blocks("python")[1] == example.read_text()      # the README shows exactly the file
    readme_yaml = [yaml.safe_load(b) for b in readme_blocks("yaml")]
    assert yaml.safe_load((README.parent / "examples" / "sac.yml").read_text()) in readme_yaml
    out = tmp_path / "run"
    ref = f"{example}:ReinforceAgent"
    assert cli("--env", "removal-resnet20-synthetic", "--agent", ref, "--budget", 4, "--config", tiny_config,
               "--out", out) == 0
    records = read_records(out / "evaluations.jsonl")
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    assert len({len(r["action"]) for r in records}) == 1 and len(records[0]["action"]) > 1  # one action per layer
    state = torch.load(out / "checkpoint.pt", weights_only=True)["agent"]
    rewards = [r["reward"] for r in records]
    assert (np.abs(np.array(state["weights"])).sum() > 0) == (len(set(rewards)) > 1)  # it learned from returns
    assert state["baseline"] is not None
    assert cli("--resume", out, "--agent", ref) == 0               # finished: nothing to do, no error


def test_a_user_policy_agent_transfers_to_a_deeper_teacher_and_a_mismatch_is_refused(tiny_config, tmp_path,
                                                                                      capsys):
    import numpy as np
    import torch

    ref = f"{README.parent / 'examples' / 'reinforce_agent.py'}:ReinforceAgent"
    small = tmp_path / "r20"
    assert cli("--env", "removal-resnet20-synthetic", "--agent", ref, "--budget", 4, "--config", tiny_config,
               "--out", small) == 0
    saved = torch.load(small / "policy.pt", weights_only=True)
    assert saved["meta"]["provenance"]["teacher"] == "resnet20" and saved["meta"]["provenance"]["episodes"] == 4
    learned = np.array(torch.load(small / "checkpoint.pt", weights_only=True)["agent"]["weights"])
    assert np.array_equal(np.array(saved["weights"]), learned)          # the policy file holds what it learned
    capsys.readouterr()
    big = tmp_path / "r32"
    assert cli("--env", "removal-resnet32-synthetic", "--agent", ref, "--budget", 1, "--config", tiny_config,
               "--load-policy", small / "policy.pt", "--out", big) == 0
    assert "trained by reinforce on resnet20 / synthetic, space removal (sequential)" in capsys.readouterr().out
    notes = json.loads((big / "summary.json").read_text())["notes"]
    assert notes["transferred_from"] == str(small / "policy.pt")
    started = np.array(torch.load(big / "checkpoint.pt", weights_only=True)["agent"]["weights"])
    # its first episode's update is zero (the baseline starts at that return): it still holds what it loaded
    assert np.abs(learned).sum() > 0 and np.array_equal(started, learned)
    shrink = cli("--env", "shrinkage-resnet32-synthetic", "--agent", ref, "--budget", 1, "--config", tiny_config,
                 "--load-policy", small / "policy.pt", "--out", tmp_path / "x")
    assert shrink == 2 and "trained on space 'removal'" in capsys.readouterr().err
    not_policy = cli("--env", "removal-resnet32-synthetic", "--agent", ref, "--budget", 1, "--config", tiny_config,
                     "--load-policy", small / "checkpoint.pt", "--out", tmp_path / "y")
    assert not_policy == 2 and "is not a policy file of agent 'reinforce': format None" in capsys.readouterr().err
    ppo = tmp_path / "ppo"        # another agent's policy of the same space and mode (and format number)
    assert cli("--env", "removal-resnet20-synthetic", "--agent", "ppo", "--budget", 1, "--config", tiny_config,
               "--out", ppo) == 0
    capsys.readouterr()
    other = cli("--env", "removal-resnet32-synthetic", "--agent", ref, "--budget", 1, "--config", tiny_config,
                "--load-policy", ppo / "policy.pt", "--out", tmp_path / "z")
    assert other == 2 and "was trained by agent 'ppo'" in capsys.readouterr().err
