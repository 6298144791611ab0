"""Which teacher head each student head resembles: head-by-head similarity of attention patterns between a
teacher layer and the student layer it is paired with (the paper's future work asks for "the sub-layer and
attention-head level").

**Measure.** Clark, Khandelwal, Levy & Manning 2019 ("What Does BERT Look At?", §6) compare two heads by the
Jensen-Shannon divergence between their attention distributions on the same tokens. We do the same across
models: on the same token batch (one tokenizer), for every real query position q ≥ 1 (position 0 attends to
itself alone, in every head), the teacher head's and the student head's distributions over keys 0..q are
compared, JSD in bits (0..1), and averaged over the queries. Similarity = 1 − mean JSD: 1 = the two heads
attend identically at every position, 0 = disjoint supports everywhere.

**References** (ours): two pattern-free "heads" are scored beside the teacher's, `uniform` (every earlier key
alike) and `first token` (all weight on the sequence's first token, the attention sink most heads fall back on;
Xiao et al. 2024). A student head no closer to any teacher head than to these resembles no teacher head, only
a generic pattern; that is the null of this view.

**Cost.** One forward of each model per `batch_size` sequences (patterns of the paired layers only, read by
`capture.attention_patterns`), then queries x (teacher heads + 2) x student heads x keys in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ..core.checks import require_hooked
from ..core.errors import SemalignError
from ..data.tokens import TokenBatch
from .capture import attention_patterns

REFERENCES: tuple[str, ...] = ("uniform", "first token")


@dataclass
class HeadSimilarity:
    """1 − mean Jensen-Shannon divergence (bits) between each teacher head (rows, then the `REFERENCES`) and
    each student head (columns) of one teacher layer and one student layer, over `n_queries` query positions."""

    teacher_layer: int
    student_layer: int
    similarity: Float[Tensor, "teacher_heads_and_references student_heads"]
    n_queries: int

    @property
    def n_teacher_heads(self) -> int:
        return self.similarity.shape[0] - len(REFERENCES)

    def frame(self) -> pd.DataFrame:
        """Rows: teacher heads "0", "1", ... then the references; columns: student heads."""
        index = [str(h) for h in range(self.n_teacher_heads)] + list(REFERENCES)
        frame = pd.DataFrame(self.similarity.numpy(), index=index, columns=range(self.similarity.shape[1]))
        frame.index.name, frame.columns.name = "teacher head", "student head"
        return frame

    def best(self) -> pd.DataFrame:
        """Per student head: the teacher head it resembles most, that similarity, the closest reference's, and
        the margin over it (> 0: more like that teacher head than like a pattern-free reference)."""
        heads, refs = self.similarity[: self.n_teacher_heads], self.similarity[self.n_teacher_heads:]
        top, which = heads.max(0)
        ref_top, ref_which = refs.max(0)
        return pd.DataFrame({
            "student_layer": self.student_layer, "student_head": range(self.similarity.shape[1]),
            "teacher_layer": self.teacher_layer, "teacher_head": which.tolist(), "similarity": top.tolist(),
            "closest_reference": [REFERENCES[i] for i in ref_which.tolist()], "reference_similarity": ref_top.tolist(),
            "margin": (top - ref_top).tolist()})


def _entropy_bits(p: Tensor) -> Tensor:
    return -torch.xlogy(p, p).sum(-1) / math.log(2)


def _references(keys: Tensor, query_pos: Tensor, first_pos: Tensor) -> Float[Tensor, "n_q 2 k"]:
    """The `REFERENCES` patterns of each query: uniform over keys first..q, and all weight on the first key."""
    allowed = ((keys[None] <= query_pos[:, None]) & (keys[None] >= first_pos[:, None])).to(torch.float64)
    first = (keys[None] == first_pos[:, None]).to(torch.float64)
    return torch.stack([allowed / allowed.sum(1, keepdim=True), first], 1)


def _divergence_sums(p: Float[Tensor, "n_q ht k"], q: Float[Tensor, "n_q hs k"]) -> Float[Tensor, "ht hs"]:
    """Σ over queries of JSD(p_a, q_b) in bits, for every (a, b): H(m) − (H(p_a) + H(q_b)) / 2, m the mixture."""
    hp, hq = _entropy_bits(p), _entropy_bits(q)
    out = torch.empty(p.shape[1], q.shape[1], dtype=torch.float64)
    for a in range(p.shape[1]):
        mix = (p[:, a, None] + q) / 2
        out[a] = (_entropy_bits(mix) - (hp[:, a, None] + hq) / 2).clamp_min(0).sum(0)
    return out


def head_similarity(teacher, student, batch: TokenBatch, pairs: Sequence[tuple[int, int]], *, batch_size: int = 8,
                    progress: bool = False) -> list[HeadSimilarity]:
    """Attention-pattern similarity of every teacher head to every student head, for each (teacher layer,
    student layer) of `pairs` (0-based blocks), on the real tokens of `batch` (one tokenizer for both models;
    right padding, as `data.tokenize` gives). Returns one `HeadSimilarity` per pair, in order."""
    require_hooked(teacher, "teacher")
    require_hooked(student, "student")
    if not isinstance(batch, TokenBatch):
        raise SemalignError(f"head_similarity needs a TokenBatch (semalign_lens.data.tokens.tokenize), got "
                            f"{type(batch).__name__}")
    pairs = [(int(t), int(s)) for t, s in pairs]
    if not pairs:
        raise SemalignError("no layer pairs given; pass (teacher layer, student layer) tuples")
    t_layers, s_layers = sorted({t for t, _ in pairs}), sorted({s for _, s in pairs})
    sums: dict[tuple[int, int], Tensor] = {}
    n_queries = 0
    parts = list(batch.split(batch_size))
    for part in tqdm(parts, desc="head patterns", disable=not progress or len(parts) < 2, leave=False):
        mask = part.mask
        first = mask.long().cumsum(1) == 1
        queries = mask & ~first  # the first real token attends to itself alone, in every head
        if not queries.any():
            continue
        t_pat, s_pat = attention_patterns(teacher, part.tokens, t_layers), attention_patterns(student, part.tokens,
                                                                                              s_layers)
        length = part.tokens.shape[1]
        keys = torch.arange(length)
        query_pos = keys.expand(len(part), length)[queries]
        first_pos = first.long().argmax(1)[:, None].expand(len(part), length)[queries]
        refs = _references(keys, query_pos, first_pos)
        for t, s in pairs:
            p = t_pat[t].transpose(1, 2)[queries].to(torch.float64)  # [n_q, heads, keys]
            q = s_pat[s].transpose(1, 2)[queries].to(torch.float64)
            total = _divergence_sums(torch.cat([p, refs], 1), q)
            sums[(t, s)] = total if (t, s) not in sums else sums[(t, s)] + total
        n_queries += int(queries.sum())
    if not n_queries:
        raise SemalignError("the batch has no query position to compare (every sequence needs >= 2 real tokens)")
    return [HeadSimilarity(t, s, 1 - sums[(t, s)] / n_queries, n_queries) for t, s in pairs]
