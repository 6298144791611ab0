"""What every measure is read against: the same measure with the token pairing shuffled, and the fixed-size
token sample the n-dependent measures use.

A permutation of the student's (ys) token rows keeps each model's geometry and spectrum and breaks only
which token is which: what is left is what the measure reports for unrelated states of these shapes (the
CKA null of `similarity.cka_permutation_null`, here for any measure and either orientation). Permutations
are drawn as CKA's are (`torch.randperm` from one generator seeded with `seed`), so the same seed shuffles
the same way for every measure.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from ...core.checks import require_int
from ...core.errors import SemalignError


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
