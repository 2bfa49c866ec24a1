"""A hostile user's probe: a run directory never runs code, results cannot be silently wrong, and every bad
input gets exit code 2 and one line.

The code-execution tests plant a payload that writes a marker file when imported or unpickled, and assert the
marker never appears.
"""

import base64
import errno
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from agents.base import BudgetExhausted
from agents.random_search import RandomAgent
from runner.recorder import read_records
from tests.conftest import TINY, cli

ROOT = Path(__file__).resolve().parent.parent
ENV = "removal-resnet20-synthetic"


def _payload(folder: Path, marker: Path) -> str:
    """Python source that writes ``marker`` when it runs."""
    return f"open({str(marker)!r}, 'w').write('ran')\n"


def _run(tmp_path, tiny_config, name="run", agent="random", budget=2, *extra) -> Path:
    out = tmp_path / name
    assert cli("--env", ENV, "--agent", agent, "--budget", budget, "--config", tiny_config, "--out", out,
               *extra) == 0
    return out


def _unfinish(out: Path) -> None:
    """As if the run was killed before it wrote its final files."""
    for name in ("summary.json", "best_student.pt", "checkpoint.pt"):
        (out / name).unlink(missing_ok=True)


def _edit_config(out: Path, **run_or_top) -> None:
    config = yaml.safe_load((out / "config.yaml").read_text())
    for key, value in run_or_top.items():
        if key in config["run"]:
            config["run"][key] = value
        else:
            config[key] = value
    (out / "config.yaml").write_text(yaml.safe_dump(config))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ---------------------------------------------------------------------------- 1. a run directory is data
@pytest.mark.parametrize("form", ["file", "module"])
def test_a_resume_never_imports_an_agent_named_in_config_yaml(form, tiny_config, tmp_path, monkeypatch, capsys):
    out = _run(tmp_path, tiny_config)
    marker = tmp_path / "marker"
    (tmp_path / "evil_agent.py").write_text(_payload(tmp_path, marker))
    monkeypatch.syspath_prepend(str(tmp_path))
    _unfinish(out)
    _edit_config(out, agent=f"{tmp_path / 'evil_agent.py'}:Evil" if form == "file" else "evil_agent:Evil")
    assert cli("--resume", out) == 2
    assert "resume it with --agent" in _one_error_line(capsys)
    assert not marker.exists()


def test_a_resume_of_a_user_agent_asks_for_it_again_and_checks_its_file(tiny_config, tmp_path, capsys):
    source = (ROOT / "agents" / "random_search.py").read_text().replace("from agents.base import Agent",
                                                                         "from agents.base import Agent  # mine")
    mine = tmp_path / "mine.py"
    mine.write_text(source)
    ref = f"{mine}:RandomAgent"
    out = _run(tmp_path, tiny_config, "user", ref, 2)
    assert yaml.safe_load((out / "config.yaml").read_text())["agent_source"]["sha256"]
    _unfinish(out)
    assert cli("--resume", out) == 2 and "--agent" in _one_error_line(capsys)
    mine.write_text(source + "\n# changed\n")
    assert cli("--resume", out, "--agent", ref) == 2 and "changed" in _one_error_line(capsys)
    mine.write_text(source)
    assert cli("--resume", out, "--agent", ref) == 0


class _Boom:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_a_resume_never_unpickles_because_config_yaml_says_trust_pickle(tiny_config, tmp_path, capsys):
    marker = tmp_path / "marker"
    evil = tmp_path / "policy.zip"
    blob = base64.b64encode(pickle.dumps(_Boom(str(marker)))).decode()
    with zipfile.ZipFile(evil, "w") as z:  # an SB3-shaped zip whose data unpickles the payload
        z.writestr("data", json.dumps({"policy_class": {":type:": "x", ":serialized:": blob}}))
    out = _run(tmp_path, tiny_config, "ppo", "ppo", 2)
    _unfinish(out)
    _edit_config(out, trust_pickle=True, load_policy=str(evil))
    code = cli("--resume", out)
    assert not marker.exists()
    assert code == 2 and "trust" in capsys.readouterr().err.lower()


