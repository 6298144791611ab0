"""The teacher's output distribution as its top-k tokens plus one tail bucket, and KL against it.

Why: cached dense teacher logits cost 2·V bytes per token (98 KB at V = 49152) and a vocabulary-sized
teacher softmax at every step; the top k log-probabilities (fp16), their ids (int32) and the log of the
remaining mass (fp16) cost 6k + 2 bytes (386 B at k = 64), and a KL step from them does one student softmax
over the vocabulary, as cross-entropy does. Sparse storage and this KL are ours, not the papers' (they
distil from full logits). `sparse_readout_kl_sum` is the same KL of a readout x Wᵀ + b with the head fused in
(the logit-lens term, `lens_kl`, from cached lens top-k): no vocabulary-sized tensor outlives a chunk of rows.

The KL is the exact KL of the two distributions *coarsened* to k + 1 buckets: the teacher's top-k tokens
and one bucket for all others. Student bucket probabilities: q_i = softmax(s/τ)_i on those ids and
q_tail = Σ of the rest (summed, not 1 − Σ q_i, so no cancellation). At τ = 1, by the data-processing
inequality, it is at most the full KL, equal to it when k = V or when the teacher's tail is proportional to
the student's.
Forward-KL gradient: ∂/∂u = q − p̂ with p̂ the teacher's top-k probabilities and, outside the top k, the
teacher's tail mass r spread like the student's tail (p̂_j = r·q_j / q_tail); reverse KL: ∂/∂u_j =
q_j (a_b(j) − KL), a_b = log q_b − log p̂_b of j's bucket — the dense formulas on the k + 1 buckets.
What is lost is the tail's own KL, weighted by its mass: on held-out stdlib code (SmolLM2-135M teacher, the
shipped student, k = 64, tail mass 9 % on average) the gradient's cosine with the dense one was 0.999 while
the value was 11 % low (benchmarks/bench_sparse_targets.py) — a faithful training signal, a biased monitor.

Temperature (our inference, an approximation): log-probabilities are stored at τ = 1, and the teacher at
τ ≠ 1 is renormalised over the k + 1 buckets, log_softmax([ℓ_1/τ … ℓ_k/τ, t_τ]), with the tail modelled as
r / p_k tokens each as probable as the k-th kept one: t_τ = log r + (1/τ − 1) ℓ_k. The ratios among the top
k are exact; the tail is the one unknown. Tempering the tail as if it were a single token (t_τ = log r / τ)
is the other simple choice, but no tail token can exceed p_k: on 512 held-out tokens of stdlib code
(SmolLM2, k = 64, τ = 2) it put 6 % of the mass in the tail, ours 39 %, the truth 75 %. For τ > 1 ours is
still a lower bound of the tempered tail mass (the flattest tail gives more). At τ = 1 the renormalisation
only absorbs the fp16 rounding of the stored values.

Tail samples (optional, `targets.tail_samples` = m; ours, after "sparse logit sampling", Anshumann et al.
2025): m token ids drawn with replacement from the teacher's tail renormalised (p̃ = p / r), and their
teacher log-probabilities, 6 bytes each. The chain rule of KL splits the forward KL exactly into the bucket
KL plus r · KL(p̃ ‖ q̃) (q̃ the student's tail renormalised), and the mean of log p̃_j − log q̃_j over the
samples is an unbiased estimate of that second term, so the value is no longer a lower bound. The samples
enter the value only: the gradient stays the bucket KL's. Differentiating the estimate would put the tail's
mass on the drawn ids (p̂_j = r · count_j / m), unbiased but so noisy per token that its cosine with the
dense gradient fell to 0.18 on the tiny pair (the bucket's: 0.80) — so a run with samples trains exactly as
one without and logs the unbiased KL. Used for the forward KL at τ = 1, where the samples are draws of the
distribution compared; reverse KL (an expectation under the student) and τ ≠ 1 keep the bucket form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int

# Log-mass of an empty tail (k = V): exp() of it is exactly 0 while 0 · (log p̂ − log q) stays finite, so
# no NaN, and it fits float16 (unlike −inf, which the cache's range check refuses).
LOG_FLOOR = -1e4


@dataclass
class SparseLogits:
    """A teacher distribution per position: top-k `ids`, their `logprobs` at τ = 1 (sorted, largest
    first), and `tail_logmass` = log(1 − Σ exp(logprobs)), computed from the other logits (no cancellation).
    Optionally m `tail_ids` drawn from the tail (renormalised) and their `tail_logprobs` at τ = 1."""

    ids: Int[torch.Tensor, "*rows k"]
    logprobs: Float[torch.Tensor, "*rows k"]
    tail_logmass: Float[torch.Tensor, " *rows"]
    tail_ids: Int[torch.Tensor, "*rows m"] | None = None
    tail_logprobs: Float[torch.Tensor, "*rows m"] | None = None

    @classmethod
    def from_logits(cls, logits: Float[torch.Tensor, "*rows vocab"], k: int, tail_samples: int = 0,
                    generator: torch.Generator | None = None) -> SparseLogits:
        logp = torch.log_softmax(logits.float(), dim=-1)
        values, ids = logp.topk(k, dim=-1)
        # in place (one vocabulary-sized buffer) unless the samples read logp again
        masked = logp.scatter(-1, ids, float("-inf")) if tail_samples else logp.scatter_(-1, ids, float("-inf"))
        tail = masked.logsumexp(-1)
        if not tail_samples:
            return cls(ids.to(torch.int32), values.clamp_min(LOG_FLOOR), tail.clamp_min(LOG_FLOOR))
        flat = masked.reshape(-1, masked.shape[-1]).sub_(tail.reshape(-1, 1)).exp_().nan_to_num_(0.0)
        flat[flat.sum(-1) <= 0, 0] = 1.0  # an empty tail (k = V, or underflow): any id; its weight r is 0
        drawn = torch.multinomial(flat, tail_samples, replacement=True, generator=generator)
        drawn = drawn.reshape(*ids.shape[:-1], tail_samples)
        return cls(ids.to(torch.int32), values.clamp_min(LOG_FLOOR), tail.clamp_min(LOG_FLOOR),
                   drawn.to(torch.int32), logp.gather(-1, drawn).clamp_min(LOG_FLOOR))

    @property
    def k(self) -> int:
        return self.ids.shape[-1]

    @property
    def m(self) -> int:
        """Tail samples per position (0: none)."""
        return 0 if self.tail_ids is None else self.tail_ids.shape[-1]

    def rows(self, mask: Bool[torch.Tensor, "batch pos"]) -> SparseLogits:
        """The positions where `mask` holds, as [n, k] (and [n, m]) rows (views when every position does)."""
        every = bool(mask.all())

        def pick(t, width):
            return None if t is None else t.reshape(-1, width) if every else t[mask]

        return SparseLogits(pick(self.ids, self.k), pick(self.logprobs, self.k),
                            self.tail_logmass.reshape(-1) if every else self.tail_logmass[mask],
                            pick(self.tail_ids, self.m), pick(self.tail_logprobs, self.m))


def _bucket_kl_rows(e: torch.Tensor, x: torch.Tensor, idx: torch.Tensor, top: torch.Tensor, tail_in: torch.Tensor,
                    drawn: tuple[torch.Tensor, torch.Tensor] | None, forward_direction: bool, temperature: float,
                    grad: bool) -> torch.Tensor:
    """KL per row ([m, 1]) of m student logit rows `x` (fp32; may be `e` itself) against the teacher's top-k
    (`idx` [m, k] ids, `top` [m, k] log-probabilities at τ = 1, `tail_in` [m, 1] log tail mass; `drawn`: tail sample
    ids and log-probabilities), over the k + 1 buckets (module docstring). `e` [m, V] fp32 is the working buffer:
    exp((x − max)/τ), then the top-k entries zeroed so that its sum is the student's tail mass, then, with `grad`,
    scaled in place into the gradient with respect to x/τ, the top-k entries scattered back."""
    tiny = torch.finfo(torch.float32).tiny
    torch.sub(x, x.amax(-1, keepdim=True), out=e)
    if temperature != 1.0:
        e.div_(temperature)
    log_top = e.gather(1, idx)  # (s − max)/τ on the teacher's ids, before exp (exact logs)
    sampled = drawn is not None and forward_direction and temperature == 1.0
    if sampled:
        log_drawn = e.gather(1, drawn[0])
    e.exp_()
    log_z = e.sum(-1, keepdim=True).log_()
    tail_e = e.scatter_(1, idx, 0.0).sum(-1, keepdim=True).clamp_min_(tiny)
    logq = torch.cat([log_top, tail_e.log()], 1).sub_(log_z)  # student bucket log-probs [m, k + 1]
    if temperature != 1.0:  # the tail as r / p_k tokens of probability p_k (module docstring)
        top, tail_in = top / temperature, tail_in + (1 / temperature - 1) * top.amin(1, keepdim=True)
    logp = torch.log_softmax(torch.cat([top, tail_in], 1), 1)  # teacher bucket log-probs, renormalised
    if forward_direction:
        p = logp.exp()
        row = (p * (logp - logq)).sum(-1, keepdim=True)
        if sampled:  # + r · mean(log p̃_j − log q̃_j) over the drawn tail ids (module docstring)
            inside = (drawn[1] - tail_in) - (log_drawn - tail_e.log())
            row = row + p[:, -1:] * inside.mean(1, keepdim=True)
        if grad:  # tail ids: q_j − r q_j / q_tail = e_j (1/Z − r / tail_e); top k: q − p̂
            e.mul_(log_z.neg().exp_().sub_(p[:, -1:] / tail_e))
            e.scatter_(1, idx, logq[:, :-1].exp() - p[:, :-1])
        return row
    q = logq.exp()
    diff = logq - logp
    row = (q * diff).sum(-1, keepdim=True)
    if grad:  # q_j (a_b(j) − KL): tail ids e_j / Z (a_tail − KL), then the top k
        e.mul_((diff[:, -1:] - row) * log_z.neg().exp())
        e.scatter_(1, idx, q[:, :-1] * (diff[:, :-1] - row))
    return row


def _teacher_rows(i: int, m: int, ids, logprobs, tail, sample_ids, sample_logprobs):
    """Rows i … i + m of a teacher's top-k tensors, as `_bucket_kl_rows` reads them."""
    drawn = None if sample_ids is None else (sample_ids[i: i + m].long(), sample_logprobs[i: i + m].float())
    return ids[i: i + m].long(), logprobs[i: i + m].float(), tail[i: i + m].float().unsqueeze(1), drawn


