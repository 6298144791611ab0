"""`lens_kl`: per paired layer, the KL between the teacher's logit-lens distribution at its paired depth and the
student's at its layer (DistillLens, arXiv 2602.13567), beside the final-output KL.

Published (DistillLens): intermediate states of both models are read through the vocabulary and compared per
layer pair with a divergence, added to the output distillation loss; the repository's default divergence is
the Jensen-Shannon one. Here (what is ours, and why):
- the readout is the logit lens proper, final norm then head, of each model on its own state (`LogitLens`:
  the repository reads the raw state through the head, without the final norm); the teacher's state is the
  pair's target, (1 − w)·h_T[low] + w·h_T[high], in the teacher's own space, so no projector is needed;
- the divergence is `kl_loss`'s (forward KL(p_T‖p_S) by default, temperature τ with the τ² scale), the same
  one as the output term, so lens and output KL are in one unit;
- depth weighting w_k = ((k + 1) / L_S)^p (p = `depth_power`; 0 = uniform): a shallow student layer's lens
  reads little of the vocabulary yet, so deeper pairs weigh more;
- annealing: the term is multiplied by max(0, 1 − progress / `anneal_until`) over its stage (linear to zero
  at that fraction of the stage, then skipped: no readout computed), so the layer guidance shapes the start of
  a stage and the output KL alone finishes it;
- two tokenizers: both readouts restricted to the shared strings and renormalised there (`shared_kl_loss`,
  the cross-tokenizer output term's divergence), at the aligned positions the mask holds;
- with a top-k target cache, the teacher's readout is cached once per pair target as its top-k tokens plus one
  tail bucket (`targets.lens_readout_keys`), and the term is the same bucket KL as the output term's from that
  cache (`sparse_logits`: exact at k = V, a lower bound of the full KL at τ = 1 otherwise, the tempered tail
  modelled at τ ≠ 1), so a step runs no teacher head and no dense teacher softmax;
- at the student's last layer the lens is the model's own output (the trainer checks it once,
  `models.readout.lens_is_output`), so the term reads the step's logits (`StepContext.student_logits`) instead
  of reading the state through the head a second time: same value, one head matmul and its backward fewer.
The trainer refuses `lens_kl` without an output KL term (`needs` "output_kl").
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int

from ...core.errors import SemalignError
from .cross_vocab import shared_kl_loss
from .losses import Lens, kl_loss, readout_kl_loss
from .registry import LayerInputs, Objective, register_objective
from .sparse_logits import SparseLogits

ANNEALS = ("linear", "none")


def depth_weight(student_layer: int, n_student_layers: int, power: float) -> float:
    """((k + 1) / L_S)^p: 1 at the last layer, uniform at p = 0."""
    return ((student_layer + 1) / n_student_layers) ** power


def anneal_factor(progress: float, until: float, anneal: str = "linear") -> float:
    """max(0, 1 − progress / until) (`linear`), or 1 (`none`)."""
    if anneal == "none":
        return 1.0
    return max(0.0, 1.0 - progress / until)


def lens_kl_loss(student_state: Float[torch.Tensor, "batch pos d_s"],
                 teacher: Float[torch.Tensor, "batch pos d_t"] | SparseLogits, mask: Bool[torch.Tensor, "batch pos"],
                 student_lens: Lens, teacher_lens: Lens | None, direction: Literal["forward", "reverse"] = "forward",
                 temperature: float = 1.0,
                 shared: tuple[Int[torch.Tensor, " n"], Int[torch.Tensor, " n"]] | None = None,
                 autocast=nullcontext,
                 student_logits: Float[torch.Tensor, "batch pos vocab"] | None = None) -> torch.Tensor:
    """Mean over real positions of KL between the teacher's and the student's logit-lens distributions.

    `teacher`: the teacher's state, read here through `teacher_lens`, or its readout cached as top-k + tail
    ([batch, pos, k] `SparseLogits`; `teacher_lens` unused), then compared with the bucket KL the output KL uses
    on that cache, the student's head fused in (`readout_kl_loss`: no [n, vocab] tensor outlives a chunk of rows;
    no teacher head, no teacher softmax).
    `shared` (student ids, teacher ids): a cross-tokenizer pair, both distributions renormalised on the shared
    strings (dense only: such a pair reads its teacher online). The teacher side is a constant. `autocast`: the
    context the readouts run in (the trainer's, so a lens reads as the model's own head does: at the student's
    last layer the term is the output KL). `student_logits`: the student's readout of `student_state` already
    made (the step's logits, when the state is the last block's output); then it is not read again."""
    if student_logits is not None and shared is None:
        if not isinstance(teacher, SparseLogits):
            with autocast(), torch.no_grad():
                teacher = teacher_lens(teacher)
        return kl_loss(student_logits, teacher, mask, direction=direction, temperature=temperature)
    if isinstance(teacher, SparseLogits):
        with autocast():
            return readout_kl_loss(student_state[mask], student_lens, teacher.rows(mask), direction, temperature)
    with autocast():
        s = student_lens(student_state[mask])
        with torch.no_grad():
            t = teacher_lens(teacher[mask])
    rows = torch.ones(s.shape[0], 1, dtype=torch.bool, device=s.device)
    if shared is None:
        return kl_loss(s[:, None], t[:, None], rows, direction=direction, temperature=temperature)
    return shared_kl_loss(s[:, None], t[:, None], *shared, rows, direction=direction, temperature=temperature)


def _lens_kl(x: LayerInputs, direction: str, temperature: float, depth_power: float, anneal: str,
             anneal_until: float) -> torch.Tensor:
    if anneal not in ANNEALS:
        raise SemalignError(f"lens_kl anneal must be one of {ANNEALS}, got {anneal!r}")
    if not (isinstance(anneal_until, (int, float)) and anneal_until > 0):
        raise SemalignError(f"lens_kl anneal_until must be a positive fraction of the stage, got {anneal_until!r}")
    ctx = x.context
    cached = x.teacher_readout is not None
    if ctx is None or not (cached or (ctx.teacher_lens is not None and x.teacher_state is not None)):
        raise SemalignError("the 'lens_kl' objective reads the teacher's state through the teacher's logit lens; "
                            "train it through the Trainer, which hands both over (LayerInputs.context)")
    factor = anneal_factor(ctx.progress, anneal_until, anneal) * depth_weight(
        x.student_layer, ctx.n_student_layers, depth_power)
    if factor == 0.0:  # annealed away: the readouts are not computed at all
        return x.state.sum() * 0.0
    teacher = x.teacher_readout if cached else x.teacher_state
    last = x.student_layer == ctx.n_student_layers - 1  # the lens there is the output, when the trainer says so
    return factor * lens_kl_loss(x.state, teacher, x.mask, x.lens, ctx.teacher_lens, direction, temperature,
                                 ctx.shared, ctx.autocast, ctx.student_logits if last else None)


register_objective(Objective(
    "lens_kl", "layer", _lens_kl,
    {"direction": "forward", "temperature": 1.0, "depth_power": 1.0, "anneal": "linear", "anneal_until": 0.5},
    needs=frozenset({"teacher_lens", "output_kl"}),
    source="published (DistillLens, arXiv 2602.13567): KL between the two logit-lens distributions per pair; "
           "final norm in the lens, KL not JSD, depth weights and annealing ours"))
