"""Files replaced whole or not at all: a JSON record written durably, and a temporary per writer.

Every record the package writes (run configs, checkpoints' pointers, pairings, cache indexes, run locks, semantic
bases) is replaced atomically, so a kill, a Ctrl-C or a full disk never leaves half a file for the next run to read.
Several processes may write the same file at once (the processes of an `accelerate launch` run, two runs sharing
a cache): a temporary shared by every writer (`path.tmp`) is not enough, since one writer's rename moves away the
temporary another is filling (25 of 120 concurrent basis saves failed that way in a stress test). So each writer
fills its own temporary, named by host, process and a random part, and `os.replace` puts it in place: a reader
finds the old file or one writer's whole new one, and the last writer's file stays (ours).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import writing


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path`, this writer's alone: the body writes it, then it replaces `path`. If the
    body fails, the temporary is removed and `path` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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


def as_json(obj: Any, default=str) -> Any:
    """`obj` as it reads back from the file `write_json_atomic` writes (tuples become lists, anything else not
    JSON becomes `default(it)`): a record kept in memory equal to its file."""
    return json.loads(json.dumps(obj, default=default))


def write_json_atomic(path: Path, obj: Any) -> None:
    """Replace `path` whole or not at all, durably, safe beside other writers; a refused write is one line
    naming `path`."""
    with writing(path):
        with replacing(path) as tmp, open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        fsync_path(path.parent)
