"""The student's pretraining corpus: the CPython standard library, read from the running interpreter.

Training data are the standard library's `.py` files outside test directories, including
`pydoc_data/topics.py` (PSF licence, present wherever Python is). The test directories stay unseen: later
stages use them as transfer data. Files are split deterministically by a hash of their relative path
(`path_fraction`), so every split is the same on every machine with the same Python version: the
student's train/validation split, and the test files' split into transfer data and a small evaluation
slice (`stdlib_test_split`).
"""

from __future__ import annotations

import re
import sysconfig
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch

from ..core.errors import SemalignError
from ..core.hashing import path_key
from .tokens import require_document_start

DOC_SEPARATOR = "<|endoftext|>"  # the one special token of the tokenizers this package trains (zoo.bpe)
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


def path_fraction(path: Path, root: Path) -> float:
    """A number in [0, 1) fixed by the file's path relative to `root`: every hash split of the stdlib uses it."""
    return int(path_key(path, root)[:8], 16) / 2**32


def is_validation(path: Path, root: Path, fraction: float) -> bool:
    return path_fraction(path, root) < fraction


def split_files(files: list[Path], root: Path, val_fraction: float = 0.02) -> tuple[list[Path], list[Path]]:
    val = [p for p in files if is_validation(p, root, val_fraction)]
    train = [p for p in files if not is_validation(p, root, val_fraction)]
    return train, val


STDLIB_TEST_EVAL_FRACTION = 0.05  # the evaluation slice of the stdlib test files


@lru_cache(maxsize=4)
def stdlib_test_split(root: Path | None = None,
                      eval_fraction: float = STDLIB_TEST_EVAL_FRACTION) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """(transfer files, evaluation files) of the stdlib test directories, split by a hash of the path.

    Both lists are in hash order (a deterministic shuffle), so "the first n files" is a fair sample. An
    evaluation file with the same text as a transfer file is dropped.
    """
    root = Path(root) if root else stdlib_root()
    files = stdlib_test_files(root)
    if not files:
        raise SemalignError(f"no standard-library test files under {root}; this Python was installed without its "
                            "test suite (Debian: apt-get install libpython3-testsuite), pass your own transfer texts")
    keyed = sorted(files, key=lambda p: path_key(p, root))
    evaluation = [p for p in keyed if path_fraction(p, root) < eval_fraction]
    transfer = [p for p in keyed if path_fraction(p, root) >= eval_fraction]
    # Boilerplate files (the test packages' identical __init__.py) sit on both sides of a path split: an
    # evaluation file whose text is also a transfer file's is not held out, so it leaves the evaluation slice.
    seen = {normalised(read_text(p)) for p in transfer}
    return tuple(transfer), tuple(p for p in evaluation if normalised(read_text(p)) not in seen)


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def normalised(text: str) -> str:
    """`text` with every run of whitespace collapsed to one space: how copies between splits are recognised."""
    return re.sub(r"\s+", " ", text).strip()


def text_stream(texts: Sequence[str], tokenizer, separator_id: int) -> torch.Tensor:
    """Concatenate texts into one int32 token stream, each document preceded by the token `separator_id`."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    out: list[int] = []
    for doc in ids:
        out.append(separator_id)
        out.extend(doc)
    return torch.tensor(out, dtype=torch.int32)


def token_stream(files: list[Path], tokenizer) -> torch.Tensor:
    """Concatenate files into one int32 token stream, each document preceded by the tokenizer's document start
    (`data.tokens.document_start`: `<|endoftext|>` for the embedded student's tokenizers)."""
    return text_stream([read_text(p) for p in files], tokenizer,
                       require_document_start(tokenizer, "the corpus's documents"))


def blocks(stream: torch.Tensor, length: int) -> torch.Tensor:
    """Non-overlapping [n, length] blocks (the tail shorter than `length` is dropped)."""
    n = stream.numel() // length
    if n == 0:
        raise SemalignError(f"corpus has {stream.numel()} tokens, fewer than one block of {length}")
    return stream[: n * length].view(n, length).long()
