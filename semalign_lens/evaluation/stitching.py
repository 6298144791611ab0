"""Model stitching: how well each teacher layer's state serves the student in place of the student's own, the
functional measure behind the `stitch` pairing (Lenc & Vedaldi 2015, "Understanding image representations by
measuring their equivariance and equivalence"; Bansal, Nakkiran & Barak 2021, "Revisiting model stitching";
the paper's future work asks for pairing "based on layer outputs").

**Method.** For a teacher point t and a student point s (rows and columns as `activations.accumulated_resid`:
0 = the embeddings, b + 1 = the output of block b), an affine map h_S ≈ h_T W + b is fitted in closed form
(least squares, `fit_affine_map`) on the `fit` tokens. On the `heldout` sequences the student's residual at s
is replaced by the mapped teacher state and the student runs on from there (a hook on the block of the
weight-sharing plain copy the scorers run, else the bridge's own `blocks.0.hook_in` / `blocks.{b}.hook_out`),
scored by `models.likelihood.token_nll`. The **stitching penalty** is the
student's held-out next-token cross-entropy then, minus its own (nats/token): 0 = the teacher state, read
linearly, serves the student as well as its own; one full forward's worth of evidence per cell, not a
geometric proxy.

**What we decided** (ours, where stitching papers fit on images and classes):
- *The first position is never stitched, nor fitted.* A sequence's first state has seen one token only (the
  document start, with `data.tokenize`) and carries outlier norms whatever that token is (the attention sink;
  Sun et al. 2024): the student keeps its own state there, and the fit leaves it out (`drop_first`), as CKA
  does.
- *Scored tokens*: every real target whose predicting position was stitched (positions ≥ 1), the same tokens
  for the own forward.
- *Null*: `mean_ablation`, the penalty when the student's state at s is replaced by its mean over the fit
  tokens (an affine map with W = 0): what a map that carries no information costs. `relative` = penalty /
  mean_ablation is then 0 (as good as the student's own state) .. 1 (as bad as no information); above 1, the
  mapped state misleads the student.
- *Ridge* (optional, `ridge`): λ = ridge · trace(X̄ᵀX̄)/d added to the Gram (scale-free; the bias is not
  penalised). Without it, fewer distinct fit tokens than teacher features (the embeddings row on a small fit
  set) leave the map underdetermined and the minimum-norm solution is taken; a ridge makes it unique.

**Cost.** Both models' residual stacks on the fit tokens (held in host memory: 4 bytes x points x tokens x d),
one Gram and one cross product per teacher point (float32 products summed in float64 over token chunks,
`similarity.cross_products`), then one student forward per cell over the held-out tokens (the LM head
dominates), batched `max_logit_bytes` of logits at a time. Measured in benchmarks/RESULTS.md
("Model stitching").
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from ..core.checks import is_hf_model, require_hooked
from ..core.errors import SemalignError
from ..data.tokens import TokenBatch
from ..lens.capture import accumulated_resid, hook_name
from ..lens.similarity import cross_products, paired_tokens, precision_dtype, residual_labels
from ..models.likelihood import plain_model, token_nll
from ..models.plain import parts


@dataclass
class AffineMap:
    """h_out ≈ h_in @ weight + bias (float64 parameters), applied in the input's dtype."""

    weight: Float[Tensor, "d_in d_out"]
    bias: Float[Tensor, " d_out"]

    def __call__(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        return x @ self.weight.to(x.dtype) + self.bias.to(x.dtype)


def _solve(gram: Tensor, cross: Tensor, ridge: float) -> Tensor:
    """W = (X̄ᵀX̄ + λI)⁻¹ X̄ᵀȲ in float64; least squares on the Gram, so a rank-deficient X̄ (fewer distinct
    tokens than features) still gets a solution."""
    if ridge:
        gram = gram + ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    return torch.linalg.lstsq(gram, cross, driver="gelsd" if gram.device.type == "cpu" else None).solution


def _check_ridge(ridge: float) -> float:
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge >= 0:
        raise SemalignError(f"ridge must be a number >= 0 (0 = plain least squares), got {ridge!r}")
    return float(ridge)


def fit_affine_map(x: Float[Tensor, "n d_in"], y: Float[Tensor, "n d_out"], *, ridge: float = 0.0,
                   precision: str = "mixed", chunk_size: int = 8192) -> AffineMap:
    """Closed-form least squares (ridge optional) of y ≈ x W + b over the rows of `x` and `y` (the same tokens):
    the centred normal equations, products as `similarity.cka_matrix`'s `precision`."""
    ridge = _check_ridge(ridge)
    tx, ty = paired_tokens([x], [y])
    return _fit(tx, ty, 0, ridge, precision_dtype(precision), chunk_size)


def _fit(tx, ty, row: int, ridge: float, dtype: torch.dtype, chunk_size: int,
         y_all: Tensor | None = None) -> AffineMap:
    """The map from layer `row` of `tx` to every layer of `ty` side by side (one solve for all of them)."""
    if tx.n < 2:
        raise SemalignError(f"fitting a map needs at least 2 tokens, got {tx.n}; pass more fit tokens")
    xc = tx.centred(row, dtype, None)
    if y_all is None:
        y_all = torch.cat([ty.centred(j, dtype, None) for j in range(len(ty))], 1)
    weight = _solve(cross_products(xc, xc, chunk_size), cross_products(xc, y_all, chunk_size), ridge)
    y_mean = torch.cat([ty.mean(j) for j in range(len(ty))])
    return AffineMap(weight, y_mean - tx.mean(row) @ weight)


@dataclass
class StitchingMap:
    """Held-out stitching results, `[teacher point, student point]` (labels as `similarity.residual_labels`)."""

    penalty: Float[Tensor, "lt ls"]  # stitched CE − own CE, nats/token
    stitched_ce: Float[Tensor, "lt ls"]
    own_ce: float
    mean_ablation: Float[Tensor, " ls"]  # the penalty of the constant map: the no-information reference
    r2: Float[Tensor, "lt ls"]  # held-out R² of the mapped state against the student's own
    teacher_labels: list[str]
    student_labels: list[str]
    n_fit_tokens: int
    n_heldout_tokens: int
    ridge: float = 0.0
    meta: dict = field(default_factory=dict)

    @property
    def relative(self) -> Float[Tensor, "lt ls"]:
        """penalty / mean_ablation: 0 = as good as the student's own state, 1 = as bad as no information."""
        return self.penalty / self.mean_ablation[None]

    def wide(self, values: str = "penalty"):
        """One matrix as a DataFrame (index = teacher points, columns = student points), the form
        `pairing.pair_by_stitching` reads ("embed" rows and columns are never paired)."""
        import pandas as pd

        if values not in ("penalty", "stitched_ce", "relative", "r2"):
            raise SemalignError(f"values must be penalty, stitched_ce, relative or r2, got {values!r}")
        frame = pd.DataFrame(getattr(self, values).numpy(), index=self.teacher_labels, columns=self.student_labels)
        frame.index.name, frame.columns.name = "teacher_layer", "student_layer"
        return frame

    def frame(self):
        """Long form: one row per (teacher point, student point) with penalty, relative, stitched CE and R²."""
        long = self.wide().stack().rename("penalty").reset_index()
        for name in ("relative", "stitched_ce", "r2"):
            long[name] = self.wide(name).stack().to_numpy()
        long["own_ce"] = self.own_ce
        return long


@contextlib.contextmanager
def _overwritten(model, point: int, overwrite: Callable[[Tensor], Tensor]):
    """While open, `model`'s forwards run with the residual at `point` (0 = block 0's input, b + 1 = block b's
    output) replaced by `overwrite(state)`. The scorers run the weight-sharing plain HF copy where there is one
    (`models.likelihood.plain_model`: no hook points, sdpa attention, 3-5x faster here), so the hook goes on its
    block (`models.plain.parts`; point 0 is block 0's input, the `embed` of `models.residuals.ResidualStates`); a
    bridge scored as itself gets its own residual hook (`lens.capture.hook_name`)."""
    plain = plain_model(model)
    if not is_hf_model(plain):
        name = hook_name("resid_pre", 0) if point == 0 else hook_name("resid_post", point - 1)
        with model.hooks(fwd_hooks=[(name, lambda x, hook: overwrite(x))]):
            yield
        return
    layers = parts(plain).layers
    if point == 0:
        def before(module, args, kwargs):
            if args:
                return (overwrite(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": overwrite(kwargs["hidden_states"])}

        handle = layers[0].register_forward_pre_hook(before, with_kwargs=True)
    else:
        def after(module, args, out):
            return (overwrite(out[0]), *out[1:]) if isinstance(out, tuple) else overwrite(out)

        handle = layers[point - 1].register_forward_hook(after)
    try:
        yield
    finally:
        handle.remove()


def stitching_map(teacher, student, fit: TokenBatch, heldout: TokenBatch, *, teacher_points: Sequence[int] | None = None,
                  student_points: Sequence[int] | None = None, ridge: float = 0.0, precision: str = "auto",
                  fit_precision: str = "mixed", max_logit_bytes: int = 2**28, batch_size: int = 8,
                  progress: bool = False) -> StitchingMap:
    """The `[teacher point x student point]` stitching penalties (and R², the stitched CE, the mean-ablation
    null) of `teacher` into `student`, both hooked models with one tokenizer.

    `fit`: sequences whose tokens fit the maps; `heldout`: other sequences, on which the student is scored (both
    right-padded `TokenBatch`es, `data.tokenize`). `teacher_points` / `student_points`: rows / columns to compute
    (0 = embeddings, b + 1 = block b's output; default all). `precision`: the student forwards' (`"auto"`: bf16
    only where the hardware computes it natively); `fit_precision`: the fit's products ("mixed" or "float64").
    """
    require_hooked(teacher, "teacher")
    require_hooked(student, "student")
    ridge = _check_ridge(ridge)
    dtype = precision_dtype(fit_precision)
    for name, batch in (("fit", fit), ("heldout", heldout)):
        if not isinstance(batch, TokenBatch):
            raise SemalignError(f"{name} must be a TokenBatch (semalign_lens.data.tokens.tokenize), got {type(batch).__name__}")
        vocab = min(int(teacher.cfg.d_vocab), int(student.cfg.d_vocab))
        if batch.tokens.numel() and int(batch.tokens.max()) >= vocab:
            raise SemalignError(f"{name} has token id {int(batch.tokens.max())}, beyond the smaller model's vocabulary "
                                f"({vocab}); stitching needs one tokenizer for both models")
    t_points = _points(teacher_points, int(teacher.cfg.n_layers), "teacher")
    s_points = _points(student_points, int(student.cfg.n_layers), "student")

    # ---- fit: one solve per teacher point for all student points at once
    def states(model, batch, points):  # through the plain copy where there is one (faster, same states)
        return accumulated_resid(plain_model(model), batch, layer=max(points), drop_first=True,
                                 batch_size=batch_size, progress=progress)

    t_fit, s_fit = states(teacher, fit, t_points), states(student, fit, s_points)
    tx, ty = paired_tokens([t_fit[p] for p in t_points], [s_fit[p] for p in s_points])
    y_all = torch.cat([ty.centred(j, dtype, None) for j in range(len(ty))], 1)
    maps = [_fit(tx, ty, i, ridge, dtype, 8192, y_all) for i in range(len(t_points))]
    s_means = torch.cat([ty.mean(j) for j in range(len(ty))])
    n_fit = tx.n
    del t_fit, s_fit, tx, ty, y_all

    # ---- held out: the mapped states, their R², and the student's forwards with them
    keep = heldout.mask.clone()
    keep[:, 0] = False  # the first position keeps the student's own state (right padding: position 0)
    score = keep.roll(1, 1) & heldout.mask  # targets predicted from a stitched position (t - 1 >= 1)
    score[:, 0] = False
    n_scored = int(score.sum())
    if not n_scored:
        raise SemalignError("the held-out batch has no token to score (each sequence needs >= 3 real tokens)")
    t_held, s_held = states(teacher, heldout, t_points), states(student, heldout, s_points)
    t_held, s_held = [t_held[p] for p in t_points], [s_held[p] for p in s_points]
    widths = [s.shape[-1] for s in s_held]
    rows_per_forward = max(1, max_logit_bytes // (4 * int(student.cfg.d_vocab) * heldout.tokens.shape[1]))
    own_ce = _heldout_nll(student, heldout, score, rows_per_forward, precision) / n_scored

    penalty = torch.empty(len(t_points), len(s_points), dtype=torch.float64)
    r2 = torch.empty_like(penalty)
    ablation = torch.empty(len(s_points), dtype=torch.float64)
    cells = tqdm(total=len(s_points) * (len(t_points) + 1), desc="stitching", disable=not progress, leave=False)
    for j, s_point in enumerate(s_points):
        lo = sum(widths[:j])
        target = s_held[j].double()
        total = (target - target.mean(0)).square().sum()
        mean_state = s_means[lo: lo + widths[j]].float().expand_as(s_held[j])
        variants = [mean_state]
        for i, m in enumerate(maps):
            mapped = t_held[i] @ m.weight[:, lo: lo + widths[j]].float() + m.bias[lo: lo + widths[j]].float()
            r2[i, j] = 1 - (target - mapped.double()).square().sum() / total
            variants.append(mapped)
        ce = torch.tensor([_heldout_nll(student, heldout, score, rows_per_forward, precision, s_point, keep, v)
                           for v in variants], dtype=torch.float64) / n_scored
        cells.update(len(variants))
        ablation[j] = ce[0] - own_ce
        penalty[:, j] = ce[1:] - own_ce
    cells.close()
    labels_t, labels_s = residual_labels(int(teacher.cfg.n_layers)), residual_labels(int(student.cfg.n_layers))
    return StitchingMap(penalty, penalty + own_ce, own_ce, ablation, r2, [labels_t[p] for p in t_points],
                        [labels_s[p] for p in s_points], n_fit, n_scored, ridge,
                        meta={"precision": precision, "fit_precision": fit_precision, "fit_sequences": len(fit),
                              "heldout_sequences": len(heldout)})


def _points(points: Sequence[int] | None, n_layers: int, role: str) -> list[int]:
    if points is None:
        return list(range(n_layers + 1))
    points = sorted({int(p) for p in points})
    bad = [p for p in points if not 0 <= p <= n_layers]
    if bad or not points:
        raise SemalignError(f"{role}_points must be residual points 0..{n_layers} (0 = embeddings, b + 1 = block b's "
                            f"output), got {bad or 'none'}")
    return points


def _heldout_nll(model, batch: TokenBatch, score: Bool[Tensor, "seq pos"], rows_per_forward: int, precision: str,
                 point: int | None = None, keep: Tensor | None = None, states: Tensor | None = None) -> float:
    """Summed next-token NLL of `batch` over the `score` targets (`models.likelihood.token_nll`), optionally with
    the residual at `point` overwritten at the `keep` positions by the rows of `states` (`[n_kept, d]`, in the
    order of those positions), `rows_per_forward` sequences at a time."""
    if point is None:
        return token_nll(model, batch, score, batch_size=rows_per_forward, precision=precision)[0]
    offsets = [0, *keep.sum(1).cumsum(0).tolist()]
    total = 0.0
    for start in range(0, len(batch), rows_per_forward):
        stop = min(start + rows_per_forward, len(batch))
        rows_keep, rows_states = keep[start: stop], states[offsets[start]: offsets[stop]]

        def overwrite(x: Tensor, rows_keep=rows_keep, rows_states=rows_states) -> Tensor:
            x = x.clone()  # token_nll trims the batch to its longest sequence: so is the mask
            x[rows_keep[:, : x.shape[1]].to(x.device)] = rows_states.to(device=x.device, dtype=x.dtype)
            return x

        with _overwritten(model, point, overwrite):
            total += token_nll(model, batch.select(range(start, stop)), score[start: stop],
                               batch_size=rows_per_forward, precision=precision)[0]
    return total
