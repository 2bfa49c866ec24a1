"""Teachers: train a zoo model with a recipe from configs/, save it with its metadata, load it, cache it.

A teacher file holds the state dict and a metadata dict of plain values (arch, dataset, split sizes,
recipe, validation and test accuracy, seed, params, MACs), so it loads with ``torch.load(weights_only=True)``.
Cached teachers live under ``$NETCOMP_HOME/teachers`` (default ``~/.cache/netcomp``), one file per
(arch, dataset, recipe, seed).

Nothing is lost: :func:`get_teacher` checks that the cache folder is writable before it trains, writes a
partial checkpoint (``<teacher file>.partial``) after every epoch, resumes from it when called again, and
removes it once the teacher file is saved. Files are written atomically (temporary file, fsync, rename).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from netcomp.arch import Arch
from netcomp.data import Dataset
from netcomp.distill import TrainConfig, estimated_cpu_seconds, evaluate, train_model
from netcomp.errors import UserError
from netcomp.files import torch_save_atomic as _atomic_save
from netcomp.metrics import count_macs, count_params
from netcomp.surgery import build_module
from netcomp.zoo import build_arch

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
FORMAT_VERSION = 1
#: ``kind`` of a partial (unfinished) teacher training checkpoint, and its format version.
PARTIAL_KIND = "netcomp-teacher-partial"
PARTIAL_FORMAT = 1
#: Metadata keys a teacher file must have for :func:`load_teacher` to rebuild its module.
_REQUIRED_META = ("format", "arch", "in_channels", "image_size", "num_classes")
#: The recipe of the teacher an env trains where none is shipped and its fidelity names none: the recipe meant to
#: reach a well-trained teacher in the least GPU time (configs/teachers.yaml says what it does and why).
DEFAULT_RECIPE = "gpu-fast"
#: Keys of a recipe that describe it rather than train it: not TrainConfig keys, not part of the cache key.
RECIPE_INFO_KEYS = ("expected_test_accuracy",)
#: A teacher training that the cost model puts above this many seconds on this CPU is warned about first.
SLOW_TEACHER_SECONDS = 1800.0


class TeacherWarning(UserWarning):
    """A teacher below its recipe's expected accuracy, or a recipe that would train for hours on this CPU; the
    message says what to do instead (a teacher file, a GPU, a shipped teacher)."""


class CacheNotWritableError(OSError):
    """The teacher cache folder cannot be created or written (raised before any training starts)."""


def netcomp_home() -> Path:
    """Where teachers (and other caches) are kept: $NETCOMP_HOME, else ~/.cache/netcomp."""
    return Path(os.environ.get("NETCOMP_HOME", Path.home() / ".cache" / "netcomp"))


def load_yaml(name: str) -> dict[str, Any]:
    """A YAML file from configs/ (safe_load)."""
    path = CONFIG_DIR / name
    with open(path) as f:
        return yaml.safe_load(f) or {}


def _recipe_spec(recipe: str | dict) -> tuple[str, dict[str, Any]]:
    """(name, mapping) of a recipe: a name from configs/teachers.yaml or an explicit mapping ("custom")."""
    if isinstance(recipe, dict):
        return "custom", recipe
    recipes = load_yaml("teachers.yaml")
    if recipe not in recipes:
        raise ValueError(f"unknown teacher recipe {recipe!r}; configs/teachers.yaml has {', '.join(recipes)}")
    return recipe, recipes[recipe]


def load_recipe(recipe: str | dict) -> tuple[str, TrainConfig]:
    """(name, TrainConfig) of a recipe: a name from configs/teachers.yaml or an explicit mapping; its
    descriptive keys (:data:`RECIPE_INFO_KEYS`) are left out of the TrainConfig."""
    name, spec = _recipe_spec(recipe)
    return name, TrainConfig.from_dict({k: v for k, v in spec.items() if k not in RECIPE_INFO_KEYS})


def expected_test_accuracy(recipe: str | dict | None, dataset_name: str | None, arch_name: str | None) -> float | None:
    """The test accuracy a teacher of ``recipe`` should reach for ``arch_name`` on ``dataset_name`` (its
    ``expected_test_accuracy`` in configs/teachers.yaml), or None where the recipe declares none (or is not a
    recipe of this checkout), so a weak teacher can be told from a well-trained one."""
    if recipe is None or dataset_name is None or arch_name is None:
        return None
    try:
        _, spec = _recipe_spec(recipe)
    except ValueError:
        return None
    value = ((spec.get("expected_test_accuracy") or {}).get(dataset_name) or {}).get(arch_name)
    return None if value is None else float(value)


@dataclass
class Teacher:
    """A trained teacher: its IR, the module (eval mode) and its metadata."""

    arch: Arch
    model: nn.Module
    meta: dict[str, Any]
    #: The file it was loaded from or saved to (None for a teacher only in memory); named in errors.
    path: Path | None = None

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


def partial_path(path: Path) -> Path:
    """The partial-training checkpoint kept next to a teacher file while that teacher trains."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and prove it is writable by creating and removing a temporary file.

    Raises :class:`CacheNotWritableError` naming the folder and the way out (``NETCOMP_HOME`` or
    ``home=``), so an unwritable cache fails before hours of training rather than after.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise CacheNotWritableError(
            f"teacher cache folder {folder} is not writable ({type(exc).__name__}: {exc}); a trained teacher "
            f"could not be saved there. Set NETCOMP_HOME to a writable folder, or pass home=<writable folder> "
            f"(get_teacher, or gymnasium.make(..., home=...))") from exc


