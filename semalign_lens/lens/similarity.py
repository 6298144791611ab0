"""Representational similarity between the layers of two models: linear CKA, debiased CKA, minibatch CKA,
a permutation baseline, tables and heatmaps.

**Inputs.** A *stack of states* is either one tensor, `[layer, n, d]` (tokens already flattened) or
`[layer, batch, pos, d]`, or a sequence of per-layer tensors, each `[n, d]` or `[batch, pos, d]` (widths may
differ between layers). Row i of every layer, in both models, must be the same token: SemAlign's models share
a tokenizer, so one `mask` (`[batch, pos]`, True = real token) serves both. Padding positions are dropped;
`drop_first=True` also drops the first real token of every sequence (the document-start/BOS token, whose
"massive activations", Sun et al. 2024, dominate linear CKA). A `Capture` from `activations.py` goes in as
`[capture.get("resid_post", l) for l in capture.layers]` with `mask=capture.mask`.

**Estimators** (centring is over tokens, never over features):
- `cka_matrix` — linear CKA, ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) (Kornblith et al. 2019), computed in feature space,
  so no n x n matrix ever exists. Each x layer is centred once and multiplied by *all* y layers stacked side by
  side (one matmul covers a whole row of the grid); ‖XᵀX‖_F and ‖YᵀY‖_F are computed once per layer. With
  `debiased=True` the same products give the unbiased HSIC₁ of Song et al. (2012) over all n tokens: for a
  linear kernel on centred features every term of HSIC₁ reduces to ‖YᵀX‖²_F and the row norms ‖x_i‖², ‖y_i‖²
  (derived below), so the debiased grid costs the same as the biased one.
- `minibatch_cka_matrix` — Nguyen, Raghu & Kornblith (2021): HSIC₁ averaged over token minibatches, CKA = the
  ratio of the averages. Kernel form per batch (b x b Grams), which is much cheaper than the full feature-space
  grid when b < d (6-60x, measured on SmolLM2-sized grids). It estimates the same population quantity as debiased CKA,
  with more variance.
- `cka_permutation_null` — the same estimator with the tokens (rows) of Y shuffled: what CKA looks like
  between unrelated states of these shapes (the ICLR reviewers' "no baseline" complaint). Biased linear CKA
  of independent data is far from 0 when d/n is large (0.198 at n=32 for independent standard-normal inputs, MONAI PR #9129), so read every CKA
  against its null or use the debiased estimator.

**Precision.** `precision="float64"` does everything in float64. The default `"mixed"` centres each layer
with a float64 mean, multiplies in float32 over chunks of `chunk_size` (8192) tokens and sums the chunks' products
in float64 (so float32 rounding never accumulates over more than `chunk_size` terms); it is 2x faster on
CPU and within 6e-9 (random data) / 5e-8 (real SmolLM2 states) of float64 (benchmarks/RESULTS.md). The naive
n x n Gram approach in float32 is off by 6e-3 at n = 8192 and takes 11x the CPU time.

**Cost** (benchmarks/bench_cka.py): SmolLM2's 31 points x the student's 7, 8192 tokens, is 700 GFLOP: 5.1-5.5
CPU-seconds (~2.7 s on two idle cores; the fp32 GEMM floor there is 2.2 s). The minibatch estimator takes
~1 s for the same grid.

**Debiased HSIC in feature space** (our derivation). With K = XXᵀ, L = YYᵀ, K̃, L̃ their copies with a zero
diagonal, and centred columns (Xᵀ1 = 0, so K1 = 0): tr(K̃L̃) = ‖YᵀX‖² − kᵀl, 1ᵀK̃1 = −Σk, K̃1 = −k, where
k_i = ‖x_i‖², l_i = ‖y_i‖². Song et al.'s estimator
HSIC₁ = [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1)/((n−1)(n−2)) − 2·1ᵀK̃L̃1/(n−2)] / (n(n−3)) becomes
[‖YᵀX‖² − kᵀl + (Σk)(Σl)/((n−1)(n−2)) − 2kᵀl/(n−2)] / (n(n−3)). HSIC₁ is invariant to shifting the
features, so centring first changes nothing but the rounding (for the better).

All results are float64 tensors on the CPU, `[n_x_layers, n_y_layers]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from ..core.checks import require_int
from ..core.errors import SemalignError

States = Tensor | Sequence[Tensor]
Precision = Literal["mixed", "float64"]
PRECISIONS: tuple[str, ...] = ("mixed", "float64")
MIN_DEBIASED_SAMPLES = 4  # HSIC₁ divides by n(n-3) and (n-2)


# --------------------------------------------------------------------------------------------- inputs


def _layer_list(states: States, name: str) -> list[Tensor]:
    """Split a stack of states into per-layer tensors (views, no copies)."""
    if isinstance(states, Tensor):
        if states.ndim not in (3, 4):
            raise SemalignError(f"{name} is a tensor of shape {tuple(states.shape)}; pass a stack [layer, n, d] or "
                                "[layer, batch, pos, d], or a list of per-layer [n, d] / [batch, pos, d] tensors")
        layers = list(states.unbind(0))
    elif isinstance(states, Sequence) and not isinstance(states, str):
        layers = list(states)
    else:
        raise SemalignError(f"{name} must be a tensor or a list of tensors, got {type(states).__name__}")
    if not layers:
        raise SemalignError(f"{name} holds no layers; pass at least one")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Tensor) or layer.ndim not in (2, 3):
            shape = tuple(layer.shape) if isinstance(layer, Tensor) else type(layer).__name__
            raise SemalignError(f"layer {i} of {name} is {shape}; each layer must be [n, d] or [batch, pos, d]")
        if layer.shape[:-1] != layers[0].shape[:-1]:
            raise SemalignError(f"layer {i} of {name} has shape {tuple(layer.shape)} but layer 0 has "
                                f"{tuple(layers[0].shape)}; all layers must cover the same tokens")
        if layer.is_complex() or not layer.is_floating_point():
            raise SemalignError(f"layer {i} of {name} has dtype {layer.dtype}; pass real floating-point states")
    return layers


def keep_mask(shape: tuple[int, ...], mask: Tensor | None = None, drop_first: bool = False
              ) -> Bool[Tensor, "batch pos"] | None:
    """Which positions of a `[batch, pos, ...]` tensor are used: the real tokens, minus each sequence's first
    real token when `drop_first` (works for left and right padding). None means "all positions"."""
    batch, pos = shape[0], shape[1]
    if mask is not None:
        if tuple(mask.shape) != (batch, pos):
            raise SemalignError(f"mask has shape {tuple(mask.shape)} but the states are [batch={batch}, pos={pos}, "
                                "d]; pass the [batch, pos] mask of the batch the states were captured from")
        if mask.dtype != torch.bool:
            if mask.is_floating_point() or not ((mask == 0) | (mask == 1)).all():
                raise SemalignError(f"mask must be boolean (True = real token), got dtype {mask.dtype}")
            mask = mask.bool()
    if not drop_first:
        return None if mask is None or bool(mask.all()) else mask
    keep = torch.ones(batch, pos, dtype=torch.bool, device=mask.device if mask is not None else "cpu") \
        if mask is None else mask
    first = keep & (keep.long().cumsum(1) == 1)
    return keep & ~first


def token_matrix(state: Float[Tensor, "... d"], mask: Tensor | None = None, drop_first: bool = False
                 ) -> Float[Tensor, "n d"]:
    """One layer's states as a `[n_tokens, d]` matrix: padding (and optionally the first token) removed."""
    if state.ndim == 2:
        if mask is not None or drop_first:
            raise SemalignError("mask/drop_first need states shaped [batch, pos, d]; these are already flattened "
                                f"to {tuple(state.shape)} — pass the unflattened states or drop the option")
        return state
    keep = keep_mask(tuple(state.shape), mask, drop_first)
    return state.reshape(-1, state.shape[-1]) if keep is None else state[keep.to(state.device)]


