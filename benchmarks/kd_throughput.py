"""KD throughput: the netcomp engine against a plain PyTorch pipeline, side by side in one run.

What it measures: images per second (and seconds per 50,000-image epoch) of knowledge distillation of a
ResNet-18-shaped student (CIFAR variant: 32x32 inputs, 3 channels, 10 classes) from a ResNet-18 teacher,
with MSE between student and teacher logits, Adam, and random-crop (pad 4) + horizontal-flip augmentation.
Why: the reward of every compression episode is a short KD run, so its throughput is the product's speed;
the claim is shown as a ratio against the usual way of writing the same training (results recorded in
benchmarks/README.md, section ``kd_throughput.py``).

Pipelines (same images, batch size, optimiser, loss, teacher forward per batch):

1. ``engine``: :func:`netcomp.distill.train_students` on a :class:`netcomp.data.Dataset` that is already on
   the device (put there once, before timing, as an environment does). Batches are cut, cropped, flipped
   and normalised on the device; on CUDA it uses bf16 autocast, channels_last and a fused Adam by itself.
   With ``--students K`` it trains K students together on one batch stream with one teacher forward per
   batch; its images/s then counts student-images (batch images x students).
   The same run is repeated with a warm :class:`netcomp.distill.TeacherLogitCache` (filled by the first
   run on the same seed: no teacher forward at all, as for every student after the first in a search), and
   with ``--together K`` students trained at once.
2. ``plain``: a tutorial-style loop: ``torch.utils.data.DataLoader`` over a map-style dataset of uint8 HWC
   images that makes a PIL image per item and applies ``RandomCrop(32, padding=4)``,
   ``RandomHorizontalFlip``, ``ToTensor`` and ``Normalize`` per image; fp32 (on CUDA, convolutions use
   PyTorch's default TF32 setting), NCHW, plain Adam, ``loss.item()`` accumulated every step as tutorials
   do. One student. ``--workers`` may list several worker counts; each gives one row.

Timing: each measured run trains fresh students (built before the clock starts) for ``--images`` images
(rounded down to whole batches); the clock includes everything the call does (for the engine: moving the
models to the device, building optimisers, the step loop and the final evaluation on a 16-image
validation split). Warm-up steps run first for each pipeline. Runs of the pipelines are interleaved
(engine, plain, engine, plain, ...) so that drift on a shared machine hits both alike; the median is
reported. Weights are random: throughput does not depend on them.

Example (GPU)::

    python benchmarks/kd_throughput.py --device cuda --images 50000 --repeats 3 --workers 0 4 --json kd.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset
from torchvision import transforms

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

from netcomp.data import Dataset, Split  # noqa: E402
from netcomp.distill import TeacherLogitCache, TrainConfig, train_students  # noqa: E402
from netcomp.surgery import build_module  # noqa: E402
from netcomp.zoo import build_arch  # noqa: E402

#: CIFAR-10 per-channel mean and std (pixel units in [0, 1]), used by both pipelines.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
EPOCH_IMAGES = 50_000
NUM_CLASSES = 10
IMAGE_SIZE = 32
VAL_IMAGES = 16
LR = 1e-3
WEIGHT_DECAY = 5e-4


# ---------------------------------------------------------------------------------------------- setup
def make_net(arch_name: str, seed: int) -> nn.Module:
    """A zoo network for 3x32x32 inputs and 10 classes, initialised from ``seed``."""
    torch.manual_seed(seed)
    return build_module(build_arch(arch_name, 3, IMAGE_SIZE, NUM_CLASSES))


def random_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random uint8 images (N, 3, 32, 32) and labels in [0, 10): CIFAR's shape, no download."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    return x, y


def engine_dataset(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> Dataset:
    """The images as a netcomp Dataset on ``device`` (augmentation on; a small val split for the final eval)."""
    val = Split(x[:VAL_IMAGES], y[:VAL_IMAGES])
    ds = Dataset(name="random-cifar", num_classes=NUM_CLASSES, channels=3, image_size=IMAGE_SIZE,
                 mean=CIFAR_MEAN, std=CIFAR_STD, augment=True, train=Split(x, y), val=val, test=val)
    return ds.to(device)


class PilImages(TorchDataset):
    """Map-style dataset as in torchvision's CIFAR10: uint8 HWC arrays, a PIL image per item, then transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable[[Image.Image], torch.Tensor]):
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def plain_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, workers: int, device: torch.device,
                 seed: int) -> DataLoader:
    """The tutorial DataLoader: per-image PIL crop/flip/ToTensor/Normalize, shuffled, full batches only."""
    tf = transforms.Compose([
        transforms.RandomCrop(IMAGE_SIZE, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
    ])
    data = PilImages(x.permute(0, 2, 3, 1).contiguous().numpy(), y.numpy(), tf)
    return DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                      pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(seed))


def sync(device: torch.device) -> None:
    """Wait for queued device work, so that wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """The accelerator's name, or the CPU with its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


