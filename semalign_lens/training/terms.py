"""How the trainer weighs its loss terms into one loss, and which terms need which companions (ours).

A term's weight is the config's (`objective.terms`), times, for a layer term with `balance = true`, the dynamic
factor of Minitron (Muralidharan et al., arXiv 2407.14679): α = L_out / L_term, recomputed every step from the
detached values, with L_out the output terms that read teacher logits (the output KL). The balanced term then
enters the loss at the output KL's size times its weight, whatever its own scale, and its gradient is
α·∇L_term. Published: Minitron uses it for its intermediate-state loss beside the logit KL; here any layer term
takes it, SemAlign's own included.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .objectives import LAYER_OPTIONS, Objective, get_objective

Term = tuple[str, Objective, float, dict]  # (name, objective, weight, options): `Trainer.objectives`


def reference_terms(terms: Sequence[Term]) -> list[str]:
    """The output terms that read teacher logits: the output KL a balanced term is scaled to, and the gradient the
    diagnostics compare every layer term's with."""
    return [name for name, obj, _, _ in terms if obj.kind == "output" and obj.needs_teacher_logits]


def balanced_terms(options: dict[str, dict]) -> set[str]:
    """The layer terms whose config options set `balance = true`."""
    return {name for name, opts in options.items() if (opts or {}).get("balance", LAYER_OPTIONS["balance"])}


def term_scales(values: dict[str, torch.Tensor], terms: Sequence[Term], balanced: set[str]) -> dict[str, float]:
    """Each present term's multiplier in the loss: its weight, times α = L_out / L_term for a balanced one (α = 0
    while the term is 0, e.g. annealed away or at a pair it skips)."""
    reference = sum(float(values[n].detach()) for n in reference_terms(terms) if n in values)
    scales = {}
    for name, _, weight, _ in terms:
        if name not in values:
            continue
        if name in balanced:
            own = float(values[name].detach())
            scales[name] = weight * (reference / own if own > 0 else 0.0)
        else:
            scales[name] = weight
    return scales


def term_problem(config) -> str | None:
    """Why the config's terms cannot train together (one line naming the fix), else None."""
    terms = {name: get_objective(name) for name in config.objective.terms}
    outputs = [n for n, o in terms.items() if o.kind == "output"]
    kl = [n for n, o in terms.items() if o.kind == "output" and o.needs_teacher_logits]
    for name, obj in terms.items():
        if "output_kl" in obj.needs and not kl:
            return (f"objective term {name!r} needs the output KL beside it (a layer readout alone leaves the "
                    "student's own output untrained); add kl = 1.0 to objective.terms (shared_kl for two tokenizers)")
    for name, opts in config.objective.options.items():
        value = (opts or {}).get("balance", False)
        if not isinstance(value, bool):
            return f"objective.options.{name}.balance must be true or false, got {value!r}"
        if value and terms[name].kind != "layer":
            return (f"objective.options.{name}.balance scales a layer term to the output KL; {name!r} is an output "
                    "term: remove the option")
        if value and not kl:
            return (f"objective.options.{name}.balance scales {name!r} by α = L_out / L_{name} (Minitron), but "
                    "objective.terms has no output term that reads teacher logits; add kl = 1.0")
    if config.schedule.global_steps and not outputs:
        return ("schedule.global_steps adds an end-to-end stage that trains the output terms only, and "
                "objective.terms has none; add kl = 1.0 (or set global_steps = 0)")
    layers = [n for n, o in terms.items() if o.kind == "layer"]
    if config.gradcos_every and not (kl and layers):
        return ("gradcos_every compares each layer term's gradient with the output KL's, so objective.terms needs a "
                f"layer term and an output term that reads teacher logits (has {sorted(terms)}); set gradcos_every = 0")
    return None
