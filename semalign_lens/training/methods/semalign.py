"""SemAlign variants as rows of the transfer table, by layer objective and teacher→student map kind.

The objectives are `semalign_lens.training.objectives`' own (`relation`, `cosine`, `fisher`, `kl`, `cosine_onehot`;
what is the paper's and what is inferred is documented there); the map kinds are `semantics.TransferMap`'s
(`dual`: the paper's cosine coefficients recomposed with the dual frame, the trainer's default; `paper`:
the paper's own recomposition on unit-normalised bases). Nothing here changes the method: these entries
only name the combinations the benchmark compares.
"""

from __future__ import annotations

from .registry import KL_OUTPUT, Method, register_method

for _m in (
    Method("semalign", {"relation": 1.0, "kl": 1.0}, "SemAlign v2: relation geometry of the mapped residual "
           "contribution + output KL; dual map", family="semalign", transfer_kind="dual", options=KL_OUTPUT),
    Method("semalign-layer", {"relation": 1.0}, "SemAlign v2's layer term alone (relation geometry, no output "
           "KL; dual map): what the layer term does without the logit KD beside it", family="semalign",
           transfer_kind="dual"),
    Method("semalign-cosine", {"cosine": 1.0, "kl": 1.0}, "SemAlign v1 layer loss (cosine to the mapped target) "
           "+ output KL; dual map", family="semalign", transfer_kind="dual", options=KL_OUTPUT),
    Method("semalign-fisher", {"fisher": 1.0, "kl": 1.0}, "SemAlign ACL: Fisher-weighted quadratic on aligned "
           "logits + output KL; dual map", family="semalign", transfer_kind="dual", options=KL_OUTPUT),
    Method("semalign-paper-map", {"relation": 1.0, "kl": 1.0}, "SemAlign v2 with the paper's own recomposition "
           "(unit-normalised bases, no dual frame)", family="semalign", transfer_kind="paper", options=KL_OUTPUT),
    Method("semalign-v1", {"cosine": 1.0, "cosine_onehot": 1.0}, "SemAlign v1 as written: cosine layer loss + "
           "cosine-to-one-hot output loss, paper map", family="semalign", transfer_kind="paper"),
):
    register_method(_m)
