"""The methods of a cross-tokenizer pair (`AlignConfig.vocab = "intersection"`): the same rows as `kd` and
`semalign`, with the output KL read through the two vocabularies' shared strings at aligned positions
(`objectives/cross_vocab.py`), and ULD beside them.

`semalign-layer` (the relation term alone) and `sft` need no teacher logits and run on either kind of pair
unchanged, so they have no cross-tokenizer twin.
"""

from __future__ import annotations

from .registry import Method, register_method

SHARED_KL = {"shared_kl": {"direction": "forward", "temperature": 1.0}}  # `kd`'s KL, on the shared tokens
# The row each shared-vocabulary method becomes on a cross-tokenizer pair (the others stay as they are).
CROSS_TWINS = {"kd": "kd-shared", "semalign": "semalign-shared"}


def for_pair(method: str, cross: bool) -> str:
    """`method`, or its cross-tokenizer twin on a cross-tokenizer pair."""
    return CROSS_TWINS.get(method, method) if cross else method

for _m in (
    Method("kd-shared", {"shared_kl": 1.0}, "logit distillation across two tokenizers: forward KL on the shared "
           "vocabulary (both distributions renormalised there), at aligned positions", options=SHARED_KL,
           changes="ours: `kd` for a pair without one vocabulary; mass on unshared tokens is dropped"),
    Method("uld", {"uld": 1.0}, "Universal Logit Distillation: Wasserstein-1 between sorted next-token "
           "distributions at aligned positions (no vocabulary mapping)",
           changes="Boizard et al. add ULD to a CE term; here ULD alone, like `kd`, on the shared schedule"),
    Method("semalign-shared", {"relation": 1.0, "shared_kl": 1.0}, "SemAlign v2 across two tokenizers: relation "
           "geometry at aligned positions with the intersection-basis dual map + shared-vocabulary KL",
           family="semalign", transfer_kind="dual", options=SHARED_KL,
           changes="ours: the intersection basis (shared strings only) and aligned positions; the paper needs "
                   "one vocabulary"),
):
    register_method(_m)
