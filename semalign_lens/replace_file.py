"""Replacing a file whole when several processes may write it at once (ours).

The processes of an `accelerate launch` run, and two runs that share a cache, write the same cache files (a
model's semantic basis, for one). A temporary shared by every writer (`path.tmp`) is not enough: one writer's
rename moves away the temporary another writer is filling or about to rename, and that writer fails with
`FileNotFoundError` (25 of 120 concurrent basis saves in `gpu-readiness-review.md`'s stress test). Here each
writer fills its own temporary, named by host, process and a random part, and `os.replace` puts it in place
atomically: a reader finds the old file or one writer's whole new one, and the last writer's file stays.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
