"""Relation distillation as MiniLMv2 does it (Wang et al., Findings ACL 2021, arXiv 2012.15828): KL over
softmax-normalised self-relations at one upper-middle pair, beside the output KL.

Published: Q-Q, K-K and V-V relations of one upper-middle teacher layer and the student's last layer, split into
relation heads, matched by KL (task-agnostic pre-training distillation, no output term). Here: the registry's
`relation_kl` term on the residual states of the pair nearest 3/4 of the student's depth
(`objectives/relation_kl.py` says what is ours), with `kd`'s output KL beside it (Minitron found a QKV-relation
loss gave nothing in a decoder; `relation-kl` − `kd` measures that here). Compare with `semalign` (a centred CKA
at every pair) and `gram` (row-normalised Grams).
"""

from __future__ import annotations

from .registry import KL_OUTPUT, Method, register_method

register_method(Method(
    "relation-kl", {"relation_kl": 1.0, "kl": 1.0}, "MiniLMv2-style relation KL of the residual self-relations "
    "(4 relation heads) at one upper-middle pair, plus the output KL", options=KL_OUTPUT,
    changes="MiniLMv2 matches Q/K/V relations of the teacher's upper-middle layer with the student's last layer, "
            "alone, over billions of tokens; here residual-state relations (the cached targets hold residual "
            "states), causal keys, at the pair nearest 3/4 of the student's depth, beside the output KL."))
