"""Training blocks for an alignment run, and the deterministic order in which batches visit them.

Sources: `code-transfer` is the project's code transfer set (`data.transfer.code_transfer_data`: chunks of the
standard library's test files outside the evaluation slice, unseen by the shipped student), so alignment
runs and the transfer benchmark train on the same sequences. Any other source (`stdlib`, a directory, a
.txt/.jsonl file) is read file by file in a fixed pseudo-random order (a hash of each path), joined into one
token stream with the tokenizer's document start before each document (`data.tokens.document_start`), and cut
into fixed-length blocks. Either way there is no padding, so every process of a multi-process run sees the
same number of real tokens. The last `diag_sequences` blocks are held out for diagnostics.

Batch `s` is a pure function of (seed, s) (`training.pretrain.batch_indices`), so resuming needs no loader
state, and under `accelerate launch` process r takes the r-th contiguous slice of the global batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from jaxtyping import Bool, Int

from ..core.checks import read_utf8
from ..core.errors import SemalignError
from ..core.hashing import path_key, tensor_hash
from ..data import corpus
from ..data.tokens import TokenBatch, require_document_start
from ..data.transfer import code_transfer_data
from .config import DataConfig
from .cross_pair import TeacherView, teacher_view
from .pretrain import batch_indices

TEXT_SUFFIXES = (".py", ".txt", ".md", ".rst")


@dataclass
class AlignData:
    """Training sequences (with their mask) and a held-out diagnostic batch; for a cross-tokenizer pair also
    the teacher's tokenization of both (`cross_pair.TeacherView`, set by `with_teacher_views`)."""

    tokens: Int[torch.Tensor, "n pos"]
    mask: Bool[torch.Tensor, "n pos"]
    diag: TokenBatch
    source: str = "memory"
    teacher: TeacherView | None = None
    diag_teacher: TeacherView | None = None

    def __post_init__(self) -> None:
        if self.tokens.shape != self.mask.shape or self.tokens.ndim != 2 or len(self.tokens) == 0:
            raise SemalignError(f"training tokens {tuple(self.tokens.shape)} and mask {tuple(self.mask.shape)} must "
                                "be the same non-empty [n_sequences, pos] shape")

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def fingerprint(self) -> str:
        """sha256 of the training and diagnostic tokens and masks (and a cross-tokenizer pair's teacher views):
        the data part of a target-cache key."""
        views = [t for v in (self.teacher, self.diag_teacher) if v is not None for t in (v.tokens, v.index)]
        return tensor_hash(self.tokens, self.mask, self.diag.tokens, self.diag.mask, *views)

    def with_teacher_views(self, student_tokenizer, teacher_tokenizer) -> AlignData:
        """This data with the teacher's tokenization of every block (a cross-tokenizer pair)."""
        return replace(self, teacher=teacher_view(self.tokens, self.mask, student_tokenizer, teacher_tokenizer),
                       diag_teacher=teacher_view(self.diag.tokens, self.diag.mask, student_tokenizer,
                                                 teacher_tokenizer))

    def indices(self, step: int, batch_size: int, seed: int) -> torch.Tensor:
        return batch_indices(len(self), batch_size, step, seed)

    def batch(self, index: torch.Tensor) -> TokenBatch:
        return TokenBatch(self.tokens[index], self.mask[index])

    @classmethod
    def from_batches(cls, data: TokenBatch, diag: TokenBatch | None, diag_sequences: int) -> AlignData:
        """Wrap token batches given through the Python API (diagnostics default to the first sequences)."""
        if diag is None:
            diag = data.select(torch.arange(min(diag_sequences, len(data))))
        return cls(data.tokens.clone(), data.mask.clone(), diag, source="memory")


