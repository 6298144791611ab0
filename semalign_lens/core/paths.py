"""Where semalign_lens keeps derived files (converted weights, semantic bases, cached targets), and how it
knows them intact.

`SEMALIGN_CACHE` overrides the location; the default follows XDG (`~/.cache/semalign_lens`). Shards written
for later reading (teacher-target caches, captures on disk) record each file's size and sha256 when written
(`file_record`), so a file truncated or changed since is named before anything reads it (`file_problem`).
"""

from __future__ import annotations

import os
from pathlib import Path

from .hashing import file_sha256


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("SEMALIGN_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "semalign_lens")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_record(path: str | os.PathLike) -> dict:
    """What a reader checks a written file against: its size and sha256."""
    return {"bytes": os.path.getsize(path), "sha256": file_sha256(path)}


def file_problem(path: str | os.PathLike, record: dict, checksum: bool = True) -> str | None:
    """How `path` differs from its `record` (missing, another size, with `checksum` another sha256), or None.
    The size comes first: a truncated file is caught without reading it."""
    if not os.path.isfile(path):
        return "missing"
    size = os.path.getsize(path)
    if size != record["bytes"]:
        return f"{size} bytes, {record['bytes']} when written"
    if checksum and file_sha256(path) != record["sha256"]:
        return "its sha256 differs from the one recorded when it was written"
    return None