def test_validate_refuses_a_recorded_env_id_that_names_a_module(tiny_config, tmp_path, monkeypatch, capsys):
    out = _run(tmp_path, tiny_config)
    marker = tmp_path / "marker"
    (tmp_path / "evil_env.py").write_text(_payload(tmp_path, marker))
    monkeypatch.syspath_prepend(str(tmp_path))
    records = read_records(out / "evaluations.jsonl")
    for r in records:
        r["replay"]["env_id"] = "evil_env:Evil-v0"
    (out / "evaluations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert cli("--validate", out) == 2
    assert "registered ids" in _one_error_line(capsys)
    assert not marker.exists()


def test_a_comparison_resume_never_imports_a_file_named_in_compare_yaml(tiny_config, tmp_path, capsys):
    marker = tmp_path / "marker"
    (tmp_path / "evil.py").write_text(_payload(tmp_path, marker))
    out = tmp_path / "cmp"
    out.mkdir()
    spec = {"env": ENV, "agents": ["random", f"{tmp_path / 'evil.py'}:Evil"], "seeds": [0], "preset": None,
            "run": {"budget": 2, "budget_seconds": None, "fidelity": "smoke", "dataset_kwargs": dict(TINY)}}
    (out / "compare.yaml").write_text(yaml.safe_dump(spec))
    assert cli("--resume", out) == 2
    assert "--agent" in _one_error_line(capsys)
    assert not marker.exists()


def test_a_resume_takes_no_ray_address_or_workers_from_config_yaml(tiny_config, tmp_path, monkeypatch):
    import netcomp.workers

    def refuse(*args, **kwargs):
        raise AssertionError("a resume started Ray workers because config.yaml said so")

    out = _run(tmp_path, tiny_config)
    assert yaml.safe_load((out / "config.yaml").read_text())["run"]["ray_address"] is None
    _unfinish(out)
    _edit_config(out, workers=2, ray_address="192.0.2.1:6379")
    monkeypatch.setattr(netcomp.workers, "WorkerPool", refuse)
    assert cli("--resume", out) == 0


def test_a_config_file_cannot_grant_trust_or_name_an_address_or_code(tmp_path, capsys):
    for run, top in (({"trust_pickle": True}, {}), ({"ray_address": "192.0.2.1:1"}, {}),
                     ({}, {"agent": "x.py:Agent"})):
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"run": run, **top}))
        assert cli("--env", ENV, "--agent", "random", "--config", path, "--out", tmp_path / "x") == 2
        _one_error_line(capsys)
        assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------- 2. nothing silently wrong
def _comparison(tmp_path, tiny_config, budget=2):
    out = tmp_path / "cmp"
    assert cli("--env", ENV, "--agent", "random", "--seeds", 2, "--budget", budget, "--config", tiny_config,
               "--out", out) == 0
    return out


def test_an_edited_compare_yaml_is_refused_instead_of_a_mixed_leaderboard(tiny_config, tmp_path, capsys):
    out = _comparison(tmp_path, tiny_config)
    spec = yaml.safe_load((out / "compare.yaml").read_text())
    (out / "compare.yaml").write_text(yaml.safe_dump({**spec, "run": {**spec["run"], "budget": 3}}))
    assert cli("--resume", out) == 2
    assert "mixes runs" in _one_error_line(capsys) and "budget" in capsys.readouterr().err + "budget"
    (out / "compare.yaml").write_text(yaml.safe_dump({**spec, "seeds": [0, 0]}))
    assert cli("--resume", out) == 2 and "distinct" in _one_error_line(capsys)
    (out / "compare.yaml").write_text("env: [unclosed\n")
    assert cli("--resume", out) == 2 and "YAML" in _one_error_line(capsys)
    (out / "compare.yaml").write_text(yaml.safe_dump({**spec, "agents": "random"}))
    assert cli("--resume", out) == 2 and "agents" in _one_error_line(capsys)


