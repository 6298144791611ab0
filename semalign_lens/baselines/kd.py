"""Word-level logit distillation (Hinton et al. 2015): forward KL(p_T ‖ p_S) at temperature τ = 2, τ²-scaled.

Published KD mixes CE and KL and trains every parameter; here the KL term alone — the same output term that
every SemAlign row carries (`registry.KL_T2`) — on the shared frontier schedule, so `semalign` − `kd` is
exactly what SemAlign's layer term adds. The loss itself is the registry's `kl` objective.
"""

from __future__ import annotations

from .registry import KL_T2, Method, register_method

register_method(Method(
    "kd", {"kl": 1.0}, "logit distillation: forward KL(p_T || p_S) at temperature 2, times T^2", options=KL_T2,
    changes="Hinton et al. use a CE + KL mixture and train all parameters; here the KL term alone (the same output "
            "term every SemAlign row carries), on the frontier schedule, so the KD row isolates what SemAlign's "
            "layer term adds."))