def source_files(source: str) -> list[Path]:
    """The text files a data source names, in a fixed hash order."""
    if source == "stdlib":
        files, root = corpus.stdlib_files(), corpus.stdlib_root()
    else:
        path = Path(source).expanduser()
        if path.is_file():
            if path.suffix not in (*TEXT_SUFFIXES, ".jsonl"):
                raise SemalignError(f"data.source {path} is a {path.suffix or 'suffix-less'} file; point it at text: "
                                    f"one {' '.join(TEXT_SUFFIXES)} or .jsonl file (a 'text' field per line), or a "
                                    "directory of text files")
            return [path]
        if not path.is_dir():
            raise SemalignError(f"data.source {source!r} is neither 'code-transfer', 'stdlib', a directory nor a "
                                "file; point it at text (.py .txt .md .rst files, or one .jsonl with a 'text' field)")
        root = path
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not files:
            raise SemalignError(f"no {'/'.join(TEXT_SUFFIXES)} files under {path}")
    return sorted(files, key=lambda p: path_key(p, root))


def _documents(path: Path, strict: bool = True):
    """The texts of one source file. `strict` (every user source): UTF-8 or a one-line error naming the file;
    the built-in stdlib corpus keeps its lenient decoding (a few of CPython's test files are Latin-1)."""
    if path.suffix == ".jsonl":
        for i, line in enumerate(read_utf8(path, "data file").splitlines()):
            if line.strip():
                try:
                    text = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise SemalignError(f"{path} line {i + 1} is not a JSON object with a 'text' field") from None
                if not isinstance(text, str):
                    raise SemalignError(f"{path} line {i + 1}: 'text' must be a string, got {type(text).__name__}")
                yield text
    else:
        yield read_utf8(path, "data file") if strict else corpus.read_text(path)


def check_source(cfg: DataConfig, max_bytes: int = 256 << 20) -> None:
    """Check a data source before any model loads: it exists, holds text files, and (up to `max_bytes`, the
    rest when the run reads them) they are UTF-8 with well-formed JSONL records. Built-in sources pass."""
    if cfg.source in ("code-transfer", "stdlib"):
        return
    files = source_files(cfg.source)
    if not any(p.stat().st_size for p in files):
        raise SemalignError(f"data.source {cfg.source!r} holds no text (its files are empty); add text or point it "
                            "at another source")
    read = 0
    for path in files:
        for _ in _documents(path):
            pass
        read += path.stat().st_size
        if read >= max_bytes:
            break


def build_data(cfg: DataConfig, tokenizer) -> AlignData:
    """Read `cfg.source` until `n_sequences + diag_sequences` blocks of `seq_len` tokens exist."""
    if cfg.source == "code-transfer":
        blocks = code_transfer_data(tokenizer, cfg.n_sequences + cfg.diag_sequences, cfg.seq_len)[0].tokens
        return _split(blocks, cfg, cfg.source)
    need = (cfg.n_sequences + cfg.diag_sequences) * cfg.seq_len
    start = require_document_start(tokenizer, f"the documents of data.source {cfg.source!r}")
    stream: list[int] = []
    for path in source_files(cfg.source):
        for text in _documents(path, strict=cfg.source != "stdlib"):
            stream.append(start)
            stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(stream) >= need:
            break
    if len(stream) < need:
        raise SemalignError(f"data.source {cfg.source!r} gives {len(stream)} tokens, fewer than the "
                            f"{need} needed for {cfg.n_sequences} + {cfg.diag_sequences} sequences of {cfg.seq_len}; "
                            "lower data.n_sequences or data.seq_len, or add text")
    return _split(torch.tensor(stream[:need], dtype=torch.long).view(-1, cfg.seq_len), cfg, cfg.source)


def _split(blocks: torch.Tensor, cfg: DataConfig, source: str) -> AlignData:
    train, diag = blocks[: cfg.n_sequences].long(), blocks[cfg.n_sequences:].long()
    return AlignData(train, torch.ones_like(train, dtype=torch.bool),
                     TokenBatch(diag, torch.ones_like(diag, dtype=torch.bool)), source=source)
