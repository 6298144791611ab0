"""Fingerprints, one implementation each: tensors, named weights, files, JSON records, text, path order.

Every cache key, resume identity and provenance hash in the package is made here, so the same bytes always
give the same key wherever they are hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch


def sha256_hex(*chunks: str | bytes | memoryview) -> str:
    """sha256 over the chunks in order (text as UTF-8)."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk.encode() if isinstance(chunk, str) else chunk)
    return h.hexdigest()


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """A tensor's raw bytes, on the host, in row-major order."""
    t = t.detach().cpu().contiguous()
    return memoryview(t.view(-1).view(torch.uint8).numpy())


def _tensor_chunks(label: str, t: torch.Tensor) -> tuple[str, memoryview]:
    return f"{label}{t.dtype}{tuple(t.shape)}", tensor_bytes(t)


def tensor_hash(*tensors: torch.Tensor | None) -> str:
    """sha256 over dtype, shape and bytes of each tensor (None entries are skipped)."""
    return sha256_hex(*(c for t in tensors if t is not None for c in _tensor_chunks("", t)))


def named_tensors_hash(items: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 over each (name, tensor)'s name, dtype, shape and bytes, in the order given: a model's weights."""
    return sha256_hex(*(c for name, t in items for c in _tensor_chunks(name, t)))


def record_hash(record: Any, *, sort_keys: bool = False) -> str:
    """sha256 of a JSON-able record's JSON text."""
    return sha256_hex(json.dumps(record, sort_keys=sort_keys))


_FILE_SHA256: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """sha256 of a file, remembered per (path, size, mtime) for this process (a run checks its sources before
    loading them, and a 270 MB GGUF need not be read twice)."""
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_SHA256:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
        _FILE_SHA256[key] = h.hexdigest()
    return _FILE_SHA256[key]


def files_sha256(paths: Iterable[str | os.PathLike]) -> str | None:
    """One file's sha256, or the sha256 of several files' sha256s in order; None for no file."""
    digests = [file_sha256(p) for p in paths]
    if not digests:
        return None
    return digests[0] if len(digests) == 1 else sha256_hex("".join(digests))


def safetensors_sha256(folder: Path) -> str | None:
    """A model directory's weights: the sha256 of its .safetensors files in name order (None for none)."""
    return files_sha256(sorted(Path(folder).glob("*.safetensors")))


def path_key(path: Path, root: Path) -> str:
    """sha1 of a file's path relative to `root`: a deterministic shuffle of a file tree, and its hash splits."""
    return hashlib.sha1(path.relative_to(root).as_posix().encode()).hexdigest()
