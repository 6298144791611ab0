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

from ..objectives.reference import sp_gram, sp_loss  # noqa: F401  (the row's loss, defined with the objectives)
from .registry import KL_OUTPUT, Method, register_method

register_method(Method(
    "gram", {"gram": 1.0, "kl": 1.0}, "relation distillation: row-normalised token-token Gram matrices of the "
    "student and the raw teacher residual contribution (SP-KD), plus the same output KL",
    options={"kl": KL_OUTPUT["kl"]},
    changes="Tung & Mori compare batch x batch Gram matrices of CNN feature maps; here token x token per sequence on "
            "the paired layers' residual contributions, with no semantic map — the ablation of SemAlign's relation "
            "loss that the paper's reviewers ask for."))
