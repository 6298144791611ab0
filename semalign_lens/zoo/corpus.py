"""The student's pretraining corpus: the CPython standard library, read from the running interpreter.

Training data are the standard library's `.py` files outside test directories, including
`pydoc_data/topics.py` (PSF licence, present wherever Python is). The test directories stay unseen: later
stages use them as transfer data. Files are split into train/validation deterministically by a hash of
their relative path, so the split is the same on every machine with the same Python version.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import torch

from ..errors import SemalignError

DOC_SEPARATOR = "<|endoftext|>"
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _is_test_dir(part: str) -> bool:
    return part.startswith("test") or part in {"tests", "idle_test"}


def _python_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if not (_SKIP_DIRS & set(p.relative_to(root).parts)))


def stdlib_files(root: Path | None = None) -> list[Path]:
    """Non-test `.py` files under `root` (default: this interpreter's standard library)."""
    root = Path(root) if root else stdlib_root()
    files = [p for p in _python_files(root) if not any(_is_test_dir(d) for d in p.relative_to(root).parts[:-1])]
    if not files:
        raise SemalignError(f"no .py files found under {root} (outside test directories); point --corpus at a "
                            "directory of Python sources, or omit it to use this interpreter's standard library")
    return files


def stdlib_test_files(root: Path | None = None) -> list[Path]:
    """`.py` files inside the standard library's test directories (unseen by the student)."""
    root = Path(root) if root else stdlib_root()
    return [p for p in _python_files(root) if any(_is_test_dir(d) for d in p.relative_to(root).parts[:-1])]


def is_validation(path: Path, root: Path, fraction: float) -> bool:
    digest = hashlib.sha1(path.relative_to(root).as_posix().encode()).hexdigest()
    return int(digest[:8], 16) / 2**32 < fraction


def split_files(files: list[Path], root: Path, val_fraction: float = 0.02) -> tuple[list[Path], list[Path]]:
    val = [p for p in files if is_validation(p, root, val_fraction)]
    train = [p for p in files if not is_validation(p, root, val_fraction)]
    return train, val


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def token_stream(files: list[Path], tokenizer, separator: str = DOC_SEPARATOR) -> torch.Tensor:
    """Concatenate files into one int32 token stream, each document preceded by `separator`."""
    sep_id = tokenizer.convert_tokens_to_ids(separator)
    texts = [read_text(p) for p in files]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    out: list[int] = []
    for doc in ids:
        out.append(sep_id)
        out.extend(doc)
    return torch.tensor(out, dtype=torch.int32)


def blocks(stream: torch.Tensor, length: int) -> torch.Tensor:
    """Non-overlapping [n, length] blocks (the tail shorter than `length` is dropped)."""
    n = stream.numel() // length
    if n == 0:
        raise SemalignError(f"corpus has {stream.numel()} tokens, fewer than one block of {length}")
    return stream[: n * length].view(n, length).long()
