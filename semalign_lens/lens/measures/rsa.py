"""Representational similarity analysis between every teacher layer and every student layer (Kriegeskorte,
Mur & Bandettini 2008, "Representational similarity analysis — connecting the branches of systems
neuroscience", Front. Syst. Neurosci.): the Spearman correlation between the two layers' representational
dissimilarity matrices (RDMs) over the same tokens.

A layer's RDM holds, for every pair of tokens i < j, the dissimilarity of their states: by default
`distance="correlation"`, 1 − Pearson r between the two state vectors (the paper's choice; scipy's
`pdist(..., "correlation")`), or `"euclidean"`. RSA compares only the *order* of these n(n − 1)/2 numbers
(Spearman: Pearson correlation of their ranks, ties averaged), so it is blind to any monotone distortion of
distances and to every rotation, shift and scaling of the states.

**Fixed n.** The RDM has n² entries: RSA runs on `n_tokens` tokens drawn once (seeded) from the masked tokens,
the same for both models (`lens.measures.null.sample_positions`); each layer's ranks are computed once, the grid is
one product of the normalised rank vectors (all layers' ranks are held: 8 bytes x n²/2 per layer,
4 MB at n = 1024), and a shuffled token pairing (`lens.measures.measure_null("rsa", ...)`)
only re-indexes the student's ranks. About 0 for unrelated states.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ...core.checks import require_choices
from ...core.errors import SemalignError
from ..similarity import States, paired_tokens
from .null import layer_rows, permutations, sample_positions

DISTANCES: tuple[str, ...] = ("correlation", "euclidean")
N_TOKENS = 1024


def rdm(states: Float[Tensor, "n d"], distance: str = "correlation") -> Float[Tensor, " pairs"]:
    """The upper triangle (i < j, row-major: scipy's `pdist` order) of a layer's dissimilarity matrix."""
    x = states.to(torch.float64)
    if distance == "correlation":
        x = x - x.mean(1, keepdim=True)
        norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        if not bool((norms > 0).all()):
            raise SemalignError("a token's state is constant across its features, so its correlation distance is "
                                "undefined; use distance='euclidean' or drop that token")
        x = x / norms
    gram = x @ x.T
    i, j = torch.triu_indices(len(x), len(x), offset=1)
    if distance == "correlation":
        return 1.0 - gram[i, j]
    sq = gram.diagonal()
    return (sq[i] + sq[j] - 2 * gram[i, j]).clamp(min=0).sqrt()


def average_ranks(values: Tensor) -> Float[Tensor, " m"]:
    """Ranks 1..m of `values`, ties given their average rank (scipy's `rankdata(method="average")`)."""
    order = values.argsort(stable=True)
    _, group, counts = torch.unique_consecutive(values[order], return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)
    mean_rank = ends - (counts.to(torch.float64) - 1) / 2
    ranks = torch.empty(len(values), dtype=torch.float64)
    ranks[order] = mean_rank[group]
    return ranks


def _unit_ranks(states: Tensor, distance: str, layer: int, name: str) -> Tensor:
    ranks = average_ranks(rdm(states, distance))
    ranks -= ranks.mean()
    norm = torch.linalg.vector_norm(ranks)
    if not bool(norm > 0):
        raise SemalignError(f"layer {layer} of {name} gives every pair of tokens the same dissimilarity; RSA is "
                            "undefined for it — drop it or use more (and more varied) tokens")
    return ranks / norm


def _pair_index(perm: Tensor, n: int) -> Tensor:
    """For each pair (i < j) of the shuffled tokens, its position in the unshuffled upper triangle."""
    i, j = torch.triu_indices(n, n, offset=1)
    a, b = perm[i], perm[j]
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    return lo * n - lo * (lo + 1) // 2 + (hi - lo - 1)


def grids(xs: States, ys: States | None = None, *, n_permutations: int = 0, seed: int = 0,
          distance: str = "correlation", n_tokens: int | None = N_TOKENS, mask: Tensor | None = None,
          drop_first: bool = False, progress: bool = False) -> Float[Tensor, "perm lx ly"]:
    """RSA grid of the real pairing, then one per seeded shuffle of the ys tokens."""
    require_choices("distance", [distance], DISTANCES)
    tx, ty = paired_tokens(xs, xs if ys is None else ys, mask=mask, drop_first=drop_first)
    positions = sample_positions(tx, n_tokens, seed)
    n = len(positions)
    if n < 3:
        raise SemalignError(f"RSA needs at least 3 tokens (a correlation over pairs of tokens), got {n}")
    perms = permutations(n, n_permutations, seed)
    y_ranks = torch.stack([_unit_ranks(layer_rows(ty, j, positions, "ys"), distance, j, "ys")
                           for j in range(len(ty))])
    x_ranks = torch.stack([_unit_ranks(layer_rows(tx, i, positions, "xs"), distance, i, "xs")
                           for i in tqdm(range(len(tx)), desc="RSA", disable=not progress, leave=False)])
    out = torch.empty(len(perms), len(tx), len(ty), dtype=torch.float64)
    for a, p in enumerate(perms):
        out[a] = x_ranks @ (y_ranks if p is None else y_ranks[:, _pair_index(p, n)]).T
    return out


def rsa_matrix(xs: States, ys: States | None = None, *, distance: str = "correlation",
               n_tokens: int | None = N_TOKENS, seed: int = 0, mask: Tensor | None = None, drop_first: bool = False,
               progress: bool = False) -> Float[Tensor, "lx ly"]:
    """RSA (Spearman correlation of the RDMs, -1..1) between every layer of `xs` and of `ys` (or `xs` itself),
    on `n_tokens` tokens drawn with `seed` (None: all); inputs and masks as `similarity.cka_matrix`."""
    return grids(xs, ys, distance=distance, n_tokens=n_tokens, seed=seed, mask=mask, drop_first=drop_first,
                 progress=progress)[0]