class _SparseKL(torch.autograd.Function):
    """Σ_rows KL at temperature τ between student logits [n, V] and a `SparseLogits` teacher, over the
    k + 1 buckets (module docstring); value and gradient in one pass over row chunks, like `_ChunkedKL`.

    Per chunk one [rows, V] buffer (the gradient's own rows when a gradient is needed, `_bucket_kl_rows`); only the
    gradient is kept for backward.
    """

    @staticmethod
    def forward(ctx, s, ids, logprobs, tail, sample_ids, sample_logprobs, forward_direction: bool,
                temperature: float, rows: int):
        n, vocab = s.shape
        grad = torch.empty((n, vocab), dtype=torch.float32, device=s.device) if ctx.needs_input_grad[0] else None
        spare = torch.empty((min(rows, n), vocab), dtype=torch.float32, device=s.device) if grad is None else None
        total = torch.zeros((), dtype=torch.float64, device=s.device)
        for i in range(0, n, rows):
            x = s[i: i + rows].float()
            m = x.shape[0]
            e = grad[i: i + m] if grad is not None else spare[:m]
            row = _bucket_kl_rows(e, x, *_teacher_rows(i, m, ids, logprobs, tail, sample_ids, sample_logprobs),
                                  forward_direction, temperature, grad is not None)
            total += row.double().sum()
        ctx.save_for_backward(grad)
        ctx.temperature = temperature
        return total.float()

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return grad.mul_(g / ctx.temperature), None, None, None, None, None, None, None, None


