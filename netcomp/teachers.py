"""Teachers: train a zoo model with a recipe from configs/, save it with its metadata, load it, cache it.

A teacher file holds the state dict and a metadata dict of plain values (arch, dataset, split sizes,
recipe, validation and test accuracy, seed, params, MACs), so it loads with ``torch.load(weights_only=True)``.
Cached teachers live under ``$NETCOMP_HOME/teachers`` (default ``~/.cache/netcomp``), one file per
(arch, dataset, recipe, seed).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from netcomp.arch import Arch
from netcomp.data import Dataset
from netcomp.distill import TrainConfig, evaluate, train_model
from netcomp.metrics import count_macs, count_params
from netcomp.surgery import build_module
from netcomp.zoo import build_arch

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
FORMAT_VERSION = 1


def netcomp_home() -> Path:
    """Where teachers (and other caches) are kept: $NETCOMP_HOME, else ~/.cache/netcomp."""
    return Path(os.environ.get("NETCOMP_HOME", Path.home() / ".cache" / "netcomp"))


def load_yaml(name: str) -> dict[str, Any]:
    """A YAML file from configs/ (safe_load)."""
    path = CONFIG_DIR / name
    with open(path) as f:
        return yaml.safe_load(f) or {}


def load_recipe(recipe: str | dict) -> tuple[str, TrainConfig]:
    """(name, TrainConfig) of a recipe: a name from configs/teachers.yaml or an explicit mapping."""
    if isinstance(recipe, dict):
        return "custom", TrainConfig.from_dict(recipe)
    recipes = load_yaml("teachers.yaml")
    if recipe not in recipes:
        raise ValueError(f"unknown teacher recipe {recipe!r}; configs/teachers.yaml has {', '.join(recipes)}")
    return recipe, TrainConfig.from_dict(recipes[recipe])


@dataclass
class Teacher:
    """A trained teacher: its IR, the module (eval mode) and its metadata."""

    arch: Arch
    model: nn.Module
    meta: dict[str, Any]

    @property
    def val_accuracy(self) -> float:
        return float(self.meta["val_accuracy"])


def data_fingerprint(dataset: Dataset) -> str:
    """A short hash of a dataset's shape, split sizes and first training images and labels.

    Part of a teacher's cache name, so a subset, another image size or other synthetic data is a
    different teacher.
    """
    h = hashlib.sha1(f"{dataset.channels}x{dataset.image_size}c{dataset.num_classes}"
                     f"-{len(dataset.train)}-{len(dataset.val)}".encode())
    h.update(dataset.train.x[:256].cpu().numpy().tobytes())
    h.update(dataset.train.y[:256].cpu().numpy().tobytes())
    return h.hexdigest()[:10]


def teacher_path(arch_name: str, dataset: Dataset, recipe: str, seed: int, home: Path | None = None) -> Path:
    """Cache file of a teacher for this arch, data (fingerprinted), recipe (name and content) and seed."""
    if not isinstance(recipe, str):
        raise TypeError(f"cached teachers are keyed by a recipe name from configs/teachers.yaml, got {recipe!r}")
    # the recipe's content is hashed too: editing configs/teachers.yaml must not reuse a stale teacher
    content = hashlib.sha1(json.dumps(load_recipe(recipe)[1].to_dict(), sort_keys=True).encode()).hexdigest()[:6]
    name = f"{arch_name}-{dataset.name}-{data_fingerprint(dataset)}-{recipe}{content}-s{seed}.pt"
    return (home or netcomp_home()) / "teachers" / name


def arch_for(arch_name: str, dataset: Dataset) -> Arch:
    """The zoo architecture sized for a dataset's images and classes."""
    return build_arch(arch_name, dataset.channels, dataset.image_size, dataset.num_classes)


def train_teacher(arch_name: str, dataset: Dataset, recipe: str | dict = "fast", device: str | torch.device = "cpu",
                  seed: int = 0, progress: bool = True) -> Teacher:
    """Train a zoo model on ``dataset``'s training split with cross-entropy and measure it."""
    recipe_name, config = load_recipe(recipe)
    if config.loss != "ce":
        raise ValueError(f"teacher recipe {recipe_name!r} uses loss {config.loss!r}; teachers train with 'ce'")
    arch = arch_for(arch_name, dataset)
    torch.manual_seed(seed)
    model = build_module(arch).to(device)
    start = time.perf_counter()
    result = train_model(model, dataset, config, device=device, seed=seed, progress=progress)
    if not result.valid:
        raise RuntimeError(f"teacher training diverged: {result.invalid_reason}")
    val_acc, _ = evaluate(model, dataset.val, dataset, device=device)
    test_acc, _ = evaluate(model, dataset.test, dataset, device=device)
    meta = {
        "format": FORMAT_VERSION, "arch": arch_name, "dataset": dataset.name,
        "in_channels": dataset.channels, "image_size": dataset.image_size, "num_classes": dataset.num_classes,
        "split": {"train": len(dataset.train), "val": len(dataset.val), "test": len(dataset.test)},
        "recipe": recipe_name, "recipe_config": config.to_dict(), "seed": seed,
        "val_accuracy": val_acc, "test_accuracy": test_acc,
        "params": count_params(arch), "macs": count_macs(arch),
        "train_seconds": time.perf_counter() - start, "torch": str(torch.__version__),
    }
    return Teacher(arch, model.eval(), meta)


def save_teacher(teacher: Teacher, path: Path) -> None:
    """Write weights and metadata atomically (a crash never leaves a half-written teacher)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in teacher.model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")  # unique: concurrent savers never collide
    os.close(fd)
    try:
        torch.save({"state_dict": state, "meta": teacher.meta}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_teacher(path: Path, device: str | torch.device = "cpu") -> Teacher:
    """Load a saved teacher (weights_only=True) and rebuild its module from the zoo."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    meta = blob["meta"]
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: teacher format {meta.get('format')!r}, expected {FORMAT_VERSION}")
    arch = build_arch(meta["arch"], meta["in_channels"], meta["image_size"], meta["num_classes"])
    model = build_module(arch)
    model.load_state_dict(blob["state_dict"])
    return Teacher(arch, model.to(device).eval(), meta)


def get_teacher(arch_name: str, dataset: Dataset, recipe: str = "fast", seed: int = 0,
                device: str | torch.device = "cpu", home: Path | None = None, train_if_missing: bool = True,
                progress: bool = True) -> Teacher:
    """The cached teacher for (arch, dataset, recipe, seed), training and caching it the first time."""
    path = teacher_path(arch_name, dataset, recipe, seed, home)
    if path.exists():
        return load_teacher(path, device)
    if not train_if_missing:
        raise FileNotFoundError(f"no cached teacher at {path}; train one with train_if_missing=True")
    if progress:
        print(f"training teacher {arch_name} on {dataset.name} (recipe {recipe}); cached at {path}")
    teacher = train_teacher(arch_name, dataset, recipe, device=device, seed=seed, progress=progress)
    save_teacher(teacher, path)
    return teacher