def test_validate_compares_every_figure_not_only_the_reward(tiny_config, tmp_path, capsys):
    out = _run(tmp_path, tiny_config)
    assert cli("--validate", out, "--top", 1) == 0
    records = read_records(out / "evaluations.jsonl")
    best = max(records, key=lambda r: r["reward"])
    best["params"] += 1
    best["accuracy"] = best["accuracy"] + 0.01
    (out / "evaluations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    capsys.readouterr()
    assert cli("--validate", out, "--top", 1) == 1
    printed = capsys.readouterr().out
    assert "params" in printed and "accuracy" in printed and " NO" in printed


def test_a_teacher_is_identified_by_its_weights_not_its_file_bytes(tmp_path):
    from netcomp.surgery import build_module
    from netcomp.teachers import Teacher, teacher_identity
    from netcomp.zoo import build_arch

    arch = build_arch("lenet5", in_channels=1, image_size=28, num_classes=10)
    torch.manual_seed(0)
    model = build_module(arch)
    (tmp_path / "a.pt").write_bytes(b"saved on monday")
    (tmp_path / "b.pt").write_bytes(b"saved on tuesday, with other training seconds")
    a = Teacher(arch, model, {"arch": "lenet5", "train_seconds": 1.0}, tmp_path / "a.pt")
    b = Teacher(arch, model, {"arch": "lenet5", "train_seconds": 2.0}, tmp_path / "b.pt")
    assert teacher_identity(a)["sha256"] == teacher_identity(b)["sha256"]
    other = build_module(arch)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    assert teacher_identity(Teacher(arch, other, {}, None))["sha256"] != teacher_identity(a)["sha256"]


class Sneaky(RandomAgent):
    """Trains students through the env's own evaluate_many, behind the recorder's back."""

    def run(self) -> None:
        sample = self.env.unwrapped.sample_action
        self.env.unwrapped.evaluate_many([sample() for _ in range(3)])  # unrecorded trainings
        while not self.budget.exhausted:
            self.evaluate(sample())


class Greedy(RandomAgent):
    """Asks for more than it has and catches the refusal, then raises its own budget."""

    def run(self) -> None:
        sample = self.env.unwrapped.sample_action
        try:  # refused before anything trained: the record stays consistent
            self.evaluate_many([sample() for _ in range(self.budget.left + 1)])
        except BudgetExhausted:
            self.notes["refused"] = True
        self.evaluate(sample())
        self.budget.evaluations += 1  # an edited budget
        while not self.budget.exhausted:
            self.evaluate(sample())


def _agent_file(tmp_path: Path, cls: type) -> str:
    import inspect

    path = tmp_path / f"{cls.__name__.lower()}.py"
    path.write_text("from agents.base import BudgetExhausted\nfrom agents.random_search import RandomAgent\n\n\n"
                    + inspect.getsource(cls))
    return f"{path}:{cls.__name__}"


def test_training_outside_the_recorder_or_an_edited_budget_marks_the_run_not_comparable(tiny_config, tmp_path,
                                                                                       capsys):
    for cls, why in ((Sneaky, "outside the recorder"), (Greedy, "budget was changed")):
        out = tmp_path / cls.__name__
        assert cli("--env", ENV, "--agent", _agent_file(tmp_path, cls), "--budget", 2, "--config", tiny_config,
                   "--out", out) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["comparable"] is False and any(why in p for p in summary["not_comparable"])
        records = read_records(out / "evaluations.jsonl")
        assert [r["index"] for r in records] == list(range(len(records)))
    honest = _run(tmp_path, tiny_config, "honest")
    assert json.loads((honest / "summary.json").read_text())["comparable"] is True


def test_a_missing_or_broken_manifest_stops_a_shipped_teacher_with_the_reason(tmp_path):
    from netcomp.data import load_dataset
    from netcomp.errors import UserError
    from netcomp.teachers import MANIFEST, shipped_teacher

    data = load_dataset("synthetic", **TINY)
    (tmp_path / "lenet5-synthetic.pt").write_bytes(b"weights")
    with pytest.raises(UserError, match="no entry"):
        shipped_teacher("lenet5", data, folder=tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(UserError, match=str(tmp_path / MANIFEST)):
        shipped_teacher("lenet5", data, folder=tmp_path)


def test_a_seconds_budget_below_what_the_run_spent_is_refused_on_resume(tiny_config, tmp_path, capsys):
    out = _run(tmp_path, tiny_config, budget=3)
    spent = sum(r["eval_seconds"] for r in read_records(out / "evaluations.jsonl") if not r["cached"])
    assert cli("--resume", out, "--budget-seconds", spent / 2) == 2
    assert "already spent" in _one_error_line(capsys)
    assert cli("--resume", out, "--budget", 2) == 2 and "can only grow" in _one_error_line(capsys)


def test_the_thread_count_is_recorded_and_a_resume_trains_with_it(tiny_config, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "run_agent.py"), "--env", ENV, "--agent", "random", "--budget", "2",
           "--config", tiny_config, "--threads", "2", "--out", str(out)]
    config = yaml.safe_load(Path(tiny_config).read_text())
    config["run"].pop("threads")
    Path(tiny_config).write_text(yaml.safe_dump(config))
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True).returncode == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["run"]["threads"] == 2
    _unfinish(out)
    (out / "evaluations.jsonl").write_text((out / "evaluations.jsonl").read_text().splitlines(True)[0])
    one = {**os.environ, "OMP_NUM_THREADS": "1"}  # a machine whose default differs
    done = subprocess.run([sys.executable, str(ROOT / "run_agent.py"), "--resume", str(out), "--budget", "3"],
                          cwd=ROOT, capture_output=True, text=True, env=one)
    assert done.returncode == 0, done.stderr
    assert [r["replay"]["threads"] for r in read_records(out / "evaluations.jsonl")] == [2, 2, 2]


