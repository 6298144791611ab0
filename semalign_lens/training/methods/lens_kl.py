"""Logit-lens distillation (DistillLens, arXiv 2602.13567): per paired layer, the KL between the teacher's and the
student's logit-lens distributions, beside the output KL.

Published: intermediate states of both models read through the vocabulary and matched per layer pair (the
repository's default divergence: Jensen-Shannon), added to the output distillation loss. Here: the registry's
`lens_kl` term (forward KL, final norm in the lens, deeper pairs weighted more, annealed to zero by mid-stage;
`objectives/lens_kl.py` says what is ours) with `kd`'s output KL, on the shared schedule, so `lens-kl` − `kd` is
what the lens term adds. `lens-kl-shared` is the row of a cross-tokenizer pair (both readouts on the shared
strings, `kd-shared`'s KL beside it).
"""

from __future__ import annotations

from .cross_vocab import SHARED_KL
from .registry import KL_OUTPUT, Method, register_method

CHANGES = ("DistillLens reads raw states through the head with a JSD per pair on instruction data and trains all "
           "parameters; here the logit lens with the final norm, forward KL at τ = 1, depth weights ((k+1)/L_S) and "
           "a linear anneal to zero by mid-stage, on the frontier schedule beside the same output KL as `kd`.")

for _m in (
    Method("lens-kl", {"lens_kl": 1.0, "kl": 1.0}, "logit-lens distillation: KL between the teacher's and the "
           "student's logit-lens distributions per paired layer, annealed, plus the output KL", options=KL_OUTPUT,
           changes=CHANGES),
    Method("lens-kl-shared", {"lens_kl": 1.0, "shared_kl": 1.0}, "`lens-kl` across two tokenizers: both lens "
           "distributions and the output KL on the shared vocabulary, at aligned positions", options=SHARED_KL,
           changes=CHANGES + " Two tokenizers: on the shared strings (ours)."),
):
    register_method(_m)
