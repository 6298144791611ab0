"""Orthogonal Procrustes shape distance between every teacher layer and every student layer (Williams, Kunz,
Kornblith & Linderman 2021, "Generalized Shape Metrics on Neural Representations", NeurIPS; their
`netrep.metrics.LinearMetric(alpha=1)`, the angular score).

**In sample.** With X̄, Ȳ the column-centred `[tokens, features]` states, θ = arccos(max_Q ⟨X̄, ȲQ⟩ /
(‖X̄‖_F ‖Ȳ‖_F)) over orthogonal Q: the angle between the two clouds after the best rotation (scale-free,
0 = one is a rotation and rescaling of the other, π/2 = nothing in common). The maximum is the nuclear norm of
the cross-covariance, so θ = arccos(‖X̄ᵀȲ‖_* / (‖X̄‖_F ‖Ȳ‖_F)). Unequal widths: Williams et al. zero-pad the
narrower one; the padded cross-covariance has the same singular values plus zeros, so padding needs no copy
and only the d_x x d_y product is formed. Like CKA it is computed in feature space (no n x n matrix), from
token chunks of float32 products summed in float64 (`precision="mixed"`, `similarity.cross_products`), one
matmul of each teacher layer against all student layers side by side.

**Cross-validated** (`cross_validated=True`; netrep's fit/score): the means and the rotation are fitted on the
first half of the tokens (in sequence order, so with several sequences the halves are mostly different
documents) and the angle is scored on the second half, centred with the *fitted* means:
cos θ = ⟨(X_B − m_X)ᵀ(Y_B − m_Y), UVᵀ⟩ / (‖X_B − m_X‖ ‖Y_B − m_Y‖), UΣVᵀ the SVD of the first half's
cross-covariance. An in-sample rotation always finds some alignment when d/n is large (the null says how
much); a held-out one must generalise. Range [0, π].

Read every grid against its null (`lens.measures.measure_null("procrustes", ...)`): lower than the null = closer.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ...core.errors import SemalignError
from ..similarity import States, cross_products, paired_tokens, precision_dtype
from .null import permutations


def procrustes_matrix(xs: States, ys: States | None = None, *, mask: Tensor | None = None, drop_first: bool = False,
                      cross_validated: bool = False, precision: str = "mixed", chunk_size: int = 8192,
                      device: str | torch.device | None = None, progress: bool = False) -> Float[Tensor, "lx ly"]:
    """Procrustes angular distance (radians) between every layer of `xs` and of `ys` (or `xs` itself): the
    inputs, masks and `precision` of `similarity.cka_matrix`; float64 on the CPU, `[n_x_layers, n_y_layers]`."""
    return grids(xs, ys, mask=mask, drop_first=drop_first, cross_validated=cross_validated, precision=precision,
                 chunk_size=chunk_size, device=device, progress=progress)[0]


def _nuclear_norms(blocks: list[Tensor]) -> Tensor:
    if len({tuple(b.shape) for b in blocks}) == 1:
        return torch.linalg.svdvals(torch.stack(blocks)).sum(-1)
    return torch.stack([torch.linalg.svdvals(b).sum() for b in blocks])


def _held_out_cosines(fit_blocks: list[Tensor], test_blocks: list[Tensor]) -> Tensor:
    """⟨C_test, UVᵀ⟩ per block, U, V from the fitted cross-covariance (reduced SVD: what netrep's padded full
    SVD gives whenever the fitted cross-covariance has full rank)."""
    out = []
    for fit, test in zip(fit_blocks, test_blocks, strict=True):
        u, _, vh = torch.linalg.svd(fit, full_matrices=False)
        out.append((test * (u @ vh)).sum())
    return torch.stack(out)


def grids(xs: States, ys: States | None = None, *, n_permutations: int = 0, seed: int = 0,
          mask: Tensor | None = None, drop_first: bool = False, cross_validated: bool = False,
          precision: str = "mixed", chunk_size: int = 8192, device: str | torch.device | None = None,
          progress: bool = False, max_bytes: int = 2**28) -> Float[Tensor, "perm lx ly"]:
    """The real pairing's grid, then one per seeded shuffle of the ys tokens (`lens.measures.null`). Shuffled copies
    of the ys stack are multiplied in groups of at most `max_bytes`, like CKA's null."""
    dtype = precision_dtype(precision)
    tx, ty = paired_tokens(xs, xs if ys is None else ys, mask=mask, drop_first=drop_first)
    if tx.n < (4 if cross_validated else 2):
        raise SemalignError(f"the Procrustes distance needs at least {4 if cross_validated else 2} tokens after "
                            f"masking{' (two per half)' if cross_validated else ''}, got {tx.n}; pass more tokens")
    perms = permutations(tx.n, n_permutations, seed)
    y_all = torch.cat([ty.centred(j, dtype, device) for j in range(len(ty))], 1)
    widths, half = ty.widths, tx.n // 2
    out = torch.empty(len(perms), len(tx), len(ty), dtype=torch.float64)
    group = max(1, max_bytes // max(tx.n * sum(widths) * y_all.element_size(), 1))
    for start in range(0, len(perms), group):
        chunk = perms[start: start + group]
        rows = [y_all if p is None else y_all[p.to(y_all.device)] for p in chunk]
        split = widths * len(chunk)
        side = _YHalves(rows, half, split) if cross_validated else _YSide(torch.cat(rows, 1), split)
        del rows
        xc = None
        for i in tqdm(range(len(tx)), desc="Procrustes", disable=not progress, leave=False):
            xc = tx.centred(i, dtype, device, out=xc)
            parts = (_cross_validated(xc, side, half, chunk_size) if cross_validated
                     else _in_sample(xc, side, chunk_size))
            out[start: start + len(chunk), i] = _cosines(*parts, i, len(ty)).view(len(chunk), len(ty))
    return torch.arccos(out.clamp(-1.0, 1.0))


def _block_sq_norms(values: Tensor, split: list[int]) -> Tensor:
    """Squared norm of each consecutive block of a vector (one block per layer), float64."""
    return torch.stack([b.square().sum() for b in values.split(split)])


class _YSide:
    """All (shuffled) student layers side by side, centred, with each layer's squared norm."""

    def __init__(self, rhs: Tensor, split: list[int]):
        self.rhs, self.split = rhs, split
        self.sq = _block_sq_norms(torch.linalg.vector_norm(rhs, dim=0, dtype=torch.float64), split)


class _YHalves:
    """The same, cut into the fitting rows [0, half) and the scoring rows [half, n), with float64 sums."""

    def __init__(self, rows: list[Tensor], half: int, split: list[int]):
        self.fit = torch.cat([r[:half] for r in rows], 1)
        self.test = torch.cat([r[half:] for r in rows], 1)
        self.split = split
        self.fit_sum = self.fit.sum(0, dtype=torch.float64)
        self.test_sum = self.test.sum(0, dtype=torch.float64)
        self.test_sq = _block_sq_norms(torch.linalg.vector_norm(self.test, dim=0, dtype=torch.float64), split)


def _in_sample(xc: Tensor, y: _YSide, chunk_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """(‖X̄ᵀȲ‖_* per y block, ‖X̄‖², ‖Ȳ‖² per y block)."""
    nuclear = _nuclear_norms(list(cross_products(xc, y.rhs, chunk_size).split(y.split, 1)))
    return nuclear, torch.linalg.vector_norm(xc, dtype=torch.float64).square(), y.sq


def _cross_validated(xc: Tensor, y: _YHalves, half: int, chunk_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """(⟨C_test, UVᵀ⟩, ‖X_B − m_X‖², ‖Y_B − m_Y‖² per y block): fit on rows [0, half), score on [half, n), the
    means the fitted half's (float64 sums, the mean corrections applied to the products: no re-centred copy)."""
    xa, xb = xc[:half], xc[half:]
    na, nb = xa.shape[0], xb.shape[0]
    sxa, sxb = xa.sum(0, dtype=torch.float64), xb.sum(0, dtype=torch.float64)
    mx, my = sxa / na, y.fit_sum / na
    fit = cross_products(xa, y.fit, chunk_size) - torch.outer(sxa, y.fit_sum) / na
    test = (cross_products(xb, y.test, chunk_size) - torch.outer(mx, y.test_sum) - torch.outer(sxb, my)
            + nb * torch.outer(mx, my))
    x_sq = torch.linalg.vector_norm(xb, dtype=torch.float64).square() - 2 * mx @ sxb + nb * mx @ mx
    cross_sums = torch.stack([(a * b).sum() for a, b in zip(my.split(y.split), y.test_sum.split(y.split),
                                                               strict=True)])
    y_sq = y.test_sq - 2 * cross_sums + nb * _block_sq_norms(my, y.split)
    return _held_out_cosines(list(fit.split(y.split, 1)), list(test.split(y.split, 1))), x_sq, y_sq


def _cosines(numerator: Tensor, x_sq: Tensor, y_sq: Tensor, layer: int, n_y_layers: int) -> Tensor:
    if not bool(x_sq > 0):
        raise SemalignError(f"layer {layer} of xs has no variance across the tokens; the Procrustes angle is "
                            "undefined for a constant layer — drop it or use more (and more varied) tokens")
    bad = (y_sq <= 0).nonzero().flatten().tolist()
    if bad:
        raise SemalignError(f"layer {bad[0] % n_y_layers} of ys has no variance across the tokens; the Procrustes "
                            "angle is undefined for a constant layer — drop it or use more (and more varied) tokens")
    return (numerator / (x_sq * y_sq).sqrt()).cpu()
