"""Your own images as a dataset: class folders read into uint8 tensors like the built-in sets.

Layout: ``ROOT/train/<class>/<image>`` and, when you have them, ``ROOT/val/<class>/...`` and
``ROOT/test/<class>/...`` (the class names of val/ and test/ must be among train/'s). A missing val/ or test/ is
carved from train/ by a seeded permutation (``val_fraction``, ``test_fraction`` of it; ``seed`` fixes which
images), so the splits are the same in every process. Classes are the sorted folder names of train/, labels
their positions.

Every image is read with PIL, converted to RGB (``channels=3``) or grey (``channels=1``), its shorter side
resized to ``image_size`` (bilinear) and the centre cropped to ``image_size`` x ``image_size``. Each split is
then shuffled with ``seed`` (so a fidelity's first-n subset holds every class). ``mean``/``std`` default to the
training images' per-channel statistics; give them (e.g. ImageNet's for a model trained with them) as numbers
or "a,b,c" strings. ``augment`` turns on the loader's random crop and flip for training batches.

Reading is eager (the whole folder becomes tensors, as the design wants every dataset on the device), so it
suits folders that fit in memory at ``image_size``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from netcomp.errors import UserError

#: The name of this dataset in env ids and ``load_dataset``.
NAME = "imagefolder"
#: File endings read as images (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
#: The image size when none is given.
DEFAULT_IMAGE_SIZE = 32
_SPLITS = ("train", "val", "test")


def _check(root: str | os.PathLike[str] | None) -> Path:
    """The folder, checked to hold train/ with class folders; UserError saying what was expected."""
    if root is None:
        raise UserError("the imagefolder dataset needs its folder: --data-root DIR (Python: data_root=DIR), where "
                        "DIR holds train/<class>/<images> (and optionally val/ and test/)")
    folder = Path(root).expanduser()
    train = folder / "train"
    if not train.is_dir() or not _classes(train):
        raise UserError(f"{folder} is not an image folder: expected {train}/<class>/<images> (one sub-folder per "
                        f"class), and optionally val/ and test/ laid out the same way")
    return folder


def _classes(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(folder: Path, classes: Sequence[str]) -> list[tuple[Path, int]]:
    """(image file, label) of every image under ``folder``'s class folders, in sorted order."""
    extra = sorted(set(_classes(folder)) - set(classes))
    if extra:
        raise UserError(f"{folder} has classes {extra[:5]} that train/ does not have; its classes must be among "
                        f"train/'s")
    out = []
    for label, name in enumerate(classes):
        sub = folder / name
        if sub.is_dir():
            out += [(p, label) for p in sorted(sub.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return out


def _read(path: Path, channels: int, size: int) -> torch.Tensor:
    """One image as uint8 (C, size, size): shorter side resized to ``size``, centre crop."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB" if channels == 3 else "L")
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{path} is not an image PIL can read ({exc}); remove it or fix it") from None
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return torch.from_numpy(arr.reshape(size, size, channels).copy()).permute(2, 0, 1)


def _tensors(files: list[tuple[Path, int]], channels: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.empty(len(files), channels, size, size, dtype=torch.uint8)
    for i, (path, _) in enumerate(files):
        x[i] = _read(path, channels, size)
    return x, torch.tensor([label for _, label in files], dtype=torch.int64)


def _carve(files: list[tuple[Path, int]], fractions: dict[str, float], gen: torch.Generator) -> dict[str, list]:
    """Split ``files`` into train and the named splits by a seeded permutation; each named split gets
    ``round(fraction * n)`` images (at least 1) and train keeps at least one."""
    order = torch.randperm(len(files), generator=gen).tolist()
    out: dict[str, list] = {}
    for split, fraction in fractions.items():
        n = max(1, round(fraction * len(files)))
        if n >= len(order):
            raise UserError(f"train/ has {len(files)} images: too few to carve a {split} split of {fraction:g} "
                            f"from it and keep a training set; add images or a {split}/ folder")
        out[split], order = [files[i] for i in order[:n]], order[n:]
    out["train"] = [files[i] for i in sorted(order)]
    return out


def _numbers(value: Any, channels: int, what: str) -> tuple[float, ...] | None:
    """Per-channel numbers from a number, a sequence or an 'a,b,c' string (one value serves every channel)."""
    if value is None:
        return None
    try:
        values = [float(v) for v in (value.split(",") if isinstance(value, str) else
                                     (value if isinstance(value, Sequence) else [value]))]
    except (TypeError, ValueError):
        raise UserError(f"imagefolder {what}={value!r} is not a number or a list of numbers") from None
    if len(values) == 1:
        values *= channels
    if len(values) != channels or (what == "std" and min(values) <= 0):
        raise UserError(f"imagefolder {what}={value!r}: expected {channels} numbers{' > 0' if what == 'std' else ''}")
    return tuple(values)


def _shuffled(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(len(y), generator=gen)
    return x[order].contiguous(), y[order].contiguous()


def load_image_folder(root: str | os.PathLike[str] | None, image_size: int = DEFAULT_IMAGE_SIZE, channels: int = 3,
                      mean: Any = None, std: Any = None, val_fraction: float = 0.1, test_fraction: float = 0.1,
                      seed: int = 0, augment: bool = True) -> Any:
    """The :class:`netcomp.data.Dataset` of an image folder (see the module docstring); UserError for a folder
    that is not one, an unreadable image or bad options."""
    from netcomp.data import Dataset, Split

    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 4:
        raise UserError(f"imagefolder image_size={image_size!r}: expected an integer >= 4")
    if channels not in (1, 3):
        raise UserError(f"imagefolder channels={channels!r}: expected 1 (grey) or 3 (RGB)")
    for what, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < float(value) < 1:
            raise UserError(f"imagefolder {what}={value!r}: expected a fraction in (0, 1)")
    folder = _check(root)
    classes = _classes(folder / "train")
    if len(classes) < 2:
        raise UserError(f"{folder / 'train'} has {len(classes)} class folder(s); a classifier needs at least 2")
    gen = torch.Generator().manual_seed(int(seed))
    files = {s: _files(folder / s, classes) for s in _SPLITS if (folder / s).is_dir()}
    missing = {s: f for s, f in (("val", val_fraction), ("test", test_fraction)) if s not in files}
    if missing:
        files.update(_carve(files["train"], missing, gen))
    splits = {}
    for name in _SPLITS:
        if not files[name]:
            raise UserError(f"{folder / name} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        splits[name] = Split(*_shuffled(*_tensors(files[name], channels, image_size), gen))
    pixels = splits["train"].x.to(torch.float64) / 255.0
    mean_ = _numbers(mean, channels, "mean") or tuple(float(v) for v in pixels.mean(dim=(0, 2, 3)))
    spread = torch.nan_to_num(pixels.std(dim=(0, 2, 3)), nan=1.0)  # one training image: no spread to measure
    std_ = _numbers(std, channels, "std") or tuple(max(float(v), 1e-3) for v in spread)
    return Dataset(name=NAME, num_classes=len(classes), channels=channels, image_size=image_size, mean=mean_,
                   std=std_, augment=bool(augment), **splits)
