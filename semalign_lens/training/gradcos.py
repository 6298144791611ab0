"""Why a layer term helps or hurts, measured (ours): per paired layer, the cosine between the gradient of a layer
term and the gradient of the output KL on the trainable parameters, and the ratio of their norms.

Reading it: a positive cosine means the layer term pushes the trainable parameters where the output KL does
(it can at most speed KD up); a negative one, that the two compete and the step is a compromise between them;
near zero with a large norm ratio, that the layer term spends the step on directions the output does not care
about. The gradients are those of each term's share of the step's loss (its weight, its balance factor, and
1 / pairs for a layer term's mean over the active pairs), so the norm ratio says how hard each pushes in the
step actually taken.

How: on a diagnostic step the trainer replaces its one backward pass by one pass per piece of the loss (every
layer term at every active pair, every output term) and sums the pieces into the parameters' gradients, which
equal the single pass's up to summation order. Each piece's own autograd nodes (the chunked KLs, whose backward
reuses its buffers in place) still run backward once; only the shared student forward is traversed again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Piece:
    """One summand of the step's loss: `scale` · `value`; `student_layer` None for an output term."""

    term: str
    student_layer: int | None
    value: torch.Tensor
    scale: float


def loss_pieces(values: dict[str, torch.Tensor], pair_values: dict[str, list[torch.Tensor]], terms: Sequence,
                scales: dict[str, float], student_layers: Sequence[int]) -> list[Piece]:
    """The step's loss Σ scale · value split by term and, for a layer term (the mean of its `pair_values`), by
    pair."""
    pieces = []
    for name, obj, _, _ in terms:
        if name not in values:
            continue
        if obj.kind == "layer":
            per_pair = pair_values[name]
            pieces += [Piece(name, layer, v, scales[name] / len(per_pair))
                       for layer, v in zip(student_layers, per_pair, strict=True)]
        else:
            pieces.append(Piece(name, None, values[name], scales[name]))
    return pieces


def _grads(value: torch.Tensor, params: list[torch.Tensor], retain: bool) -> list[torch.Tensor | None]:
    if not value.requires_grad:
        return [None] * len(params)
    return list(torch.autograd.grad(value, params, retain_graph=retain, allow_unused=True))


def _dot(a: list[torch.Tensor | None], b: list[torch.Tensor | None]) -> float:
    return sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b, strict=True)
               if x is not None and y is not None)


def gradient_agreement(layer: list[torch.Tensor | None], reference: list[torch.Tensor | None]) -> dict:
    """{cos, norm_ratio, grad_norm, reference_norm} of two gradients (lists over the same parameters; None: no
    gradient there), in float64; cos and norm_ratio are None where a norm is 0."""
    norm, ref = math.sqrt(_dot(layer, layer)), math.sqrt(_dot(reference, reference))
    return {"cos": _dot(layer, reference) / (norm * ref) if norm > 0 and ref > 0 else None,
            "norm_ratio": norm / ref if ref > 0 else None, "grad_norm": norm, "reference_norm": ref}


def backward_by_pieces(pieces: list[Piece], params: list[torch.Tensor], multiplier: float,
                       reference: set[str]) -> list[dict]:
    """Add multiplier · ∇ Σ scale · value to every parameter's `.grad` (what `(loss · multiplier).backward()`
    does), one piece at a time, and return one record per layer piece that moves the parameters:
    `gradient_agreement` of its gradient with the sum of the `reference` output terms' gradients (the output KL)."""
    ordered = [p for p in pieces if p.student_layer is None] + [p for p in pieces if p.student_layer is not None]
    total: list[torch.Tensor | None] = [None] * len(params)
    ref: list[torch.Tensor | None] = [None] * len(params)
    records = []
    for i, piece in enumerate(ordered):
        scaled = [None if g is None else g * piece.scale for g in _grads(piece.value, params, i < len(ordered) - 1)]
        total = [a if b is None else b if a is None else a + b for a, b in zip(total, scaled, strict=True)]
        if piece.student_layer is None:
            if piece.term in reference:
                ref = [a if b is None else b if a is None else a + b for a, b in zip(ref, scaled, strict=True)]
            continue
        agreement = gradient_agreement(scaled, ref)
        if agreement["grad_norm"] > 0:  # a term resting at this pair (annealed away, or another pair's) says nothing
            records.append({"term": piece.term, "student_layer": piece.student_layer, **agreement})
    for p, g in zip(params, total, strict=True):
        if g is not None:
            g = g * multiplier
            p.grad = g if p.grad is None else p.grad + g
    return records
