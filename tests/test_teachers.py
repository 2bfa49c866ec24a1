"""Tests of netcomp.teachers: training, saving, loading and caching teachers.

What must hold for the rest of the project to trust a teacher: it actually learns (on generated data and on
a subset of real Fashion-MNIST), its file keeps the weights and honest metadata and loads with
``torch.load(weights_only=True)``, the cache trains once and then only loads, ``$NETCOMP_HOME`` moves the
cache, and bad recipes are refused before any training starts. Everything runs on the CPU; the default
(non-expensive) tests take well under two minutes on two cores.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from netcomp import teachers
from netcomp.data import FASHION_MNIST_SYSTEM_DIR, Dataset, DeviceLoader, load_dataset
from netcomp.distill import TrainConfig, evaluate
from netcomp.metrics import count_macs, count_params
from netcomp.surgery import build_module
from netcomp.teachers import (
    Teacher,
    arch_for,
    get_teacher,
    load_recipe,
    load_teacher,
    load_yaml,
    netcomp_home,
    save_teacher,
    teacher_path,
    train_teacher,
)

#: A short Adam recipe that takes LeNet-5 on 16x16 synthetic images well above chance in a few seconds.
SYNTHETIC_RECIPE: dict[str, Any] = {
    "loss": "ce", "epochs": 5, "batch_size": 64, "optimizer": "adam", "lr": 3e-3, "weight_decay": 0.0,
    "eval_every_epoch": False,
}

needs_fashion_mnist = pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST_SYSTEM_DIR),
    reason=f"{FASHION_MNIST_SYSTEM_DIR} missing (apt-get install dataset-fashion-mnist)",
)


# ---------------------------------------------------------------------------------------------- helpers
def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of a model's state dict (so later training cannot change it)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two state dicts have the same keys and bit-identical tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def val_logits(model: nn.Module, ds: Dataset) -> torch.Tensor:
    """Eval-mode logits on the whole validation split, normalised exactly as training normalises it."""
    loader = DeviceLoader(ds.val, 512, ds.mean, ds.std)
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x) for x, _ in loader])


def forbid_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any teacher training in netcomp.teachers fail loudly (to prove a code path only loads)."""
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("a teacher was trained where it should have been loaded from the cache")

    monkeypatch.setattr(teachers, "train_teacher", boom)
    monkeypatch.setattr(teachers, "train_model", boom)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def syn() -> Dataset:
    """Small 16x16 synthetic set: 1500 training, 300 validation and 300 test images, 10 classes."""
    return load_dataset("synthetic", image_size=16, train_size=1500, val_size=300, test_size=300, seed=0)


@pytest.fixture(scope="module")
def syn_teacher(syn: Dataset) -> Teacher:
    """A LeNet-5 teacher trained on ``syn`` with :data:`SYNTHETIC_RECIPE` (a few seconds on the CPU)."""
    return train_teacher("lenet5", syn, recipe=SYNTHETIC_RECIPE, seed=2, progress=False)


@pytest.fixture(scope="module")
def tiny_ds() -> Dataset:
    """A very small synthetic set for cache tests, trained with the 20-step "smoke" recipe."""
    return load_dataset("synthetic", image_size=16, train_size=256, val_size=64, test_size=64, seed=1)


# ---------------------------------------------------------------------------------------------- learning
def test_teacher_learns_synthetic_above_chance(syn: Dataset, syn_teacher: Teacher) -> None:
    chance = 1.0 / syn.num_classes
    assert syn_teacher.val_accuracy > 0.3 > chance, syn_teacher.meta
    assert syn_teacher.meta["test_accuracy"] > 0.3, syn_teacher.meta
    # The recorded accuracies are the returned model's, measured again here.
    assert not syn_teacher.model.training
    assert evaluate(syn_teacher.model, syn.val, syn)[0] == pytest.approx(syn_teacher.val_accuracy)
    assert evaluate(syn_teacher.model, syn.test, syn)[0] == pytest.approx(syn_teacher.meta["test_accuracy"])
    # An untrained LeNet-5 of the same shape is far below it, so the accuracy comes from training.
    torch.manual_seed(123)
    untrained = build_module(arch_for("lenet5", syn))
    assert evaluate(untrained, syn.val, syn)[0] < syn_teacher.val_accuracy - 0.15


