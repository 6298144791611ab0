"""SemAlign's loss maths as plain tensor functions, each tested against an explicit reference formula.

The registry (`objectives.registry`) adapts them to what the trainer hands over; the table of what is the
paper's and what is inferred is in the package docstring (`semalign_lens.training.objectives`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch.utils.checkpoint import checkpoint

from ...core.errors import SemalignError
from ...models.likelihood import next_token_nll
from ...models.readout import LogitLens
from .sparse_logits import SparseLogits, sparse_kl_sum, sparse_readout_kl_sum

Lens = Callable[[Float[torch.Tensor, "n d"]], Float[torch.Tensor, "n vocab"]]


# ----------------------------------------------------------------------------------------------- helpers

def _masked_mean(values: Float[torch.Tensor, "batch pos"], mask: Bool[torch.Tensor, "batch pos"]) -> torch.Tensor:
    """Mean over real positions; 0 (still differentiable) when there are none."""
    n = mask.sum()
    return (values * mask).sum() / n.clamp(min=1)


def next_token_mask(mask: Bool[torch.Tensor, "batch pos"]) -> Bool[torch.Tensor, "batch pos_1"]:
    """Positions t whose prediction of token t+1 is supervised: both t and t+1 are real tokens."""
    return mask[:, :-1] & mask[:, 1:]


# ----------------------------------------------------------------------------------------------- layer losses

def cosine_loss(h: Float[torch.Tensor, "batch pos d"], target: Float[torch.Tensor, "batch pos d"],
                mask: Bool[torch.Tensor, "batch pos"], eps: float = 1e-8) -> torch.Tensor:
    """v1's layer loss: 1 − mean cosine between `h` and `target` over real positions.

    The target is a constant (the mapped teacher activation); it is detached here so that no caller can
    push gradients into the teacher side by accident.
    """
    cos = F.cosine_similarity(h.float(), target.detach().float(), dim=-1, eps=eps)
    return 1.0 - _masked_mean(cos, mask)


KL_CHUNK_ELEMENTS = 1 << 22  # 16 MB of float32 per temporary: stays in malloc's heap, no page-fault storm


def _softmax_into(x: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax(x) written into `out` (may be x itself), logsumexp(x) per row), one exp per element."""
    peak = x.amax(-1, keepdim=True)
    torch.sub(x, peak, out=out).exp_()
    total = out.sum(-1, keepdim=True)
    out.div_(total)
    return out, (total.log_() + peak).flatten()


def _centre(x: Float[torch.Tensor, "batch pos d"], mask: Bool[torch.Tensor, "batch pos"]) -> torch.Tensor:
    """Subtract each sequence's mean over its real tokens and zero the padding rows."""
    m = mask.unsqueeze(-1).to(x.dtype)
    mean = (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)
    return (x - mean) * m


def relation_cka(x: Float[torch.Tensor, "batch pos dx"], y: Float[torch.Tensor, "batch pos dy"],
                 mask: Bool[torch.Tensor, "batch pos"], normalize_tokens: bool = False,
                 eps: float = 1e-12) -> tuple[Float[torch.Tensor, " batch"], Bool[torch.Tensor, " batch"]]:
    """Per-sequence linear CKA of the centred token-token geometry of `x` and `y` (widths may differ).

    CKA = ⟨G_x, G_y⟩_F / (‖G_x‖_F ‖G_y‖_F) with G = X_c X_cᵀ over the sequence's real tokens. The inner
    products are evaluated in whichever space is smaller (token x token, or feature x feature, using
    ⟨XXᵀ, YYᵀ⟩ = ‖XᵀY‖²_F); the result is identical. Returns (cka [batch], valid [batch]); a sequence is
    valid when it has at least two real tokens and both centred matrices are non-zero.
    """
    x, y = x.float(), y.float()
    if normalize_tokens:  # cosine geometry instead of inner-product geometry (option)
        x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    xc, yc = _centre(x, mask), _centre(y, mask)
    n_tok, dx, dy = x.shape[1], x.shape[2], y.shape[2]
    if n_tok * n_tok <= dx * dy:
        gx, gy = xc @ xc.transpose(1, 2), yc @ yc.transpose(1, 2)
        cross = (gx * gy).sum((1, 2))
        nx, ny = gx.pow(2).sum((1, 2)).sqrt(), gy.pow(2).sum((1, 2)).sqrt()
    else:
        cross = (xc.transpose(1, 2) @ yc).pow(2).sum((1, 2))
        nx = (xc.transpose(1, 2) @ xc).pow(2).sum((1, 2)).sqrt()
        ny = (yc.transpose(1, 2) @ yc).pow(2).sum((1, 2)).sqrt()
    valid = (mask.sum(1) >= 2) & (nx > eps) & (ny > eps)
    cka = cross / (nx * ny).clamp(min=eps)
    return cka, valid


