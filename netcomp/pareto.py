"""The accuracy/size Pareto front of a set of evaluated students and its 2-D hypervolume.

Two objectives: validation accuracy (higher is better) and a size, MACs or parameters (lower is better).
A point (accuracy a, size s) dominates another when a >= a' and s <= s' with at least one strict inequality.
The hypervolume of a set of points is the area they dominate inside the reference box: from the reference
size down to each point's size and from the reference accuracy up to each point's accuracy (the suite's
reference is accuracy 0 at the teacher's size, so every valid student that is smaller than its teacher and
better than chance adds area). Pure functions on plain records; no environment or gym import.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from typing import Any

#: The sizes a front can be built on (keys of an evaluation record).
SIZE_KEYS = ("macs", "params")
#: The columns of ``pareto_front.csv``.
FRONT_COLUMNS = ("index", "accuracy", "macs", "params", "arch_key")


def _check_size_key(size_key: str) -> None:
    if size_key not in SIZE_KEYS:
        raise ValueError(f"unknown size_key {size_key!r}; expected one of {', '.join(SIZE_KEYS)}")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def scored(records: Iterable[dict], size_key: str) -> list[dict]:
    """The records that can be placed on a front: valid, with a finite accuracy and size."""
    _check_size_key(size_key)
    return [r for r in records if r.get("valid") and _finite(r.get("accuracy")) and _finite(r.get(size_key))]


def pareto_front(records: Iterable[dict], size_key: str = "macs") -> list[dict]:
    """The non-dominated valid records over (accuracy: maximise, ``size_key``: minimise), by size ascending.

    Invalid records and records without an accuracy or size are left out. Of several records with the same
    (accuracy, size), e.g. one student evaluated twice, only the first (lowest ``index``, else first given)
    is kept. ValueError for a ``size_key`` other than ``macs`` or ``params``.
    """
    candidates = list(enumerate(scored(records, size_key)))
    candidates.sort(key=lambda p: (p[1][size_key], -p[1]["accuracy"], p[1].get("index", p[0]), p[0]))
    front, best = [], -math.inf
    for _, record in candidates:
        if record["accuracy"] > best:  # strictly more accurate than every smaller-or-equal point
            front.append(record)
            best = record["accuracy"]
    return front


def hypervolume(points: Iterable[Sequence[float]], ref_size: float, ref_accuracy: float = 0.0,
                relative: bool = False) -> float:
    """The area dominated by (accuracy, size) ``points`` inside the box [ref_accuracy, +) x (-, ref_size].

    Each point dominates the rectangle between itself and the reference point (``ref_accuracy``,
    ``ref_size``); the result is the area of the union. Points no better than the reference in either
    objective add nothing. With ``relative`` the sizes are divided by ``ref_size`` first (the size axis runs
    from 0 to 1), so with accuracies in [0, 1] and ``ref_accuracy`` 0 the result lies in [0, 1].
    """
    if not (_finite(ref_size) and ref_size > 0):
        raise ValueError(f"ref_size must be a finite number > 0, got {ref_size!r}")
    scale = float(ref_size) if relative else 1.0
    pts = sorted((float(s) / scale, float(a)) for a, s in points if a > ref_accuracy and s < ref_size)
    ref = float(ref_size) / scale
    area, best, previous = 0.0, ref_accuracy, None
    for size, accuracy in pts:  # sweep by size; the best accuracy so far holds until the next size
        if previous is not None:
            area += (size - previous) * (best - ref_accuracy)
        best, previous = max(best, accuracy), size
    if previous is not None:
        area += (ref - previous) * (best - ref_accuracy)
    return area


def front_hypervolume(records: Iterable[dict], size_key: str = "macs", relative: bool = True) -> float | None:
    """The hypervolume of a run's records: reference accuracy 0 at the teacher's size (``teacher_<size>`` of the
    records), relative sizes by default. None when no record names the teacher's size."""
    records = list(records)
    ref = next((r.get(f"teacher_{size_key}") for r in records if _finite(r.get(f"teacher_{size_key}"))), None)
    if ref is None:
        return None
    front = pareto_front(records, size_key)
    return hypervolume([(r["accuracy"], r[size_key]) for r in front], ref, relative=relative)


def front_csv(front: Iterable[dict]) -> str:
    """``pareto_front.csv``'s text: one row per record (index, accuracy, macs, params, arch_key)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FRONT_COLUMNS)
    for record in front:
        writer.writerow([record.get(k) for k in FRONT_COLUMNS])
    return out.getvalue()
