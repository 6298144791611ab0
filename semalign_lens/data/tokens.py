"""Tokenised batches with padding masks: the one way text enters every stage.

Document boundaries come from the tokenizer, by one rule (`document_start`) that every stage uses: each text
is tokenised without the tokenizer's own special tokens and prefixed once with its document-start token, so a
post-processor that adds BOS never adds it twice. Batches are padded on the **right**; with causal attention,
real positions never see padding, so no attention mask is needed in the forward pass and the mask only selects
positions afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int

from ..core.checks import require_int, require_tokenizer
from ..core.errors import SemalignError

# The tokenizer_config.json key (read into `tokenizer.init_kwargs`, kept by save_pretrained) naming a model's own
# document separator where its BOS/EOS say something else (SmolLM2-Instruct: chat markers; `<|endoftext|>` between
# pretraining documents). Ours: no tokenizer standard names the separator a model was pretrained with.
DOCUMENT_START_KEY = "document_start"


@dataclass
class TokenBatch:
    """Right-padded token ids and the mask of real (non-padding) positions."""

    tokens: Int[torch.Tensor, "batch pos"]
    mask: Bool[torch.Tensor, "batch pos"]

    def __post_init__(self) -> None:
        if not isinstance(self.tokens, torch.Tensor) or not isinstance(self.mask, torch.Tensor):
            raise SemalignError(f"TokenBatch needs tensors (tokens: long, mask: bool), got {type(self.tokens).__name__} "
                                f"and {type(self.mask).__name__}; build one with semalign_lens.data.tokens.tokenize")
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


def document_start(tokenizer) -> int | None:
    """The id of the token that starts every document, or None: the one rule every stage follows.

    In order: the token named by `tokenizer_config.json`'s `document_start` (`set_document_start`); the
    tokenizer's own BOS (Llama, Gemma, Mistral; OPT's `</s>`); else its EOS, the separator its pretraining put
    between documents (GPT-2's `<|endoftext|>`, ChatML's `<|im_end|>`); else nothing (`require_document_start`
    refuses where documents must be separated)."""
    tokenizer = getattr(tokenizer, "tokenizer", None) or tokenizer
    declared = (getattr(tokenizer, "init_kwargs", None) or {}).get(DOCUMENT_START_KEY)
    if declared:
        if declared not in tokenizer.get_vocab():
            raise SemalignError(f"the tokenizer's {DOCUMENT_START_KEY} {declared!r} is not one of its tokens; set "
                                f"{DOCUMENT_START_KEY} in tokenizer_config.json (or data.document_start) to a token of "
                                "its vocabulary, e.g. its BOS or EOS")
        return int(tokenizer.convert_tokens_to_ids(declared))
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return None


def require_document_start(tokenizer, what: str = "documents") -> int:
    """`document_start`, for a stage that packs several documents into one stream and must separate them."""
    start = document_start(tokenizer)
    if start is None:
        raise SemalignError(f"the tokenizer has no BOS and no EOS token to separate {what}; name one of its tokens "
                            f"as the separator: data.document_start = '<token>' in the align config, or "
                            f'"{DOCUMENT_START_KEY}": "<token>" in the model\'s tokenizer_config.json')
    return start


def set_document_start(tokenizer, token: str | None) -> None:
    """Declare `token` as the tokenizer's document start (None: back to its BOS/EOS); saved with it."""
    tokenizer = getattr(tokenizer, "tokenizer", None) or tokenizer
    if token is None:
        tokenizer.init_kwargs.pop(DOCUMENT_START_KEY, None)
        return
    if token not in tokenizer.get_vocab():
        raise SemalignError(f"document start {token!r} is not a token of this tokenizer; name one of its tokens "
                            f"(its BOS is {tokenizer.bos_token!r}, its EOS {tokenizer.eos_token!r})")
    tokenizer.init_kwargs[DOCUMENT_START_KEY] = token


def with_document_start(ids: Sequence[int], start: int | None) -> list[int]:
    return [start, *ids] if start is not None else list(ids)


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
        start = document_start(tokenizer)
        ids = [with_document_start(seq, start) for seq in ids]
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
    """Texts (tokenised with the document start), an int tensor of unpadded blocks, or a TokenBatch."""
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
    as answer (it is the first thing the model must produce); offsets, not token strings, decide it, so a
    SentencePiece word-initial `▁` piece or byte-fallback pieces count like byte-level BPE tokens. The
    document-start token (`document_start`) comes first.
    """
    if len(prompts) != len(answers) or not prompts:
        raise SemalignError(f"need one answer per prompt (got {len(prompts)} prompts, {len(answers)} answers)")
    start = document_start(tokenizer)
    texts = [p + a for p, a in zip(prompts, answers, strict=True)]
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    rows, answer_rows = [], []
    for i, (ids, offsets) in enumerate(zip(enc["input_ids"], enc["offset_mapping"], strict=True)):
        cut = len(prompts[i])
        is_answer = [end > cut for _, end in offsets]
        if not any(is_answer):
            raise SemalignError(f"item #{i}: the answer {answers[i]!r} tokenises to nothing; give a non-empty answer")
        rows.append(with_document_start(ids, start))
        answer_rows.append([False, *is_answer] if start is not None else is_answer)
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
