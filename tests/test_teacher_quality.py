"""A run never compresses a weak teacher silently, and says how long it will take.

The run header shows the teacher's test and validation accuracy and warns, saying what to do, when the teacher
is below what its recipe should reach; summary.json and a comparison's leaderboard keep the figures; a recipe
that would train for hours on this CPU is warned about before it starts; the run prints its expected duration;
``python -m netcomp train-teacher`` shows its progress off a terminal as one line per epoch.
"""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import pytest

from agents.base import Budget
from netcomp import teachers
from netcomp.data import load_dataset
from netcomp.distill import TrainConfig, estimated_cpu_seconds
from netcomp.evaluator import load_fidelity
from netcomp.teachers import (
    DEFAULT_RECIPE,
    SHIPPED_DIR,
    TeacherWarning,
    expected_test_accuracy,
    load_recipe,
    load_teacher,
    slow_training_warning,
    teacher_report,
    train_teacher,
)
from runner.compare import teacher_note
from runner.header import duration_line, teacher_line
from tests.conftest import TINY, cli

#: What every teacher warning must tell the user to do.
ADVICE = ("--teacher FILE", "--device cuda", "shipped teacher")


def _expect_from_smoke(monkeypatch: pytest.MonkeyPatch, accuracy: float) -> None:
    """Make the smoke recipe declare an expected test accuracy for ResNet-20 on synthetic data."""
    recipes = teachers.load_yaml("teachers.yaml")
    recipes["smoke"] = {**recipes["smoke"], "expected_test_accuracy": {"synthetic": {"resnet20": accuracy}}}
    real = teachers.load_yaml
    monkeypatch.setattr(teachers, "load_yaml", lambda name: recipes if name == "teachers.yaml" else real(name))


def test_a_smoke_teacher_below_its_expected_accuracy_is_warned_about_in_the_header_and_summary(
        monkeypatch, tiny_config, tmp_path, capsys):
    _expect_from_smoke(monkeypatch, 0.99)  # a smoke teacher is far below
    out = tmp_path / "run"
    assert cli("--env", "removal-resnet20-synthetic", "--agent", "random", "--budget", 3, "--config", tiny_config,
               "--out", out) == 0
    printed = capsys.readouterr().out
    header = printed[: printed.index("eval 1/3")]
    assert "teacher: resnet20 on synthetic" in header and "recipe 'smoke' should reach >= 0.9900" in header
    warning = next(line for line in header.splitlines() if line.startswith("WARNING: "))
    assert "test accuracy" in warning and "below the 0.9900" in warning
    assert all(advice in warning for advice in ADVICE)
    assert printed.count(warning) == 2  # repeated after the run's table
    teacher = json.loads((out / "summary.json").read_text())["teacher"]
    assert teacher["recipe"] == "smoke" and teacher["expected_test_accuracy"] == 0.99
    assert 0 <= teacher["test_accuracy"] < 0.99 and 0 <= teacher["val_accuracy"] <= 1
    assert teacher["warning"] == warning.removeprefix("WARNING: ")
    assert f"test accuracy {teacher['test_accuracy']:.4f}, validation {teacher['val_accuracy']:.4f}" in header


def test_the_run_prints_its_expected_duration_before_the_agent_starts(tiny_config, tmp_path, capsys):
    assert cli("--env", "removal-resnet20-synthetic", "--agent", "random", "--budget", 3, "--config", tiny_config,
               "--out", tmp_path / "run") == 0
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if line.startswith("expected duration: about"))
    assert printed.index(line) < printed.index("eval 1/3")
    assert "for 3 evaluations" in line and "per student at fidelity smoke" in line and "load" in line
    assert "WARNING" not in printed  # the smoke recipe declares no expectation: not a weak teacher, but...
    assert "declares no expected accuracy" in printed  # ...the header says its quality is not known


