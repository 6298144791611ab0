"""`interchange`: interchange intervention training, DIITO-style (Wu, Geiger et al., NAACL 2022, arXiv 2112.02505).

Published (DIITO): for a base and a source input, the aligned variables (neurons of aligned layers) of the
teacher and of the student are set to their values on the source input while both run on the base input; the
student's counterfactual output distribution is matched to the teacher's with the distillation KL (at the
distillation temperature), beside the usual distillation losses. The teacher's swap runs without gradients,
the student's with them, through both its base and its source run.
Here (what is ours, and why):
- the aligned variable is the whole residual state after the paired blocks: student block k and the pair's
  nearest teacher block (`LayerPair.nearest_teacher_layer`), since an interpolated target is no single block;
- base and source are sequences of the same batch, each sequence taking another's states (`interchange_positions`:
  sequence i − 1's), so no extra data and no extra forward for the sources: the student's source states are its
  own states of the step's main forward (with their gradient), the teacher's those of the step's targets;
- in a causal decoder, a swap at every position would just be the source's own run, so the swapped positions
  are drawn (`fraction` of the real positions, from a generator seeded by run seed, step and layer: a resumed
  run draws the same), and the KL is scored where the swap can act: from each sequence's first swapped position
  on;
- one vocabulary only (positions swap one for one); the KL is `kl_loss`'s (forward, τ, τ² scale).
Each step costs one more student forward and backward and one more teacher forward per active pair; the
trainer keeps the plain teacher in memory for it even with cached targets (`needs` "teacher_model").
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
from jaxtyping import Bool, Int

from ...core.errors import SemalignError
from .losses import kl_loss
from .registry import LayerInputs, Objective, register_objective

# (model, tokens, layer, source, where) -> the model's logits with block `layer`'s output replaced by `source` at
# `where`: `lens.interchange.interchange_logits`, which the trainer hands over (`StepContext.swapped_logits`)
SwappedLogits = Callable[..., torch.Tensor]


def interchange_positions(mask: Bool[torch.Tensor, "batch pos"], fraction: float, generator: torch.Generator
                          ) -> tuple[Int[torch.Tensor, " batch"], Bool[torch.Tensor, "batch pos"]]:
    """(partner, where): sequence i takes the states of sequence partner[i] = i − 1 (cyclically) at the positions
    `where`, each real position of both drawn with probability `fraction` from `generator` (ours: DIITO swaps
    aligned neurons at every position of a bidirectional encoder; in a causal decoder a swap at every position is
    the partner's own run, so positions are sampled instead)."""
    if mask.shape[0] < 2:
        raise SemalignError("an interchange needs at least two sequences per batch (each takes its swapped states "
                            "from another); raise data.batch_size")
    if not 0.0 < fraction <= 1.0:
        raise SemalignError(f"interchange fraction must be in (0, 1], got {fraction!r}")
    partner = torch.roll(torch.arange(mask.shape[0], device=mask.device), 1)
    draw = torch.rand(mask.shape, generator=generator).to(mask.device) < fraction
    return partner, draw & mask & mask[partner]


def interchange_loss(swapped_logits: SwappedLogits, student, teacher, tokens: Int[torch.Tensor, "batch pos"],
                     mask: Bool[torch.Tensor, "batch pos"], student_layer: int, teacher_layer: int,
                     student_source: torch.Tensor, teacher_source: torch.Tensor, partner: torch.Tensor,
                     where: Bool[torch.Tensor, "batch pos"], *, direction: str = "forward", temperature: float = 1.0,
                     rows: tuple[int | None, int | None] = (None, None), autocast=nullcontext) -> torch.Tensor:
    """KL between the teacher's and the student's outputs on `tokens` when each sequence's paired-layer states at
    `where` are those of sequence `partner[i]` (`*_source`: the states of the unintervened runs), averaged over
    the real positions at or after each sequence's first swapped one."""
    with torch.no_grad(), autocast():
        t = swapped_logits(teacher, tokens, teacher_layer, teacher_source[partner], where)
    with autocast():
        s = swapped_logits(student, tokens, student_layer, student_source[partner], where)
    s, t = (z if n is None else z[..., :n] for z, n in ((s, rows[0]), (t, rows[1])))
    reached = mask & (where.cumsum(1) > 0)
    return kl_loss(s, t, reached, direction=direction, temperature=temperature)


def _interchange(x: LayerInputs, fraction: float, direction: str, temperature: float) -> torch.Tensor:
    ctx = x.context
    if ctx is None or ctx.teacher is None or ctx.teacher_states is None or ctx.swapped_logits is None:
        raise SemalignError("the 'interchange' objective runs the teacher and the student with swapped states; "
                            "train it through the Trainer, which hands both over (LayerInputs.context)")
    pair = ctx.pair(x.student_layer)
    generator = torch.Generator().manual_seed(ctx.seed * 1_000_003 + ctx.step * 1_009 + x.student_layer)
    partner, where = interchange_positions(ctx.mask, fraction, generator)
    teacher_source = ctx.teacher_states.post[pair.nearest_teacher_layer]
    return interchange_loss(ctx.swapped_logits, ctx.student, ctx.teacher, ctx.tokens, ctx.mask,
                            x.student_layer, pair.nearest_teacher_layer, x.state, teacher_source, partner, where,
                            direction=direction, temperature=temperature, rows=ctx.rows, autocast=ctx.autocast)


register_objective(Objective(
    "interchange", "layer", _interchange, {"fraction": 0.5, "direction": "forward", "temperature": 1.0},
    needs=frozenset({"teacher_model", "one_vocabulary"}),
    batch_statistic="each sequence's source, its neighbour in the batch (a batch split over processes or "
                    "micro-batches pairs other sequences at the split)",
    source="published (DIITO, arXiv 2112.02505): KL between teacher and student outputs under the same interchange "
           "of paired-layer states; whole residual states, in-batch sources, sampled positions ours"))