def check_teacher_fits(teacher: Teacher, arch_name: str, dataset: Dataset) -> None:
    """Raise ValueError unless ``teacher`` is a ``arch_name`` made for ``dataset``.

    Compared: the architecture name, the dataset name, the number of classes, input channels and image
    size (of the teacher's module), and the fingerprint of the data it was trained on
    (:func:`data_fingerprint`, recorded in its metadata). The error names the teacher's file, each
    mismatching field, the teacher's value and the env's value. A teacher file without a recorded
    fingerprint (saved by an older netcomp) is accepted with a warning; a teacher built in memory with
    no metadata is checked on its shapes (and ``arch.family``) only.
    """
    where = f"teacher file {teacher.path}" if teacher.path is not None else "the teacher passed in"
    meta = teacher.meta or {}
    arch = teacher.arch
    fields: list[tuple[str, Any, Any]] = [
        ("arch", meta.get("arch", arch.family or None), arch_name),
        ("dataset", meta.get("dataset"), dataset.name),
        ("num_classes", arch.num_classes, dataset.num_classes),
        ("in_channels", arch.in_channels, dataset.channels),
        ("image_size", arch.image_size, dataset.image_size),
    ]
    wrong = [(name, have, want) for name, have, want in fields if have is not None and have != want]
    if not wrong:
        recorded = meta.get("data_fingerprint")
        if recorded is not None:
            actual = data_fingerprint(dataset)
            if recorded != actual:
                wrong.append(("data_fingerprint", recorded, actual))
        elif teacher.path is not None or "format" in meta:
            warnings.warn(f"{where} records no data fingerprint (saved by an older netcomp), so it cannot be "
                          f"checked to have been trained on this {dataset.name} data; accepting it",
                          stacklevel=2)
    if wrong:
        details = "; ".join(f"{name} is {have!r} in the teacher but {want!r} for the env" for name, have, want in wrong)
        hint = (" (the teacher was trained on other data: another subset, split sizes or generator seed)"
                if wrong[0][0] == "data_fingerprint" else "")
        raise ValueError(f"{where} does not fit a {arch_name} env on {dataset.name}: {details}{hint}")


def arch_for(arch_name: str, dataset: Dataset) -> Arch:
    """The zoo architecture sized for a dataset's images and classes."""
    return build_arch(arch_name, dataset.channels, dataset.image_size, dataset.num_classes)


