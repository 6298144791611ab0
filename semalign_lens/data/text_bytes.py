"""Bits per byte: a cross-entropy that does not depend on the tokenizer.

Nats per token rewards a tokenizer with long tokens: two models that predict the same text equally well get
different per-token scores when they cut it differently. Dividing the summed NLL by the UTF-8 bytes of the
scored text (and by ln 2) gives bits per byte, comparable across tokenizers: it stands beside every
CE row of the transfer benchmark and makes models with different vocabularies comparable.

A token's bytes are read from its vocabulary string, not from `decode([id])`, which turns a token holding
part of a multi-byte character into U+FFFD (3 bytes):
- byte-level BPE (GPT-2, SmolLM, Llama 3, Qwen): every character of the token string stands for one byte;
- sentencepiece with byte fallback (Llama 2, Gemma): `<0xNN>` is one byte, `▁` is a space;
- special tokens (`<|endoftext|>`...) are not text: 0 bytes. Their NLL still counts in the numerator, so the
  document separators a model must predict are part of the score, as in a compressor's output.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

import torch
from jaxtyping import Bool

from .tokens import TokenBatch

_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


@lru_cache(maxsize=1)
def _byte_level_map() -> dict[str, int]:
    """The 256 characters GPT-2's byte-level BPE uses for the bytes 0-255, each to its byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _is_byte_level(tokenizer, pieces: list[str]) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = type(getattr(backend, "decoder", None)).__name__ if backend is not None else ""
    if "ByteLevel" in decoder:
        return True
    alphabet = _byte_level_map().keys()
    ordinary = [p for p in pieces if p and not (p.startswith("<") and p.endswith(">"))]
    return bool(ordinary) and all(set(p) <= alphabet for p in ordinary[:2000])


def _unwrap(tokenizer):
    return getattr(tokenizer, "tokenizer", None) or tokenizer


def token_bytes(tokenizer) -> tuple[bytes | None, ...]:
    """The UTF-8 bytes every token id stands for, in id order; None for special tokens (not text).

    Markers are normalised: a byte-level character is its byte, sentencepiece's `▁` is a space and `<0xNN>`
    the byte NN. This is what both bits per byte and the cross-tokenizer vocabulary alignment read.
    """
    return _bytes(_unwrap(tokenizer))


@lru_cache(maxsize=8)
def _bytes(tokenizer) -> tuple[bytes | None, ...]:
    n = len(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    byte_level = _is_byte_level(tokenizer, [p or "" for p in pieces])
    table = _byte_level_map()
    out: list[bytes | None] = []
    for i, piece in enumerate(pieces):
        if i in special or piece is None:
            out.append(None)
        elif byte_level:
            out.append(bytes(table[c] for c in piece) if set(piece) <= table.keys() else piece.encode("utf-8"))
        elif _BYTE_TOKEN.match(piece):
            out.append(bytes([int(piece[3:5], 16)]))
        else:
            out.append(piece.replace("▁", " ").encode("utf-8"))
    return tuple(out)


def token_byte_lengths(tokenizer) -> torch.Tensor:
    """UTF-8 bytes of every token id's text, as a LongTensor of the vocabulary's length (specials: 0)."""
    return _lengths(_unwrap(tokenizer)).clone()


@lru_cache(maxsize=8)
def _lengths(tokenizer) -> torch.Tensor:
    return torch.tensor([len(b) if b is not None else 0 for b in _bytes(tokenizer)], dtype=torch.long)


def scored_bytes(tokenizer, batch: TokenBatch, score_mask: Bool[torch.Tensor, "batch pos"] | None = None) -> int:
    """Bytes of the target tokens a cross-entropy over `batch` scores (positions >= 1, real, in `score_mask`)."""
    scored = batch.mask if score_mask is None else score_mask & batch.mask
    lengths = token_byte_lengths(tokenizer)
    return int(lengths[batch.tokens[:, 1:]][scored[:, 1:]].sum())


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    """Summed NLL (nats) over a text of `n_bytes` UTF-8 bytes, as bits per byte (NaN for an empty text)."""
    return nll_nats / (math.log(2) * n_bytes) if n_bytes > 0 else float("nan")
