"""`relation_kl`: relation distillation as MiniLMv2 does it (Wang et al., Findings ACL 2021, arXiv 2012.15828):
a KL between softmax-normalised self-relations, at one upper-middle pair only.

Published (MiniLMv2): the queries, keys and values of one upper-middle teacher layer and of the student's last
layer are split into the same number of *relation heads* (so the head counts and widths need not match); per
head the scaled dot products among tokens, softmax-normalised over the keys, give a relation distribution per
token; the loss is the KL from the teacher's to the student's relations, summed over Q-Q, K-K and V-V.
Here (what is ours, and why):
- the relations are of the paired layers' residual states (H-H), not of Q/K/V: the trainer's teacher targets
  (online or cached) are residual states, and caching three projections per layer would triple the cache;
  each token's state is first scaled to unit RMS (what the attention's input norm does before Q/K/V), so the
  massive activations of a few tokens do not decide every relation;
- a causal decoder's relations run over the keys j ≤ i (the attention a decoder has), real tokens only;
- the pair: the run's pair whose student layer is nearest `depth` · (L_S − 1) (0.75: upper-middle; ties go
  deeper), so the term is zero at every other pair (in the frontier schedule: at every other stage).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float

from ...core.errors import SemalignError
from .registry import INTERFACES, LayerInputs, Objective, register_objective


def self_relations(h: Float[torch.Tensor, "batch pos d"], mask: Bool[torch.Tensor, "batch pos"], heads: int
                   ) -> tuple[Float[torch.Tensor, "batch heads pos pos"], Bool[torch.Tensor, "batch 1 pos pos"]]:
    """(log softmax_j(x_i · x_j / √d_head) per relation head, the allowed (query, key) cells): x = h at unit RMS
    per token, split into `heads` slices; keys j ≤ i, both real."""
    b, p, d = h.shape
    if d % heads:
        raise SemalignError(f"relation_kl heads = {heads} does not divide the width {d}; pick a number of relation "
                            "heads that divides both models' widths")
    x = h.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    x = x.view(b, p, heads, d // heads).transpose(1, 2)
    scores = x @ x.transpose(-1, -2) / math.sqrt(d // heads)
    causal = torch.ones(p, p, dtype=torch.bool, device=h.device).tril()
    allowed = (causal & mask[:, None, :] & mask[:, :, None])[:, None]
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, -1), allowed


def relation_kl_loss(h_student: Float[torch.Tensor, "batch pos d_s"], h_teacher: Float[torch.Tensor, "batch pos d_t"],
                     mask: Bool[torch.Tensor, "batch pos"], heads: int = 4) -> torch.Tensor:
    """Mean over relation heads and real query tokens of KL(R_T,i ‖ R_S,i), R = `self_relations` (widths free)."""
    log_s, allowed = self_relations(h_student, mask, heads)
    with torch.no_grad():
        log_t, _ = self_relations(h_teacher.detach(), mask, heads)
    kl = torch.where(allowed, log_t.exp() * (log_t - log_s), 0.0).sum(-1)  # [batch, heads, pos]
    queries = mask[:, None, :].expand_as(kl)
    return kl[queries].sum() / max(1, int(queries.sum()))


def chosen_layer(student_layers: list[int], n_student_layers: int, depth: float) -> int:
    """The paired student layer nearest depth · (L_S − 1); a tie goes to the deeper one."""
    goal = depth * (n_student_layers - 1)
    return min(student_layers, key=lambda k: (abs(k - goal), -k))


def _relation_kl(x: LayerInputs, heads: int, depth: float, interface: str) -> torch.Tensor:
    if not (isinstance(heads, int) and heads > 0):
        raise SemalignError(f"relation_kl heads must be a positive integer, got {heads!r}")
    if not 0.0 <= depth <= 1.0:
        raise SemalignError(f"relation_kl depth must be a fraction of the student's depth in [0, 1], got {depth!r}")
    if interface not in INTERFACES:
        raise SemalignError(f"interface must be one of {INTERFACES}, got {interface!r}")
    teacher = x.teacher_state if interface == "state" else x.teacher_contribution
    if teacher is None:
        raise SemalignError("the 'relation_kl' objective needs the raw teacher state (LayerInputs.teacher_state)")
    ctx = x.context
    if ctx is not None and x.student_layer != chosen_layer([p.student_layer for p in ctx.pairs],
                                                           ctx.n_student_layers, depth):
        return x.state.sum() * 0.0  # one pair only
    student = x.state if interface == "state" else x.contribution
    return relation_kl_loss(student, teacher, x.mask, heads)


register_objective(Objective(
    "relation_kl", "layer", _relation_kl, {"heads": 4, "depth": 0.75, "interface": "state"},
    source="published (MiniLMv2, arXiv 2012.15828): KL over softmax-normalised self-relations per relation head at "
           "one upper-middle pair; of the residual states (not Q/K/V), unit-RMS tokens, causal keys ours"))
