"""A model's logit lens: its final norm, then its LM head, read on any residual state.

One readout, two views. `Readout` is the tensor view for analysis (detached fp32 parts of a bridge or plain
model; the norm's scale recomputed on each state, or taken from the final residual as TransformerLens's cached
`ln_final.hook_scale`). `LogitLens` is the module view for training (the plain model's own norm and head
modules, so gradients reach a trainable head). Both read the real vocabulary rows only (`models.load.vocab_rows`:
a head padded beyond its tokenizer reads no padded row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from ..core.checks import is_hf_model, require_hooked
from ..core.errors import SemalignError
from .load import model_name, vocab_rows
from .plain import parts


def unembedding(model) -> Float[Tensor, "d vocab"]:
    """The model's unembedding W_U [d_model, vocab] (raw mode: lm_head.weight.T), detached."""
    try:
        W_U = model.W_U
    except Exception:  # bridges raise different errors when there is no unembed component
        W_U = None
    if not isinstance(W_U, Tensor) or W_U.ndim != 2:
        if is_hf_model(model):
            require_hooked(model)
        raise SemalignError(f"{type(model).__name__} has no unembedding (W_U); semantic bases need a causal LM "
                            "with an LM head: load one with semalign_lens.models.load.load_model, or pass the "
                            "head yourself to SemanticBasis.from_unembedding(W_U)")
    return W_U.detach()


def final_norm(model) -> dict[str, Any]:
    """The final norm of a TransformerBridge as plain data: {norm: rms|layer|none, weight, bias, eps}.

    Reads the HF module under `model.ln_final` (the gain actually used), applying Gemma-style `1 + w`
    offsets when the bridge says so. In compatibility mode the gain is already folded into W_U and reads
    as ones, so folding it again is a no-op.
    """
    ln = getattr(model, "ln_final", None)
    if ln is None:
        return {"norm": "none", "weight": None, "bias": None, "eps": 0.0}
    mod = getattr(ln, "_original_component", None)
    mod = ln if mod is None else mod
    weight = getattr(mod, "weight", None)
    bias = getattr(mod, "bias", None)
    if getattr(ln, "uses_weight_offset", False) and weight is not None:
        weight = 1.0 + weight
    eps = next((float(e) for e in (getattr(mod, "variance_epsilon", None), getattr(mod, "eps", None),
                                   getattr(getattr(model, "cfg", None), "eps", None)) if e is not None), 1e-5)
    rms = getattr(ln, "uses_rms_norm", None)
    if rms is None:
        rms = "rms" in type(mod).__name__.lower()
    return {"norm": "rms" if rms else "layer", "eps": eps,
            "weight": None if weight is None else weight.detach(),
            "bias": None if not isinstance(bias, Tensor) else bias.detach()}


