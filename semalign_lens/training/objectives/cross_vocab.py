"""Output-level distillation between two vocabularies, registered beside SemAlign's own terms.

Both terms read the two models' logits at *aligned positions* (`data.vocab.aligned_positions`: where
both tokenizations have read the same prefix), one row per aligned position.

- `shared_kl`: KL(p_T ‖ p_S) on the shared vocabulary. Both distributions are restricted to the tokens whose
  strings both vocabularies hold and renormalised there (a softmax over the shared logits), in one common
  order. Ours: the natural extension of the `kl` term to an intersection of vocabularies; probability mass on
  unshared tokens is dropped, not bucketed, because an unshared teacher token has no student counterpart.
- `uld`: Universal Logit Distillation (Boizard et al., 2024, "Towards Cross-Tokenizer Distillation"): the
  Wasserstein-1 distance between the two next-token distributions under a cost that ignores token identity,
  which has the closed form Σ_i |p_S,(i) − p_T,(i)| over the probabilities sorted in decreasing order, the
  shorter vocabulary padded with zeros. It needs no vocabulary mapping at all.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int

from ...core.errors import SemalignError
from .registry import Objective, OutputInputs, register_objective


def _rows(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]) if bool(mask.all()) else x[mask]


def _check_temperature(temperature: float) -> float:
    if not temperature > 0:
        raise SemalignError(f"temperature must be positive, got {temperature!r}")
    return float(temperature)


def shared_kl_loss(student_logits: Float[torch.Tensor, "batch pos vocab_s"],
                   teacher_logits: Float[torch.Tensor, "batch pos vocab_t"],
                   student_ids: Int[torch.Tensor, " n"], teacher_ids: Int[torch.Tensor, " n"],
                   mask: Bool[torch.Tensor, "batch pos"], direction: Literal["forward", "reverse"] = "forward",
                   temperature: float = 1.0, scale_by_t2: bool = True) -> torch.Tensor:
    """Mean over real positions of KL between the two distributions renormalised on the shared tokens."""
    if direction not in ("forward", "reverse"):
        raise SemalignError(f"shared_kl direction must be 'forward' or 'reverse', got {direction!r}")
    if student_ids.shape != teacher_ids.shape:
        raise SemalignError(f"shared id lists differ in length ({student_ids.numel()} student, "
                            f"{teacher_ids.numel()} teacher); pass one VocabAlignment's two id lists")
    tau = _check_temperature(temperature)
    s = F.log_softmax(_rows(student_logits, mask)[:, student_ids.to(student_logits.device)].float() / tau, -1)
    t = F.log_softmax(_rows(teacher_logits, mask)[:, teacher_ids.to(teacher_logits.device)].float().detach() / tau, -1)
    p, log_p, log_q = (t.exp(), t, s) if direction == "forward" else (s.exp(), s, t)
    kl = (p * (log_p - log_q)).sum(-1)
    loss = kl.sum() / max(1, kl.shape[0])
    return loss * (tau ** 2 if scale_by_t2 else 1.0)


def uld_loss(student_logits: Float[torch.Tensor, "batch pos vocab_s"],
             teacher_logits: Float[torch.Tensor, "batch pos vocab_t"],
             mask: Bool[torch.Tensor, "batch pos"], temperature: float = 1.0) -> torch.Tensor:
    """Mean over real positions of Σ_i |sort(p_S)_i − sort(p_T)_i| (descending, zero-padded to one length)."""
    tau = _check_temperature(temperature)
    p_s = F.softmax(_rows(student_logits, mask).float() / tau, -1).sort(-1, descending=True).values
    p_t = F.softmax(_rows(teacher_logits, mask).float().detach() / tau, -1).sort(-1, descending=True).values
    width = max(p_s.shape[-1], p_t.shape[-1])
    p_s = F.pad(p_s, (0, width - p_s.shape[-1]))
    p_t = F.pad(p_t, (0, width - p_t.shape[-1]))
    dist = (p_s - p_t).abs().sum(-1)
    return dist.sum() / max(1, dist.shape[0])


def _teacher_logits(x: OutputInputs, name: str) -> torch.Tensor:
    if x.teacher_logits is None or not isinstance(x.teacher_logits, torch.Tensor):
        raise SemalignError(f"the {name!r} objective needs dense teacher logits at aligned positions "
                            "(targets.mode = 'online' or targets.cache_logits = 'dense')")
    return x.teacher_logits


def _shared_kl(x: OutputInputs, direction: str, temperature: float, scale_by_t2: bool) -> torch.Tensor:
    if x.shared is None:
        raise SemalignError("the 'shared_kl' objective needs a cross-tokenizer pair's shared ids (OutputInputs."
                            "shared, from ModelPair(..., vocab='intersection').alignment); for one shared "
                            "vocabulary use 'kl'")
    student_ids, teacher_ids = x.shared
    return shared_kl_loss(x.logits, _teacher_logits(x, "shared_kl"), student_ids, teacher_ids, x.teacher_positions,
                          direction=direction, temperature=temperature, scale_by_t2=scale_by_t2)


for _obj in (
    Objective("shared_kl", "output", _shared_kl, {"direction": "forward", "temperature": 1.0, "scale_by_t2": True},
              needs_teacher_logits=True, cross_vocab=True,
              source="ours: output KL on the shared vocabulary of two tokenizers, renormalised, at aligned "
                     "positions"),
    Objective("uld", "output", lambda x, temperature: uld_loss(x.logits, _teacher_logits(x, "uld"),
                                                               x.teacher_positions, temperature),
              {"temperature": 1.0}, needs_teacher_logits=True, cross_vocab=True,
              source="not SemAlign: Universal Logit Distillation (Boizard et al. 2024), sorted-probability "
                     "Wasserstein-1 at aligned positions"),
):
    register_objective(_obj)
