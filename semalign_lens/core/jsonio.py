"""Durable files: a JSON file replaced whole or not at all, and the fsync that makes a rename stick.

Every record the package writes (run configs, checkpoints' pointers, pairings, cache indexes, run locks) goes
through `write_json_atomic`, so a kill, a Ctrl-C or a full disk never leaves half a file for the next run to read.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from .errors import writing


def fsync_path(path: Path) -> None:
    """Flush a file, or a directory's entries (what makes a rename durable), to disk; a file system that
    cannot sync a directory (EINVAL) has nothing more to offer."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Replace `path` whole or not at all, durably; a refused write is one line naming `path`."""
    tmp = path.with_name(path.name + ".tmp")
    with writing(path):
        try:
            with open(tmp, "w") as f:
                json.dump(obj, f, indent=2, default=str)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_path(path.parent)