def relation_loss(dh: Float[torch.Tensor, "batch pos d"], dt: Float[torch.Tensor, "batch pos d_t"],
                  mask: Bool[torch.Tensor, "batch pos"], normalize_tokens: bool = False) -> torch.Tensor:
    """v2's layer loss (form inferred): mean over sequences of 1 − CKA(ΔH_S, ΔH̃_T).

    Equal to ½‖G_S/‖G_S‖_F − G_T/‖G_T‖_F‖²_F for the centred token-token Grams G = ΔH_c ΔH_cᵀ, so this is
    also the Frobenius form. It compares only the *geometry* among tokens, so it is invariant to scale and
    rotation of either side and never needs the two widths to match. Sequences with fewer than two real
    tokens are skipped (their centred Gram is zero).
    """
    cka, valid = relation_cka(dh, dt.detach(), mask, normalize_tokens=normalize_tokens)
    weights = valid.to(cka.dtype)
    return ((1.0 - cka) * weights).sum() / weights.sum().clamp(min=1)


def fisher_quadratic(z: Float[torch.Tensor, "n vocab"], z_target: Float[torch.Tensor, "n vocab"]
                     ) -> Float[torch.Tensor, " n"]:
    """½ (z − z̃)ᵀ (diag(p̃) − p̃p̃ᵀ) (z − z̃) per row, without the [vocab, vocab] matrix.

    With δ = z − z̃: δᵀ diag(p̃) δ − (p̃ᵀδ)² = Σ p̃δ² − (Σ p̃δ)², i.e. half the variance of δ under p̃ — which
    also shows the loss ignores a constant shift of the logits, as softmax does.
    """
    p = torch.softmax(z_target.float(), dim=-1)
    delta = z.float() - z_target.float()
    mean = (p * delta).sum(-1)
    return 0.5 * ((p * delta * delta).sum(-1) - mean * mean)