# ------------------------------------------------------------------------------------------ readout
@dataclass(eq=False)
class Readout:
    """A model's logit-lens head as plain tensors: final norm, then W_U + b_U (`logit_lens` names the two readouts).

    The tensor view, for analysis: detached fp32 copies, so a readout never holds the model or its graph.
    `LogitLens` below is the module view of the same two parts, for training.
    """

    W_U: Float[Tensor, "d vocab"]
    b_U: Float[Tensor, " vocab"] | None = None
    norm: str = "rms"  # rms | layer | none
    weight: Float[Tensor, " d"] | None = None
    bias: Float[Tensor, " d"] | None = None
    eps: float = 1e-5
    name: str = ""

    @classmethod
    def from_model(cls, model) -> Readout:
        """`model`'s readout over its real vocabulary rows (`models.load.vocab_rows`: a head padded beyond its
        tokenizer reads no padded row), in fp32 whatever the model's dtype (ours: a bf16 readout's logits are
        rounded to 3 significant digits, and the KL and top-k metrics read differences far below that)."""
        fn = final_norm(model)
        b_U = getattr(model, "b_U", None)
        rows = vocab_rows(model)
        fp32 = lambda t: None if not isinstance(t, Tensor) else t.detach().float()  # noqa: E731
        return cls(W_U=unembedding(model)[:, :rows].float(), b_U=fp32(b_U[:rows] if isinstance(b_U, Tensor) else None),
                   norm=fn["norm"], weight=fp32(fn["weight"]), bias=fp32(fn["bias"]), eps=fn["eps"],
                   name=model_name(model))

    @property
    def d_model(self) -> int:
        return self.W_U.shape[0]

    def restricted(self, token_ids: Tensor) -> Readout:
        """This readout over `token_ids` only, in their order: a cross-tokenizer pair's shared vocabulary,
        so that two models' readouts are compared on one set of strings (softmax renormalises over them)."""
        ids = torch.as_tensor(token_ids, dtype=torch.long)
        return Readout(W_U=self.W_U[:, ids], b_U=None if self.b_U is None else self.b_U[ids], norm=self.norm,
                       weight=self.weight, bias=self.bias, eps=self.eps, name=self.name)

    def __call__(self, h: Float[Tensor, "... d"], final: Float[Tensor, "... d"] | None = None
                 ) -> Float[Tensor, "... vocab"]:
        x = self._centred(h)
        if self.norm in ("rms", "layer"):
            ref = x if final is None else self._centred(final)
            x = x * torch.rsqrt(ref.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            x = x * self.weight
        if self.bias is not None:
            x = x + self.bias
        logits = x @ self.W_U
        return logits if self.b_U is None else logits + self.b_U

    def _centred(self, h: Tensor) -> Tensor:
        x = h.to(self.W_U)  # states captured to the host are read where the head is, in its dtype
        return x - x.mean(-1, keepdim=True) if self.norm == "layer" else x


# The two logit-lens readouts, by the label each analysis reports (TransformerLens's meaning of each).
READOUTS = {
    "recompute": "final norm recomputed on each state (TransformerLens: logit_lens, accumulated_resid(apply_ln=True))",
    "cached": "final norm at the final residual's scale (TransformerLens: apply_ln_to_stack, ln_final.hook_scale)",
}


def logit_lens(model_or_readout, h: Float[Tensor, "... d"], *, final: Float[Tensor, "... d"] | None = None
               ) -> Float[Tensor, "... vocab"]:
    """Logits of residual states `h` read through the model's final norm and head (`READOUTS`).

    Without `final` ("recompute"), the norm's scale is recomputed on each state: each is read as if it were
    the last block's output. With `final` ("cached"), the last block's output at the same positions
    (broadcastable to h), the norm divides by final's scale, which is TransformerLens's cached
    `ln_final.hook_scale` (`apply_ln_to_stack`): the readout is then affine in h, so the parts of a residual
    sum read as parts of the model's own logits (LaTen's attribution).
    """
    readout = model_or_readout if isinstance(model_or_readout, Readout) else Readout.from_model(model_or_readout)
    wide = [t.shape[-1] for t in (h, final) if t is not None and t.shape[-1] != readout.d_model]
    if wide:
        raise SemalignError(f"states have width {wide[0]}, but {readout.name or 'the readout'} reads d_model="
                            f"{readout.d_model}; read each model's states with its own head")
    return readout(h, final)


class LogitLens(torch.nn.Module):
    """A model's logit lens as its parts: final `norm` (a module), then z = norm(h) Wᵀ + b.

    The module view, for training: it holds the model's own modules, so gradients reach a trainable head, and
    exposing the head weight lets `objectives.fisher_loss` fuse the head matmul with the loss, so that no
    vocabulary-sized tensor outlives a chunk of tokens. `Readout` above is the tensor view of the same parts.
    """

    def __init__(self, norm: torch.nn.Module, head: torch.nn.Linear, rows: int | None = None):
        super().__init__()
        self.norm, self.head = norm, head
        self.rows = rows  # the real vocabulary rows (`models.load.vocab_rows`); None: every head row

    def normed(self, h: torch.Tensor) -> torch.Tensor:
        """norm(h), `h` first cast to the head's dtype (fp32 states read through a bf16 student's head)."""
        return self.norm(h.to(self.head.weight.dtype))

    @property
    def weight(self) -> torch.Tensor:
        return self.head.weight if self.rows is None else self.head.weight[: self.rows]

    @property
    def bias(self) -> torch.Tensor | None:
        bias = self.head.bias
        return bias if bias is None or self.rows is None else bias[: self.rows]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.head(self.normed(h))
        return z if self.rows is None else z[..., : self.rows]


def lens_fn(model: nn.Module, rows: int | None = None):
    """The logit lens of `model` ([n, d] -> [n, vocab]: final norm, then the LM head) as a `LogitLens`, over the
    first `rows` head rows (the real vocabulary, `models.load.vocab_rows`; None: all)."""
    p = parts(model)
    return LogitLens(p.norm, p.head, rows)