class _ReadoutSparseKL(torch.autograd.Function):
    """`_SparseKL` of the logits z = x Wᵀ + b, the head fused in (ours, as `losses._FusedFisher` fuses it): per
    chunk of rows the head matmul (in `dtype`: the autocast dtype, as the unfused readout would run), the bucket KL
    and the gradient's matmuls back onto x (and W, b where the head trains), so no [n, V] tensor outlives a chunk:
    the [n, V] logits, their fp32 gradient and its cast, which the unfused path holds at once, are never formed."""

    @staticmethod
    def forward(ctx, x, weight, bias, ids, logprobs, tail, sample_ids, sample_logprobs, forward_direction: bool,
                temperature: float, rows: int, dtype: torch.dtype):
        n, vocab = x.shape[0], weight.shape[0]
        want_x, want_w, want_b = ctx.needs_input_grad[:3]
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        xs = x.to(dtype)
        grad_x = torch.empty(x.shape, dtype=torch.float32, device=x.device) if want_x else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=x.device) if want_w else None
        grad_b = torch.zeros(vocab, dtype=torch.float32, device=x.device) if want_b else None
        e_all = torch.empty((min(rows, n), vocab), dtype=torch.float32, device=x.device)
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        for i in range(0, n, rows):
            xc = xs[i: i + rows]
            m = xc.shape[0]
            e = e_all[:m]
            e.copy_(torch.mm(xc, w.T) if b is None else torch.addmm(b, xc, w.T))
            row = _bucket_kl_rows(e, e, *_teacher_rows(i, m, ids, logprobs, tail, sample_ids, sample_logprobs),
                                  forward_direction, temperature, want_x or want_w or want_b)
            total += row.double().sum()
            g = e.to(dtype)  # ∂/∂(z/τ) of these rows, in the matmul dtype (as autocast's backward casts it)
            if want_x:
                grad_x[i: i + m] = torch.mm(g, w)
            if want_w:
                grad_w.addmm_(e.T, xc.float())
            if want_b:
                grad_b += e.sum(0)
        ctx.save_for_backward(grad_x, grad_w, grad_b)
        ctx.temperature, ctx.dtypes = temperature, (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total.float()

    @staticmethod
    def backward(ctx, g):
        scale = g / ctx.temperature
        grads = [None if t is None else (t * scale).to(dt) for t, dt in zip(ctx.saved_tensors, ctx.dtypes,
                                                                              strict=True)]
        return (*grads, None, None, None, None, None, None, None, None, None)


def sparse_kl_sum(student: Float[torch.Tensor, "n vocab"], teacher: SparseLogits, forward_direction: bool,
                  temperature: float, rows: int) -> torch.Tensor:
    """Σ over the n rows of KL(p̂_T ‖ q_S) (forward) or KL(q_S ‖ p̂_T) at temperature τ, `rows` rows at a time;
    differentiable in `student` only. With tail samples, the forward KL's value at τ = 1 adds their estimate of
    the tail's own KL; its gradient stays the bucket KL's (module docstring)."""
    drawn = (None, None) if teacher.tail_ids is None else (teacher.tail_ids.detach(), teacher.tail_logprobs.detach())
    return _SparseKL.apply(student, teacher.ids.detach(), teacher.logprobs.detach(),
                           teacher.tail_logmass.detach(), *drawn, forward_direction, float(temperature), int(rows))


def sparse_readout_kl_sum(x: Float[torch.Tensor, "n d"], weight: Float[torch.Tensor, "vocab d"],
                          bias: Float[torch.Tensor, " vocab"] | None, teacher: SparseLogits, forward_direction: bool,
                          temperature: float, rows: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`sparse_kl_sum` of the logits x Wᵀ + b, computed `rows` rows at a time with the head fused in
    (`_ReadoutSparseKL`; matmuls in `dtype`): differentiable in x, and in W and b where they require gradients."""
    drawn = (None, None) if teacher.tail_ids is None else (teacher.tail_ids.detach(), teacher.tail_logprobs.detach())
    return _ReadoutSparseKL.apply(x, weight, bias, teacher.ids.detach(), teacher.logprobs.detach(),
                                  teacher.tail_logmass.detach(), *drawn, forward_direction, float(temperature),
                                  int(rows), dtype)
