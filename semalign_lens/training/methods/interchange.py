"""Causal distillation by interchange intervention (DIITO, Wu, Geiger et al., NAACL 2022, arXiv 2112.02505).

Published: the DistilBERT losses plus an interchange-intervention loss: aligned teacher and student variables
take their values from a source input while both run on a base input, and the student's counterfactual output
is matched to the teacher's with the distillation KL. Here: the registry's `interchange` term (whole residual
states of each paired layer, in-batch sources, sampled positions; `objectives/interchange.py` says what is ours)
with `kd`'s output KL, on the shared schedule, so `interchange` − `kd` is what the causal term adds.
"""

from __future__ import annotations

from .registry import KL_OUTPUT, Method, register_method

register_method(Method(
    "interchange", {"interchange": 1.0, "kl": 1.0}, "interchange intervention training: the student's output "
    "under swapped paired-layer states matched to the teacher's under the same swap (KL), plus the output KL",
    options=KL_OUTPUT,
    changes="DIITO swaps aligned neuron slices of an encoder between a base and a separate source input, beside "
            "MLM, cosine and KD losses, training all parameters; here whole paired-layer residual states at half of "
            "the positions, taken from another sequence of the batch, beside the output KL alone, on the frontier "
            "schedule. One vocabulary only."))