class _Tokens:
    """Per-layer token matrices of one stack, produced on demand (so a 31-layer teacher is never copied whole)."""

    def __init__(self, states: States, name: str, mask: Tensor | None, drop_first: bool):
        self.layers = _layer_list(states, name)
        self.name = name
        first = self.layers[0]
        if first.ndim == 2:
            token_matrix(first, mask, drop_first)  # raises on mask/drop_first with flat states
            self.keep, self.n = None, first.shape[0]
        else:
            self.keep = keep_mask(tuple(first.shape), mask, drop_first)
            self.n = first.shape[0] * first.shape[1] if self.keep is None else int(self.keep.sum())
        self.widths = [layer.shape[-1] for layer in self.layers]
        self.batch_shape = tuple(first.shape[:-1])

    def __len__(self) -> int:
        return len(self.layers)

    def flat(self, i: int) -> Float[Tensor, "n d"]:
        layer = self.layers[i]
        if layer.ndim == 2:
            return layer
        return layer.reshape(-1, layer.shape[-1]) if self.keep is None else layer[self.keep.to(layer.device)]

    def mean(self, i: int, x: Tensor | None = None) -> Float[Tensor, " d"]:
        """Mean over tokens, summed in float64 (float32 partial sums over 1024 tokens: as accurate, 10x faster
        than converting every value); refuses NaN/inf (a float64 sum of float32 values cannot overflow)."""
        x = self.flat(i) if x is None else x
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32  # never sum in bf16/fp16
        partial = torch.stack([chunk.sum(0, dtype=acc) for chunk in x.split(1024)])
        mean = partial.sum(0, dtype=torch.float64) / x.shape[0]
        if not bool(torch.isfinite(mean).all()):
            raise SemalignError(f"layer {i} of {self.name} contains NaN or inf; check the capture (a diverged model "
                                "or an uninitialised buffer)")
        return mean

    def centred(self, i: int, dtype: torch.dtype, device: torch.device | None, out: Tensor | None = None
                ) -> Float[Tensor, "n d"]:
        """Column-centred tokens of layer i in `dtype` (mean taken in float64), written into `out` when it fits
        (reusing one buffer across layers avoids fresh page faults, ~5% of the grid's time)."""
        x = self.flat(i)
        if device is not None:
            x = x.to(device)
        mean = self.mean(i, x).to(dtype)
        if out is None or out.shape != x.shape or out.dtype != dtype or out.device != x.device:
            out = torch.empty(x.shape, dtype=dtype, device=x.device)
        return torch.sub(x.to(dtype), mean, out=out)


