"""Append-only JSON-lines files that survive a kill or a full disk: a torn line never blocks a resume.

A run directory's ``evaluations.jsonl`` and ``cache.jsonl`` grow one line per finished evaluation. A kill or a
full disk in the middle of an append can leave half a line at the end; if nothing noticed, the next append
would be glued to it and every later read would stop there. So:

- :func:`append_jsonl` serialises the whole line first, writes it with one write call (continuing only after
  a short write), flushes and fsyncs. If the write fails part way (``OSError``, e.g. ENOSPC), the file is
  truncated back to its size before the append and the error re-raised: no half line is left behind.
- :func:`read_jsonl` returns every complete, valid line. A torn tail (a last line without its newline, or
  one that does not parse) is dropped and, with ``repair=True``, cut off the file so that later appends start
  on a clean line (:class:`TornLineWarning` names the file and the bytes dropped). A bad line in the middle
  is skipped with a :class:`CorruptLineWarning` (file and line number) and the lines after it are still
  read; the middle of a file is never rewritten.

Appends and repairs take an exclusive ``flock`` on the file (where the platform has one), so a reader that
repairs while another process appends never cuts off a line that is still being written.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: appends and repairs go unlocked
    fcntl = None

__all__ = ["JsonlWarning", "TornLineWarning", "CorruptLineWarning", "append_jsonl", "read_jsonl", "to_jsonable"]


class JsonlWarning(UserWarning):
    """Base of the warnings about damaged JSON-lines files."""


class TornLineWarning(JsonlWarning):
    """A file ended in a torn line (a kill or a full disk during an append); the line was dropped."""


class CorruptLineWarning(JsonlWarning):
    """A line in the middle of a file is not a JSON object; it was skipped and the lines after it read."""


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append ``row`` to ``path`` as one JSON line, durably; on failure the file is left as it was.

    The parent folders are created as needed. If the file does not end in a newline (a torn line some
    earlier writer left and nothing repaired), the new line starts on a line of its own, so it stays
    readable and the torn one reads as a corrupt line.
    """
    path = Path(path)
    data = (json.dumps(row) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b", buffering=0) as f, _locked(f):
        start = os.fstat(f.fileno()).st_size
        if start:
            f.seek(start - 1)
            if f.read(1) != b"\n":
                data = b"\n" + data
        try:
            view = memoryview(data)
            while view:  # one write call, unless the OS writes only part of it
                written = f.write(view)
                if not written:
                    raise OSError(f"could not append to {path}: the write wrote nothing")
                view = view[written:]
            f.flush()
            os.fsync(f.fileno())
        except OSError:
            with contextlib.suppress(OSError):  # the append's error is the one worth reporting
                os.ftruncate(f.fileno(), start)
                os.fsync(f.fileno())
            raise


def read_jsonl(path: str | Path, repair: bool = True) -> list[dict]:
    """Every complete, valid JSON object line of ``path``, in order; a missing file reads as ``[]``.

    Empty lines are ignored. A bad line in the middle is skipped with a :class:`CorruptLineWarning`. A torn
    tail (whatever follows the last good line, when it is not blank) is dropped with a
    :class:`TornLineWarning`; with ``repair=True`` the file is truncated to the end of the last good line.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    rows, bad, good_end = _parse(data)
    torn = bool(data[good_end:].strip())
    if torn and repair:
        # Repair under the appenders' lock, on what the file holds then: a line another process was still
        # writing when it was read above is complete by now and must not be cut off.
        with open(path, "r+b", buffering=0) as f, _locked(f):
            data = f.read()
            rows, bad, good_end = _parse(data)
            torn = bool(data[good_end:].strip())
            if torn:
                os.ftruncate(f.fileno(), good_end)
                os.fsync(f.fileno())
    for line_no in bad:
        warnings.warn(f"{path}: line {line_no} is not a valid JSON object; skipped it and read the lines after it",
                      CorruptLineWarning, stacklevel=2)
    if torn:
        dropped = len(data) - good_end
        what = "truncated the file to its last complete line" if repair else "ignored it (file left as is)"
        warnings.warn(f"{path}: dropped a torn last line ({dropped} bytes, from byte {good_end}); {what}",
                      TornLineWarning, stacklevel=2)
    return rows


def _parse(data: bytes) -> tuple[list[dict], list[int], int]:
    """(rows, 1-based numbers of the bad lines before the last good one, byte offset after the last good line)."""
    rows: list[dict] = []
    bad: list[int] = []
    pending: list[int] = []  # bad lines not yet followed by a good one: the torn tail, if nothing good follows
    good_end = 0
    pos = 0
    line_no = 0
    while pos < len(data):
        line_no += 1
        newline = data.find(b"\n", pos)
        end = len(data) if newline < 0 else newline + 1
        line = data[pos:end]
        pos = end
        if not line.strip():
            continue
        row = _load(line) if line.endswith(b"\n") else None  # a last line without its newline is torn
        if row is None:
            pending.append(line_no)
            continue
        rows.append(row)
        bad += pending
        pending = []
        good_end = end
    return rows, bad, good_end


def _load(line: bytes) -> dict | None:
    try:
        row = json.loads(line)
    except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
        return None
    return row if isinstance(row, dict) else None


@contextlib.contextmanager
def _locked(f: IO[Any]) -> Iterator[None]:
    """Hold an exclusive flock on ``f`` (a no-op where there is none, or where the filesystem refuses it)."""
    locked = False
    if fcntl is not None:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            locked = True
        except OSError:
            pass
    try:
        yield
    finally:
        if locked:
            with contextlib.suppress(OSError):
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def to_jsonable(value: Any) -> Any:
    """Actions and infos as plain JSON values (numpy arrays and scalars become lists and numbers)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
