"""Similarity measures beyond CKA, each with its shuffled-pairing null, on the same tokens, masks and
`[teacher layer x student layer]` grid as `similarity.cka_matrix`.

Why more than one: CKA can be moved a lot by a few points or one high-variance direction without any change in
function (Davari et al. 2022), measures disagree with each other, and the ones worth trusting are those that
track function (Ding, Denain & Steinhardt 2021; Bo et al. 2024: linear CKA and Procrustes best separate trained
from untrained models). A pairing conclusion that holds under several of them, each above its null, is one
about the models rather than the measure.

| name | module | what it asks | closer = | tokens |
|---|---|---|---|---|
| `cka`, `cka_debiased` | `similarity` | linear CKA (Kornblith et al. 2019), biased / HSIC₁ | higher | all |
| `procrustes` | `procrustes` | angle after the best rotation (Williams et al. 2021) | lower | all (streamed) |
| `procrustes_cv` | `procrustes` | the same, rotation fitted on one half of the tokens, scored on the other | lower | all |
| `mutual_knn` | `neighbours` | shared k nearest neighbours (Huh et al. 2024) | higher | fixed n |
| `cknna` | `neighbours` | CKA over mutual neighbours (Huh et al. 2024) | higher | fixed n |
| `rsa` | `rsa` | Spearman correlation of dissimilarity matrices (Kriegeskorte et al. 2008) | higher | fixed n |

`measure_matrix(name, xs, ys, **options)` is the grid; `measure_null(name, xs, ys, n_permutations=...)` the grid
with `n_permutations` seeded shuffles of the ys tokens (`similarity.PermutationNull`: mean, quantiles, oriented p-values,
excess over the null). The per-measure functions (`procrustes_matrix`, `mutual_knn_matrix`, `cknna_matrix`,
`rsa_matrix`) take the measure's own options. `compare_measures` (`compare`) reads several grids side by side,
each against its null, and says where they agree (the pairing page's verdict).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from ...core.checks import require_choices
from ...core.errors import SemalignError
from ...core.registry import Registry
from ..similarity import PermutationNull, States
from . import neighbours, procrustes, rsa
from .compare import MeasureComparison, Reading, compare_measures
from .neighbours import cknna_matrix, mutual_knn_matrix
from .procrustes import procrustes_matrix
from .rsa import rsa_matrix

__all__ = ["MEASURES", "MeasureComparison", "Reading", "cknna_matrix", "compare_measures",
           "measure_matrix", "measure_null", "mutual_knn_matrix", "procrustes_matrix", "reading", "require_measures",
           "rsa_matrix"]


def _cka_grids(xs: States, ys: States | None = None, *, n_permutations: int = 0, seed: int = 0,
               debiased: bool = False, mask: Tensor | None = None, drop_first: bool = False,
               precision: str = "mixed", chunk_size: int = 8192, device=None, progress: bool = False) -> Tensor:
    """`similarity.cka_matrix` / `cka_permutation_null` as one [1 + k, lx, ly] stack."""
    from ..similarity import cka_matrix, cka_permutation_null

    options = dict(debiased=debiased, mask=mask, drop_first=drop_first, precision=precision,
                   chunk_size=chunk_size, device=device, progress=progress)
    if n_permutations == 0:
        return cka_matrix(xs, ys, **options)[None]
    null = cka_permutation_null(xs, ys, n_permutations=n_permutations, seed=seed, **options)
    return torch.cat([null.observed[None], null.null])


@dataclass(frozen=True)
class Measure:
    """A registered measure: `grids(xs, ys, n_permutations=, seed=, **options)` -> [1 + k, lx, ly]."""

    grids: Callable[..., Tensor]
    fixed: dict
    higher_is_closer: bool
    unit: str

    def options(self) -> list[str]:
        taken = {"xs", "ys", "n_permutations", "seed", *self.fixed}
        params = inspect.signature(self.grids).parameters.items()
        return sorted(n for n, p in params if p.kind is p.KEYWORD_ONLY and n not in taken)


MEASURES: Registry[Measure] = Registry("similarity measure", {
    "cka": Measure(_cka_grids, {"debiased": False}, True, "CKA, 0..1"),
    "cka_debiased": Measure(_cka_grids, {"debiased": True}, True, "debiased CKA, about -0.1..1"),
    "procrustes": Measure(procrustes.grids, {"cross_validated": False}, False, "radians, 0..π/2"),
    "procrustes_cv": Measure(procrustes.grids, {"cross_validated": True}, False, "radians, 0..π"),
    "mutual_knn": Measure(neighbours.grids, {"cknna": False}, True, "fraction of shared neighbours, 0..1"),
    "cknna": Measure(neighbours.grids, {"cknna": True}, True, "CKNNA, about -1..1"),
    "rsa": Measure(rsa.grids, {}, True, "Spearman ρ, -1..1"),
})


def _lookup(name: str, options: dict) -> Measure:
    measure = MEASURES.lookup(name)
    valid = measure.options()
    bad = sorted(set(options) - set(valid))
    if bad:
        raise SemalignError(f"unknown option(s) {bad} for the {name} measure; valid options: {', '.join(valid)}")
    return measure


def measure_matrix(name: str, xs: States, ys: States | None = None, **options) -> Float[Tensor, "lx ly"]:
    """The `[xs layer x ys layer]` grid of measure `name` (see `MEASURES`), float64 on the CPU."""
    measure = _lookup(name, options)
    return measure.grids(xs, ys, **measure.fixed, **options)[0]


def measure_null(name: str, xs: States, ys: States | None = None, *, n_permutations: int = 10, seed: int = 0,
                 **options) -> PermutationNull:
    """Measure `name` on the real token pairing and on `n_permutations` seeded shuffles of the ys tokens.
    Costs about 1 + n_permutations grids for CKA and Procrustes; for the fixed-n measures the per-layer work
    (neighbour lists, ranks) is done once and a shuffle only re-indexes it."""
    if n_permutations < 1:
        raise SemalignError(f"n_permutations must be >= 1 for a null, got {n_permutations}")
    measure = _lookup(name, options)
    grid = measure.grids(xs, ys, n_permutations=n_permutations, seed=seed, **measure.fixed, **options)
    return PermutationNull(observed=grid[0], null=grid[1:], seed=seed, measure=name,
                           higher_is_closer=measure.higher_is_closer)


def reading(null: PermutationNull) -> Reading:
    """A measure's null as `compare_measures` reads it (closeness-oriented, in the registry's units)."""
    return Reading.of_null(null, MEASURES[null.measure].unit if null.measure in MEASURES else "")


def require_measures(names) -> list[str]:
    """`names` checked against `MEASURES` (an unknown one is one line listing the valid ones), duplicates dropped."""
    return list(dict.fromkeys(require_choices("similarity measures", [names] if isinstance(names, str) else names,
                                              MEASURES)))