@needs_fashion_mnist
def test_teacher_learns_fashionmnist_subset(tmp_path_factory: pytest.TempPathFactory) -> None:
    fm = load_dataset("fashionmnist", root=tmp_path_factory.mktemp("data"))
    ds = fm.shrink(train=3000, val=1000, test=1000)
    teacher = train_teacher("lenet5", ds, recipe="fast", seed=0, progress=False)
    assert teacher.val_accuracy > 0.6, teacher.meta
    assert teacher.meta["test_accuracy"] > 0.6, teacher.meta
    meta = teacher.meta
    assert meta["dataset"] == "fashionmnist"
    assert (meta["in_channels"], meta["image_size"], meta["num_classes"]) == (fm.channels, fm.image_size, 10)
    assert meta["split"] == {"train": 3000, "val": 1000, "test": 1000}
    assert meta["recipe"] == "fast"
    assert meta["recipe_config"] == TrainConfig.from_dict(load_yaml("teachers.yaml")["fast"]).to_dict()


@pytest.mark.expensive
def test_resnet20_teacher_learns_synthetic_with_fast_recipe(syn: Dataset) -> None:
    """ResNet-20 (BatchNorm, residuals) with the named "fast" recipe: a minute or more on two CPU cores."""
    teacher = train_teacher("resnet20", syn, recipe="fast", seed=0, progress=False)
    assert teacher.val_accuracy > 0.3, teacher.meta
    assert evaluate(teacher.model, syn.val, syn)[0] == pytest.approx(teacher.val_accuracy)


