"""The one error type for the user's input or a run directory's state.

The command line prints such an error as one line and exits with code 2; any other exception is a bug and
keeps its traceback. Raise :class:`UserError` (or a subclass) when the message tells the user what to change.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path


class UserError(ValueError):
    """Bad input or run-directory state: the message names the bad value and what was expected.

    A subclass of ValueError so that code which already catches ValueError for bad input keeps working.
    """


class DiskFull(UserError):
    """A write failed because the disk is full (or over quota): names the file and the free space."""


def disk_full_error(path: str | Path, exc: OSError) -> OSError | DiskFull:
    """A :class:`DiskFull` naming ``path`` and the free bytes of its file system when ``exc`` is ENOSPC or
    EDQUOT, else ``exc`` itself (the caller re-raises what it gets)."""
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return exc
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:,.1f} MiB free"
    except OSError:
        free = "free space unknown"
    return DiskFull(f"the disk is full: could not write {path} ({free} on its file system); free some space and "
                    f"resume the run with --resume (nothing written before was lost)")
