"""One process per run directory: an advisory lock that the kernel drops when its holder dies.

Two processes writing one run directory interleave its metrics and race on its `latest.json`, so `semalign
align`, student pretraining and the transfer table hold `DIR/.semalign.lock` while they write `DIR` (a
`filelock` lock: flock on POSIX, released by the kernel when the holder exits or is killed, so a lock left by
a killed run is simply taken over by the next one). Who holds it (pid, host, since when) is written to
`DIR/.semalign.lock.json` beside it, for the one-line refusal a second process prints. The lock is advisory:
only semalign's own writers honour it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from .atomic import write_json_atomic
from .errors import SemalignError

LOCK = ".semalign.lock"
HOLDER = ".semalign.lock.json"


@contextmanager
def run_lock(directory: str | os.PathLike, what: str = "run directory", wait: bool = False) -> Iterator[None]:
    """Hold `directory`'s lock (creating the directory) while the body runs. Held by another process: refuse
    in one line naming it, or with `wait` (a shared cache that process is building) wait until it is free."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock = _acquire(directory, what, wait)
    try:
        write_json_atomic(directory / HOLDER, {"pid": os.getpid(), "host": socket.gethostname(),
                                               "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        yield
    finally:
        (directory / HOLDER).unlink(missing_ok=True)
        lock.release()


def refuse_if_locked(directory: str | os.PathLike, what: str = "run directory") -> None:
    """Refuse at once, before any loading, when another process holds `directory`'s lock; creates nothing.
    (The lock itself is taken by `run_lock` when the writing starts.)"""
    directory = Path(directory)
    if (directory / LOCK).exists():
        _acquire(directory, what, wait=False).release()


def _acquire(directory: Path, what: str, wait: bool) -> FileLock:
    lock = FileLock(directory / LOCK)
    try:
        lock.acquire(blocking=wait)
    except Timeout:
        raise SemalignError(f"{what} {directory} is in use by {_holder(directory)}; wait for that run to finish "
                            f"(or stop it), or choose another {what}") from None
    return lock


def _holder(directory: Path) -> str:
    try:
        h = json.loads((directory / HOLDER).read_text())
        return f"process {h['pid']} on {h['host']} (since {h['since']})"
    except (OSError, ValueError, KeyError, TypeError):  # between its lock and its note, or a foreign file
        return "another process"
