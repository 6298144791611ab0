"""Continuous task metrics on logits, one value per pair: answer log-prob and logit difference.

Why continuous: probabilities and accuracy saturate and hide components that push against the answer
(Zhang & Nanda 2023; Heimersheim & Nanda 2024), so rankers score a roughly logit-linear quantity.

- `logprob`: Σ_j log p(answer_j | prefix), teacher-forced over all answer tokens (the paper's supervised
  objective is the LM loss on the answer, i.e. −logprob).
- `logit_diff`: logit(clean token) − logit(corrupted token) at the first answer position where the clean and
  corrupted answers differ (for single-token answers, the first answer token). Defined only for pairs with a
  corrupted answer that differs from the clean one; asking for it on a batch where some pair has none is an
  error naming the pair.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float

from ...core.errors import SemalignError
from .batch import PairBatch

METRICS = ("logprob", "logit_diff")


def answer_logprob(logits: Float[torch.Tensor, "batch pos vocab"], batch: PairBatch) -> Float[torch.Tensor, " batch"]:
    """Σ over answer tokens of log p(token); logits of either run (both are fed the clean answer)."""
    rows = torch.arange(len(batch), device=logits.device)[:, None]
    picked = logits[rows, batch.answer_pos.to(logits.device)].float()  # [batch, ans, vocab]
    logp = picked.log_softmax(-1).gather(-1, batch.answer_tokens.to(logits.device)[..., None])[..., 0]
    return (logp * batch.answer_mask.to(logits.device)).sum(-1)


def logit_diff(logits: Float[torch.Tensor, "batch pos vocab"], batch: PairBatch) -> Float[torch.Tensor, " batch"]:
    """logit(clean answer token) − logit(corrupted answer token) where the two answers first differ."""
    check_metric("logit_diff", batch)
    rows = torch.arange(len(batch), device=logits.device)
    at = logits[rows, batch.diverge_pos.to(logits.device)].float()
    return (at.gather(-1, batch.diverge_clean.to(logits.device)[:, None])
            - at.gather(-1, batch.diverge_corrupted.to(logits.device)[:, None]))[:, 0]


def check_metric(metric: str, batch: PairBatch) -> None:
    if metric not in METRICS:
        raise SemalignError(f"metric must be one of {METRICS}, got {metric!r}")
    if metric == "logit_diff" and not bool(batch.diverge_valid.all()):
        i = int((~batch.diverge_valid).nonzero()[0])
        pair = batch.pairs[i]
        raise SemalignError(f"logit_diff needs a corrupted answer that differs from the clean one, but pair #{i} "
                            f"{pair.id!r} has corrupted_answer={pair.corrupted_answer!r} (clean {pair.answer!r}); "
                            "use metric='logprob' or give every pair a distinct corrupted_answer")


def metric_fn(metric: str, rows: int | None = None) -> Callable[[torch.Tensor, PairBatch], torch.Tensor]:
    """The metric by name; with `rows`, over the first `rows` logits only (the real vocabulary,
    `models.load.vocab_rows`: the log-prob's softmax then reads no padded head row)."""
    if metric not in METRICS:
        raise SemalignError(f"metric must be one of {METRICS}, got {metric!r}")
    fn = answer_logprob if metric == "logprob" else logit_diff
    return fn if rows is None else lambda logits, batch: fn(logits[..., :rows], batch)