def test_a_shipped_good_teacher_is_not_warned_about():
    teacher = load_teacher(SHIPPED_DIR / "resnet20-fashionmnist.pt")
    report = teacher_report(teacher)
    assert report["shipped"] and report["recipe"] == "ship" and report["warning"] is None
    assert report["test_accuracy"] == 0.9361 and report["val_accuracy"] == 0.9398
    assert report["expected_test_accuracy"] == expected_test_accuracy("ship", "fashionmnist", "resnet20") == 0.93
    line = teacher_line(report)
    assert "test accuracy 0.9361, validation 0.9398" in line and "should reach >= 0.9300" in line


def test_a_teacher_without_recorded_accuracies_is_measured():
    data = load_dataset("synthetic", **TINY)
    teacher = train_teacher("lenet5", data, recipe="smoke", progress=False)
    teacher.meta = {k: v for k, v in teacher.meta.items() if k not in ("val_accuracy", "test_accuracy")}
    report = teacher_report(teacher, data)
    assert report["measured_now"] and 0 <= report["test_accuracy"] <= 1 and 0 <= report["val_accuracy"] <= 1


def test_recipe_descriptions_stay_out_of_the_training_config_and_the_default_is_the_gpu_recipe():
    name, config = load_recipe(DEFAULT_RECIPE)
    assert name == "gpu-fast" and isinstance(config, TrainConfig) and config.loss == "ce"
    assert expected_test_accuracy("gpu-fast", "cifar10", "resnet18") >= 0.94
    assert expected_test_accuracy("gpu-fast", "cifar10", "lenet5") is None
    assert expected_test_accuracy("no-such-recipe", "cifar10", "resnet18") is None
    for preset in ("rank", "fast", "reference"):
        assert load_fidelity(preset).teacher_recipe == DEFAULT_RECIPE
    assert load_fidelity("smoke").teacher_recipe == "smoke"  # tests and CI keep their seconds-long teacher
    assert load_fidelity({"train": {}}).teacher_recipe == DEFAULT_RECIPE


# ------------------------------------------------------------------------------------------ slow recipes
def _cifar_shaped() -> SimpleNamespace:
    """What the cost model reads of CIFAR-10 (sizes and shape), without the data."""
    return SimpleNamespace(name="cifar10", channels=3, image_size=32, num_classes=10, train=range(45000),
                           val=range(5000))


def test_a_recipe_of_hours_on_the_cpu_is_warned_about_with_what_to_do(monkeypatch):
    monkeypatch.setattr(teachers.torch, "get_num_threads", lambda: 2)
    warning = slow_training_warning("resnet18", _cifar_shaped(), DEFAULT_RECIPE, "cpu")
    assert warning is not None and " h at 2 threads" in warning and all(a in warning for a in ADVICE)
    assert slow_training_warning("resnet18", _cifar_shaped(), DEFAULT_RECIPE, "cuda") is None  # a GPU's minutes
    assert slow_training_warning("resnet18", _cifar_shaped(), "smoke", "cpu") is None  # 20 steps


def test_train_teacher_warns_before_a_slow_training_starts(monkeypatch):
    monkeypatch.setattr(teachers, "SLOW_TEACHER_SECONDS", 0.0)  # every training counts as slow
    real = teachers.train_model
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def train(*args, **kwargs):
            assert any(issubclass(w.category, TeacherWarning) for w in caught), "the training started unwarned"
            return real(*args, **kwargs)
        monkeypatch.setattr(teachers, "train_model", train)
        train_teacher("lenet5", load_dataset("synthetic", **TINY), recipe="smoke", progress=False)
    message = next(str(w.message) for w in caught if issubclass(w.category, TeacherWarning))
    assert "on the CPU will take about" in message and all(advice in message for advice in ADVICE)


# ------------------------------------------------------------------------------------------ the cost model
def test_the_cost_model_gives_the_measured_seconds_per_student_and_scales_with_the_work():
    resnet20_fmnist = 31_021_952  # MACs of the measured ResNet-20 on 28x28 images
    for preset, low, high in (("fast", 3.4, 4.8), ("rank", 4.5, 6.5)):  # configs/fidelity.yaml's measurements
        seconds = estimated_cpu_seconds(load_fidelity(preset).train, 55000, 5000, resnet20_fmnist)
        assert low <= seconds <= high, (preset, seconds)
    rank = load_fidelity("rank").train
    small, big = (estimated_cpu_seconds(rank, 55000, 5000, m) for m in (1e7, 1e9))
    assert 50 < big / small < 100  # the arithmetic scales with MACs; a fixed cost per batch does not
    assert estimated_cpu_seconds(rank, 55000, 5000, 1e9, threads=4) < big


