"""Folders of numbered safetensors shards with an index that records each file's size and sha256 (ours).

Activation captures on disk (`lens.capture.ShardedCapture`) and teacher-target caches (`training.targets`) are
both shards written one by one and an index written last, so an interrupted write is never taken for a complete
one, and a shard damaged since (truncated, overwritten, copied halfway) is named before anything reads it. One
implementation of the names, the writes, the index records and the checks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .atomic import write_json_atomic
from .errors import writing
from .paths import file_problem, file_record

PATTERN = "shard-*.safetensors"


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def write_shard(folder: Path, i: int, tensors: dict[str, torch.Tensor], fix: str) -> Path:
    """Shard `i` of `folder`; a write the disk refuses is one line naming the shard and `fix`."""
    path = folder / shard_name(i)
    with writing(path, fix):
        save_file(tensors, str(path))
    return path


def write_index(folder: Path, name: str, n_shards: int, record: dict[str, Any]) -> dict[str, Any]:
    """The index, last: `record`, the number of shards and each shard's size and sha256."""
    index = {**record, "shards": n_shards,
             "files": {shard_name(i): file_record(folder / shard_name(i)) for i in range(n_shards)}}
    write_json_atomic(folder / name, index)
    return index


def read_index(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / name
    return json.loads(path.read_text()) if path.exists() else None


def shard_problems(folder: Path, index: dict[str, Any], checksum: bool = True) -> Iterator[tuple[Path, str]]:
    """(shard, how it differs from its record) for every shard that does, sizes first (`core.paths.file_problem`)."""
    for name, record in index.get("files", {}).items():
        if (problem := file_problem(folder / name, record, checksum)) is not None:
            yield folder / name, problem


def remove_shards(folder: Path, index_name: str) -> None:
    """The index first, then the shards: never an index without its shards."""
    for old in [folder / index_name, *folder.glob(PATTERN)]:
        old.unlink(missing_ok=True)


class ShardFiles:
    """Open shards of a folder, memory-mapped and kept open (`safe_open`): read a row or a key without loading
    the rest of the file."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._open: dict[int, Any] = {}

    def __getitem__(self, i: int):
        if i not in self._open:
            self._open[i] = safe_open(str(self.folder / shard_name(i)), "pt")
        return self._open[i]