# ---------------------------------------------------------------------------- 3. one line for every bad input
@pytest.mark.parametrize("argv, words", [
    (["--seed", "-1"], "--seed"),
    (["--agent", ","], "names no agent"),
    (["--tolerance", "nan", "--validate", "x"], "--tolerance"),
    (["--budget", "0"], "--budget"),
])
def test_bad_flags_get_one_line(argv, words, tmp_path, capsys):
    base = {"--env": ENV, "--agent": "random", "--out": str(tmp_path / "x")}
    for i in range(0, len(argv), 2):
        base[argv[i]] = argv[i + 1]
    if "--validate" in base:
        base = {"--validate": base["--validate"], "--tolerance": base["--tolerance"]}
    assert cli(*[x for kv in base.items() for x in kv]) == 2
    assert words in _one_error_line(capsys)


@pytest.mark.parametrize("run, words", [
    ({"budget": True}, "budget"), ({"budget": 2.5}, "budget"), ({"teacher": 5}, "teacher"),
    ({"save_best": "no"}, "save_best"), ({"env_kwargs": "x"}, "env_kwargs"), ({"seed": -2}, "seed"),
])
def test_wrong_config_types_get_one_line(run, words, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"run": run}))
    assert cli("--env", ENV, "--agent", "random", "--config", path, "--out", tmp_path / "x") == 2
    assert words in _one_error_line(capsys)
    path.write_text(yaml.safe_dump({"agent_config": [1, 2]}))
    assert cli("--env", ENV, "--agent", "random", "--config", path, "--out", tmp_path / "x") == 2
    assert "agent_config" in _one_error_line(capsys)


