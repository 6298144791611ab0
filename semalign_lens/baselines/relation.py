"""Relation (Gram) distillation: similarity-preserving KD (Tung & Mori, ICCV 2019) on token geometry.

Published SP-KD: for a batch of b inputs, G = A Aᵀ (b x b) of a layer's flattened activations, each row
L2-normalised, loss = ‖Ĝ_T − Ĝ_S‖²_F / b². Here (what changes, and why): the "batch" is the real tokens of
one sequence (token x token, like SemAlign v2's relation geometry), the activations are the paired layers'
residual contributions by default (the same interface as SemAlign's `relation`), the first position is
skipped (its massive-activation outlier would dominate every row), and — the point of this baseline — the
teacher side is the **raw** teacher activation, with no semantic map and no centring. Width-free by
construction, so no projector is needed. Comparing this row with `semalign` isolates what the vocabulary
map and the centred-CKA form add.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float

from ..errors import SemalignError
from ..objectives import LayerInputs, Objective, register_objective
from .registry import KL_OUTPUT, Method, register_method


def sp_gram(x: Float[torch.Tensor, "batch pos d"], mask: Bool[torch.Tensor, "batch pos"]
            ) -> Float[torch.Tensor, "batch pos pos"]:
    """Row-normalised token-token Gram per sequence; padded rows and columns are zero."""
    x = x.float() * mask.unsqueeze(-1)
    return F.normalize(x @ x.transpose(1, 2), dim=-1)


def sp_loss(h_student: torch.Tensor, h_teacher: torch.Tensor, mask: torch.Tensor,
            skip_first: bool = True) -> torch.Tensor:
    """Mean over sequences of ‖Ĝ_S − Ĝ_T‖²_F / n², n = real tokens of the sequence."""
    mask = mask.clone()
    if skip_first:
        mask[:, 0] = False
    n = mask.sum(1).float()
    diff = (sp_gram(h_student, mask) - sp_gram(h_teacher.detach(), mask)).pow(2).sum((1, 2))
    valid = n >= 2
    if not bool(valid.any()):
        return h_student.sum() * 0.0
    return (diff[valid] / n[valid].pow(2)).mean()


def _gram(x: LayerInputs, interface: str, skip_first: bool) -> torch.Tensor:
    if interface == "state":
        student, teacher = x.state, x.teacher_state
    elif interface == "contribution":
        student, teacher = x.contribution, x.teacher_contribution
    else:
        raise SemalignError(f"gram interface must be 'state' or 'contribution', got {interface!r}")
    if teacher is None:
        raise SemalignError("the 'gram' objective needs raw teacher activations (LayerInputs.teacher_state)")
    return sp_loss(student, teacher, x.mask, skip_first)


register_objective(Objective(
    "gram", "layer", _gram, {"interface": "contribution", "skip_first": True},
    source="baseline, not SemAlign: similarity-preserving KD (row-normalised Gram, Tung & Mori 2019) on raw "
           "teacher activations, token x token"))


register_method(Method(
    "gram", {"gram": 1.0, "kl": 1.0}, "relation distillation: row-normalised token-token Gram matrices of the "
    "student and the raw teacher residual contribution (SP-KD), plus the same output KL",
    options={"kl": KL_OUTPUT["kl"]},
    changes="Tung & Mori compare batch x batch Gram matrices of CNN feature maps; here token x token per sequence on "
            "the paired layers' residual contributions, with no semantic map — the ablation of SemAlign's relation "
            "loss that reviewers ask for (baselines.md §3)."))
