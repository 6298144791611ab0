"""SemAlign with Minitron's dynamic loss balancing (Muralidharan et al., arXiv 2407.14679): the layer term scaled
every step by α = L_KL / L_layer, detached.

Minitron balances its intermediate-state loss against the logit KL so; any layer term takes the same option
(`objective.options.<term>.balance`, `training/terms.py`). This row applies it to SemAlign's own relation term:
the term then enters the loss at the output KL's size whatever its own scale (the literature's recipe for a layer
term that would otherwise outweigh the KL, as `semalign-layer`'s wrecking of the student suggests it does).
"""

from __future__ import annotations

from .registry import KL_OUTPUT, Method, register_method

register_method(Method(
    "semalign-balanced", {"relation": 1.0, "kl": 1.0}, "SemAlign v2 (relation + output KL, dual map) with the "
    "relation term balanced to the KL's size each step (α = L_KL / L_relation, Minitron)", family="semalign",
    transfer_kind="dual", options={**KL_OUTPUT, "relation": {"balance": True}},
    changes="Minitron balances a cosine loss on pruned students' states; here SemAlign's relation term on the "
            "frontier schedule (ours: the option for every layer term)."))
