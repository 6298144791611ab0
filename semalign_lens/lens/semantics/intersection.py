"""Intersection semantic bases: each model's basis restricted to the token strings two vocabularies share.

Our extension to cross-tokenizer pairs (the paper needs one shared vocabulary). Column i of both bases is
the same string (`data.vocab.VocabAlignment`, teacher id order), so decomposition, recomposition,
`TransferMap` (paper, dual, logits) and the fidelity tables run unchanged on the pair.

What the restriction costs: the frame loses every column of a token the other vocabulary lacks. An
output-side basis restricted to the shared tokens is the pinv of those rows of the head (`tokens=`), so the
`logits` kind still reproduces the model's logits *on the shared tokens* exactly, but the `paper` kind's
cosine coefficients and frame operator change with the lost columns, and directions that only unshared
tokens span are no longer described. `analysis/fig2_resolution.py --intersection` measures the cost on
Fig. 2's fidelity.
"""

from __future__ import annotations

import torch

from ...core.errors import SemalignError
from .basis import SemanticBasis


def intersection_bases(teacher, student, alignment, **options) -> tuple[SemanticBasis, SemanticBasis]:
    """(teacher basis, student basis) on the shared strings of `alignment` (`ModelPair(..., vocab=
    "intersection").alignment`), in one common order; `options` go to `SemanticBasis.from_model`."""
    from ...models.load import vocab_rows

    for role, model, size in (("teacher", teacher, alignment.teacher_size),
                              ("student", student, alignment.student_size)):
        if vocab_rows(model) != size:  # the tokenizer's rows: a head padded beyond them is the same vocabulary
            raise SemalignError(f"the alignment is for a {role} vocabulary of {size} tokens, but the {role} has "
                                f"{vocab_rows(model)}; align the pair's own tokenizers (ModelPair(..., "
                                "vocab='intersection'))")
    alignment.check_usable(max(teacher.cfg.d_model, student.cfg.d_model))
    out = []
    for model, ids in ((teacher, alignment.teacher_ids), (student, alignment.student_ids)):
        basis = SemanticBasis.from_model(model, tokens=torch.as_tensor(ids), **options)
        basis.vocab_key = alignment.key
        out.append(basis)
    return out[0], out[1]
