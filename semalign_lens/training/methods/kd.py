"""Word-level logit distillation (Hinton et al. 2015): forward KL(p_T ‖ p_S), at τ = 1 (`registry.KL_OUTPUT`
says why: τ = 2, Hinton's usual choice, measured worse here).

Published KD mixes CE and KL and trains every parameter; here the KL term alone — the same output term that
every SemAlign row carries (`registry.KL_OUTPUT`) — on the shared frontier schedule, so `semalign` − `kd` is
exactly what SemAlign's layer term adds. The loss itself is the registry's `kl` objective.
"""

from __future__ import annotations

from .registry import KL_OUTPUT, Method, register_method

register_method(Method(
    "kd", {"kl": 1.0}, "logit distillation: forward KL(p_T || p_S) at temperature 1", options=KL_OUTPUT,
    changes="Hinton et al. use a CE + KL mixture at τ > 1 and train all parameters; here the KL term alone at τ = 1 (the same output "
            "term every SemAlign row carries), on the frontier schedule, so the KD row isolates what SemAlign's "
            "layer term adds."))