def test_paths_of_the_wrong_kind_get_one_line(tiny_config, tmp_path, capsys):
    assert cli("--env", ENV, "--agent", "random", "--config", tmp_path, "--out", tmp_path / "x") == 2
    assert "folder" in _one_error_line(capsys)
    afile = tmp_path / "afile"
    afile.write_text("")
    assert cli("--env", ENV, "--agent", "random", "--config", tiny_config, "--out", afile) == 2
    assert "is a file" in _one_error_line(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a GPU")
def test_cuda_without_a_gpu_gets_one_line(tiny_config, tmp_path, capsys):
    assert cli("--env", ENV, "--agent", "random", "--config", tiny_config, "--device", "cuda",
               "--out", tmp_path / "x") == 2
    assert "no CUDA" in _one_error_line(capsys)


def test_run_directory_damage_gets_one_line_that_says_what_to_do(tiny_config, tmp_path, capsys):
    out = _run(tmp_path, tiny_config, budget=3)
    _unfinish(out)
    (out / "checkpoint.pt").write_bytes(b"")
    assert cli("--resume", out) == 2 and "move it aside" in _one_error_line(capsys)
    (out / "checkpoint.pt").unlink()
    lines = (out / "evaluations.jsonl").read_text().splitlines(True)
    (out / "evaluations.jsonl").write_text(lines[0] + "{torn\n" + lines[2])
    assert cli("--resume", out) == 2
    assert "line 2" in (line := _one_error_line(capsys)) and "move that line" in line
    (out / "evaluations.jsonl").write_text(lines[0])  # the advice: move the damaged line and after aside
    assert cli("--resume", out) == 0
    assert [r["index"] for r in read_records(out / "evaluations.jsonl")] == [0, 1, 2]


def test_resume_and_comparison_flag_mistakes_get_one_line(tiny_config, tmp_path, capsys):
    out = _run(tmp_path, tiny_config)
    assert cli("--resume", out, "--seeds", 2) == 2 and "--seeds" in _one_error_line(capsys)
    assert cli("--validate", out, "--budget", 3) == 2 and "--budget" in _one_error_line(capsys)
    cmp = _comparison(tmp_path, tiny_config)
    assert cli("--resume", cmp, "--mode", "oneshot") == 2 and "--mode" in _one_error_line(capsys)


def test_a_full_disk_names_the_file_and_the_free_space(tiny_config, tmp_path, monkeypatch, capsys):
    import runner.recorder

    def full(path, row):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runner.recorder, "append_jsonl", full)
    assert cli("--env", ENV, "--agent", "random", "--budget", 2, "--config", tiny_config,
               "--out", tmp_path / "x") == 2
    line = _one_error_line(capsys)
    assert "disk is full" in line and "evaluations.jsonl" in line and "MiB free" in line


def test_an_agent_asking_beyond_its_budget_ends_the_run_with_its_summary(tiny_config, tmp_path, capsys):
    path = tmp_path / "over.py"
    path.write_text("from agents.random_search import RandomAgent\n\n\nclass Over(RandomAgent):\n"
                    "    def run(self):\n        self.evaluate(self.env.unwrapped.sample_action())\n"
                    "        self.evaluate_many([self.env.unwrapped.sample_action()] * 5)\n")
    out = tmp_path / "over"
    assert cli("--env", ENV, "--agent", f"{path}:Over", "--budget", 3, "--config", tiny_config, "--out", out) == 2
    assert "more than its budget" in _one_error_line(capsys)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluations"] == 1 and "more than its budget" in summary["overspent"]


