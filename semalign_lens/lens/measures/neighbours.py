"""Nearest-neighbour alignment between every teacher layer and every student layer (Huh, Cheung, Wang & Isola
2024, "The Platonic Representation Hypothesis", ICML; their `metrics.py`): do the two models put the same
tokens next to each other?

Both measures follow the paper's code: each token's state is L2-normalised (cosine similarity), a token's
neighbours are the k most similar *other* tokens (k = 10 there), K = the cosine Gram matrix.

- `mutual_knn_matrix`: the fraction of each token's k neighbours in the teacher layer that are also among its
  k neighbours in the student layer, averaged over tokens. Unrelated states give about k/(n − 1).
- `cknna_matrix` (CKNNA, "centered kernel nearest-neighbour alignment"): CKA restricted to the mutual
  neighbours, HSIC₁(M∘K, M∘L) / sqrt(HSIC₁(M_K∘K, M_K∘K) · HSIC₁(M_L∘L, M_L∘L)), with M the pairs that
  are neighbours in both, M_K those in K alone, HSIC₁ Song et al.'s unbiased estimator (the paper's code adds
  1e-6 to the denominator; we do not). Unrelated states give a small positive value (about the mutual-kNN
  chance level on random data), so read it against its null.

**Fixed n.** Both depend on the number of tokens (k neighbours are a different fraction of a different n;
2604.18572), so they are computed on `n_tokens` tokens drawn once (seeded) from the masked tokens, the same
tokens for both models: compare grids only at the same n and k. Read them against the shuffled-pairing null
(`lens.measures.measure_null("mutual_knn", ...)`).

**Cost.** Neighbour lists come from row blocks of the n x n cosine Gram (float64, never held whole), one per
layer: n² · d per layer; a pair then costs O(n·k log(n·k)) (sorted neighbour codes i·n + j, no n x n mask),
and a shuffled pairing only re-indexes the student's lists.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from ...core.errors import SemalignError
from ..similarity import MIN_DEBIASED_SAMPLES, States, paired_tokens
from .null import layer_rows, permutations, sample_positions

N_TOKENS = 1024  # the paper's sample size (its WIT subset has 1024 pairs)
K = 10  # the paper's neighbourhood size


@dataclass
class Neighbours:
    """One layer's k-nearest-neighbour lists: `index[i]` the k tokens most cosine-similar to token i (itself
    excluded), `cosine[i]` those similarities."""

    index: Int[Tensor, "n k"]
    cosine: Float[Tensor, "n k"]

    @classmethod
    def of(cls, states: Float[Tensor, "n d"], k: int, block_rows: int = 1024) -> Neighbours:
        norms = torch.linalg.vector_norm(states, dim=1, keepdim=True)
        if not bool((norms > 0).all()):
            raise SemalignError("a token's state is all zeros, so it has no direction (cosine similarity is "
                                "undefined); drop the padding or that token")
        unit = states / norms
        n = unit.shape[0]
        index, cosine = torch.empty(n, k, dtype=torch.long), torch.empty(n, k, dtype=unit.dtype)
        for start in range(0, n, block_rows):
            sims = unit[start: start + block_rows] @ unit.T
            rows = torch.arange(sims.shape[0])
            sims[rows, rows + start] = -torch.inf
            cosine[start: start + len(rows)], index[start: start + len(rows)] = sims.topk(k, dim=1)
        return cls(index, cosine)

    def shuffled(self, perm: Tensor | None) -> Neighbours:
        """The lists of the states with their rows shuffled by `perm` (row i := row perm[i]), re-indexed."""
        if perm is None:
            return self
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(len(perm))
        return Neighbours(inverse[self.index[perm]], self.cosine[perm])

    def sparse(self) -> tuple[Tensor, Tensor]:
        """(sorted codes i·n + j of the neighbour pairs, their cosines in the same order)."""
        n, k = self.index.shape
        codes = (torch.arange(n)[:, None] * n + self.index).flatten()
        order = codes.argsort()
        return codes[order], self.cosine.flatten()[order]


def _hsic1_sparse(codes: Tensor, a: Tensor, b: Tensor, n: int) -> Tensor:
    """Song et al.'s HSIC₁ of two n x n matrices that are zero off the sorted `codes` (i·n + j, no diagonal),
    with values `a`, `b` there: tr(AB) = Σ A_ij B_ji, 1ᵀA1, 1ᵀAB1 = Σ_l colsum(A)_l rowsum(B)_l."""
    i, j = codes // n, codes % n
    transposed = j * n + i
    pos = torch.searchsorted(codes, transposed).clamp(max=max(len(codes) - 1, 0))
    hit = codes[pos] == transposed if len(codes) else torch.zeros(0, dtype=torch.bool)
    trace = (a[hit] * b[pos[hit]]).sum()
    col_a = torch.zeros(n, dtype=a.dtype).index_add_(0, j, a)
    row_b = torch.zeros(n, dtype=b.dtype).index_add_(0, i, b)
    return (trace + a.sum() * b.sum() / ((n - 1) * (n - 2)) - 2 * (col_a @ row_b) / (n - 2)) / (n * (n - 3))


def _pair_scores(x: Neighbours, y: Neighbours, n: int, cknna: bool) -> Tensor:
    cx, vx = x.sparse()
    cy, vy = y.sparse()
    in_y = torch.isin(cx, cy, assume_unique=True)
    if not cknna:
        return in_y.sum().to(torch.float64) / cx.numel()
    in_x = torch.isin(cy, cx, assume_unique=True)  # the same pairs, in the same (sorted) order
    return _hsic1_sparse(cx[in_y], vx[in_y], vy[in_x], n)


def grids(xs: States, ys: States | None = None, *, n_permutations: int = 0, seed: int = 0, cknna: bool = False,
          k: int = K, n_tokens: int | None = N_TOKENS, mask: Tensor | None = None, drop_first: bool = False,
          progress: bool = False) -> Float[Tensor, "perm lx ly"]:
    """Mutual-kNN (or CKNNA) grid of the real pairing, then one per seeded shuffle of the ys tokens."""
    tx, ty = paired_tokens(xs, xs if ys is None else ys, mask=mask, drop_first=drop_first)
    positions = sample_positions(tx, n_tokens, seed)
    n = len(positions)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
        raise SemalignError(f"k = {k!r} neighbours needs 1 <= k < n, the number of tokens ({n}); pass a smaller k "
                            "or more tokens")
    if cknna and n < MIN_DEBIASED_SAMPLES:
        raise SemalignError(f"CKNNA needs at least {MIN_DEBIASED_SAMPLES} tokens (HSIC₁), got {n}")
    perms = permutations(n, n_permutations, seed)
    ny = [Neighbours.of(layer_rows(ty, j, positions, "ys"), k) for j in range(len(ty))]
    shuffled = [[nb.shuffled(p) for nb in ny] for p in perms]
    self_y = torch.stack([_pair_scores(nb, nb, n, True) for nb in ny]) if cknna else None
    out = torch.empty(len(perms), len(tx), len(ty), dtype=torch.float64)
    for i in tqdm(range(len(tx)), desc="CKNNA" if cknna else "mutual kNN", disable=not progress, leave=False):
        nx = Neighbours.of(layer_rows(tx, i, positions, "xs"), k)
        for a, layers in enumerate(shuffled):
            out[a, i] = torch.stack([_pair_scores(nx, nb, n, cknna) for nb in layers])
        if cknna:
            out[:, i] /= _self_scale(_pair_scores(nx, nx, n, True), self_y, i)
    return out


def _self_scale(self_x: Tensor, self_y: Tensor, layer: int) -> Tensor:
    if not bool(self_x > 0):
        raise SemalignError(f"layer {layer} of xs has no neighbourhood structure (its CKNNA self-HSIC₁ is "
                            f"{float(self_x):.3g} <= 0); CKNNA is undefined there — use more tokens or a larger k")
    bad = (self_y <= 0).nonzero().flatten().tolist()
    if bad:
        raise SemalignError(f"layer {bad[0]} of ys has no neighbourhood structure (its CKNNA self-HSIC₁ is "
                            f"{float(self_y[bad[0]]):.3g} <= 0); CKNNA is undefined there — use more tokens or a "
                            "larger k")
    return (self_x * self_y).sqrt()


def mutual_knn_matrix(xs: States, ys: States | None = None, *, k: int = K, n_tokens: int | None = N_TOKENS,
                      seed: int = 0, mask: Tensor | None = None, drop_first: bool = False,
                      progress: bool = False) -> Float[Tensor, "lx ly"]:
    """Mutual k-nearest-neighbour alignment (0..1) between every layer of `xs` and of `ys` (or `xs` itself), on
    `n_tokens` tokens drawn with `seed` (None: all); inputs and masks as `similarity.cka_matrix`."""
    return grids(xs, ys, k=k, n_tokens=n_tokens, seed=seed, mask=mask, drop_first=drop_first, progress=progress)[0]


def cknna_matrix(xs: States, ys: States | None = None, *, k: int = K, n_tokens: int | None = N_TOKENS,
                 seed: int = 0, mask: Tensor | None = None, drop_first: bool = False,
                 progress: bool = False) -> Float[Tensor, "lx ly"]:
    """CKNNA between every layer of `xs` and of `ys` (or `xs` itself), on `n_tokens` tokens drawn with `seed`."""
    return grids(xs, ys, cknna=True, k=k, n_tokens=n_tokens, seed=seed, mask=mask, drop_first=drop_first,
                 progress=progress)[0]