def _pair_up(xs: States, ys: States | None, mask, drop_first) -> tuple[_Tokens, _Tokens | None]:
    tx = _Tokens(xs, "xs", mask, drop_first)
    if ys is None:
        return tx, None
    ty = _Tokens(ys, "ys", mask, drop_first)
    if tx.batch_shape != ty.batch_shape or tx.n != ty.n:
        raise SemalignError(f"xs covers tokens {tx.batch_shape} and ys {ty.batch_shape}; both models must be run on "
                            "the same token batch (row i of both = the same token)")
    return tx, ty


def paired_tokens(xs: States, ys: States | None = None, *, mask: Tensor | None = None, drop_first: bool = False):
    """The token rows CKA reads, for the other measures (`measures/`, `stitching`): per-layer stacks checked to
    cover the same tokens (same inputs, masks and errors as `cka_matrix`), with `.flat(i)`, `.mean(i)` (NaN/inf
    refused), `.centred(i, dtype, device)`, `.layers`, `.keep`, `.n` and `.widths`."""
    return _pair_up(xs, ys, mask, drop_first)


def _check_precision(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise SemalignError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.float64 if precision == "float64" else torch.float32


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype products are taken in for a `precision` of `PRECISIONS` (float32 for "mixed"); refuses others."""
    return _check_precision(precision)


def _check_n(n: int, debiased: bool) -> None:
    if debiased and n < MIN_DEBIASED_SAMPLES:
        raise SemalignError(f"debiased CKA needs at least {MIN_DEBIASED_SAMPLES} tokens, got {n}; pass more tokens "
                            "(or use debiased=False, which is badly biased at small n anyway)")
    if n < 2:
        raise SemalignError(f"CKA needs at least 2 tokens after masking, got {n}")


# --------------------------------------------------------------------------------------------- feature-space CKA


def _xty(a: Tensor, b: Tensor, chunk_size: int) -> Float[Tensor, "p q"]:
    """aᵀb in float64: float32 products over token chunks, summed in float64 (or one float64 matmul)."""
    if a.dtype == torch.float64 or a.shape[0] <= chunk_size:
        return (a.T @ b).to(torch.float64)
    out = torch.zeros(a.shape[1], b.shape[1], dtype=torch.float64, device=a.device)
    for s in range(0, a.shape[0], chunk_size):
        out += a[s: s + chunk_size].T @ b[s: s + chunk_size]
    return out


def cross_products(a: Tensor, b: Tensor, chunk_size: int = 8192) -> Float[Tensor, "p q"]:
    """aᵀb over the token rows, summed in float64 over chunks of `chunk_size` (the "mixed" precision)."""
    return _xty(a, b, chunk_size)


@dataclass
class _Moments:
    """Everything CKA needs from one pass: ‖XᵀY‖² per pair (per permutation of Y), ‖XᵀX‖², ‖YᵀY‖², row norms."""

    cross: Float[Tensor, "perm lx ly"]
    gram_x: Float[Tensor, " lx"]
    gram_y: Float[Tensor, " ly"]
    rows_x: Float[Tensor, "lx n"] | None
    rows_y: Float[Tensor, "ly n"] | None
    n: int


def _segment_sums(values: Tensor, widths: Sequence[int]) -> Tensor:
    """Sum consecutive segments of the last axis (one segment per layer)."""
    seg = torch.repeat_interleave(torch.arange(len(widths), device=values.device),
                                  torch.tensor(widths, device=values.device))
    out = values.new_zeros((*values.shape[:-1], len(widths)))
    return out.index_add_(-1, seg, values)


def _moments(tx: _Tokens, ty: _Tokens | None, *, dtype: torch.dtype, chunk_size: int, rows: bool,
             perms: Sequence[Tensor | None] = (None,), grams: bool = True, device=None,
             progress: bool = False) -> _Moments:
    """One pass over the x layers: each is centred once and multiplied by every y layer stacked side by side.

    `ty=None` is the self-similarity grid: only the upper triangle is computed. `perms` are row permutations of
    Y (None = identity); their products are stacked into the same matmul. `grams=False` skips ‖XᵀX‖², ‖YᵀY‖²
    (NaN instead), for later passes of a permutation null.
    """
    require_int("chunk_size", chunk_size)
    rows_of = (lambda c: torch.linalg.vector_norm(c, dim=1, dtype=torch.float64).square()) if rows else None
    symmetric = ty is None
    ys = tx if symmetric else ty
    y_centred = [ys.centred(j, dtype, device) for j in range(len(ys))]
    y_all = torch.cat(y_centred, 1)
    n_x, n_y, widths_y = len(tx), len(ys), ys.widths
    rows_y = torch.stack([rows_of(c) for c in y_centred]) if rows else None
    del y_centred
    if symmetric:
        offsets = [0, *torch.tensor(widths_y).cumsum(0).tolist()]
        cross = torch.zeros(1, n_x, n_y, dtype=torch.float64)
        for i in tqdm(range(n_x), desc="CKA (self grid)", disable=not progress, leave=False):
            block = _xty(y_all[:, offsets[i]: offsets[i + 1]], y_all[:, offsets[i]:], chunk_size)
            cross[0, i, i:] = _segment_sums(block.square().sum(0), widths_y[i:]).cpu()
        cross[0] = torch.maximum(cross[0], cross[0].T)  # mirror the upper triangle (lower is zeros)
        gram = cross[0].diagonal().clone()
        rows_y = None if rows_y is None else rows_y.cpu()
        return _Moments(cross, gram, gram, rows_y, rows_y, tx.n)

    rhs = torch.cat([y_all if p is None else y_all[p.to(y_all.device)] for p in perms], 1)
    del y_all
    gram_x, gram_y = (torch.full((k,), torch.nan, dtype=torch.float64) for k in (n_x, n_y))
    if grams:
        gram_y = torch.stack([_xty(c, c, chunk_size).square().sum().cpu()
                              for c in rhs[:, :sum(widths_y)].split(widths_y, 1)])
    cross = torch.empty(len(perms), n_x, n_y, dtype=torch.float64)
    rows_x = torch.empty(n_x, tx.n, dtype=torch.float64) if rows else None
    xc = None
    for i in tqdm(range(n_x), desc="CKA", disable=not progress, leave=False):
        xc = tx.centred(i, dtype, device, out=xc)
        if grams:
            gram_x[i] = _xty(xc, xc, chunk_size).square().sum().cpu()
        if rows:
            rows_x[i] = rows_of(xc).cpu()
        c = _xty(xc, rhs, chunk_size)
        sq = (c * c).sum(0)  # [perm * sum(widths_y)]
        cross[:, i, :] = _segment_sums(sq.view(len(perms), -1), widths_y).cpu()
    return _Moments(cross, gram_x, gram_y, rows_x, None if rows_y is None else rows_y.cpu(), tx.n)


def _hsic1(cross: Tensor, kx: Tensor, ky: Tensor, n: int) -> Tensor:
    """Song et al.'s unbiased HSIC for linear kernels of centred features, from ‖YᵀX‖² and row norms."""
    kl = kx @ ky.T
    sums = kx.sum(1)[:, None] * ky.sum(1)[None, :]
    return (cross - kl + sums / ((n - 1) * (n - 2)) - 2 * kl / (n - 2)) / (n * (n - 3))


def _hsic1_self(gram: Tensor, k: Tensor, n: int) -> Tensor:
    kk = (k * k).sum(1)
    return (gram - kk + k.sum(1) ** 2 / ((n - 1) * (n - 2)) - 2 * kk / (n - 2)) / (n * (n - 3))


def _denominator(self_x: Tensor, self_y: Tensor, estimator: str) -> Tensor:
    for name, values in (("xs", self_x), ("ys", self_y)):
        bad = (values <= 0).nonzero().flatten().tolist()
        if bad:
            raise SemalignError(f"layer {bad[0]} of {name} has no variance across the tokens ({estimator} self-HSIC "
                                f"= {values[bad[0]].item():.3g}); CKA is undefined for a constant layer — drop it "
                                "or use more (and more varied) tokens")
    return (self_x[:, None] * self_y[None, :]).sqrt()


def _cka_from(m: _Moments, debiased: bool) -> Float[Tensor, "perm lx ly"]:
    if not debiased:
        return m.cross / _denominator(m.gram_x, m.gram_y, "linear")[None]  # sqrt(‖XᵀX‖² ‖YᵀY‖²)
    self_x, self_y = _hsic1_self(m.gram_x, m.rows_x, m.n), _hsic1_self(m.gram_y, m.rows_y, m.n)
    return m.cross / _denominator(self_x, self_y, "debiased")[None]


def cka_matrix(xs: States, ys: States | None = None, *, mask: Tensor | None = None, drop_first: bool = False,
               debiased: bool = False, precision: Precision = "mixed", chunk_size: int = 8192,
               device: str | torch.device | None = None, progress: bool = False) -> Float[Tensor, "lx ly"]:
    """Linear CKA between every layer of `xs` and every layer of `ys` (or of `xs` itself when `ys` is None).

    `debiased=True` uses Song et al.'s unbiased HSIC₁ over all tokens (needs >= 4 tokens; can be slightly
    negative for unrelated layers). `device` moves the work (e.g. to a GPU); results come back on the CPU.
    Cost: one matmul of [n, d_x] against all y layers stacked, per x layer — O(n · Σd_x · Σd_y). `progress`
    shows a bar over the x layers.
    """
    dtype = _check_precision(precision)
    tx, ty = _pair_up(xs, ys, mask, drop_first)
    _check_n(tx.n, debiased)
    m = _moments(tx, ty, dtype=dtype, chunk_size=chunk_size, rows=debiased, device=device, progress=progress)
    if debiased:
        m.cross[0] = _hsic1(m.cross[0], m.rows_x, m.rows_y, m.n)
    return _cka_from(m, debiased)[0]


# --------------------------------------------------------------------------------------------- permutation null


@dataclass
class PermutationNull:
    """A measure's `[teacher layer x student layer]` grid on the real pairing (`observed`) and on `k` token-shuffled
    pairings (`null`), per layer pair: CKA's (`cka_permutation_null`) and every other measure's
    (`lens.measures.measure_null`).

    A null value is what the measure reports for states with these shapes and spectra but no token correspondence;
    an observed value inside the null says nothing about shared representation. `higher_is_closer` orients the
    p-values and the excess: True for similarities (CKA, mutual kNN, CKNNA, RSA), False for distances (Procrustes).
    """

    observed: Float[Tensor, "lx ly"]
    null: Float[Tensor, "k lx ly"]
    seed: int
    measure: str = "cka"
    higher_is_closer: bool = True
    debiased: bool | None = None  # CKA's estimator; None for the other measures

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
        """How much closer than the null mean the real pairing is (positive = closer, in the measure's units): for
        CKA, the similarity not explained by shapes and spectra alone."""
        return self.observed - self.mean if self.higher_is_closer else self.mean - self.observed

    def frame(self):
        """The observed grid as a DataFrame (index: teacher layers, columns: student layers, by position)."""
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


def cka_permutation_null(xs: States, ys: States | None = None, *, n_permutations: int = 10, seed: int = 0,
                         mask: Tensor | None = None, drop_first: bool = False, debiased: bool = False,
                         precision: Precision = "mixed", chunk_size: int = 8192,
                         device: str | torch.device | None = None, max_bytes: int = 2**28,
                         progress: bool = False) -> PermutationNull:
    """CKA with the tokens of `ys` shuffled `n_permutations` times (seeded), beside the observed CKA.

    Costs about (1 + n_permutations) linear grids' worth of cross products (the Grams are computed once);
    permuted copies of the y stack are multiplied in groups of at most `max_bytes`.
    """
    if n_permutations < 1:
        raise SemalignError(f"n_permutations must be >= 1, got {n_permutations}")
    dtype = _check_precision(precision)
    tx, ty = _pair_up(xs, xs if ys is None else ys, mask, drop_first)
    _check_n(tx.n, debiased)
    gen = torch.Generator().manual_seed(seed)
    perms: list[Tensor | None] = [None] + [torch.randperm(tx.n, generator=gen) for _ in range(n_permutations)]
    per_copy = tx.n * sum(ty.widths) * (8 if dtype == torch.float64 else 4)
    group = max(1, max_bytes // max(per_copy, 1))
    crosses, first = [], None
    for s in tqdm(range(0, len(perms), group), desc="permutation null", disable=not progress, leave=False):
        m = _moments(tx, ty, dtype=dtype, chunk_size=chunk_size, rows=debiased, perms=perms[s: s + group],
                     grams=first is None, device=device)
        first = first or m
        if debiased:
            ky = [m.rows_y if p is None else m.rows_y[:, p] for p in perms[s: s + group]]
            m.cross = torch.stack([_hsic1(c, m.rows_x, k, m.n) for c, k in zip(m.cross, ky, strict=True)])
        crosses.append(m.cross)
    first.cross = torch.cat(crosses)
    cka = _cka_from(first, debiased)
    return PermutationNull(observed=cka[0], null=cka[1:], seed=seed, debiased=debiased)


# --------------------------------------------------------------------------------------------- minibatch CKA


def _batch_grams(flat: Sequence[Tensor], means: Sequence[Tensor], idx: Tensor, dtype: torch.dtype, device
                 ) -> tuple[Float[Tensor, "layer bb"], Float[Tensor, "layer b"], Float[Tensor, " layer"]]:
    """K̃ (the batch Gram with a zero diagonal, float64) of every layer, flattened; its row sums and total."""
    grams = []
    for f, mu in zip(flat, means, strict=True):
        dev = f.device if device is None else device
        x = f[idx.to(f.device)].to(device=dev, dtype=dtype) - mu.to(device=dev, dtype=dtype)
        grams.append((x @ x.T).to(torch.float64).fill_diagonal_(0.0))
    k = torch.stack(grams)
    return k.flatten(1), k.sum(2), k.sum((1, 2))


def _hsic1_batch(a, b, n: int) -> Float[Tensor, "la lb"]:
    """HSIC₁ between every layer of `a` and of `b`, each (K̃ flat, K̃1, 1ᵀK̃1) of one batch of n tokens."""
    (ka, ra, sa), (kb, rb, sb) = a, b
    return (ka @ kb.T + sa[:, None] * sb[None, :] / ((n - 1) * (n - 2)) - 2 * ra @ rb.T / (n - 2)) / (n * (n - 3))


def _hsic1_batch_self(a, n: int) -> Float[Tensor, " la"]:
    k, r, s = a
    return ((k * k).sum(1) + s * s / ((n - 1) * (n - 2)) - 2 * (r * r).sum(1) / (n - 2)) / (n * (n - 3))


def minibatch_cka_matrix(xs: States, ys: States | None = None, *, batch_size: int = 256,
                         mask: Tensor | None = None, drop_first: bool = False, shuffle: bool = True, seed: int = 0,
                         precision: Precision = "mixed", device: str | torch.device | None = None,
                         progress: bool = False) -> Float[Tensor, "lx ly"]:
    """Minibatch debiased CKA (Nguyen et al. 2021): mean_b HSIC₁(K_b, L_b) / sqrt(mean HSIC₁(K_b, K_b) · mean
    HSIC₁(L_b, L_b)), the ratio of averages (not the average of per-batch CKAs).

    Tokens are shuffled (seeded) before batching so that a batch is not one document; a final batch of fewer
    than 4 tokens is dropped. Per batch the cost is b² · Σd (Grams) + b² · Lx · Ly (pairs); token rows are
    gathered straight from the inputs, so no layer is copied whole.
    """
    dtype = _check_precision(precision)
    if batch_size < MIN_DEBIASED_SAMPLES:
        raise SemalignError(f"batch_size must be >= {MIN_DEBIASED_SAMPLES} for HSIC₁, got {batch_size}")
    tx, ty = _pair_up(xs, ys, mask, drop_first)
    _check_n(tx.n, debiased=True)
    ty = tx if ty is None else ty
    flat_index = torch.arange(tx.n) if tx.keep is None else tx.keep.flatten().nonzero().flatten().cpu()
    if shuffle:
        flat_index = flat_index[torch.randperm(tx.n, generator=torch.Generator().manual_seed(seed))]
    batches = [b for b in flat_index.split(batch_size) if len(b) >= MIN_DEBIASED_SAMPLES]
    flat = {side: [layer.reshape(-1, layer.shape[-1]) for layer in side.layers] for side in (tx, ty)}
    means = {side: [side.mean(i) for i in range(len(side))] for side in (tx, ty)}
    xy, xx, yy = 0.0, 0.0, 0.0
    for idx in tqdm(batches, desc="minibatch CKA", disable=not progress, leave=False):
        n = len(idx)
        gx = _batch_grams(flat[tx], means[tx], idx, dtype, device)
        gy = gx if ty is tx else _batch_grams(flat[ty], means[ty], idx, dtype, device)
        xy = xy + _hsic1_batch(gx, gy, n).cpu()
        xx = xx + _hsic1_batch_self(gx, n).cpu()
        yy = yy + _hsic1_batch_self(gy, n).cpu()
    return xy / _denominator(xx, yy, "minibatch debiased")


# --------------------------------------------------------------------------------------------- tables and figures


def residual_labels(n_layers: int, include_embed: bool = True) -> list[str]:
    """Labels for a model's residual points in capture order: "embed" (resid_pre of block 0), then "0", "1", ...
    for the resid_post of each block (0-based block index, pairing.py's convention)."""
    return (["embed"] if include_embed else []) + [str(i) for i in range(n_layers)]


def axis_labels(labels: Sequence | None, n: int, what: str) -> list:
    if labels is None:
        return list(range(n))
    labels = list(labels)
    if len(labels) != n:
        raise SemalignError(f"{len(labels)} {what} labels for a matrix with {n} {what} layers; pass one label each")
    return labels


def cka_frame(matrix: Float[Tensor, "lx ly"], teacher_labels: Sequence | None = None,
              student_labels: Sequence | None = None, *, null: PermutationNull | None = None,
              estimator: str = "linear"):
    """Long-form table, one row per (teacher layer, student layer): teacher_index, teacher_layer,
    student_index, student_layer, cka, estimator — plus null_mean, null_std, null_q95, p_value with `null`."""
    import pandas as pd

    matrix = torch.as_tensor(matrix, dtype=torch.float64).cpu()
    tl, sl = axis_labels(teacher_labels, matrix.shape[0], "teacher"), axis_labels(student_labels, matrix.shape[1], "student")
    ti, si = torch.meshgrid(torch.arange(matrix.shape[0]), torch.arange(matrix.shape[1]), indexing="ij")
    frame = pd.DataFrame({"teacher_index": ti.flatten().numpy(), "teacher_layer": [tl[i] for i in ti.flatten()],
                          "student_index": si.flatten().numpy(), "student_layer": [sl[j] for j in si.flatten()],
                          "cka": matrix.flatten().numpy(), "estimator": estimator})
    if null is not None:
        if tuple(null.observed.shape) != tuple(matrix.shape):
            raise SemalignError(f"null is for a {tuple(null.observed.shape)} grid, the matrix is "
                                f"{tuple(matrix.shape)}; compute both from the same states")
        frame["null_mean"] = null.mean.flatten().numpy()
        frame["null_std"] = null.std.flatten().numpy()
        frame["null_q95"] = null.quantile(0.95).flatten().numpy()
        frame["p_value"] = null.p_values.flatten().numpy()
    return frame


def cka_wide(matrix: Float[Tensor, "lx ly"], teacher_labels: Sequence | None = None,
             student_labels: Sequence | None = None):
    """The matrix as a DataFrame: index = teacher layers, columns = student layers."""
    import pandas as pd

    matrix = torch.as_tensor(matrix, dtype=torch.float64).cpu()
    frame = pd.DataFrame(matrix.numpy(), index=axis_labels(teacher_labels, matrix.shape[0], "teacher"),
                         columns=axis_labels(student_labels, matrix.shape[1], "student"))
    frame.index.name, frame.columns.name = "teacher_layer", "student_layer"
    return frame
