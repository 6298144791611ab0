"""Factual recall: answer log-probability and exact match of facts on their held-out phrasings, and the
teacher filter that keeps only the facts the teacher knows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float

from ..core.errors import SemalignError
from ..core.precision import autocast
from ..data.tasks.facts import Fact
from ..data.tokens import TokenBatch, prompt_answer_batch
from ..models.likelihood import forward_logits
from ..models.plain import model_device
from .scoring import model_tokenizer


def answer_scores(model, batch: TokenBatch, score: torch.Tensor, batch_size: int = 16,
                  precision: str = "auto") -> tuple[Float[torch.Tensor, "item"], Bool[torch.Tensor, "item"]]:  # noqa: F821
    """Per item: summed log-prob of the answer tokens, and exact match (argmax = gold at every answer token),
    computed on the model's device; the two per-item vectors come back to the host."""
    logprob, exact = [], []
    was_training = model.training
    model.eval()
    device = model_device(model)
    try:
        for i in range(0, len(batch), batch_size):
            tokens, mask = batch.tokens[i: i + batch_size].to(device), batch.mask[i: i + batch_size].to(device)
            scored = (score[i: i + batch_size].to(device) & mask)[:, 1:]
            with torch.no_grad(), autocast(precision, device):
                logits = forward_logits(model, tokens)[:, :-1]
            targets = tokens[:, 1:][scored]
            answer = logits[scored].float()  # only the answer positions: the softmax over V is the cost
            lp = torch.zeros(scored.shape, device=scored.device)
            lp[scored] = answer.log_softmax(-1).gather(-1, targets[:, None])[:, 0]
            hit = torch.ones(scored.shape, dtype=torch.bool, device=scored.device)
            hit[scored] = answer.argmax(-1) == targets
            logprob.append(lp.sum(1))
            exact.append(hit.all(1))
    finally:
        model.train(was_training)
    return torch.cat(logprob).cpu(), torch.cat(exact).cpu()


def fact_scores(model, facts: Sequence[Fact], which: str = "eval", n_eval: int = 1, tokenizer=None,
                precision: str = "auto"):
    """Long-form DataFrame: one row per (fact, phrasing) of the `which` split ('train' | 'eval' | 'all')."""
    import pandas as pd

    tok = model_tokenizer(model, tokenizer)
    items = [(f, j, p) for f in facts for j, p in enumerate(_phrasings(f, which, n_eval))]
    if not items:
        raise SemalignError("no fact phrasings to score; pass facts with >= 2 phrasings")
    batch, score = prompt_answer_batch(tok, [p for _, _, p in items], [f.answer for f, _, _ in items])
    logprob, exact = answer_scores(model, batch, score, precision=precision)
    return pd.DataFrame({"fact": [f.id for f, _, _ in items], "phrasing": [j for _, j, _ in items],
                         "answer_logprob": logprob.tolist(), "exact_match": exact.float().tolist()})


def _phrasings(fact: Fact, which: str, n_eval: int) -> list[str]:
    prompts = fact.prompts()
    if which == "eval":
        return prompts[-n_eval:]
    if which == "train":
        return prompts[:-n_eval]
    if which == "all":
        return prompts
    raise SemalignError(f"unknown phrasing split {which!r}; valid: train, eval, all")


def split_facts(facts: Sequence[Fact], n_eval: int = 1) -> None:
    """Check every fact has >= 1 training and `n_eval` held-out phrasings, and no held-out duplicate."""
    if n_eval < 1:
        raise SemalignError(f"n_eval must be >= 1 held-out phrasing per fact, got {n_eval}")
    for f in facts:
        prompts = f.prompts()
        if len(prompts) < n_eval + 1:
            raise SemalignError(f"fact {f.id!r} has {len(prompts)} phrasings; need at least {n_eval + 1} "
                                f"(n_eval={n_eval} held out + 1 for training)")
        held, train = set(prompts[-n_eval:]), set(prompts[:-n_eval])
        if held & train:
            raise SemalignError(f"fact {f.id!r}: phrasing {sorted(held & train)[0]!r} is both a training and a "
                                "held-out phrasing; make the phrasings distinct")


def teacher_known_facts(teacher, facts: Sequence[Fact], n_eval: int = 1, tokenizer=None,
                        precision: str = "auto") -> tuple[list[Fact], Any]:
    """Keep the facts the teacher answers exactly on every held-out phrasing; also return the measured table."""
    split_facts(facts, n_eval)
    table = fact_scores(teacher, facts, "eval", n_eval, tokenizer, precision)
    ok = table.groupby("fact")["exact_match"].min()
    kept = [f for f in facts if ok.get(f.id, 0.0) == 1.0]
    return kept, table


def fact_transfer_texts(facts: Sequence[Fact], n_eval: int = 1) -> list[str]:
    """Training texts of the knowledge task: each training phrasing followed by its answer."""
    return [p + f.answer for f in facts for p in _phrasings(f, "train", n_eval)]


def fact_eval_texts(facts: Sequence[Fact], n_eval: int = 1) -> list[str]:
    return [p + f.answer for f in facts for p in _phrasings(f, "eval", n_eval)]
