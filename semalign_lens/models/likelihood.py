"""A model's next-token likelihood of a token batch: the package's one cross-entropy (`next_token_nll`), the logits
it reads (`forward_logits`: a bridge read through its weight-sharing plain copy, `plain_model`) and its sums over
a batch (`token_nll`, and per sequence `sequence_nll`).

The trainer's loss and held-out metric sum `next_token_nll`; every evaluation score and student pretraining's
validation loss sum it through `token_nll`, so one scoring loop serves them all (ours).
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from tqdm.auto import tqdm

from ..core.checks import is_hf_model
from ..core.errors import SemalignError
from ..core.precision import autocast
from ..data.tokens import TokenBatch
from .load import model_mode, vocab_rows
from .plain import clean_copy, model_device


def next_token_nll(logits: Float[torch.Tensor, "batch pos vocab"], tokens: Int[torch.Tensor, "batch pos"],
                   scored: Bool[torch.Tensor, "batch pos_1"] | None = None) -> torch.Tensor:
    """Summed next-token negative log-likelihood (nats, fp32) of `tokens[:, 1:]` under `logits[:, :-1]`, over the
    `scored` positions (None: all). The one cross-entropy of the package: the trainer's loss and held-out metric,
    the evaluation's scores and the pretraining's validation loss all sum it."""
    z, target = logits[:, :-1], tokens[:, 1:]
    if scored is None or bool(scored.all()):  # no boolean gather: it would copy [n, vocab] logits
        return F.cross_entropy(z.reshape(-1, z.shape[-1]).float(), target.reshape(-1), reduction="sum")
    return F.cross_entropy(z[scored].float(), target[scored], reduction="sum")


_PLAIN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def plain_model(model):
    """The model to run for scores: an HF model as is; a raw-mode bridge as a weight-sharing plain HF copy.

    Why: a TransformerBridge forward pays for its hook points and eager attention (measured here: ~1.5-2x
    the CPU time of the same weights as a stock HF model with sdpa), and in raw mode its logits equal HF's.
    The copy shares the bridge's tensors (no memory, and later weight edits show through); hooks attached to
    the bridge do not run in it. Compatibility-mode bridges, native ones (no HF model behind them), and
    families whose plain copy cannot be rebuilt exactly (`hf.clean_copy` refuses them) are run as themselves:
    the copy is a speed-up, never a condition for scoring.
    """
    if is_hf_model(model):
        return model
    hf = getattr(model, "original_model", None)
    if model_mode(model) != "raw" or getattr(hf, "config", None) is None:
        return model
    if model not in _PLAIN:
        try:
            _PLAIN[model] = clean_copy(model, share_weights=True).eval()
        except SemalignError:
            _PLAIN[model] = None  # not the model itself: a weak key whose value holds it would never be freed
    return _PLAIN[model] or model


def forward_logits(model, tokens: Int[torch.Tensor, "batch pos"], rows: int | None = None
                   ) -> Float[torch.Tensor, "batch pos vocab"]:
    """Logits of a TransformerBridge or an HF causal LM, on the model's device, over the real vocabulary rows
    (`rows`, default `models.load.vocab_rows(model)`: a head padded beyond its tokenizer gives no padded column). The
    tokens go to the model's device (a student trained on a GPU is scored where it is, and its [batch, pos, V]
    logits never cross to the host: reduce them there). Right padding needs no attention mask (causal).

    Scores are over the real rows only (ours): a padded row is never a target, and the softmax over the
    tokenizer's rows is the model's distribution over text; it differs from the all-rows one by the log of
    (1 + the mass on padded rows), which a trained model keeps near 0 (they never appear in its data)."""
    rows = vocab_rows(model) if rows is None else rows
    model = plain_model(model)
    device = model_device(model)
    if is_hf_model(model):
        logits = model(input_ids=tokens.to(device), use_cache=False).logits
    else:
        logits = model(tokens.to(device), return_type="logits")
    return logits[..., :rows]


def _scored_logits(model, batch: TokenBatch, score_mask, batch_size: int, precision: str, progress: bool, desc: str,
                   rows: int | None):
    """(first sequence's index, logits, tokens, scored [n, pos-1]) per `batch_size` sequences that score a token,
    each batch trimmed to its longest sequence, under no_grad in eval mode (the mode restored after)."""
    if score_mask is None:
        score_mask = batch.mask
    if score_mask.shape != batch.mask.shape:
        raise SemalignError(f"score_mask {tuple(score_mask.shape)} and batch {tuple(batch.mask.shape)} differ")
    was_training = model.training
    model.eval()
    device = model_device(model)
    try:
        for i in tqdm(range(0, len(batch), batch_size), desc=desc, disable=not progress, leave=False, unit="batch"):
            mask = batch.mask[i: i + batch_size]
            width = int(mask.sum(1).max())
            tokens = batch.tokens[i: i + batch_size, :width]
            scored = (score_mask[i: i + batch_size, :width] & mask[:, :width])[:, 1:]
            if not scored.any():
                continue
            with torch.no_grad(), autocast(precision, device):
                logits = forward_logits(model, tokens, rows)
            yield i, logits, tokens.to(device), scored.to(device)
    finally:
        model.train(was_training)


def token_nll(model, batch: TokenBatch, score_mask: Bool[torch.Tensor, "batch pos"] | None = None,
              batch_size: int = 8, precision: str = "auto", progress: bool = False,
              desc: str = "cross-entropy", rows: int | None = None) -> tuple[float, int]:
    """(sum of next-token NLL in nats, number of scored tokens) over `batch`.

    Position t is scored when token t is real (and in `score_mask`, if given) and t >= 1: it is predicted
    from positions < t. Padding never counts. Runs under no_grad in eval mode and restores the mode. The
    softmax is over the real vocabulary rows (`forward_logits`; `rows`), in fp32 whatever the model's dtype,
    on the model's device: one number per batch comes back to the host.
    """
    total, count = 0.0, 0
    for _, logits, tokens, scored in _scored_logits(model, batch, score_mask, batch_size, precision, progress, desc,
                                                    rows):
        count += int(scored.sum())
        total += next_token_nll(logits, tokens, scored).item()
    return total, count


def sequence_nll(model, batch: TokenBatch, score_mask: Bool[torch.Tensor, "batch pos"] | None = None,
                 batch_size: int = 8, precision: str = "auto", rows: int | None = None
                 ) -> tuple[float, int, list[float], list[int]]:
    """`token_nll`'s (total, count), and each sequence's own NLL and scored tokens, from the same forwards: a
    per-item view (HumanEval per problem) and the total it sums to without scoring anything twice. The total is
    `token_nll`'s to the bit (the same batches, summed the same way)."""
    total, count = 0.0, 0
    nll, counts = [0.0] * len(batch), [0] * len(batch)
    for start, logits, tokens, scored in _scored_logits(model, batch, score_mask, batch_size, precision, False, "",
                                                        rows):
        count += int(scored.sum())
        total += next_token_nll(logits, tokens, scored).item()
        for r in range(len(tokens)):
            counts[start + r] = int(scored[r].sum())
            nll[start + r] = next_token_nll(logits[r: r + 1], tokens[r: r + 1], scored[r: r + 1]).item()
    return total, count, nll, counts