def test_a_bad_submission_is_an_invalid_student_with_its_reason(tiny):
    import gymnasium as gym

    import envs  # noqa: F401
    from agents.base import Budget
    from netcomp.zoo import build_arch
    from runner.recorder import Recorder

    env = Recorder(gym.make("netcomp/channel-ratio-resnet20-synthetic-v0", **tiny), Budget(4))
    env.reset(seed=0)
    teacher = env.unwrapped.evaluator.teacher.arch
    wrong_classes = build_arch("resnet20", in_channels=teacher.in_channels, image_size=teacher.image_size,
                               num_classes=teacher.num_classes + 1)
    wrong_channels = build_arch("resnet20", in_channels=teacher.in_channels + 2, image_size=teacher.image_size,
                                num_classes=teacher.num_classes)
    infos = [env.submit(wrong_classes), env.submit(wrong_channels), env.submit("not a student"),
             env.submit(teacher, weights={"x": 1})]
    reasons = [info.get("invalid_reason") or "" for info in infos]
    assert [info["valid"] for info in infos] == [False] * 4
    assert "num_classes" in reasons[0] and "in_channels" in reasons[1] and "not a student" in reasons[2]
    assert "state dict" in reasons[3]
    assert [r["valid"] for r in env.records] == [False] * 4 and all(r["invalid_reason"] for r in env.records)
    assert max(info["reward"] for info in infos) == env.unwrapped.penalty


def test_stale_temporary_files_of_a_killed_write_are_removed_on_the_next_start(tiny_config, tmp_path):
    out = _run(tmp_path, tiny_config)
    _unfinish(out)
    stale = out / ".summary.json.abc123.tmp"
    stale.write_text("half")
    assert cli("--resume", out) == 0
    assert not stale.exists()


def test_an_overspending_agent_in_a_comparison_is_marked_and_the_others_still_run(tiny_config, tmp_path, capsys):
    path = tmp_path / "over.py"
    path.write_text("from agents.random_search import RandomAgent\n\n\nclass Over(RandomAgent):\n"
                    "    def run(self):\n        self.evaluate(self.env.unwrapped.sample_action())\n"
                    "        self.evaluate_many([self.env.unwrapped.sample_action()] * 9)\n")
    out = tmp_path / "cmp"
    assert cli("--env", ENV, "--agent", f"{path}:Over,random", "--seeds", 1, "--budget", 2, "--config", tiny_config,
               "--out", out) == 0
    board = (out / "leaderboard.md").read_text()
    assert "Over (NOT COMPARABLE" in board and "| random |" in board
    assert json.loads((out / "Over-s0" / "summary.json").read_text())["overspent"]


def test_a_data_root_or_env_kwargs_in_config_yaml_never_reach_the_data_loader(tiny_config, tmp_path, monkeypatch,
                                                                               capsys):
    """A shared config.yaml naming a data folder (whose files a loader would unpickle) is not used on resume."""
    import netcomp.data

    seen = []
    real = netcomp.data.load_dataset

    def spy(name, root=None, *args, **kwargs):
        seen.append(root)
        return real(name, root, *args, **kwargs)

    out = _run(tmp_path, tiny_config)
    _unfinish(out)
    _edit_config(out, data_root=str(tmp_path / "evil-data"), download=True)
    monkeypatch.setattr(netcomp.data, "load_dataset", spy)
    import envs.base

    monkeypatch.setattr(envs.base, "load_dataset", spy, raising=False)
    assert cli("--resume", out) == 0
    assert str(tmp_path / "evil-data") not in [str(r) for r in seen]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["run"]["data_root"] is None and config["run"]["download"] is False
    _unfinish(out)
    _edit_config(out, env_kwargs={"data_root": str(tmp_path / "evil-data")})
    assert cli("--resume", out) == 2 and "set by the run itself" in _one_error_line(capsys)


