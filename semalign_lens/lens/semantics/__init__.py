"""Vocabulary-defined semantic bases: decomposition, recomposition, teacher-to-student maps, fidelity.

**The paper's method** (SemAlign v1 §3, on top of Vocabulary-Defined Semantics): every vocabulary token i
gets a direction s_i in a model's residual space, the i-th column of pinv(W), W the LM head (V x d),
unit-normalised. A teacher state is decomposed into cosine coefficients a = Ŝ_Tᵀ h / ‖h‖ (Eq. 1) and
recomposed on the student's directions, h̃ = Ŝ_S a (Eq. 2). Both steps are implemented exactly as written
(`kind="paper"`).

**What we decided where the paper is silent or wrong** (our inference, not the paper's):

- *Final norm.* `fold_final_norm=True` by default: W = W_U.T · diag(g), g the final RMSNorm gain, so that
  the basis describes what the model reads from its raw residual stream (RMSNorm only rescales a vector,
  then multiplies by g): the `logits` kind's coefficients are then the model's own logits
  (W h = rms(h) · (logits - b_U)) and `TransferMap(kind="logits")` matches the two models' actual readouts.
  `fold_final_norm=False` is the literal VDS basis (pinv of the LM head). Measured on SmolLM2 with
  HumanEval prompts (`analysis/fig2_resolution.py`): for the paper kind, folding raises cos(h, recomposed)
  a little (mean over layers 0.778 vs 0.743) but *lowers* how often the recomposition keeps the logit-lens
  top-1 token (18 % vs 38 %; top-10 overlap 0.14 vs 0.58). This contradicts our first feasibility estimate ("folding
  raises mid-layer top-1 from 4 % to 25-29 %"); for paper-kind work compare both. The exact kinds are exact
  either way. `center=False` by default: centring W over the vocabulary only shifts logits by a constant per
  state, so it changes the basis without changing any readout (and measured, it lowers paper-kind fidelity).
- *Exactness.* With unit-normalised columns Ŝ is a far-from-tight frame (eigenvalue ratio of ŜŜᵀ
  1.8k-8.4k on SmolLM2), so Ŝ Ŝᵀ h is not parallel to h (cos 0.7-0.8, top-1 token rarely kept). Two exact
  variants are offered under their own names, never substituted silently:
  `dual`  — same cosine coefficients (Eq. 1), recomposition with the canonical dual frame (ŜŜᵀ)⁻¹Ŝ a;
            across models this gives the student state whose projections best match the teacher's
            coefficients in least squares.
  `logits` — the minimum-norm coefficients on the *unnormalised* frame S_raw = Ŝ diag(norms); for the
            output basis these are exactly W h, the model's own (pre-norm, bias-free) logits, and
            recomposition is S_raw a. Across models: pinv(W_S) W_T, least-squares logit matching.
- *Numerics.* pinv(W) = R⁻¹Qᵀ with W = QR. The QR is CholeskyQR2 by default (two Cholesky passes, all
  BLAS-3, as accurate as Householder for cond(W) below ~1e3 in float32 / 1e7 in float64; SmolLM2's is 78-91)
  and Householder (`torch.linalg.qr`) on request or when Cholesky fails; then `solve_triangular`. Measured
  on SmolLM2 (benchmarks/RESULTS.md): relative error of S against float64 Householder is ~2e-15 in float64
  and ~1e-6 in float32. All d x d operators (frame operator, Grams, transfer matrices) are accumulated in
  float64 over vocabulary chunks, so V-sized float64 tensors never exist.
- *Cache and subsets.* Bases are cached as safetensors under `paths.cache_dir("bases")`, keyed by a sha256
  of the head's bytes (and the folded gain) plus the options, dtype and algorithm; `SemanticBasis.key`
  (weights + options) is what a saved `TransferMap` checks. `tokens=` restricts a basis to an id list
  (e.g. `most_frequent_tokens(counts, k)`), i.e. the pinv of those rows of the head.
- *Memory.* Vocabulary-sized coefficient tensors (192 MB per 1024 states at V = 49152) are produced in
  chunks of states; recompose(decompose(h)) is a d x d operator (`roundtrip`), and inner-product losses
  between coefficient vectors reduce to d x d Grams (`CoefficientGram`, the "Gram trick").
"""

from .basis import (
    KINDS,
    METHODS,
    Kind,
    SemanticBasis,
    condition_report,
    live_head_tokens,
    most_frequent_tokens,
)
from .fidelity import (
    FIDELITY_METRICS,
    OPTIONAL_METRICS,
    fidelity,
    transfer_fidelity,
)
from .intersection import intersection_bases
from .maps import CoefficientGram, TransferMap, decompose, iter_decompose, recompose, roundtrip

__all__ = ["KINDS", "METHODS", "Kind", "SemanticBasis", "condition_report", "live_head_tokens", "most_frequent_tokens",
           "FIDELITY_METRICS", "OPTIONAL_METRICS",
           "fidelity", "transfer_fidelity", "CoefficientGram", "TransferMap", "decompose", "iter_decompose", "recompose",
           "roundtrip", "intersection_bases"]
