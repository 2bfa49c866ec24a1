"""Whole-file writes that a kill cannot tear: write a temporary file, fsync it, rename it over the target.

A reader then sees the old file or the new one, never a part. Every file a run writes in one go (configs,
summaries, checkpoints, students, policies, plots) goes through here; append-only records use
:mod:`netcomp.jsonl`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from netcomp.errors import disk_full_error

#: The suffix of the temporary file an atomic write renames into place (a kill can leave one behind).
TMP_SUFFIX = ".tmp"


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a temporary binary file beside ``path``, fsync it, then rename it to ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)  # never collide
    except OSError as exc:
        raise disk_full_error(path, exc) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # the mode a plain open() would give, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise disk_full_error(path, exc) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(path.parent)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that killed atomic writes left in ``folder`` and its ``submitted/``; the
    removed paths (not recursive: a folder of runs keeps each run's own).

    Call it only while holding the folder's lock: a live writer's temporary file must not be taken away.
    """
    folder = Path(folder)
    stale = [p for where in (folder, folder / "submitted") if where.is_dir()
             for p in where.glob(f".*{TMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_atomic(path, lambda f: f.write(text.encode()))


def torch_save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch

    write_atomic(path, lambda f: torch.save(obj, f))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