def test_a_bug_in_an_agent_keeps_its_traceback_instead_of_one_line(tiny_config, tmp_path):
    """Only the user's input becomes one line and exit 2; a ValueError raised while the agent runs is a bug."""
    path = tmp_path / "buggy.py"
    path.write_text("from agents.random_search import RandomAgent\n\n\nclass Buggy(RandomAgent):\n"
                    "    def run(self):\n        raise ValueError('an index went wrong')\n")
    with pytest.raises(ValueError, match="an index went wrong"):
        cli("--env", ENV, "--agent", f"{path}:Buggy", "--budget", 2, "--config", tiny_config, "--out", tmp_path / "b")
    path.write_text("from dataclasses import dataclass\n\nfrom agents.random_search import RandomAgent\n\n\n"
                    "@dataclass\nclass C:\n    k: int = 1\n\n    def __post_init__(self):\n"
                    "        raise ValueError(f'k must be 2, got {self.k}')\n\n\n"
                    "class BadConfig(RandomAgent):\n    Config = C\n")
    assert cli("--env", ENV, "--agent", f"{path}:BadConfig", "--budget", 2, "--config", tiny_config,
               "--out", tmp_path / "c") == 2


def test_without_a_terminal_each_evaluation_and_final_training_prints_a_line_and_no_lock_is_left(tiny_config,
                                                                                                tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, str(ROOT / "run_agent.py"), "--env", ENV, "--agent", "random",
                           "--budget", "3", "--config", tiny_config, "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True)  # stdout and stderr are pipes, not a terminal
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.strip().startswith("eval ")]
    assert [line.split(":")[0].strip() for line in lines] == ["eval 1/3", "eval 2/3", "eval 3/3"]
    assert all("best" in line and "elapsed" in line for line in lines) and "ETA" in lines[0]
    assert "final training of evaluation" in done.stdout and "final training done" in done.stdout
    assert not (out / "lock").exists()


@pytest.mark.parametrize("flag, typo, right", [("--env", "removal-resnet20-synthetc", "removal-resnet20-synthetic"),
                                               ("--agent", "radnom", "random"), ("--fidelity", "rnak", "rank")])
def test_a_typo_in_a_name_gets_did_you_mean(flag, typo, right, tiny_config, tmp_path, capsys):
    argv = {"--env": ENV, "--agent": "random", "--config": tiny_config, "--out": str(tmp_path / "x"), flag: typo}
    assert cli(*[x for kv in argv.items() for x in kv]) == 2
    assert f"did you mean {right!r}?" in _one_error_line(capsys)
    assert not (tmp_path / "x").exists()


def test_validate_on_a_comparison_folder_validates_each_run(tiny_config, tmp_path, capsys):
    out = _comparison(tmp_path, tiny_config)
    capsys.readouterr()
    assert cli("--validate", out, "--top", 1) == 0
    printed = capsys.readouterr().out
    assert printed.count("validating ") == 2 and "2/2 runs of" in printed
    records = read_records(out / "random-s1" / "evaluations.jsonl")
    best = max(records, key=lambda r: r["reward"])
    best["macs"] += 1
    (out / "random-s1" / "evaluations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert cli("--validate", out, "--top", 1) == 1 and "1/2 runs of" in capsys.readouterr().out


def test_netcomp_home_moves_downloaded_data_too(monkeypatch, tmp_path):
    from netcomp.data import data_root

    monkeypatch.delenv("NETCOMP_DATA", raising=False)
    monkeypatch.setenv("NETCOMP_HOME", str(tmp_path / "home"))
    assert data_root() == str(tmp_path / "home" / "data")
    monkeypatch.setenv("NETCOMP_DATA", str(tmp_path / "data"))
    assert data_root() == str(tmp_path / "data")


def test_trust_on_a_resume_covers_only_a_policy_file_the_command_line_names(tiny_config, tmp_path, capsys):
    out = _run(tmp_path, tiny_config, "ppo", "ppo", 2)
    _unfinish(out)
    _edit_config(out, load_policy=str(tmp_path / "someone-elses.zip"))
    assert cli("--resume", out, "--trust-pickle") == 2
    assert "--load-policy" in _one_error_line(capsys)