def test_a_seconds_budget_is_its_own_expected_duration():
    fidelity = load_fidelity("rank")
    data = SimpleNamespace(train=range(55000))
    evaluator = SimpleNamespace(fidelity=fidelity, dataset=data, scored=range(5000), teacher_macs=31_021_952,
                                device=SimpleNamespace(type="cpu"))
    env = SimpleNamespace(evaluator=evaluator, table=None)
    line = duration_line({"run": {"threads": 2}}, env, Budget(None, 600.0))
    assert "the 600 training seconds left of the seconds budget" in line
    line = duration_line({"run": {"threads": 2}}, env, Budget(100, None, used=40))
    assert "for 60 evaluations" in line and "~5.5 s per student" in line


# ------------------------------------------------------------------------------------------ leaderboard
def _summary(folder, teacher):
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"teacher": teacher}))


def test_the_leaderboard_names_the_teacher_once_when_every_run_shares_it(tmp_path):
    teacher = {"arch": "resnet20", "dataset": "cifar10", "recipe": "gpu-fast", "path": "/t.pt",
               "test_accuracy": 0.8123, "val_accuracy": 0.8234, "warning": "the teacher's test accuracy is low"}
    spec = {"agents": ["random", "n2n"], "seeds": [0, 1]}
    for agent in spec["agents"]:
        for seed in spec["seeds"]:
            _summary(tmp_path / f"{agent}-s{seed}", teacher)
    note = teacher_note(tmp_path, spec)
    assert note.count("Teacher:") == 1 and "test accuracy 0.8123, validation accuracy 0.8234" in note
    assert "**WARNING: the teacher's test accuracy is low**" in note
    (tmp_path / "n2n-s1" / "summary.json").write_text(json.dumps({"teacher": {**teacher, "test_accuracy": 0.9}}))
    note = teacher_note(tmp_path, spec)
    assert note.count("Teacher (runs") == 2 and "(runs n2n-s1)" in note


def test_a_comparison_leaderboard_holds_the_teacher(tiny_config, tmp_path):
    out = tmp_path / "cmp"
    assert cli("--env", "removal-resnet20-synthetic", "--agent", "random,random@b", "--seeds", 1, "--budget", 2,
               "--config", tiny_config, "--out", out) == 0
    board = (out / "leaderboard.md").read_text()
    teacher = json.loads((out / "random-s0" / "summary.json").read_text())["teacher"]
    assert board.count("Teacher: resnet20 on synthetic, recipe smoke") == 1
    assert f"test accuracy {teacher['test_accuracy']:.4f}" in board
    assert board.index("Teacher:") < board.index("| agent |")


# ------------------------------------------------------------------------------------------ train-teacher
def test_train_teacher_prints_a_line_per_epoch_off_a_terminal(tmp_path, capsys):
    from netcomp.__main__ import main

    assert main(["train-teacher", "lenet5", "--dataset", "synthetic", "--recipe", "smoke", "--out",
                 str(tmp_path)]) == 0
    printed = capsys.readouterr()
    assert "training lenet5 on synthetic with recipe smoke on cpu; about" in printed.out
    epoch = next(line for line in printed.out.splitlines() if "teacher lenet5 epoch 1/1" in line)
    assert "train loss" in epoch and "ETA 0 s" in epoch
    assert "\r" not in printed.err  # no redrawn bar in a log


def test_train_teacher_draws_a_bar_with_an_eta_on_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(teachers, "on_terminal", lambda: True)
    train_teacher("lenet5", load_dataset("synthetic", **TINY), recipe="smoke", progress=True)
    printed = capsys.readouterr()
    assert "epoch 1/1" not in printed.out
    assert "train:" in printed.err and "<" in printed.err  # tqdm's "elapsed<remaining"
