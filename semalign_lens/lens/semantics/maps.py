"""Decompose / recompose on a basis, the teacher-to-student `TransferMap`, and the Gram trick."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from ...core.checks import check_output_file, check_safetensors
from ...core.errors import SemalignError
from .basis import (
    _TINY,
    FORMAT_VERSION,
    VOCAB_CHUNK,
    Kind,
    SemanticBasis,
    _check_kind,
    _coefficient_weights,
    _cross,
    _same_vocabulary,
    _states,
)


# ---------------------------------------------------------------------------- decompose and recompose
def _prepare(h: Tensor, basis: SemanticBasis, kind: str) -> Tensor:
    """x = A h (· 1/‖h‖) in float64, returned in the basis dtype."""
    A, _, normalise = basis.analysis(kind)
    x = _states(h, basis.d_model).to("cpu", torch.float64)
    if normalise:
        x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(_TINY)
    if A is not None:
        x = x @ A
    return x.to(basis.dtype)


def iter_decompose(h: Float[Tensor, "... d"], basis: SemanticBasis, kind: Kind = "paper", *,
                   chunk_size: int = VOCAB_CHUNK) -> Iterator[tuple[slice, Float[Tensor, "n c"]]]:
    """Coefficients in vocabulary chunks: yields (columns, [n_states, chunk]) so memory stays bounded.

    Use this to stream V-sized quantities (KL over coefficients, top-k, ...) for large batches; a 1024-state
    batch at V = 49152 is 192 MB as one float32 tensor, `chunk_size` / V of that per chunk.
    """
    if chunk_size < 2:
        raise SemalignError(f"chunk_size must be at least 2 vocabulary columns, got {chunk_size}")
    x = _prepare(h, basis, kind)
    w = basis.analysis(kind)[1]
    bounds = list(range(0, basis.n_tokens, chunk_size)) + [basis.n_tokens]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        bounds.pop(-2)  # no single-column chunk: BLAS takes its matrix-vector path for one column
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        a = x @ basis.S[:, start:stop]
        yield slice(start, stop), (a if w is None else a * w[start:stop])


def decompose(h: Float[Tensor, "... d"], basis: SemanticBasis, kind: Kind = "paper", *,
              chunk_size: int | None = VOCAB_CHUNK) -> Float[Tensor, "... v"]:
    """Coefficients of states `h` on `basis`, one per token, in the basis dtype.

    paper/dual: a = Ŝᵀ h / ‖h‖ (Eq. 1, cosine with every direction). logits: a = diag(norms) Ŝᵀ G⁻¹ h, the
    minimum-norm coefficients on the raw frame; for an output basis exactly W h (the model's logits before
    its final norm's 1/rms and without b_U). Filled `chunk_size` vocabulary columns at a time (each coefficient
    is the same length-d dot product as in one product, equal to float rounding: BLAS may sum it in another
    order for another width); None = one product.
    """
    n = math.prod(h.shape[:-1]) if isinstance(h, Tensor) else 0
    out = torch.empty(n, basis.n_tokens, dtype=basis.dtype)
    for cols, a in iter_decompose(h, basis, kind, chunk_size=chunk_size or basis.n_tokens):
        out[:, cols] = a
    return out.reshape(*h.shape[:-1], basis.n_tokens)


def recompose(a: Float[Tensor, "... v"], basis: SemanticBasis, kind: Kind = "paper") -> Float[Tensor, "... d"]:
    """States from coefficients: paper Ŝ a (Eq. 2), dual (ŜŜᵀ)⁻¹ Ŝ a, logits Ŝ diag(norms) a = S_raw a.

    One product against the stored d x V basis; no V-sized temporaries (the logits kind reads the raw frame,
    kept once per basis), the d x d dual step in float64.
    """
    if not isinstance(a, Tensor) or a.shape[-1] != basis.n_tokens:
        raise SemalignError(f"coefficients have shape {tuple(getattr(a, 'shape', ()))}, but the basis has "
                            f"{basis.n_tokens} tokens; decompose and recompose with bases over the same tokens")
    B = basis.synthesis(kind)[0]
    flat = _states(a, basis.n_tokens, "coefficients", allow_zero=True).to("cpu", basis.dtype)
    y = flat @ (basis.raw_frame if kind == "logits" else basis.S).T
    if B is not None:
        y = (y.double() @ B).to(basis.dtype)
    return y.reshape(*a.shape[:-1], basis.d_model)


def roundtrip(h: Float[Tensor, "... d"], basis: SemanticBasis, kind: Kind = "paper") -> Float[Tensor, "... d"]:
    """recompose(decompose(h)) through the d x d operator, without vocabulary-sized tensors.

    Mathematically identical to the explicit composition (tested); this is what the fidelity report uses.
    Computed in h's precision (float64 for float64 states, else float32; the operator itself is float64).
    """
    dtype = torch.float64 if h.dtype == torch.float64 else torch.float32
    T = basis.roundtrip_operator(kind).to(dtype)
    x = _states(h, basis.d_model).to(dtype)
    if basis.analysis(kind)[2]:
        x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(_TINY)
    return (x @ T.T).to(h.dtype).reshape(h.shape)


# ------------------------------------------------------------------------------------------ transfer
def _identity(basis: SemanticBasis) -> dict[str, Any]:
    return {"model": basis.model, "key": basis.key, "weight_hash": basis.weight_hash, "d_model": basis.d_model,
            "n_tokens": basis.n_tokens, **basis.options}


class TransferMap:
    """The linear map from teacher states to student targets, h̃_S = M h_T (· 1/‖h_T‖), M: [d_S, d_T].

    M = B_S Ŝ_S diag(w) Ŝ_Tᵀ A_T, i.e. decompose on the teacher basis then recompose on the student's:
    paper: Ŝ_S Ŝ_Tᵀ (Eq. 1-2; the paper's target norm is whatever the cosine coefficients give);
    dual: (Ŝ_SŜ_Sᵀ)⁻¹ Ŝ_S Ŝ_Tᵀ; logits: pinv(W_S) W_T (least-squares logit matching).

    Norm handling: `normalize_input` (default True for paper/dual, as Eq. 1 divides by ‖h_T‖; False for
    logits) and `preserve_norm` (our inference, default off: rescale each target to ‖h_T‖, for MSE-type
    losses; cosine losses ignore the norm). Both teacher and student bases must cover the same token ids.
    """

    def __init__(self, teacher_basis: SemanticBasis, student_basis: SemanticBasis, kind: Kind = "paper", *,
                 normalize_input: bool | None = None, preserve_norm: bool = False):
        _check_kind(kind)
        _same_vocabulary(teacher_basis, student_basis, "TransferMap")
        A, _, default_norm = teacher_basis.analysis(kind)
        B = student_basis.synthesis(kind)[0]
        M = _cross(student_basis, teacher_basis, _coefficient_weights(kind, teacher_basis, student_basis))
        if A is not None:
            M = M @ A
        if B is not None:
            M = B @ M
        self._set(M.float(), kind, default_norm if normalize_input is None else normalize_input, preserve_norm,
                  _identity(teacher_basis), _identity(student_basis))

    def _set(self, matrix, kind, normalize_input, preserve_norm, teacher, student) -> None:
        self.matrix: Float[Tensor, "d_S d_T"] = matrix
        self.kind, self.normalize_input, self.preserve_norm = kind, bool(normalize_input), bool(preserve_norm)
        self.teacher, self.student = teacher, student
        self._moved: dict[tuple, Tensor] = {}

    def __repr__(self) -> str:
        return (f"TransferMap(kind={self.kind!r}, {self.teacher['model']} d={self.matrix.shape[1]} -> "
                f"{self.student['model']} d={self.matrix.shape[0]}, normalize_input={self.normalize_input}, "
                f"preserve_norm={self.preserve_norm})")

    def __call__(self, h_T: Float[Tensor, "... d_T"]) -> Float[Tensor, "... d_S"]:
        """Student-space targets for teacher states (differentiable; on h_T's device and dtype)."""
        d_T = self.matrix.shape[1]
        if h_T.shape[-1] != d_T:
            raise SemalignError(f"teacher states have width {h_T.shape[-1]}, but this map expects d_T={d_T} "
                                f"({self.teacher['model']}); pass states of the teacher the map was built for")
        if h_T.dtype in (torch.bfloat16, torch.float16):  # in fp32: a half-precision norm clamp underflows to 0/0
            return self(h_T.float()).to(h_T.dtype)
        key = (h_T.device, h_T.dtype)
        if key not in self._moved:
            self._moved[key] = self.matrix.to(h_T.device, h_T.dtype)
        x = h_T
        norm = torch.linalg.vector_norm(h_T, dim=-1, keepdim=True).clamp_min(_TINY)
        if self.normalize_input:
            x = x / norm
        y = x @ self._moved[key].T
        if self.preserve_norm:
            y = y * (norm / torch.linalg.vector_norm(y, dim=-1, keepdim=True).clamp_min(_TINY))
        return y

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (everything but the matrix)."""
        return {"format": FORMAT_VERSION, "type": "transfer_map", "kind": self.kind,
                "normalize_input": self.normalize_input, "preserve_norm": self.preserve_norm,
                "shape": list(self.matrix.shape), "teacher": self.teacher, "student": self.student}

    def save(self, path: str | Path) -> Path:
        """Write `path` (.safetensors, matrix + metadata) and a readable `.json` beside it."""
        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        check_output_file(path, "transfer map file")
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = json.dumps(self.to_dict(), indent=2)
        save_file({"matrix": self.matrix.contiguous()}, str(path), metadata={"semalign": meta})
        path.with_suffix(".json").write_text(meta + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, teacher: SemanticBasis | None = None,
             student: SemanticBasis | None = None) -> TransferMap:
        """Read a saved map; with `teacher`/`student` bases given, refuse a map built for other ones."""
        path = Path(path)
        if not path.exists():
            raise SemalignError(f"no transfer map at {path}; build one with TransferMap(...).save(path)")
        check_safetensors(path, "transfer map file", "rebuild it: TransferMap(...).save(path)")
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("semalign", "{}"))
        if meta.get("type") != "transfer_map":
            raise SemalignError(f"{path} is not a semalign_lens transfer map file")
        for role, basis in (("teacher", teacher), ("student", student)):
            built_on = meta[role].get("vocab_key", "")
            if basis is not None and bool(built_on) != bool(basis.vocab_key):
                built = "an intersection vocabulary (a cross-tokenizer pair)" if built_on else "the full vocabulary"
                given = "an intersection basis" if basis.vocab_key else "a full-vocabulary basis"
                raise SemalignError(f"{path} was built for {built} of {role} {meta[role]['model']!r}, but the "
                                    f"{role} basis given is {given}; rebuild the map from the bases you use: "
                                    "TransferMap(teacher_basis, student_basis, kind=...)")
            if basis is not None and basis.key != meta[role]["key"]:
                raise SemalignError(
                    f"{path} was built for {role} {meta[role]['model']!r} (basis key {meta[role]['key'][:12]}, "
                    f"d_model {meta[role]['d_model']}), not for {basis.model!r} (key {basis.key[:12]}, d_model "
                    f"{basis.d_model}): the weights or basis options differ; rebuild it with "
                    "TransferMap(teacher_basis, student_basis, kind=...)")
        out = cls.__new__(cls)
        out._set(load_file(str(path))["matrix"], meta["kind"], meta["normalize_input"], meta["preserve_norm"],
                 meta["teacher"], meta["student"])
        return out


class CoefficientGram:
    """The "Gram trick": inner-product losses between coefficient vectors from d x d matrices.

    Coefficients are a_S = C_S x_S and a_T = C_T x_T with C = diag(w) Ŝᵀ A the analysis operator of `kind`
    (paper/dual: Ŝᵀ, cosine coefficients; logits: W, the logits), each state divided by its norm first if
    `normalize` (default: as Eq. 1 for paper/dual). Every inner product of such vectors is a quadratic
    form in (x_S, x_T) through `student_gram` = C_SᵀC_S, `teacher_gram` = C_TᵀC_T and `cross` = C_SᵀC_T. We
    factor the joint Gram once, J = [[G_S, X], [Xᵀ, G_T]] = Rᵀ R, so that a_S ↦ R_S x_S and a_T ↦ R_T x_T is
    an isometry into an r <= d_S + d_T space: cosine, MSE and dot products are then ordinary Euclidean ones
    there (exact, no cancellation, differentiable). The trainer can embed the teacher side once as targets.
    """

    def __init__(self, student_basis: SemanticBasis, teacher_basis: SemanticBasis, kind: Kind = "paper", *,
                 normalize: bool | None = None):
        _check_kind(kind)
        _same_vocabulary(teacher_basis, student_basis, "CoefficientGram")
        self.kind, self.n_coefficients = kind, student_basis.n_tokens
        self.normalize = student_basis.analysis(kind)[2] if normalize is None else bool(normalize)
        grams = []
        for basis in (student_basis, teacher_basis):
            A = basis.analysis(kind)[0]
            grams.append(basis.frame_operator if A is None else A)  # logits: G⁻¹ G G⁻¹ = G⁻¹ = WᵀW
        self.student_gram, self.teacher_gram = grams
        w = None
        if kind == "logits":
            w = student_basis.norms.double() * teacher_basis.norms.double()
        X = _cross(student_basis, teacher_basis, w)
        A_S, A_T = student_basis.analysis(kind)[0], teacher_basis.analysis(kind)[0]
        self.cross = X if A_S is None else A_S @ X @ A_T
        J = torch.cat([torch.cat([self.student_gram, self.cross], 1),
                       torch.cat([self.cross.T, self.teacher_gram], 1)])
        evals, evecs = torch.linalg.eigh((J + J.T) / 2)
        keep = evals > evals[-1] * 1e-14
        R = evals[keep].sqrt()[:, None] * evecs[:, keep].T
        d_S = student_basis.d_model
        self._R = {"S": R[:, :d_S], "T": R[:, d_S:]}
        self._moved: dict[tuple, Tensor] = {}

    def _embed(self, x: Tensor, side: str) -> Tensor:
        key = (side, x.device, x.dtype)
        if key not in self._moved:
            self._moved[key] = self._R[side].to(x.device, x.dtype)
        R = self._moved[key]
        if x.shape[-1] != R.shape[1]:
            role = {"S": "student", "T": "teacher"}[side]
            raise SemalignError(f"{role} states have width {x.shape[-1]}, expected {R.shape[1]}; pass "
                                "(student_states, teacher_states) in that order")
        if self.normalize:
            x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(_TINY)
        return x @ R.T

    def embed_student(self, x_S: Float[Tensor, "... d_S"]) -> Float[Tensor, "... r"]:
        """Image of a_S = C_S x_S under the isometry (same inner products as the V-sized vectors)."""
        return self._embed(x_S, "S")

    def embed_teacher(self, x_T: Float[Tensor, "... d_T"]) -> Float[Tensor, "... r"]:
        return self._embed(x_T, "T")

    def inner(self, x_S: Tensor, x_T: Tensor) -> Float[Tensor, "..."]:
        """⟨a_S, a_T⟩ per state."""
        return (self.embed_student(x_S) * self.embed_teacher(x_T)).sum(-1)

    def cosine(self, x_S: Tensor, x_T: Tensor, eps: float = 1e-12) -> Float[Tensor, "..."]:
        """cos(a_S, a_T) per state (the v1 layer loss is 1 - this, if applied to coefficients)."""
        return torch.nn.functional.cosine_similarity(self.embed_student(x_S), self.embed_teacher(x_T), dim=-1,
                                                     eps=eps)

    def mse(self, x_S: Tensor, x_T: Tensor) -> Float[Tensor, "..."]:
        """mean_i (a_S,i - a_T,i)² over the V coefficients, per state."""
        return (self.embed_student(x_S) - self.embed_teacher(x_T)).pow(2).sum(-1) / self.n_coefficients


