"""Residual stacks of a cross-tokenizer pair at aligned positions: what CKA and the diagnostics compare.

Two tokenizations of one text have different lengths, so the rows of a teacher and a student stack do not
match token for token. `aligned_stacks` keeps only the aligned positions (`data.vocab.aligned_positions`:
both models have read the same prefix there), in the same order on both sides, so `similarity.cka_matrix`
and every per-token comparison run unchanged on the pair. The document-start token each model reads first
is its own and is left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float

from ..core.errors import SemalignError
from ..data.tokens import tokenize
from ..data.vocab import aligned_positions
from .capture import accumulated_resid


@dataclass
class AlignedStacks:
    """[embeddings, block outputs...] of both models at the aligned positions of `texts`, row for row."""

    teacher: Float[torch.Tensor, "point n d_t"]
    student: Float[torch.Tensor, "point n d_s"]
    n_teacher_positions: int
    n_student_positions: int

    @property
    def n_aligned(self) -> int:
        return self.teacher[0].shape[0]

    @property
    def share(self) -> tuple[float, float]:
        """Share of the teacher's and of the student's text positions that are aligned."""
        return self.n_aligned / max(1, self.n_teacher_positions), self.n_aligned / max(1, self.n_student_positions)


def _rows(model, texts: Sequence[str], positions: list[torch.Tensor], batch_size: int, progress: bool):
    batch = tokenize(model.tokenizer, list(texts))
    stack = accumulated_resid(model, batch, batch_size=batch_size, progress=progress)
    lengths = batch.mask.sum(1).tolist()
    starts = torch.tensor([0, *lengths[:-1]]).cumsum(0)
    rows = torch.cat([start + 1 + pos for start, pos in zip(starts.tolist(), positions, strict=True)])
    return stack[:, rows]


def aligned_stacks(teacher, student, texts: Sequence[str], *, batch_size: int = 8,
                   progress: bool = False) -> AlignedStacks:
    """Both residual stacks on `texts`, restricted to the positions where both tokenizations end a token at one
    character offset (the same rows in both); `texts` are non-empty strings."""
    if isinstance(texts, str) or not texts:
        raise SemalignError("aligned_stacks needs a non-empty list of texts")
    alignments = [aligned_positions(t, teacher.tokenizer, student.tokenizer) for t in texts]
    t_rows = _rows(teacher, texts, [a.teacher for a in alignments], batch_size, progress)
    s_rows = _rows(student, texts, [a.student for a in alignments], batch_size, progress)
    return AlignedStacks(t_rows, s_rows, sum(a.n_teacher for a in alignments),
                         sum(a.n_student for a in alignments))
