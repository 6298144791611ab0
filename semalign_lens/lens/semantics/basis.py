"""The semantic basis of one model: pinv of its LM head (or embedding rows, or random), unit columns.

See the package docstring for what is the paper's and what is ours.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from ...core.atomic import replacing
from ...core.checks import check_output_file, check_safetensors
from ...core.errors import SemalignError
from ...core.hashing import record_hash, tensor_hash
from ...core.paths import cache_dir
from ...models.readout import final_norm, unembedding

Kind = Literal["paper", "dual", "logits"]
KINDS: tuple[str, ...] = ("paper", "dual", "logits")
METHODS = ("cholqr2", "householder")
FORMAT_VERSION = 1
VOCAB_CHUNK = 8192  # columns per chunk when accumulating d x d operators over the vocabulary
_TINY = 1e-30


# ----------------------------------------------------------------------------------------------- helpers
def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise SemalignError(f"unknown decomposition kind {kind!r}; choose one of {KINDS} "
                            "(paper = Eq. 1-2 as written, dual/logits = exact recomposition)")
    return kind


def _as_ids(tokens: Any, vocab_size: int, d_model: int | None) -> Int[Tensor, " v"]:
    """Validate a token subset: 1-D, integer, unique, in range, and (for pinv bases) at least d_model ids."""
    ids = torch.as_tensor(tokens)
    if ids.ndim != 1 or ids.numel() == 0 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise SemalignError(f"tokens must be a non-empty 1-D list of integer token ids, got shape "
                            f"{tuple(ids.shape)} and dtype {ids.dtype}; pass e.g. most_frequent_tokens(counts, k)")
    ids = ids.long()
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    if bad.numel():
        raise SemalignError(f"token id {int(bad[0])} is out of range for a vocabulary of {vocab_size} "
                            f"({bad.numel()} ids out of range); keep ids in 0..{vocab_size - 1}")
    uniq, counts = torch.unique(ids, return_counts=True)
    if uniq.numel() != ids.numel():
        raise SemalignError(f"token subset repeats ids (e.g. {int(uniq[counts > 1][0])}, "
                            f"{ids.numel() - uniq.numel()} repeats); each id may appear once: deduplicate it "
                            "(e.g. list(dict.fromkeys(ids)))")
    if d_model is not None and ids.numel() < d_model:
        raise SemalignError(f"a pinv basis needs at least d_model={d_model} tokens (its head must have full "
                            f"column rank), got {ids.numel()}; pass a larger subset")
    return ids


def most_frequent_tokens(counts: Float[Tensor, " vocab"] | Sequence[float], k: int) -> Int[Tensor, " k"]:
    """Ids of the `k` most frequent tokens given a count vector over the vocabulary (ties: lower id first).

    Use as `SemanticBasis.from_model(model, tokens=most_frequent_tokens(counts, 8192))` when the student's
    vocabulary is cut to its most frequent ids (a smaller head trains several times faster).
    """
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.ndim != 1 or not 0 < k <= counts.numel():
        raise SemalignError(f"need a 1-D count vector and 0 < k <= its length ({counts.numel()}), got k={k}")
    order = torch.argsort(-counts, stable=True)
    return order[:k].clone()


def _states(h: Tensor, d_model: int, what: str = "states", allow_zero: bool = False) -> Float[Tensor, "n d"]:
    """Flatten [..., d] states to [n, d], refusing wrong widths, non-finite values and (unless allowed)
    all-zero rows, whose cosine coefficients are undefined (0/0)."""
    if not isinstance(h, Tensor) or h.ndim < 1 or h.shape[-1] != d_model:
        shape = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
        raise SemalignError(f"{what} have shape {shape}, but the basis was built for d_model={d_model}; "
                            "use the basis (and readout) of the model these states come from")
    h = h.reshape(-1, d_model)
    if not torch.isfinite(h).all():
        bad = (~torch.isfinite(h)).any(-1).nonzero()
        raise SemalignError(f"{what} contain NaN/inf in {bad.numel()} of {h.shape[0]} rows (first row "
                            f"{int(bad[0])}); fix the capture (fp16 overflow? a diverged run?) or drop those rows")
    if not allow_zero:
        zero = (h == 0).all(-1).nonzero()
        if zero.numel():
            raise SemalignError(f"{what} contain {zero.numel()} all-zero rows (first row {int(zero[0])}), which "
                                "have no direction: drop padding (use the capture mask) and zero states, e.g. a "
                                "doc-start token whose embedding is the zero padding row")
    return h


def _row_chunks(n: int, chunk_size: int | None) -> list[slice]:
    """Row slices for chunked readouts (bounded memory); a trailing single row joins the previous chunk."""
    if not chunk_size or chunk_size >= n:
        return [slice(0, n)]
    if chunk_size < 1:
        raise SemalignError(f"chunk_size must be a positive number of rows, got {chunk_size}")
    chunk_size = max(chunk_size, 2)
    bounds = list(range(0, n, chunk_size)) + [n]
    if n - bounds[-2] == 1 and len(bounds) > 2:
        bounds.pop(-2)
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _spd_inverse(m: Tensor, what: str) -> Tensor:
    """Inverse of a symmetric positive definite float64 matrix, refusing (near-)singular ones."""
    evals = torch.linalg.eigvalsh(m)
    if evals[0] <= evals[-1] * 1e-13:
        raise SemalignError(f"the {what} is singular (eigenvalues {float(evals[0]):.3g}..{float(evals[-1]):.3g}): "
                            "the basis does not span the residual space, so the exact kinds are undefined; use "
                            "kind='paper', or a basis with at least d_model linearly independent columns")
    inv = torch.linalg.inv(m)
    return (inv + inv.T) / 2


def _pinv_qr(W: Float[Tensor, "v d"], method: str) -> tuple[Tensor, str]:
    """pinv(W) = R⁻¹ Qᵀ via QR (CholeskyQR2, or Householder on request / when Cholesky fails)."""
    if method not in METHODS:
        raise SemalignError(f"unknown pinv method {method!r}; choose one of {METHODS}")
    Q = R = None
    if method == "cholqr2":
        R1, info = torch.linalg.cholesky_ex(W.T @ W, upper=True)
        if info == 0:
            Q1 = torch.linalg.solve_triangular(R1, W, upper=True, left=False)
            R2, info = torch.linalg.cholesky_ex(Q1.T @ Q1, upper=True)
            if info == 0:
                Q, R = torch.linalg.solve_triangular(R2, Q1, upper=True, left=False), R2 @ R1
            del Q1
        if Q is None:
            method = "householder"  # ill-conditioned for CholeskyQR: same result, slower algorithm
    if Q is None:
        Q, R = torch.linalg.qr(W, mode="reduced")
    diag = R.diagonal().abs()
    if diag.min() <= diag.max() * W.shape[1] * torch.finfo(W.dtype).eps:
        raise SemalignError(f"the LM head ({W.shape[0]} x {W.shape[1]}) is numerically rank-deficient "
                            f"(|R_ii| from {float(diag.min()):.3g} to {float(diag.max()):.3g}); its pinv basis "
                            "is not unique: use a larger token subset or dtype=torch.float64")
    return torch.linalg.solve_triangular(R, Q.T, upper=True), method


# ------------------------------------------------------------------------------------------ model access
def live_head_tokens(*models) -> tuple[Tensor | None, Tensor]:
    """(token ids to build bases on, or None for all; ids left out): the real vocabulary rows the models share
    (`models.load.vocab_rows`: a head padded beyond its tokenizer contributes no padded row), less the ids whose LM-head
    row is all zero in any of `models`. HF keeps a `padding_idx` embedding row at zero, and a tied head inherits
    it; such a row has no pinv direction (its basis column is 0, unit-normalised it is NaN). The ids left out are
    the zero rows only; padded rows are not vocabulary and are not listed."""
    from ...models.load import head_rows, vocab_rows

    rows = min(vocab_rows(model) for model in models)
    zero = torch.zeros(rows, dtype=torch.bool)
    for model in models:
        zero |= (unembedding(model)[:, :rows] == 0).all(0).cpu()
    if not bool(zero.any()) and all(head_rows(model) == rows for model in models):
        return None, torch.empty(0, dtype=torch.long)
    return (~zero).nonzero().flatten(), zero.nonzero().flatten()


def _model_name(model) -> str:
    from ...models.load import model_name

    return model_name(model)


# ------------------------------------------------------------------------------------------ the basis
@dataclass(eq=False)
class SemanticBasis:
    """Unit-normalised semantic directions of one model, one column per vocabulary token.

    `S` [d_model, n_tokens] holds the unit columns Ŝ; `norms` the lengths of the raw columns (pinv columns
    for an output basis), so the raw frame is S_raw = Ŝ diag(norms). `token_ids[i]` is the vocabulary id of
    column i. `weight_hash` identifies the weights the basis came from; `key` adds the options.
    """

    S: Float[Tensor, "d v"]
    norms: Float[Tensor, " v"]
    token_ids: Int[Tensor, " v"]
    vocab_size: int
    source: str  # output | input | random | custom
    weight_hash: str
    model: str = ""
    fold_final_norm: bool = False
    center: bool = False
    method: str = ""
    vocab_key: str = ""  # set on an intersection basis: the `VocabAlignment.key` its columns follow
    _ops: dict = field(default_factory=dict, repr=False)

    # -- identity -------------------------------------------------------------------------------------
    @property
    def d_model(self) -> int:
        return self.S.shape[0]

    @property
    def n_tokens(self) -> int:
        return self.S.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.S.dtype

    @property
    def options(self) -> dict[str, Any]:
        return {"source": self.source, "fold_final_norm": self.fold_final_norm, "center": self.center,
                "vocab_size": self.vocab_size, "tokens": tensor_hash(self.token_ids)[:16],
                **({"vocab_key": self.vocab_key} if self.vocab_key else {})}

    @property
    def key(self) -> str:
        """Hash of the weights and the options that change the basis (not of dtype or algorithm)."""
        return record_hash([self.weight_hash, self.options], sort_keys=True)

    def describe(self) -> dict[str, Any]:
        return {"model": self.model, "d_model": self.d_model, "n_tokens": self.n_tokens,
                "dtype": str(self.dtype).replace("torch.", ""), "method": self.method, "key": self.key,
                "weight_hash": self.weight_hash, **self.options}

    # -- constructors ---------------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model, *, fold_final_norm: bool = True, center: bool = False, tokens: Any = None,
                   dtype: torch.dtype = torch.float32, cache: bool = True, method: str = "cholqr2") -> SemanticBasis:
        """Output-side basis of `model`: unit columns of pinv(W), W = W_U.T (· diag(final-norm gain))."""
        from ...models.load import vocab_rows

        W_U = unembedding(model)
        # a final norm without a learned gain (OLMo's non-parametric LayerNorm) has nothing to fold: gain 1
        gain = final_norm(model)["weight"] if fold_final_norm else None
        if tokens is None and (rows := vocab_rows(model)) < W_U.shape[1]:
            tokens = torch.arange(rows)  # a head padded beyond its tokenizer: padded rows are no tokens
        return cls.from_unembedding(W_U, norm_weight=gain, center=center, tokens=tokens, dtype=dtype,
                                    cache=cache, method=method, name=_model_name(model))

    @classmethod
    def from_unembedding(cls, W_U: Float[Tensor, "d vocab"], *, norm_weight: Float[Tensor, " d"] | None = None,
                         center: bool = False, tokens: Any = None, dtype: torch.dtype = torch.float32,
                         cache: bool = False, method: str = "cholqr2", name: str = "custom") -> SemanticBasis:
        """Output-side basis from a head given as W_U [d_model, vocab] (and optionally the gain to fold).

        The pinv is computed in `dtype`, fp32 or fp64, whatever the head's own dtype: a bf16/fp16 head (or
        dtype) is upcast to fp32 (ours: a half-precision QR's rank test and unit columns would be rounding noise
        at eps 4e-3 / 5e-4), so the basis of a half-precision model is an fp32 basis of its exact weights."""
        if not isinstance(W_U, Tensor) or W_U.ndim != 2:
            raise SemalignError("W_U must be a [d_model, vocab] tensor (TransformerLens convention: "
                                "lm_head.weight.T)")
        if dtype in (torch.bfloat16, torch.float16):
            dtype = torch.float32
        if dtype not in (torch.float32, torch.float64):
            raise SemalignError(f"dtype must be torch.float32 or torch.float64 (bf16/fp16 compute in float32), "
                                f"got {dtype}")
        d, V = W_U.shape
        if V < d:
            raise SemalignError(f"W_U has shape {tuple(W_U.shape)}; expected [d_model, vocab] with vocab >= "
                                "d_model: did you pass lm_head.weight (transpose it)?")
        if norm_weight is not None and tuple(norm_weight.shape) != (d,):
            raise SemalignError(f"norm_weight has shape {tuple(norm_weight.shape)}, expected ({d},)")
        ids = torch.arange(V) if tokens is None else _as_ids(tokens, V, d)
        weight_hash = tensor_hash(W_U.detach().T, norm_weight)  # [V, d] bytes: lm_head.weight's layout
        proto = cls(S=torch.empty(d, 0), norms=torch.empty(0), token_ids=ids, vocab_size=V, source="output",
                    weight_hash=weight_hash, model=name, fold_final_norm=norm_weight is not None, center=center,
                    method=method)
        path = cache_dir("bases") / f"{proto.key[:24]}-{str(dtype)[6:]}-{method}.safetensors" if cache else None
        if path is not None and path.exists():
            loaded = cls.load(path)
            if loaded.key == proto.key:
                loaded.model = name
                return loaded
        with torch.no_grad():
            W = W_U.detach().T.to("cpu", dtype)
            if norm_weight is not None:
                W = W * norm_weight.detach().to("cpu", dtype)
            W = W[ids]
            if center:
                W = W - W.mean(0, keepdim=True)
            S_raw, used = _pinv_qr(W, method)
            del W
            norms = torch.linalg.vector_norm(S_raw, dim=0)
            zero = (norms == 0).nonzero()
            if zero.numel():
                raise SemalignError(f"{zero.numel()} rows of the head are zero (first: token id "
                                    f"{int(ids[zero[0]])}), so their pinv columns have no direction; leave them "
                                    "out with tokens=[...]")
            S = (S_raw / norms).contiguous()  # row-major: column chunks then take the same BLAS path
        proto.S, proto.norms, proto.method = S, norms, used
        if path is not None:
            proto.save(path)
        return proto

    @classmethod
    def from_vectors(cls, vectors: Float[Tensor, "d v"], *, source: str = "custom", name: str = "custom",
                     token_ids: Any = None, vocab_size: int | None = None,
                     dtype: torch.dtype = torch.float32) -> SemanticBasis:
        """A basis whose raw columns are given directly (unit-normalised here; no pinv)."""
        vectors = vectors.detach().to("cpu", dtype)
        if vectors.ndim != 2:
            raise SemalignError("vectors must be [d_model, n_tokens]")
        V = vectors.shape[1]
        ids = torch.arange(V) if token_ids is None else _as_ids(token_ids, vocab_size or V, None)
        if ids.numel() != V:
            raise SemalignError(f"{ids.numel()} token ids for {V} columns; pass one id per column")
        norms = torch.linalg.vector_norm(vectors, dim=0)
        zero = (norms == 0).nonzero()
        if zero.numel():
            raise SemalignError(f"{zero.numel()} columns are zero (first: token id {int(ids[zero[0]])}); a zero "
                                "vector has no direction: drop those ids with a token subset")
        return cls(S=(vectors / norms).contiguous(), norms=norms, token_ids=ids, vocab_size=vocab_size or V,
                   source=source, weight_hash=tensor_hash(vectors), model=name, method="normalise")

    @classmethod
    def from_embedding(cls, model_or_W_E, *, tokens: Any = None, dtype: torch.dtype = torch.float32) -> SemanticBasis:
        """Input-side basis (VDS App. B.1, the paper's Fig. 2 contrast): unit-normalised rows of W_E [vocab, d]."""
        if isinstance(model_or_W_E, Tensor):
            W_E, name = model_or_W_E, "custom"
        else:
            W_E, name = getattr(model_or_W_E, "W_E", None), _model_name(model_or_W_E)
            if not isinstance(W_E, Tensor):
                raise SemalignError(f"{name} has no embedding matrix W_E; pass W_E [vocab, d_model] directly")
        V = W_E.shape[0]
        ids = torch.arange(V) if tokens is None else _as_ids(tokens, V, None)
        basis = cls.from_vectors(W_E.detach()[ids].T, source="input", name=name, token_ids=ids, vocab_size=V,
                                 dtype=dtype)
        basis.weight_hash = tensor_hash(W_E.detach())
        return basis

    @classmethod
    def random(cls, d_model: int, n_tokens: int, *, seed: int = 0, dtype: torch.dtype = torch.float32,
               vocab_size: int | None = None, token_ids: Any = None) -> SemanticBasis:
        """Isotropic Gaussian directions (seeded), the paper's random-basis control."""
        gen = torch.Generator().manual_seed(seed)
        vectors = torch.randn(d_model, n_tokens, generator=gen, dtype=torch.float64)
        basis = cls.from_vectors(vectors, source="random", name=f"random-seed{seed}", token_ids=token_ids,
                                 vocab_size=vocab_size, dtype=dtype)
        return basis

    def random_like(self, seed: int = 0) -> SemanticBasis:
        """A random basis of the same shape and token ids."""
        return SemanticBasis.random(self.d_model, self.n_tokens, seed=seed, dtype=self.dtype,
                                    vocab_size=self.vocab_size, token_ids=self.token_ids)

    # -- persistence ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = check_output_file(path, "semantic basis file")
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT_VERSION, "kind": "semantic_basis", "vocab_size": self.vocab_size,
                "source": self.source, "weight_hash": self.weight_hash, "model": self.model,
                "fold_final_norm": self.fold_final_norm, "center": self.center, "method": self.method,
                "vocab_key": self.vocab_key}
        # atomic, and this writer's own temporary: a killed run never leaves half a cache file, and the processes
        # of one run saving the same basis at once all succeed (`core.atomic.replacing`)
        with replacing(path) as tmp:
            save_file({"S": self.S.contiguous(), "norms": self.norms.contiguous(), "token_ids": self.token_ids},
                      str(tmp), metadata={"semalign": json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> SemanticBasis:
        check_safetensors(path, "semantic basis file", "rebuild it: SemanticBasis.from_model(model).save(path)")
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("semalign", "{}"))
        if meta.get("kind") != "semantic_basis":
            raise SemalignError(f"{path} is not a semalign_lens semantic basis file; build the basis with "
                                "SemanticBasis.from_model(...) and .save() it")
        t = load_file(str(path))
        return cls(S=t["S"], norms=t["norms"], token_ids=t["token_ids"], vocab_size=meta["vocab_size"],
                   source=meta["source"], weight_hash=meta["weight_hash"], model=meta["model"],
                   fold_final_norm=meta["fold_final_norm"], center=meta["center"], method=meta["method"],
                   vocab_key=meta.get("vocab_key", ""))

    def check_model(self, model) -> None:
        """Refuse a model whose head is not the one this (output) basis was built from."""
        W_U = unembedding(model)
        d, V = W_U.shape
        if (d, V) != (self.d_model, self.vocab_size):
            raise SemalignError(f"basis of {self.model!r} is for d_model={self.d_model}, vocab={self.vocab_size}; "
                                f"{_model_name(model)} has d_model={d}, vocab={V}: build its own basis with "
                                "SemanticBasis.from_model(model)")
        gain = final_norm(model)["weight"] if self.fold_final_norm else None
        if self.source == "output" and tensor_hash(W_U.T, gain) != self.weight_hash:
            raise SemalignError(f"basis was built from other weights than {_model_name(model)}'s head (hash "
                                f"{self.weight_hash[:12]} vs {tensor_hash(W_U.T, gain)[:12]}): the model changed "
                                "or it is another model; rebuild with SemanticBasis.from_model(model)")

    # -- d x d operators (float64, computed once) -----------------------------------------------------
    def _grams(self) -> tuple[Tensor, Tensor]:
        """F = Ŝ Ŝᵀ (frame operator) and G = S_raw S_rawᵀ, in one float64 pass over the vocabulary."""
        if "F" not in self._ops:
            F = torch.zeros(self.d_model, self.d_model, dtype=torch.float64)
            G = torch.zeros_like(F)
            for c in range(0, self.n_tokens, VOCAB_CHUNK):
                Sc = self.S[:, c:c + VOCAB_CHUNK].double()
                F += Sc @ Sc.T
                Sc = Sc * self.norms[c:c + VOCAB_CHUNK].double()  # not in place: .double() may be a view of S
                G += Sc @ Sc.T
            self._ops["F"], self._ops["G"] = F, G
        return self._ops["F"], self._ops["G"]

    def _inv(self, name: str) -> Tensor:
        if name + "_inv" not in self._ops:
            F, G = self._grams()
            label = {"F": "frame operator Ŝ Ŝᵀ", "G": "raw Gram S_raw S_rawᵀ"}[name]
            self._ops[name + "_inv"] = _spd_inverse(F if name == "F" else G, label)
        return self._ops[name + "_inv"]

    @property
    def raw_frame(self) -> Float[Tensor, "d v"]:
        """S_raw = Ŝ diag(norms): the pinv columns themselves for an output basis (kept once computed)."""
        if "S_raw" not in self._ops:
            self._ops["S_raw"] = self.S * self.norms
        return self._ops["S_raw"]

    @property
    def frame_operator(self) -> Float[Tensor, "d d"]:
        """Ŝ Ŝᵀ (float64). Its spread of eigenvalues is why the paper's recomposition is not exact."""
        return self._grams()[0]

    def analysis(self, kind: str) -> tuple[Tensor | None, Tensor | None, bool]:
        """(A, w, normalise): coefficients are a = w ⊙ Ŝᵀ (A x), x = h/‖h‖ if normalise else h."""
        if _check_kind(kind) == "logits":
            return self._inv("G"), self.norms, False
        return None, None, True

    def synthesis(self, kind: str) -> tuple[Tensor | None, Tensor | None]:
        """(B, w): recomposition is h̃ = B Ŝ (w ⊙ a)."""
        if _check_kind(kind) == "dual":
            return self._inv("F"), None
        return None, (self.norms if kind == "logits" else None)

    def roundtrip_operator(self, kind: str) -> Float[Tensor, "d d"]:
        """T with recompose(decompose(h)) = T h (· 1/‖h‖ for paper/dual), float64: F, F⁻¹F, G G⁻¹."""
        _check_kind(kind)
        if ("T", kind) not in self._ops:
            F, G = self._grams()
            self._ops[("T", kind)] = {"paper": F, "dual": self._inv("F") @ F, "logits": G @ self._inv("G")}[kind]
        return self._ops[("T", kind)]


def _same_vocabulary(a: SemanticBasis, b: SemanticBasis, what: str) -> None:
    for role, basis in (("teacher", a), ("student", b)):
        if not isinstance(basis, SemanticBasis):
            raise SemalignError(f"{what} needs SemanticBasis objects, but the {role} basis is a "
                                f"{type(basis).__name__}; build it with SemanticBasis.from_model(model)")
    if a.vocab_key or b.vocab_key:  # intersection bases: columns follow one shared-string order
        if a.vocab_key == b.vocab_key:
            return
        which = {(True, False): f"{a.model}'s is an intersection basis and {b.model}'s covers its full vocabulary",
                 (False, True): f"{a.model}'s covers its full vocabulary and {b.model}'s is an intersection basis",
                 }.get((bool(a.vocab_key), bool(b.vocab_key)), "they follow different vocabulary alignments")
        raise SemalignError(f"{what}: the bases do not follow one vocabulary alignment ({which}); build both with "
                            "semalign_lens.lens.semantics.intersection_bases(teacher, student, pair.alignment)")
    # the token ids are the columns' identity; the heads' sizes may differ by padding (`models.load.vocab_rows`)
    if a.n_tokens != b.n_tokens or not torch.equal(a.token_ids, b.token_ids):
        raise SemalignError(f"{what}: the bases cover different tokens ({a.model}: {a.n_tokens} of {a.vocab_size}, "
                            f"{b.model}: {b.n_tokens} of {b.vocab_size}); build both with the same tokens= subset "
                            "of one shared vocabulary")


def _cross(left: SemanticBasis, right: SemanticBasis, weights: Tensor | None) -> Float[Tensor, "dl dr"]:
    """Σ_i w_i ŝ^left_i ŝ^right_iᵀ in float64, chunked over the (shared) vocabulary."""
    out = torch.zeros(left.d_model, right.d_model, dtype=torch.float64)
    for c in range(0, left.n_tokens, VOCAB_CHUNK):
        L = left.S[:, c:c + VOCAB_CHUNK].double()
        if weights is not None:
            L = L * weights[c:c + VOCAB_CHUNK]
        out += L @ right.S[:, c:c + VOCAB_CHUNK].double().T
    return out


def _coefficient_weights(kind: str, analysis_basis: SemanticBasis, synthesis_basis: SemanticBasis) -> Tensor | None:
    w_a = analysis_basis.analysis(kind)[1]
    w_s = synthesis_basis.synthesis(kind)[1]
    if w_a is None and w_s is None:
        return None
    one = torch.ones(analysis_basis.n_tokens, dtype=torch.float64)
    return (one if w_a is None else w_a.double()) * (one if w_s is None else w_s.double())


def condition_report(basis: SemanticBasis) -> dict[str, float]:
    """Frame diagnostics: eigenvalue range of ŜŜᵀ (tightness) and of the raw Gram; 1.0 ratio = tight frame."""
    F, G = basis._grams()
    ef, eg = torch.linalg.eigvalsh(F), torch.linalg.eigvalsh(G)
    return {"frame_eig_min": float(ef[0]), "frame_eig_max": float(ef[-1]),
            "frame_eig_ratio": float(ef[-1] / ef[0]) if ef[0] > 0 else math.inf,
            "raw_gram_eig_ratio": float(eg[-1] / eg[0]) if eg[0] > 0 else math.inf}
