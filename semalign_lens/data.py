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
            real = mask.any(0).nonzero()  # up to the last real column (a mask may have holes, e.g. aligned positions)
            width = int(real.max()) + 1 if real.numel() else 0
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


def as_batch(data, tokenizer=None, max_len: int | None = 512) -> TokenBatch:
    """Texts (tokenised with the document-start prefix), an int tensor of unpadded blocks, or a TokenBatch."""
    if isinstance(data, TokenBatch):
        return data
    if torch.is_tensor(data):
        if data.ndim != 2 or data.dtype not in (torch.int32, torch.int64):
            raise SemalignError(f"token blocks must be a 2-D integer tensor, got {tuple(data.shape)} {data.dtype}")
        return TokenBatch(data.long(), torch.ones_like(data, dtype=torch.bool))
    if isinstance(data, str) or (isinstance(data, Sequence) and all(isinstance(t, str) for t in data)):
        if tokenizer is None:
            raise SemalignError("texts need a tokenizer: pass tokenizer= (or a model that carries one)")
        return tokenize(tokenizer, data, max_len=max_len)
    raise SemalignError(f"cannot evaluate {type(data).__name__}; pass texts, a TokenBatch or an int tensor")


def evenly_spaced(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (all of them when k >= n)."""
    if k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)}) if k > 1 else [0]


def prompt_answer_batch(tokenizer, prompts: Sequence[str], answers: Sequence[str],
                        max_len: int | None = None) -> tuple[TokenBatch, Bool[torch.Tensor, "seq pos"]]:
    """Tokenise prompt+answer jointly; the score mask marks tokens that end inside the answer.

    Joint tokenisation keeps the model's natural token boundaries; a token straddling the boundary counts
    as answer (it is the first thing the model must produce). The document-start token comes first.
    """
    if len(prompts) != len(answers) or not prompts:
        raise SemalignError(f"need one answer per prompt (got {len(prompts)} prompts, {len(answers)} answers)")
    start = doc_start_id(tokenizer)
    texts = [p + a for p, a in zip(prompts, answers, strict=True)]
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    rows, answer_rows = [], []
    for i, (ids, offsets) in enumerate(zip(enc["input_ids"], enc["offset_mapping"], strict=True)):
        cut = len(prompts[i])
        is_answer = [end > cut for _, end in offsets]
        if not any(is_answer):
            raise SemalignError(f"item #{i}: the answer {answers[i]!r} tokenises to nothing; give a non-empty answer")
        rows.append([start, *ids])
        answer_rows.append([False, *is_answer])
    if max_len is not None:
        over = [i for i, r in enumerate(rows) if len(r) > max_len]
        if over:
            raise SemalignError(f"item #{over[0]} has {len(rows[over[0]])} tokens > max_len {max_len}; raise max_len "
                                "(answers must not be truncated)")
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    score = torch.zeros_like(mask)
    for i, (r, a) in enumerate(zip(rows, answer_rows, strict=True)):
        tokens[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = True
        score[i, : len(r)] = torch.tensor(a)
    return TokenBatch(tokens, mask), score
