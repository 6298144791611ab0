"""Tokenised batches with padding masks: the one way text enters every stage.

Convention (shared by teacher and student, which share a tokenizer): each text is tokenised without the
tokenizer's own special tokens and prefixed with the document-start token `<|endoftext|>`, the separator
the embedded student was pretrained with. Batches are padded on the **right**; with causal attention, real
positions never see padding, so no attention mask is needed in the forward pass and the mask only selects
positions afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int

from .checks import require_int, require_tokenizer
from .errors import SemalignError

DOC_START = "<|endoftext|>"


@dataclass
class TokenBatch:
    """Right-padded token ids and the mask of real (non-padding) positions."""

    tokens: Int[torch.Tensor, "batch pos"]
    mask: Bool[torch.Tensor, "batch pos"]

    def __post_init__(self) -> None:
        if not isinstance(self.tokens, torch.Tensor) or not isinstance(self.mask, torch.Tensor):
            raise SemalignError(f"TokenBatch needs tensors (tokens: long, mask: bool), got {type(self.tokens).__name__} "
                                f"and {type(self.mask).__name__}; build one with semalign_lens.data.tokenize")
        if self.tokens.shape != self.mask.shape:
            raise SemalignError(f"tokens {tuple(self.tokens.shape)} and mask {tuple(self.mask.shape)} differ in shape")

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def n_tokens(self) -> int:
        return int(self.mask.sum())

    def split(self, batch_size: int) -> Iterator[TokenBatch]:
        """Consecutive sub-batches, each trimmed to its longest sequence."""
        for i in range(0, len(self), batch_size):
            mask = self.mask[i: i + batch_size]
            width = int(mask.sum(1).max())
            yield TokenBatch(self.tokens[i: i + batch_size, :width], mask[:, :width])

    def select(self, index: torch.Tensor | Sequence[int]) -> TokenBatch:
        index = torch.as_tensor(index)
        return TokenBatch(self.tokens[index], self.mask[index])


def doc_start_id(tokenizer) -> int:
    token_id = tokenizer.convert_tokens_to_ids(DOC_START)
    if token_id is None or token_id == tokenizer.unk_token_id and DOC_START not in tokenizer.get_vocab():
        raise SemalignError(f"the tokenizer has no {DOC_START!r} token; semalign_lens expects SmolLM2-style "
                            "tokenizers (pass prepend_doc_start=False to tokenize without it)")
    return int(token_id)


def tokenize(tokenizer, texts: Sequence[str], max_len: int | None = None,
             prepend_doc_start: bool = True) -> TokenBatch:
    """Tokenise `texts` into one right-padded `TokenBatch` (truncating each to `max_len` tokens)."""
    if isinstance(texts, str):
        texts = [texts]
    if texts is None or not hasattr(texts, "__len__") or len(texts) == 0:
        raise SemalignError("empty prompt list: pass at least one text" if texts is not None and
                            hasattr(texts, "__len__") else f"texts must be a list of strings, got {type(texts).__name__}")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise SemalignError(f"text #{bad} is a {type(texts[bad]).__name__}, not a string; pass a list of strings")
    if max_len is not None:
        require_int("max_len", max_len)
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # accept a model too
    require_tokenizer(tokenizer)
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    if prepend_doc_start:
        start = doc_start_id(tokenizer)
        ids = [[start, *seq] for seq in ids]
    if max_len is not None:
        ids = [seq[:max_len] for seq in ids]
    empty = [i for i, seq in enumerate(ids) if not seq]
    if empty:
        raise SemalignError(f"text #{empty[0]} tokenises to nothing; remove empty texts")
    width = max(len(seq) for seq in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tokens = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.bool)
    for i, seq in enumerate(ids):
        tokens[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = True
    return TokenBatch(tokens, mask)