class _FusedFisher(torch.autograd.Function):
    """Σ_rows ½δᵀ(diag(p̃) − p̃p̃ᵀ)δ with δ = (x − x̃)Wᵀ, p̃ = softmax(x̃Wᵀ + b), over chunks of rows.

    x = norm(h) (differentiable), x̃ = norm(target) (constant), z = xWᵀ + b, z̃ = x̃Wᵀ + b (constant, as in the
    generic path). ∂/∂z = p̃ ⊙ (δ − μ), μ = p̃ᵀδ, so the gradients with respect to x (and W, b when the head
    trains) are computed in the forward pass, one chunk at a time ([rows, vocab] temporaries of at most
    `KL_CHUNK_ELEMENTS`), and only [n, d] (and [vocab, d]) is kept: three head-sized matmuls per token
    instead of the four, plus activation memory, of the checkpointed autograd version.
    """

    @staticmethod
    def forward(ctx, x, x_target, weight, bias):
        n, vocab = x.shape[0], weight.shape[0]
        rows = max(1, KL_CHUNK_ELEMENTS // vocab)
        w = weight.float()
        grad_x = torch.empty((n, x.shape[1]), dtype=torch.float32, device=x.device) if ctx.needs_input_grad[0] \
            else None
        grad_w = torch.zeros_like(w) if ctx.needs_input_grad[2] else None
        grad_b = torch.zeros(vocab, dtype=torch.float32, device=x.device) if ctx.needs_input_grad[3] else None
        delta = torch.empty((min(rows, n), vocab), dtype=torch.float32, device=x.device)
        prob = torch.empty_like(delta)
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        for i in range(0, n, rows):
            xc, tc = x[i: i + rows].float(), x_target[i: i + rows].float()
            m = xc.shape[0]
            d, p = delta[:m], prob[:m]
            torch.mm(xc - tc, w.T, out=d)  # δ (the head bias cancels)
            torch.mm(tc, w.T, out=p)
            if bias is not None:
                p += bias.float()
            _softmax_into(p, p)
            mean = (p * d).sum(-1, keepdim=True)
            total += (0.5 * ((p * d * d).sum(-1) - mean.squeeze(1) ** 2)).double().sum()
            if any(v is not None for v in (grad_x, grad_w, grad_b)):
                g = d.sub_(mean).mul_(p)  # ∂/∂z = p̃ ⊙ (δ − μ); z̃ is a constant, so ∂z/∂W = x only
                if grad_x is not None:
                    torch.mm(g, w, out=grad_x[i: i + m])
                if grad_w is not None:
                    grad_w.addmm_(g.T, xc)
                if grad_b is not None:
                    grad_b += g.sum(0)
        ctx.save_for_backward(grad_x, grad_w, grad_b)
        return total.float()

    @staticmethod
    def backward(ctx, g):
        return tuple(None if t is None else t * g for t in (ctx.saved_tensors[0], None, *ctx.saved_tensors[1:]))


def fisher_loss(h: Float[torch.Tensor, "batch pos d"], target: Float[torch.Tensor, "batch pos d"],
                mask: Bool[torch.Tensor, "batch pos"], lens: Lens, chunk: int = 512) -> torch.Tensor:
    """ACL layer loss (form inferred): mean over real positions of ½(z − z̃)ᵀF(z − z̃), F = diag(p̃) − p̃p̃ᵀ.

    z = lens(h) and z̃ = lens(target), where `lens` is the student's logit lens (final norm + LM head).
    z̃ and p̃ are constants (no gradient flows into the target side). With a `LogitLens` the head is fused
    with the loss (`_FusedFisher`); with any other callable, `chunk` tokens at a time are computed and
    recomputed in the backward pass (activation checkpointing). Either way memory is O(chunk x vocab), not
    O(tokens x vocab), and the value and gradient are the same.
    """
    hs, ts = h[mask], target[mask].detach()
    if hs.shape[0] == 0:
        return h.sum() * 0.0
    if isinstance(lens, LogitLens) and isinstance(lens.head, torch.nn.Linear):
        with torch.no_grad():
            x_target = lens.normed(ts)
        total = _FusedFisher.apply(lens.normed(hs), x_target, lens.weight, lens.bias)
        return total / hs.shape[0]

    def piece(h_chunk: torch.Tensor, t_chunk: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z_target = lens(t_chunk).float()
        return fisher_quadratic(lens(h_chunk), z_target).sum()

    total = h.new_zeros((), dtype=torch.float32)
    for i in range(0, hs.shape[0], chunk):
        h_chunk, t_chunk = hs[i: i + chunk], ts[i: i + chunk]
        if torch.is_grad_enabled() and h_chunk.requires_grad:
            total = total + checkpoint(piece, h_chunk, t_chunk, use_reentrant=False)
        else:
            total = total + piece(h_chunk, t_chunk)
    return total / hs.shape[0]


# ----------------------------------------------------------------------------------------------- output losses

class _ChunkedKL(torch.autograd.Function):
    """Σ_rows KL at temperature τ over [n, vocab] logits, value and gradient in one pass over row chunks.

    Why: the autograd formula (log_softmax, exp, sub, mul) keeps ~6 vocabulary-sized tensors alive, and on
    CPU each fresh 400 MB tensor costs page faults on top of the memory traffic (measured: the plain formula
    took ~3x cross-entropy's time on 2048 x 49152 logits). Here every temporary is a chunk of at most
    `KL_CHUNK_ELEMENTS`, reused, and the gradient with respect to the student logits is written directly:
    forward KL(p_T‖p_S) = Σ p_T (t − s) + lse(s) − lse(t), ∂/∂u = p_S − p_T (one exp per logit);
    reverse KL(p_S‖p_T): ∂/∂u = p_S ⊙ (log p_S − log p_T − KL_row); u = s/τ, so ∂/∂s = (1/τ)·∂/∂u.
    Only that gradient ([n, vocab]) is kept for the backward pass.
    """

    @staticmethod
    def forward(ctx, s, t, forward_direction: bool, temperature: float, chunk: int):
        n, vocab = s.shape
        grad = torch.empty((n, vocab), dtype=torch.float32, device=s.device) if ctx.needs_input_grad[0] else None
        total = torch.zeros((), dtype=torch.float64, device=s.device)
        rows = max(1, min(chunk, KL_CHUNK_ELEMENTS // max(1, vocab)))
        buf = torch.empty((min(rows, n), vocab), dtype=torch.float32, device=s.device)
        spare = torch.empty_like(buf) if grad is None else None
        for i in range(0, n, rows):
            sc, tc = s[i: i + rows].float(), t[i: i + rows].float()
            if temperature != 1.0:
                sc, tc = sc / temperature, tc / temperature
            m = sc.shape[0]
            # one exp per logit: p = exp(x − max) / Σ, lse = log Σ + max
            pt, lse_t = _softmax_into(tc, buf[:m])
            ps, lse_s = _softmax_into(sc, grad[i: i + m] if grad is not None else spare[:m])
            if forward_direction:
                # Σ_rows KL = ⟨p_T, t⟩ − ⟨p_T, s⟩ + Σ (lse(s) − lse(t)); BLAS dots over the chunk, no temporaries
                flat = pt.reshape(-1)
                total += (torch.dot(flat, tc.reshape(-1)) - torch.dot(flat, sc.reshape(-1))).double()
                total += (lse_s - lse_t).double().sum()
                if grad is not None:
                    ps.sub_(pt)  # grad rows hold p_S; now p_S − p_T
            else:
                diff = (sc - lse_s.unsqueeze(1)).sub_(tc).add_(lse_t.unsqueeze(1))  # log p_S − log p_T
                row = (ps * diff).sum(-1, keepdim=True)
                total += row.double().sum()
                if grad is not None:
                    ps.mul_(diff.sub_(row))
        ctx.save_for_backward(grad)
        ctx.temperature = temperature
        return total.float()

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return grad.mul_(g / ctx.temperature), None, None, None, None


def kl_loss(student_logits: Float[torch.Tensor, "batch pos vocab"],
            teacher_logits: Float[torch.Tensor, "batch pos vocab"] | SparseLogits,
            mask: Bool[torch.Tensor, "batch pos"], direction: Literal["forward", "reverse"] = "forward",
            temperature: float = 1.0, scale_by_t2: bool = True, chunk: int = 1 << 20) -> torch.Tensor:
    """Output distillation: mean over real positions of KL at temperature τ, times τ² (option).

    `forward` = KL(p_T ‖ p_S) (mean-seeking, the usual distillation direction, our default — the papers do
    not say); `reverse` = KL(p_S ‖ p_T) (mode-seeking). The τ² factor keeps gradient magnitudes comparable
    across temperatures (Hinton et al. 2015). Computed a few positions at a time (`_ChunkedKL`; `chunk` caps
    the rows per chunk); value and gradient equal the autograd formula (tested against `kl_div`). A
    `SparseLogits` teacher (cached top-k) gives the KL over its top-k tokens plus one tail bucket
    (`sparse_logits`), both directions.
    """
    _check_kl(direction, temperature)
    vocab = student_logits.shape[-1]
    s = student_logits.reshape(-1, vocab) if bool(mask.all()) else student_logits[mask]
    if isinstance(teacher_logits, SparseLogits):
        rows = max(1, min(int(chunk), KL_CHUNK_ELEMENTS // max(1, vocab)))
        total = sparse_kl_sum(s, teacher_logits.rows(mask), direction == "forward", temperature, rows)
    else:
        t = teacher_logits.reshape(-1, vocab) if bool(mask.all()) else teacher_logits[mask]
        total = _ChunkedKL.apply(s, t.detach(), direction == "forward", float(temperature), int(chunk))
    loss = total / max(1, s.shape[0])
    return loss * (temperature ** 2 if scale_by_t2 else 1.0)


def _check_kl(direction: str, temperature: float) -> None:
    if direction not in ("forward", "reverse"):
        raise SemalignError(f"kl direction must be 'forward' or 'reverse', got {direction!r}")
    if not temperature > 0:
        raise SemalignError(f"kl temperature must be positive, got {temperature!r}")


def readout_kl_loss(h: Float[torch.Tensor, "n d"], lens: Lens, teacher: SparseLogits,
                    direction: Literal["forward", "reverse"] = "forward", temperature: float = 1.0,
                    scale_by_t2: bool = True) -> torch.Tensor:
    """`kl_loss` of the readout lens(h) against a top-k teacher ([n, k] `SparseLogits`), the mean over the n rows.

    With a `LogitLens` the head is fused into the bucket KL (`sparse_readout_kl_sum`; its matmuls in the autocast
    dtype where autocast is on, as the readout would run): no [n, vocab] tensor outlives a chunk of rows, where the
    unfused readout holds its logits, their fp32 gradient and that gradient's cast at once. Any other lens: its
    readout, then `kl_loss`. The same value and gradient either way (tested)."""
    rows = torch.ones(h.shape[0], 1, dtype=torch.bool, device=h.device)
    if not (isinstance(lens, LogitLens) and isinstance(lens.head, torch.nn.Linear)):
        return kl_loss(lens(h)[:, None], teacher, rows, direction, temperature, scale_by_t2)
    _check_kl(direction, temperature)
    x = lens.normed(h)
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else lens.weight.dtype
    with torch.autocast(device, enabled=False):
        total = sparse_readout_kl_sum(x, lens.weight, lens.bias, teacher, direction == "forward", temperature,
                                      max(1, KL_CHUNK_ELEMENTS // lens.weight.shape[0]), dtype)
    return total / max(1, h.shape[0]) * (temperature ** 2 if scale_by_t2 else 1.0)


def cosine_onehot_loss(logits: Float[torch.Tensor, "batch pos vocab"], tokens: Int[torch.Tensor, "batch pos"],
                       mask: Bool[torch.Tensor, "batch pos"], label_smoothing: float = 0.0,
                       eps: float = 1e-8) -> torch.Tensor:
    """v1's output loss: 1 − mean cos(z_t, y_{t+1}), y the (label-smoothed) one-hot of the next token.

    Computed without a one-hot tensor: ⟨z, y⟩ = (1−ε) z_label + (ε/V) Σz and
    ‖y‖² = (1−ε+ε/V)² + (V−1)(ε/V)².
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise SemalignError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    z = logits[:, :-1].float()
    labels = tokens[:, 1:]
    valid = next_token_mask(mask)
    vocab = z.shape[-1]
    eps_ls = label_smoothing
    dot = (1 - eps_ls) * z.gather(-1, labels.unsqueeze(-1)).squeeze(-1) + (eps_ls / vocab) * z.sum(-1)
    y_norm = math.sqrt((1 - eps_ls + eps_ls / vocab) ** 2 + (vocab - 1) * (eps_ls / vocab) ** 2)
    cos = dot / (z.norm(dim=-1).clamp(min=eps) * y_norm)
    return 1.0 - _masked_mean(cos, valid)


def ce_loss(logits: Float[torch.Tensor, "batch pos vocab"], tokens: Int[torch.Tensor, "batch pos"],
            mask: Bool[torch.Tensor, "batch pos"]) -> torch.Tensor:
    """Plain next-token cross-entropy (nats/token) over supervised positions: the SFT control's loss."""
    valid = next_token_mask(mask)
    return next_token_nll(logits, tokens, valid) / valid.sum().clamp(min=1)