# ---------------------------------------------------------------------------------------------- pipelines
def run_engine(teacher: nn.Module, ds: Dataset, config: TrainConfig, arch: str, students: int,
               device: torch.device, seed: int, cache: TeacherLogitCache | None = None) -> float:
    """Seconds for one :func:`train_students` call over the whole training split (fresh students), with the
    teacher-logit ``cache`` when given."""
    nets = [make_net(arch, seed + 1 + i) for i in range(students)]
    sync(device)
    start = time.perf_counter()
    results = train_students(nets, ds, config, teacher=teacher, device=device, seed=seed, teacher_cache=cache)
    sync(device)
    seconds = time.perf_counter() - start
    bad = [r.invalid_reason for r in results if not r.valid]
    if bad:
        raise RuntimeError(f"engine run diverged: {bad}")
    return seconds


def run_plain(teacher: nn.Module, loader: DataLoader, arch: str, device: torch.device, seed: int,
              max_steps: int | None = None) -> float:
    """Seconds for one tutorial-style KD epoch over ``loader`` (or its first ``max_steps`` batches)."""
    student = make_net(arch, seed + 1).to(device).train()
    teacher.to(device).eval()
    sync(device)
    start = time.perf_counter()
    optimizer = torch.optim.Adam(student.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    running = 0.0
    for step, (x, _) in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        x = x.to(device, non_blocking=True)
        with torch.no_grad():
            t_logits = teacher(x)
        loss = F.mse_loss(student(x), t_logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running += loss.item()
    sync(device)
    seconds = time.perf_counter() - start
    if not np.isfinite(running):
        raise RuntimeError("plain run diverged")
    return seconds


# ---------------------------------------------------------------------------------------------- report
@dataclass
class Row:
    """One pipeline's result: per-run seconds and the derived throughput."""

    pipeline: str
    device: str
    batch_size: int
    students: int
    images: int
    seconds: list[float]

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def images_per_s(self) -> float:
        """Student-images per second (images x students / median seconds)."""
        return self.images * self.students / self.median_seconds

    @property
    def epoch_seconds(self) -> float:
        """Seconds per student per 50,000-image epoch at this throughput."""
        return EPOCH_IMAGES / self.images_per_s

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "median_seconds": self.median_seconds, "images_per_s": self.images_per_s,
                "epoch_seconds_50k": self.epoch_seconds}


#: The ratio column's title: each row's images/s over the engine row's (above 1: faster than the engine).
RATIO_COLUMN = "images/s vs engine"


def print_table(rows: list[Row], engine: Row) -> None:
    """The results table; the last column is each row's images/s over the engine row's, so a faster row reads
    above 1x (the teacher-logit cache, students trained together) and a slower one below (the plain pipeline:
    the engine's speedup over it is the inverse, printed below the table)."""
    header = ("pipeline", "device", "batch", "students", "images/s", "s/epoch (50k)", RATIO_COLUMN)
    table = [header] + [
        (r.pipeline, r.device, str(r.batch_size), str(r.students), f"{r.images_per_s:,.1f}",
         f"{r.epoch_seconds:,.1f}", f"{r.images_per_s / engine.images_per_s:.2f}x")
        for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for k, line in enumerate(table):
        print(" | ".join(cell.ljust(w) for cell, w in zip(line, widths)))
        if k == 0:
            print("-+-".join("-" * w for w in widths))


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; defaults depend on the device (small on CPU so a run takes about 2 minutes)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device; default cuda if available, else cpu")
    p.add_argument("--images", type=int, default=None,
                   help="images per measured run (rounded down to whole batches); default 50000 on CUDA, 1024 on CPU")
    p.add_argument("--batch-size", type=int, default=256, help="default 256")
    p.add_argument("--students", type=int, default=1, help="students trained together in the engine run; default 1")
    p.add_argument("--together", type=int, default=4,
                   help="students trained together on one batch stream in the third row; default 4")
    p.add_argument("--warmup-steps", type=int, default=None, help="default 10 on CUDA, 1 on CPU")
    p.add_argument("--repeats", type=int, default=None, help="runs per pipeline (median reported); "
                                                             "default 3 on CUDA, 1 on CPU")
    p.add_argument("--workers", type=int, nargs="+", default=None,
                   help="DataLoader worker counts for the plain pipeline, one row each; default 4 on CUDA, 0 on CPU")
    p.add_argument("--teacher", default="resnet18", help="zoo teacher, default resnet18")
    p.add_argument("--student", default="resnet18",
                   help="zoo student, default resnet18 (a smaller one, e.g. resnet20, for a plumbing run)")
    p.add_argument("--seed", type=int, default=0, help="seed of images, weights and shuffles; default 0")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    cuda = torch.device(args.device).type == "cuda"
    if args.images is None:
        args.images = 50_000 if cuda else 1024
    if args.warmup_steps is None:
        args.warmup_steps = 10 if cuda else 1
    if args.repeats is None:
        args.repeats = 3 if cuda else 1
    if args.workers is None:
        args.workers = [4] if cuda else [0]
    for name in ("images", "batch_size", "students", "together", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup_steps < 0 or min(args.workers) < 0:
        p.error("--warmup-steps and --workers must be >= 0")
    if args.images < args.batch_size:
        p.error(f"--images ({args.images}) must be at least --batch-size ({args.batch_size})")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run both pipelines, print the table, optionally write JSON; returns the results."""
    args = parse_args(argv)
    device = torch.device(args.device)
    student_arch = args.student
    n = args.images // args.batch_size * args.batch_size
    name = device_name(device)
    print(f"torch {torch.__version__}; device {name}; teacher {args.teacher} -> student {student_arch}; "
          f"{n} images per run, batch {args.batch_size}, {args.repeats} run(s) per pipeline (median), "
          f"{args.warmup_steps} warm-up step(s)")

    x, y = random_images(n, args.seed)
    ds = engine_dataset(x, y, device)
    config = TrainConfig(loss="mse", epochs=1, batch_size=args.batch_size, optimizer="adam", lr=LR,
                         weight_decay=WEIGHT_DECAY, augment=True, eval_every_epoch=False)
    # Separate teachers: the engine converts its teacher to channels_last on CUDA, the plain one stays NCHW.
    engine_teacher = make_net(args.teacher, args.seed).to(device).eval()
    plain_teacher = make_net(args.teacher, args.seed).to(device).eval()
    loaders = {w: plain_loader(x, y, args.batch_size, w, device, args.seed) for w in args.workers}

    if args.warmup_steps:
        run_engine(engine_teacher, ds, replace(config, max_steps=args.warmup_steps), student_arch,
                   args.students, device, args.seed)
        for loader in loaders.values():
            run_plain(plain_teacher, loader, student_arch, device, args.seed, max_steps=args.warmup_steps)

    engine_s: list[float] = []
    cached_s: list[float] = []
    together_s: list[float] = []
    plain_s: dict[int, list[float]] = {w: [] for w in args.workers}
    for r in range(args.repeats):
        cache = TeacherLogitCache()  # filled by the engine run, then every batch of the cached run is a hit
        engine_s.append(run_engine(engine_teacher, ds, config, student_arch, args.students, device, args.seed + r,
                                   cache))
        cached_s.append(run_engine(engine_teacher, ds, config, student_arch, args.students, device, args.seed + r,
                                   cache))
        together_s.append(run_engine(engine_teacher, ds, config, student_arch, args.together, device,
                                     args.seed + r))
        print(f"  run {r + 1}: engine {engine_s[-1]:.2f} s, with the teacher-logit cache {cached_s[-1]:.2f} s, "
              f"{args.together} students at once {together_s[-1]:.2f} s", end="", flush=True)
        for w, loader in loaders.items():
            plain_s[w].append(run_plain(plain_teacher, loader, student_arch, device, args.seed + r))
            print(f", plain (workers={w}) {plain_s[w][-1]:.2f} s", end="", flush=True)
        print()

    engine = Row("engine (netcomp.distill)", name, args.batch_size, args.students, n, engine_s)
    rows = [engine, Row("engine + teacher-logit cache", name, args.batch_size, args.students, n, cached_s),
            Row(f"engine, {args.together} students at once", name, args.batch_size, args.together, n, together_s)]
    rows += [Row(f"plain DataLoader (workers={w})", name, args.batch_size, 1, n, plain_s[w])
                       for w in args.workers]
    rows_by_workers = dict(zip(args.workers, rows[3:]))
    print()
    print_table(rows, engine)
    # Runs are interleaved, so run r of each pipeline saw similar machine load: their ratio is less
    # sensitive to drift on a shared machine than the ratio of medians.
    paired = {w: statistics.median(args.students * p / e for e, p in zip(engine_s, plain_s[w])) for w in args.workers}
    for w, ratio in paired.items():
        print(f"engine speedup over plain (workers={w}): {engine.images_per_s / rows_by_workers[w].images_per_s:.2f}x "
              f"(ratio of medians), {ratio:.2f}x (paired: median over runs of per-run ratios)")
    print(f"teacher-logit cache: {statistics.median(e / c for e, c in zip(engine_s, cached_s)):.2f}x the engine's "
          f"speed once the cache is warm (paired median; the first student of a search pays the teacher forwards)")
    print(f"\nimages/s counts student-images; s/epoch = 50,000 / (images/s). {args.repeats} run(s) per "
          f"pipeline, median shown; torch {torch.__version__}.")
    out = {"torch": str(torch.__version__), "device": name, "teacher": args.teacher, "student": student_arch,
           "images_per_run": n, "batch_size": args.batch_size, "repeats": args.repeats,
           "warmup_steps": args.warmup_steps, "students": args.students,
           "rows": [r.to_dict() for r in rows],
           # speedup: the engine's images/s over each row's (its speedup over the plain rows);
           # vs_engine: each row's over the engine's (the table's last column: the cache's own speedup).
           "speedup": {r.pipeline: engine.images_per_s / r.images_per_s for r in rows[1:]},
           "vs_engine": {r.pipeline: r.images_per_s / engine.images_per_s for r in rows[1:]},
           "cache_speedup": statistics.median(e / c for e, c in zip(engine_s, cached_s)),
           "paired_speedup": {f"plain DataLoader (workers={w})": v for w, v in paired.items()}}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    return out


if __name__ == "__main__":
    main()