def train_teacher(arch_name: str, dataset: Dataset, recipe: str | dict = DEFAULT_RECIPE,
                  device: str | torch.device = "cpu", seed: int = 0, progress: bool = True,
                  checkpoint: str | Path | None = None) -> Teacher:
    """Train a zoo model on ``dataset``'s training split with cross-entropy and measure it.

    With ``checkpoint`` (a file path) the training state is written there atomically after every epoch,
    and a checkpoint already there from the same (arch, data, recipe, seed) is resumed from, so a killed
    training loses at most one epoch; on the CPU the resumed teacher is bit-identical to an uninterrupted
    one. An unreadable or foreign checkpoint is ignored with a warning. The file is left in place (the
    caller removes it once the teacher is saved, as :func:`get_teacher` does).

    A recipe that would take hours on this CPU is warned about first (:class:`TeacherWarning`, whatever
    ``progress``). With ``progress``: a progress bar with an ETA on a terminal, else one plain line per epoch.
    """
    recipe_name, config = load_recipe(recipe)
    if config.loss != "ce":
        raise ValueError(f"teacher recipe {recipe_name!r} uses loss {config.loss!r}; teachers train with 'ce'")
    slow = slow_training_warning(arch_name, dataset, recipe, device)
    if slow is not None:
        warnings.warn(slow, TeacherWarning, stacklevel=2)
    arch = arch_for(arch_name, dataset)
    fingerprint = data_fingerprint(dataset)
    torch.manual_seed(seed)
    model = build_module(arch).to(device)
    key = {"arch": arch_name, "dataset": dataset.name, "data_fingerprint": fingerprint, "recipe": recipe_name,
           "recipe_config": config.to_dict(), "seed": seed}
    resume, earlier_seconds = None, 0.0
    callbacks = []
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        resume, earlier_seconds = _read_partial(checkpoint, key)
        if resume is not None and progress:
            print(f"resuming teacher training from {checkpoint} after epoch {resume['epoch']}")
    start = time.perf_counter()
    if checkpoint is not None:
        def save_partial(state: dict[str, Any]) -> None:
            _atomic_save({"kind": PARTIAL_KIND, "format": PARTIAL_FORMAT, "key": key,
                          "seconds": earlier_seconds + time.perf_counter() - start, "state": state}, checkpoint)
        callbacks.append(save_partial)
    bar = progress and on_terminal()
    if progress and not bar:  # a log file or a pipe: no carriage-return bar, one line per epoch
        callbacks.append(epoch_printer(f"teacher {arch_name}", int(resume["step"]) if resume else 0))
    with _cudnn_autotune(device):
        result = train_model(model, dataset, config, device=device, seed=seed, progress=bar, resume=resume,
                             on_epoch_end=_each(callbacks))
    if not result.valid:
        raise RuntimeError(f"teacher training diverged: {result.invalid_reason}")
    val_acc, _ = evaluate(model, dataset.val, dataset, device=device)
    test_acc, _ = evaluate(model, dataset.test, dataset, device=device)
    meta = {
        "format": FORMAT_VERSION, "arch": arch_name, "dataset": dataset.name,
        "in_channels": dataset.channels, "image_size": dataset.image_size, "num_classes": dataset.num_classes,
        "split": {"train": len(dataset.train), "val": len(dataset.val), "test": len(dataset.test)},
        "data_fingerprint": fingerprint,
        "recipe": recipe_name, "recipe_config": config.to_dict(), "seed": seed,
        "val_accuracy": val_acc, "test_accuracy": test_acc,
        "params": count_params(arch), "macs": count_macs(arch),
        "train_seconds": earlier_seconds + time.perf_counter() - start, "torch": str(torch.__version__),
    }
    return Teacher(arch, model.eval(), meta)


