"""What every measure is read against: the same measure with the token pairing shuffled, and the fixed-size
token sample the n-dependent measures use.

A permutation of the student's (ys) token rows keeps each model's geometry and spectrum and breaks only
which token is which: what is left is what the measure reports for unrelated states of these shapes (the
CKA null of `similarity.cka_permutation_null`, here for any measure and either orientation). Permutations
are drawn as CKA's are (`torch.randperm` from one generator seeded with `seed`), so the same seed shuffles
the same way for every measure.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from ...core.checks import require_int
from ...core.errors import SemalignError


@dataclass
class MeasureNull:
    """A measure's `[teacher layer x student layer]` grid on the real pairing (`observed`) and on `k`
    token-shuffled pairings (`null`). `higher_is_closer` orients the p-values: True for similarities
    (CKA, mutual kNN, CKNNA, RSA), False for distances (Procrustes angle)."""

    measure: str
    observed: Float[Tensor, "lx ly"]
    null: Float[Tensor, "k lx ly"]
    higher_is_closer: bool
    seed: int

    @property
    def mean(self) -> Float[Tensor, "lx ly"]:
        return self.null.mean(0)

    @property
    def std(self) -> Float[Tensor, "lx ly"]:
        return self.null.std(0) if self.null.shape[0] > 1 else torch.zeros_like(self.observed)

    def quantile(self, q: float) -> Float[Tensor, "lx ly"]:
        return self.null.quantile(q, dim=0)

    @property
    def p_values(self) -> Float[Tensor, "lx ly"]:
        """One-sided permutation p-value, (1 + #{null at least as close as observed}) / (k + 1); never 0."""
        closer = self.null >= self.observed[None] if self.higher_is_closer else self.null <= self.observed[None]
        return (1 + closer.sum(0)) / (self.null.shape[0] + 1)

    @property
    def excess(self) -> Float[Tensor, "lx ly"]:
        """How much closer than the null mean the real pairing is (positive = closer, in the measure's units)."""
        return self.observed - self.mean if self.higher_is_closer else self.mean - self.observed

    def frame(self):
        """The observed grid as a DataFrame (index: xs layers, columns: ys layers, by position)."""
        import pandas as pd

        frame = pd.DataFrame(self.observed.numpy())
        frame.index.name, frame.columns.name = "teacher_layer", "student_layer"
        return frame

    def long(self):
        """One row per cell: measure, layers, observed value, null mean, p-value, excess over the null."""
        import pandas as pd

        lx, ly = self.observed.shape
        return pd.DataFrame({"measure": self.measure, "teacher_layer": torch.arange(lx).repeat_interleave(ly).numpy(),
                             "student_layer": torch.arange(ly).repeat(lx).numpy(),
                             "value": self.observed.flatten().numpy(), "null_mean": self.mean.flatten().numpy(),
                             "p_value": self.p_values.flatten().numpy(), "excess": self.excess.flatten().numpy()})


def permutations(n: int, n_permutations: int, seed: int) -> list[Tensor | None]:
    """[None (the real pairing), then `n_permutations` seeded shuffles of n token rows]."""
    n_permutations = require_int("n_permutations", n_permutations, minimum=0)
    gen = torch.Generator().manual_seed(seed)
    return [None] + [torch.randperm(n, generator=gen) for _ in range(n_permutations)]


def sample_positions(stack, n_tokens: int | None, seed: int) -> Tensor:
    """Row indices into each layer's flattened `[batch * pos]` (or `[n]`) rows: `n_tokens` real tokens drawn
    without replacement (seeded, sorted), or all of them when `n_tokens` is None or at least their number.

    Why a fixed n: neighbourhood and dissimilarity-rank measures change with the sample size (a k-NN set is a
    different fraction of a different n), so a grid is only comparable to another at the same n."""
    real = torch.arange(stack.n) if stack.keep is None else stack.keep.flatten().nonzero().flatten().cpu()
    if n_tokens is None or require_int("n_tokens", n_tokens) >= stack.n:
        return real
    chosen = torch.randperm(stack.n, generator=torch.Generator().manual_seed(seed))[:n_tokens]
    return real[chosen.sort().values]


def layer_rows(stack, i: int, positions: Tensor, name: str) -> Float[Tensor, "n d"]:
    """Layer i's states at `positions` in float64, refusing NaN/inf (gathered without copying the layer)."""
    layer = stack.layers[i]
    rows = layer.reshape(-1, layer.shape[-1])[positions.to(layer.device)].to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(rows).all()):
        raise SemalignError(f"layer {i} of {name} contains NaN or inf; check the capture (a diverged model or an "
                            "uninitialised buffer)")
    return rows
