"""The code-transfer data: chunks of the standard library's test files outside their evaluation slice, and
the refusal of any overlap between transfer and evaluation texts.

It sits below both users: `training/` reads it for `data.source = "code-transfer"`, and `evaluation/` builds
the transfer tasks from it. The test files are unseen by the shipped student (its corpus leaves test
directories out), and the evaluation slice is split off by a hash of the path (`data.corpus.stdlib_test_split`).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from functools import lru_cache

import torch

from ..core.errors import SemalignError
from . import corpus
from .tokens import TokenBatch, as_batch, document_start, evenly_spaced, with_document_start


def check_no_overlap(transfer: Sequence[str], evaluation: Sequence[str], *, min_chars: int = 64,
                     names: tuple[str, str] = ("transfer", "evaluation")) -> None:
    """Refuse when an evaluation item also appears in the transfer set (exact duplicate or verbatim inside).

    Texts are compared after collapsing whitespace. An evaluation text of >= `min_chars` characters found
    verbatim inside a transfer text also counts (a chunk boundary must not hide a copy).
    """
    t_norm = [corpus.normalised(t) for t in transfer]
    index = {t: i for i, t in enumerate(t_norm)}
    joined = "\x00".join(t_norm)
    starts, pos = [], 0
    for t in t_norm:
        starts.append(pos)
        pos += len(t) + 1
    for j, text in enumerate(evaluation):
        e = corpus.normalised(text)
        if not e:
            continue
        i = index.get(e)
        if i is None and len(e) >= min_chars:
            at = joined.find(e)
            i = None if at < 0 else bisect.bisect_right(starts, at) - 1
        if i is not None:
            raise SemalignError(
                f"{names[1]} item #{j} ({e[:60]!r}...) is duplicated in {names[0]} item #{i}; the transfer data "
                f"must not contain evaluation data: remove it from the {names[0]} set or choose other splits")


@lru_cache(maxsize=8)
def _tokenised_transfer_files(tokenizer, n_files: int) -> tuple[tuple[int, ...], ...]:
    transfer, _ = corpus.stdlib_test_split()
    texts = [corpus.read_text(p) for p in transfer[:n_files]]
    return tuple(tuple(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])


def code_transfer_texts(n_files: int | None = None) -> list[str]:
    """Source texts of the code transfer data: stdlib test files outside the evaluation slice, hash order."""
    transfer, _ = corpus.stdlib_test_split()
    return [corpus.read_text(p) for p in transfer[:n_files]]


def code_transfer_data(tokenizer, n_sequences: int, seq_len: int = 128,
                       per_file: int = 2) -> tuple[TokenBatch, int]:
    """(`n_sequences` unpadded sequences of `seq_len` tokens, number of source files used).

    Source: the stdlib test files outside the evaluation slice (unseen by the student). Up to `per_file`
    evenly spaced chunks are cut from each file (diversity), files in hash order, each chunk starting with
    the tokenizer's document start (`data.tokens.document_start`). A larger `n_sequences` is a superset of a smaller one (for data-budget curves).
    """
    tokenizer = getattr(tokenizer, "tokenizer", None) or tokenizer
    if n_sequences < 1 or seq_len < 2 or per_file < 1:
        raise SemalignError(f"need n_sequences >= 1, seq_len >= 2, per_file >= 1; got {n_sequences}, {seq_len}, "
                            f"{per_file}")
    start = document_start(tokenizer)
    body = seq_len - (start is not None)  # tokens of text per chunk, after the document start
    n_files = len(corpus.stdlib_test_split()[0])
    need = min(n_files, max(8, 2 * n_sequences // per_file + 8))
    while True:
        chunks: list[list[int]] = []
        used = 0
        for ids in _tokenised_transfer_files(tokenizer, need):
            used += 1
            n_chunks = len(ids) // body
            for c in evenly_spaced(n_chunks, per_file) if n_chunks else []:
                chunks.append(with_document_start(ids[c * body: (c + 1) * body], start))
            if len(chunks) >= n_sequences:
                break
        if len(chunks) >= n_sequences or need == n_files:
            break
        need = min(n_files, need * 2)
    if len(chunks) < n_sequences:
        raise SemalignError(f"the stdlib test files give only {len(chunks)} chunks of {seq_len} tokens; ask for "
                            "fewer sequences, shorter ones, or more per_file")
    return as_batch(torch.tensor(chunks[:n_sequences])), used


def code_transfer_batch(tokenizer, n_sequences: int, seq_len: int = 128, per_file: int = 2) -> TokenBatch:
    """The code transfer sequences of `code_transfer_data` (see there)."""
    return code_transfer_data(tokenizer, n_sequences, seq_len, per_file)[0]


def decode_batch(tokenizer, batch: TokenBatch) -> list[str]:
    """The texts of a batch (real tokens only, special tokens dropped), e.g. for overlap checks."""
    tokenizer = getattr(tokenizer, "tokenizer", None) or tokenizer
    return [tokenizer.decode(t[m], skip_special_tokens=True) for t, m in zip(batch.tokens, batch.mask, strict=True)]