def on_terminal() -> bool:
    """Whether progress goes to a terminal (stderr, where tqdm draws), so a bar can redraw itself in place."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def epoch_printer(label: str, first_step: int = 0) -> Callable[[dict[str, Any]], None]:
    """An ``on_epoch_end`` callback of :func:`netcomp.distill.train_students` that prints one plain line per
    epoch (epoch of epochs, training loss, validation accuracy when measured, elapsed seconds and an ETA from
    this session's pace) where no progress bar can show; ``first_step``: the step a resumed training starts at."""
    start = time.perf_counter()

    def show(state: dict[str, Any]) -> None:
        entry = state["students"][0]["history"][-1]
        epochs = math.ceil(state["total_steps"] / max(1, state["steps_per_epoch"]))
        elapsed, done = time.perf_counter() - start, state["step"] - first_step
        eta = elapsed / done * (state["total_steps"] - state["step"]) if done > 0 else math.nan
        val = f", val acc {entry['val_accuracy']:.4f}" if entry.get("val_accuracy") is not None else ""
        print(f"  {label} epoch {state['epoch']}/{epochs}: train loss {entry['train_loss']:.4f}{val}, "
              f"elapsed {elapsed:.0f} s, ETA {eta:.0f} s", flush=True)
    return show


def _each(callbacks: list[Callable[[dict[str, Any]], None]]) -> Callable[[dict[str, Any]], None] | None:
    """One callback that calls every one of ``callbacks`` in order (None for none)."""
    if not callbacks:
        return None

    def call(state: dict[str, Any]) -> None:
        for callback in callbacks:
            callback(state)
    return call


@contextlib.contextmanager
def _cudnn_autotune(device: str | torch.device) -> Iterator[None]:
    """cuDNN's autotuner on CUDA while a teacher trains (its shapes never change, so the fastest kernels are
    found once); the previous setting is restored. Nothing elsewhere."""
    if torch.device(device).type != "cuda":
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def recipe_cpu_seconds(arch_name: str, dataset: Dataset, recipe: str | dict, threads: int | None = None) -> float:
    """Estimated seconds to train ``arch_name`` on ``dataset`` with ``recipe`` on this CPU at ``threads`` torch
    threads (default: the current count), from :func:`netcomp.distill.estimated_cpu_seconds`."""
    _, config = load_recipe(recipe)
    macs = count_macs(arch_for(arch_name, dataset))
    return estimated_cpu_seconds(config, len(dataset.train), len(dataset.val), macs,
                                 threads or torch.get_num_threads())


def slow_training_warning(arch_name: str, dataset: Dataset, recipe: str | dict,
                          device: str | torch.device) -> str | None:
    """The warning for a teacher training that would take more than :data:`SLOW_TEACHER_SECONDS` on the CPU
    (with how long and what to do instead), or None (not on the CPU, or quick enough)."""
    if torch.device(device).type != "cpu":
        return None
    seconds = recipe_cpu_seconds(arch_name, dataset, recipe)
    if seconds < SLOW_TEACHER_SECONDS:
        return None
    name = recipe if isinstance(recipe, str) else "custom"
    return (f"training the {arch_name} teacher on {dataset.name} with recipe {name!r} on the CPU will take about "
            f"{format_duration(seconds)} at {torch.get_num_threads()} threads (an estimate; longer under load; a "
            f"killed training resumes from its last epoch). {teacher_advice(arch_name, dataset.name)}")


def weak_teacher_warning(arch_name: str | None, dataset_name: str | None, recipe: str | None,
                         test_accuracy: float | None) -> str | None:
    """The warning for a teacher whose test accuracy is below what its recipe should reach for its arch and
    data (:func:`expected_test_accuracy`), saying what to do instead; None when it is not below, or when
    either figure is unknown."""
    expected = expected_test_accuracy(recipe, dataset_name, arch_name)
    if expected is None or test_accuracy is None or test_accuracy >= expected:
        return None
    return (f"the teacher's test accuracy {test_accuracy:.4f} is below the {expected:.4f} that recipe {recipe!r} "
            f"should reach for {arch_name} on {dataset_name}: compressing a poorly trained teacher says little "
            f"about a compression method (a weak teacher is easy to match). "
            f"{teacher_advice(str(arch_name), str(dataset_name))}")


def teacher_advice(arch_name: str, dataset_name: str) -> str:
    """What to do for a well-trained teacher: a teacher file, a GPU, or an env with a shipped teacher."""
    shipped = ", ".join(sorted(name.removesuffix(".pt") for name in read_manifest())) or "none"
    return (f"For a well-trained teacher: pass --teacher FILE (gymnasium.make(..., teacher=FILE)), a teacher "
            f"trained where it is fast, e.g. `python -m netcomp train-teacher {arch_name} --dataset {dataset_name} "
            f"--recipe {DEFAULT_RECIPE} --device cuda --out DIR` on a GPU; or run on a GPU (--device cuda), where "
            f"the env trains its {DEFAULT_RECIPE} teacher in minutes; or use an env with a shipped teacher "
            f"(arch-dataset: {shipped}).")


def teacher_report(teacher: Teacher, dataset: Dataset | None = None) -> dict[str, Any]:
    """What a run shows and keeps of its teacher: arch, dataset, recipe, file (and whether it is shipped), test
    and validation accuracy, the test accuracy its recipe should reach and the weak-teacher warning (or None).

    Accuracies come from the teacher's metadata (measured on the whole splits when it was trained); a teacher
    that records none is measured now on ``dataset`` (``measured_now``), so a run never shows a teacher of
    unknown accuracy."""
    meta = teacher.meta or {}
    arch = meta.get("arch", teacher.arch.family)
    dataset_name = meta.get("dataset", dataset.name if dataset is not None else None)
    val, test = meta.get("val_accuracy"), meta.get("test_accuracy")
    measured = dataset is not None and (val is None or test is None)
    if measured:
        device = next(teacher.model.parameters()).device
        val = val if val is not None else evaluate(teacher.model, dataset.val, dataset, device=device)[0]
        test = test if test is not None else evaluate(teacher.model, dataset.test, dataset, device=device)[0]
    path = Path(teacher.path) if teacher.path is not None else None
    return {"arch": arch, "dataset": dataset_name, "recipe": meta.get("recipe"),
            "path": str(path) if path is not None else None,
            "shipped": path is not None and path.resolve().parent == SHIPPED_DIR.resolve(),
            "test_accuracy": test, "val_accuracy": val, "measured_now": measured,
            "expected_test_accuracy": expected_test_accuracy(meta.get("recipe"), dataset_name, arch),
            "warning": weak_teacher_warning(arch, dataset_name, meta.get("recipe"), test)}


def format_duration(seconds: float) -> str:
    """``42 s``, ``12 min`` or ``3.4 h``: a duration as a person reads it."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _read_partial(path: Path, key: dict[str, Any]) -> tuple[dict[str, Any] | None, float]:
    """(training state, seconds already spent) of a usable partial checkpoint, else (None, 0.0)."""
    if not path.exists():
        return None, 0.0
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file: start again rather than fail
        warnings.warn(f"ignoring unreadable partial teacher checkpoint {path} ({type(exc).__name__}: {exc}); "
                      f"training from scratch", stacklevel=3)
        return None, 0.0
    if not (isinstance(blob, dict) and blob.get("kind") == PARTIAL_KIND and blob.get("format") == PARTIAL_FORMAT
            and isinstance(blob.get("state"), dict)):
        warnings.warn(f"ignoring {path}: not a partial teacher checkpoint of format {PARTIAL_FORMAT}; "
                      f"training from scratch", stacklevel=3)
        return None, 0.0
    if blob.get("key") != key:
        warnings.warn(f"ignoring partial teacher checkpoint {path}: it was written for {blob.get('key')}, "
                      f"not {key}; training from scratch", stacklevel=3)
        return None, 0.0
    return blob["state"], float(blob.get("seconds", 0.0))


def save_teacher(teacher: Teacher, path: Path) -> None:
    """Write weights and metadata atomically (a crash never leaves a half-written teacher)."""
    state = {k: v.detach().cpu() for k, v in teacher.model.state_dict().items()}
    _atomic_save({"state_dict": state, "meta": teacher.meta}, Path(path))


def _not_a_teacher(path: Path, why: str) -> ValueError:
    return ValueError(f"{path} is not a netcomp teacher checkpoint: {why}")


def load_teacher(path: str | Path, device: str | torch.device = "cpu") -> Teacher:
    """Load a saved teacher (weights_only=True) and rebuild its module from the zoo.

    A missing file raises FileNotFoundError; anything else that is not a teacher file (text, random
    bytes, a plain state dict, another torch file, an unfinished training's partial checkpoint, weights
    that do not fit the recorded architecture) raises ValueError "<path> is not a netcomp teacher
    checkpoint: <why>"; a teacher of another format version raises ValueError naming both formats.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"teacher file {path} does not exist")
    if not path.is_file():
        raise _not_a_teacher(path, "it is not a regular file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails in many ways on foreign files
        raise _not_a_teacher(path, f"torch.load(weights_only=True) cannot read it "
                                   f"({type(exc).__name__}: {exc})") from exc
    if isinstance(blob, dict) and blob.get("kind") == PARTIAL_KIND:
        raise _not_a_teacher(path, "it is the partial checkpoint of an unfinished teacher training "
                                   "(get_teacher resumes it)")
    if not isinstance(blob, dict) or not {"state_dict", "meta"} <= set(blob):
        found = sorted(map(str, blob))[:8] if isinstance(blob, dict) else type(blob).__name__
        raise _not_a_teacher(path, f"expected a dict with 'state_dict' and 'meta', found {found}")
    meta, state = blob["meta"], blob["state_dict"]
    if not isinstance(meta, dict):
        raise _not_a_teacher(path, f"its 'meta' is a {type(meta).__name__}, expected a dict")
    missing = [k for k in _REQUIRED_META if k not in meta]
    if missing:
        raise _not_a_teacher(path, f"its metadata lacks {missing}")
    if meta["format"] != FORMAT_VERSION:
        raise ValueError(f"{path}: teacher format {meta['format']!r}, expected {FORMAT_VERSION}")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _not_a_teacher(path, "its 'state_dict' is not a dict of tensors")
    try:
        arch = build_arch(meta["arch"], meta["in_channels"], meta["image_size"], meta["num_classes"])
        model = build_module(arch)
    except Exception as exc:  # unknown arch or impossible sizes in a foreign file
        raise _not_a_teacher(path, f"cannot build its architecture {meta['arch']!r} "
                                   f"({type(exc).__name__}: {exc})") from exc
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise _not_a_teacher(path, f"its weights do not fit a {meta['arch']} ({exc})") from exc
    return Teacher(arch, model.to(device).eval(), meta, path=path)


def get_teacher(arch_name: str, dataset: Dataset, recipe: str = DEFAULT_RECIPE, seed: int = 0,
                device: str | torch.device = "cpu", home: Path | None = None, train_if_missing: bool = True,
                progress: bool = True) -> Teacher:
    """The cached teacher for (arch, dataset, recipe, seed), training and caching it the first time.

    Before training, the cache folder is checked to be writable (:class:`CacheNotWritableError` if not).
    Training checkpoints after every epoch to :func:`partial_path` of the teacher file and a later call
    resumes from there; the partial file is removed once the teacher file is saved.
    """
    path = teacher_path(arch_name, dataset, recipe, seed, home)
    if path.exists():
        return load_teacher(path, device)
    if not train_if_missing:
        raise FileNotFoundError(f"no cached teacher at {path}; train one with train_if_missing=True")
    check_writable(path.parent)
    if progress:
        print(f"training teacher {arch_name} on {dataset.name} (recipe {recipe}); cached at {path}")
    partial = partial_path(path)
    teacher = train_teacher(arch_name, dataset, recipe, device=device, seed=seed, progress=progress,
                            checkpoint=partial)
    save_teacher(teacher, path)
    teacher.path = path
    partial.unlink(missing_ok=True)
    return teacher


# --- Teachers shipped in the repository -----------------------------------------------------------------------

#: Folder of the teachers shipped with netcomp-gym and their manifest (file name -> sha256 and metadata).
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "teachers"
MANIFEST = "manifest.json"


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def teacher_identity(teacher: Teacher) -> dict[str, Any]:
    """What names a teacher for a replay: arch, dataset, recipe, seed, its file, and ``sha256``: the SHA-256 of
    its weights (names and tensor bytes in order), not of its file, so the same weights saved at another time
    (a file also holds training seconds and dates) are the same teacher."""
    meta = teacher.meta or {}
    return {"arch": meta.get("arch", teacher.arch.family), "dataset": meta.get("dataset"),
            "recipe": meta.get("recipe"), "seed": meta.get("seed"),
            "path": str(teacher.path) if teacher.path is not None else None, "sha256": weights_sha256(teacher.model)}


def weights_sha256(model: nn.Module) -> str:
    """``weights:`` and the SHA-256 of a module's state dict: each entry's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return "weights:" + h.hexdigest()


def shipped_name(arch_name: str, dataset_name: str) -> str:
    """File name of the shipped teacher of an architecture and dataset."""
    return f"{arch_name}-{dataset_name}.pt"


def read_manifest(folder: Path | None = None) -> dict[str, dict[str, Any]]:
    """The shipped teachers' manifest: file name -> {sha256, arch, dataset, recipe, seed, accuracies, ...}."""
    path = (folder or SHIPPED_DIR) / MANIFEST
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"the shipped teachers' manifest {path} is not valid JSON ({exc}); restore it "
                        f"(git checkout {path.name})") from None
    if not isinstance(manifest, dict) or not all(isinstance(v, dict) and "sha256" in v for v in manifest.values()):
        raise UserError(f"the shipped teachers' manifest {path} is not a mapping of file name -> "
                        f"{{sha256, arch, dataset, ...}}; restore it (git checkout {path.name})")
    return manifest


def ship_teacher(teacher: Teacher, folder: Path | None = None) -> Path:
    """Save ``teacher`` into the shipped folder and record its checksum and metadata in the manifest.

    Both files are written atomically; the manifest entry is written after the teacher file, so an entry
    never names a file that is not there in full.
    """
    from netcomp.files import write_text_atomic

    folder = folder or SHIPPED_DIR
    name = shipped_name(teacher.meta["arch"], teacher.meta["dataset"])
    path = folder / name
    save_teacher(teacher, path)
    manifest = read_manifest(folder)
    keep = ("arch", "dataset", "recipe", "recipe_config", "seed", "data_fingerprint", "split", "val_accuracy",
            "test_accuracy", "params", "macs", "train_seconds", "torch")
    manifest[name] = {"sha256": file_sha256(path), **{k: teacher.meta[k] for k in keep if k in teacher.meta}}
    write_text_atomic(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    teacher.path = path
    return path


def shipped_teacher(arch_name: str, dataset: Dataset, device: str | torch.device = "cpu",
                    folder: Path | None = None) -> Teacher | None:
    """The shipped teacher for ``arch_name`` on ``dataset``, or None if none is shipped for this data.

    None when the manifest has no entry or the entry was trained on other data (another data fingerprint:
    a subset, other split sizes). A file whose SHA-256 differs from the manifest's raises ValueError: a
    shipped teacher is never used unchecked. Loaded with ``weights_only=True`` (:func:`load_teacher`).
    """
    folder = folder or SHIPPED_DIR
    name = shipped_name(arch_name, dataset.name)
    entry = read_manifest(folder).get(name)
    path = folder / name
    if entry is None and path.exists():  # a shipped file the manifest does not vouch for: never used unchecked
        raise UserError(f"{path} is shipped but {folder / MANIFEST} has no entry for it (the manifest is missing "
                        f"or was edited), so its checksum cannot be verified; restore the manifest (git checkout), "
                        f"or pass teacher='recipe' (--teacher recipe) to train the recipe's teacher instead")
    if entry is None or entry.get("data_fingerprint") != data_fingerprint(dataset):
        return None
    if not path.exists():
        raise FileNotFoundError(f"the manifest {folder / MANIFEST} lists {name} but the file is missing")
    actual = file_sha256(path)
    if actual != entry["sha256"]:
        raise UserError(f"shipped teacher {path} has SHA-256 {actual}, the manifest records {entry['sha256']}: "
                         f"the file was changed or damaged; restore it (git checkout) or retrain it with "
                         f"`python -m netcomp train-teacher {arch_name} --dataset {dataset.name} "
                         f"--recipe {entry.get('recipe')}`")
    return load_teacher(path, device)
