"""Where semalign_lens keeps derived files (converted weights, semantic bases, cached targets).

`SEMALIGN_CACHE` overrides the location; the default follows XDG (`~/.cache/semalign_lens`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("SEMALIGN_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "semalign_lens")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


_SHA256: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """sha256 of a file, remembered per (path, size, mtime) for this process (a run checks its sources before
    loading them, and a 270 MB GGUF need not be read twice)."""
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
        _SHA256[key] = h.hexdigest()
    return _SHA256[key]