@pytest.mark.expensive
@needs_fashion_mnist
def test_fast_recipe_on_full_fashionmnist(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The quickstart teacher: LeNet-5, "fast" recipe, all 55,000 training images (minutes on a CPU)."""
    ds = load_dataset("fashionmnist", root=tmp_path_factory.mktemp("data"))
    teacher = train_teacher("lenet5", ds, recipe="fast", seed=0, progress=False)
    assert teacher.val_accuracy > 0.85, teacher.meta
    assert teacher.meta["test_accuracy"] > 0.85, teacher.meta


def test_same_seed_gives_identical_teacher(tiny_ds: Dataset) -> None:
    a = train_teacher("lenet5", tiny_ds, recipe="smoke", seed=3, progress=False)
    b = train_teacher("lenet5", tiny_ds, recipe="smoke", seed=3, progress=False)
    c = train_teacher("lenet5", tiny_ds, recipe="smoke", seed=4, progress=False)
    assert same_state(state_of(a.model), state_of(b.model))
    assert not same_state(state_of(a.model), state_of(c.model))


# ---------------------------------------------------------------------------------------------- save / load
def test_metadata_describes_the_teacher(syn: Dataset, syn_teacher: Teacher) -> None:
    meta = syn_teacher.meta
    assert meta["arch"] == "lenet5" and meta["dataset"] == syn.name
    assert (meta["in_channels"], meta["image_size"], meta["num_classes"]) == (
        syn.channels, syn.image_size, syn.num_classes)
    assert meta["split"] == {"train": len(syn.train), "val": len(syn.val), "test": len(syn.test)}
    assert meta["recipe"] == "custom"
    assert meta["recipe_config"] == TrainConfig.from_dict(SYNTHETIC_RECIPE).to_dict()
    assert meta["seed"] == 2
    arch = arch_for("lenet5", syn)
    assert syn_teacher.arch == arch
    # Parameter count from the IR agrees with the real module; MACs come from the same IR.
    assert meta["params"] == count_params(arch) == sum(p.numel() for p in syn_teacher.model.parameters())
    assert meta["macs"] == count_macs(arch) > 0


def test_save_load_round_trip(tmp_path: Path, syn: Dataset, syn_teacher: Teacher) -> None:
    path = tmp_path / "sub" / "teacher.pt"
    save_teacher(syn_teacher, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["teacher.pt"]  # no temporary file left

    blob = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors and values only
    assert set(blob) == {"state_dict", "meta"}
    assert blob["meta"] == syn_teacher.meta
    assert same_state(blob["state_dict"], state_of(syn_teacher.model))

    loaded = load_teacher(path)
    assert loaded.meta == syn_teacher.meta
    assert loaded.arch == syn_teacher.arch
    assert not loaded.model.training
    assert same_state(state_of(loaded.model), state_of(syn_teacher.model))
    assert torch.equal(val_logits(loaded.model, syn), val_logits(syn_teacher.model, syn))
    assert evaluate(loaded.model, syn.val, syn)[0] == pytest.approx(syn_teacher.val_accuracy)


def test_load_rejects_other_format(tmp_path: Path, syn_teacher: Teacher) -> None:
    path = tmp_path / "teacher.pt"
    save_teacher(syn_teacher, path)
    blob = torch.load(path, weights_only=True)
    blob["meta"]["format"] = teachers.FORMAT_VERSION + 1
    torch.save(blob, path)
    with pytest.raises(ValueError, match="format"):
        load_teacher(path)


# ---------------------------------------------------------------------------------------------- cache
def test_get_teacher_trains_once_then_loads(tmp_path: Path, tiny_ds: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_train = teachers.train_teacher

    def counting_train(*args: Any, **kwargs: Any) -> Teacher:
        calls.append(args[0])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(teachers, "train_teacher", counting_train)
    first = get_teacher("lenet5", tiny_ds, recipe="smoke", seed=5, home=tmp_path, progress=False)
    path = teacher_path("lenet5", tiny_ds, "smoke", 5, tmp_path)
    assert calls == ["lenet5"] and path.is_file()
    assert (first.meta["seed"], first.meta["recipe"]) == (5, "smoke")
    assert path.parent == tmp_path / "teachers"
    mtime = path.stat().st_mtime_ns

    forbid_training(monkeypatch)
    second = get_teacher("lenet5", tiny_ds, recipe="smoke", seed=5, home=tmp_path, progress=False)
    assert path.stat().st_mtime_ns == mtime
    assert second.meta == first.meta
    assert same_state(state_of(second.model), state_of(first.model))
    assert torch.equal(val_logits(second.model, tiny_ds), val_logits(first.model, tiny_ds))

    # Another seed is another teacher: not in the cache, and train_if_missing=False refuses to train it.
    with pytest.raises(FileNotFoundError, match="train_if_missing"):
        get_teacher("lenet5", tiny_ds, recipe="smoke", seed=6, home=tmp_path, train_if_missing=False, progress=False)


def test_teacher_path_separates_what_differs(tmp_path: Path, tiny_ds: Dataset) -> None:
    base = teacher_path("lenet5", tiny_ds, "smoke", 0, tmp_path)
    variants = [
        teacher_path("resnet20", tiny_ds, "smoke", 0, tmp_path),
        teacher_path("lenet5", tiny_ds, "fast", 0, tmp_path),
        teacher_path("lenet5", tiny_ds, "smoke", 1, tmp_path),
        teacher_path("lenet5", tiny_ds.shrink(train=128), "smoke", 0, tmp_path),
        teacher_path("lenet5", tiny_ds.shrink(val=32), "smoke", 0, tmp_path),
    ]
    assert len({base, *variants}) == 1 + len(variants)
    assert all(p.parent == tmp_path / "teachers" for p in [base, *variants])


def test_netcomp_home_env_var(tmp_path: Path, tiny_ds: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NETCOMP_HOME", raising=False)
    assert netcomp_home() == Path.home() / ".cache" / "netcomp"

    home = tmp_path / "home"
    monkeypatch.setenv("NETCOMP_HOME", str(home))
    assert netcomp_home() == home
    assert teacher_path("lenet5", tiny_ds, "smoke", 0) == teacher_path("lenet5", tiny_ds, "smoke", 0, home)
    get_teacher("lenet5", tiny_ds, recipe="smoke", seed=0, progress=False)  # no home: the env var decides
    assert teacher_path("lenet5", tiny_ds, "smoke", 0, home).is_file()


# ---------------------------------------------------------------------------------------------- recipes
def test_named_recipes_are_valid_ce_configs() -> None:
    recipes = load_yaml("teachers.yaml")
    assert {"default", "esnac", "fast", "smoke"} <= set(recipes)
    for name in recipes:
        got_name, config = load_recipe(name)
        assert got_name == name and config.loss == "ce"


def test_unknown_recipe_raises_listing_recipes(tmp_path: Path, tiny_ds: Dataset,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(teachers, "train_model", lambda *a, **k: pytest.fail("trained with an unknown recipe"))
    with pytest.raises(ValueError) as err:
        teachers.load_recipe("no-such-recipe")
    message = str(err.value)
    assert "no-such-recipe" in message
    assert all(name in message for name in load_yaml("teachers.yaml"))
    with pytest.raises(ValueError, match="no-such-recipe"):
        get_teacher("lenet5", tiny_ds, recipe="no-such-recipe", home=tmp_path, progress=False)
    assert not (tmp_path / "teachers").exists() or not any((tmp_path / "teachers").iterdir())


@pytest.mark.parametrize("loss", ["mse", "kd", "ce+mse"])
def test_recipe_with_non_ce_loss_is_rejected(tiny_ds: Dataset, loss: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Rejected before any training: train_model would fail the test if it were reached.
    monkeypatch.setattr(teachers, "train_model", lambda *a, **k: pytest.fail("trained with a non-ce recipe"))
    with pytest.raises(ValueError, match=re.escape(f"'{loss}'") + ".*'ce'"):
        train_teacher("lenet5", tiny_ds, recipe={"loss": loss}, progress=False)


def test_unknown_recipe_key_is_rejected(tiny_ds: Dataset) -> None:
    with pytest.raises(ValueError, match="epochz"):
        train_teacher("lenet5", tiny_ds, recipe={"loss": "ce", "epochz": 3}, progress=False)


def test_cache_name_tells_apart_image_sizes_and_data_and_rejects_dict_recipes(tmp_path):
    from netcomp.data import load_dataset
    from netcomp.teachers import teacher_path

    sizes = {"train_size": 64, "val_size": 16, "test_size": 16}
    small = load_dataset("synthetic", image_size=16, **sizes)
    large = load_dataset("synthetic", image_size=32, **sizes)
    other = load_dataset("synthetic", image_size=16, seed=1, **sizes)
    paths = {teacher_path("lenet5", d, "fast", 0, tmp_path) for d in (small, large, other)}
    assert len(paths) == 3
    assert teacher_path("lenet5", small, "fast", 0, tmp_path) == teacher_path(
        "lenet5", load_dataset("synthetic", image_size=16, **sizes), "fast", 0, tmp_path)
    with pytest.raises(TypeError, match="recipe name"):
        teacher_path("lenet5", small, {"loss": "ce"}, 0, tmp_path)


def test_cache_name_follows_the_recipe_content(tmp_path, monkeypatch):
    from netcomp import teachers
    from netcomp.data import load_dataset

    data = load_dataset("synthetic", image_size=16, train_size=64, val_size=16, test_size=16)
    before = teachers.teacher_path("lenet5", data, "fast", 0, tmp_path)
    recipes = teachers.load_yaml("teachers.yaml")
    recipes["fast"] = {**recipes["fast"], "epochs": 7}
    monkeypatch.setattr(teachers, "load_yaml", lambda name: recipes)
    assert teachers.teacher_path("lenet5", data, "fast", 0, tmp_path) != before
