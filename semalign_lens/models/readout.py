"""A model's logit lens: its final norm, then its LM head, read on any residual state.

One readout, `read_logits` (the norm's arithmetic written out, then the head), with the norm's scale recomputed
on each state or frozen at the final residual's (`READOUTS`), and two views of its parts: `Readout` holds
detached fp32 copies, for analysis (a readout never holds the model or its graph); `LogitLens` is a module
holding the plain model's own norm and head modules, for training (their parameters enter the same arithmetic,
so gradients reach a trainable head and norm). Both read the real vocabulary rows only
(`models.load.vocab_rows`: a head padded beyond its tokenizer reads no padded row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from ..core.checks import is_hf_model, require_hooked
from ..core.errors import SemalignError
from .load import model_name, vocab_rows
from .plain import parts

# The norm's scale, by the label each analysis reports (TransformerLens's meaning of each).
READOUTS = {
    "recompute": "final norm recomputed on each state (TransformerLens: logit_lens, accumulated_resid(apply_ln=True))",
    "frozen": "final norm at the final residual's scale (TransformerLens: apply_ln_to_stack, ln_final.hook_scale)",
}


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


def norm_parts(module: nn.Module, *, offset: bool | None = None, rms: bool | None = None, eps: float | None = None
               ) -> dict[str, Any]:
    """An HF norm module as the parts `normed` takes: {norm: rms|layer, weight, bias, eps}, with the module's own
    parameters (not detached: gradients reach them through the readout).

    `offset`: the gain is `1 + w` (Gemma's norms; None: read from the class name); `rms`: None reads it from the
    class name; `eps`: used when the module names none (else 1e-5)."""
    name = type(module).__name__.lower()
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if (("gemma" in name) if offset is None else offset) and isinstance(weight, Tensor):
        weight = 1.0 + weight
    eps = next((float(e) for e in (getattr(module, "variance_epsilon", None), getattr(module, "eps", None), eps)
                if e is not None), 1e-5)
    return {"norm": "rms" if (("rms" in name) if rms is None else rms) else "layer", "eps": eps,
            "weight": weight if isinstance(weight, Tensor) else None,
            "bias": bias if isinstance(bias, Tensor) else None}


def final_norm(model) -> dict[str, Any]:
    """The final norm of a TransformerBridge as plain data: {norm: rms|layer|none, weight, bias, eps}, detached.

    Reads the HF module under `model.ln_final` (the gain actually used), applying Gemma-style `1 + w`
    offsets when the bridge says so. In compatibility mode the gain is already folded into W_U and reads
    as ones, so folding it again is a no-op.
    """
    ln = getattr(model, "ln_final", None)
    if ln is None:
        return {"norm": "none", "weight": None, "bias": None, "eps": 0.0}
    mod = getattr(ln, "_original_component", None)
    found = norm_parts(ln if mod is None else mod, offset=bool(getattr(ln, "uses_weight_offset", False)),
                       rms=getattr(ln, "uses_rms_norm", None), eps=getattr(getattr(model, "cfg", None), "eps", None))
    detach = lambda t: None if t is None else t.detach()  # noqa: E731
    return {**found, "weight": detach(found["weight"]), "bias": detach(found["bias"])}


# ------------------------------------------------------------------------------------------ readout
def normed(h: Float[Tensor, "... d"], *, norm: str, weight: Tensor | None, bias: Tensor | None, eps: float,
           dtype: torch.dtype, final: Float[Tensor, "... d"] | None = None) -> Float[Tensor, "... d"]:
    """The final norm of `h` in `dtype` (rms | layer | none: centre for a LayerNorm, divide by the scale, then
    gain and bias). The scale is taken in fp32 at least and the result cast back before the gain, as HF's norms do.

    `final` None ("recompute"): the scale of each state itself, each read as if it were the last block's output.
    `final` given ("frozen"): the scale of the last block's output at the same positions (broadcastable to h),
    TransformerLens's cached `ln_final.hook_scale` (`apply_ln_to_stack`): the readout is then affine in h, so the
    parts of a residual sum read as parts of the model's own logits (LaTen's attribution)."""
    x = h.to(dtype)
    if norm in ("rms", "layer"):
        centred = (lambda t: t - t.mean(-1, keepdim=True)) if norm == "layer" else (lambda t: t)  # noqa: E731
        wide = torch.promote_types(dtype, torch.float32)
        x_wide = centred(x.to(wide))
        ref = x_wide if final is None else centred(final.to(dtype).to(wide))
        x = (x_wide * torch.rsqrt(ref.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)
    if weight is not None:
        x = x * weight
    return x if bias is None else x + bias


def read_logits(h: Float[Tensor, "... d"], norm: dict[str, Any], head: Float[Tensor, "vocab d"],
                head_bias: Float[Tensor, " vocab"] | None = None, final: Float[Tensor, "... d"] | None = None
                ) -> Float[Tensor, "... vocab"]:
    """The logit lens: `normed(h)` (`norm`: the parts `norm_parts` gives), then the head (`head`: [vocab, d], as
    an `nn.Linear` holds it), in the head's dtype (states captured to the host are read where the head is)."""
    final = None if final is None else final.to(head.device)
    return F.linear(normed(h.to(head.device), **norm, dtype=head.dtype, final=final), head, head_bias)


@dataclass(eq=False)
class Readout:
    """A model's logit-lens head as plain tensors: final norm, then W_U + b_U, read by `read_logits`.

    The tensor view, for analysis: detached fp32 copies, so a readout never holds the model or its graph.
    `LogitLens` below is the module view of the same parts, for training.
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
        """`read_logits` on these parts; `final`: the last block's output, for the "frozen" scale (`normed`)."""
        norm = {"norm": self.norm, "weight": self.weight, "bias": self.bias, "eps": self.eps}
        return read_logits(h, norm, self.W_U.T, self.b_U, final)


def logit_lens(model_or_readout, h: Float[Tensor, "... d"], *, final: Float[Tensor, "... d"] | None = None
               ) -> Float[Tensor, "... vocab"]:
    """Logits of residual states `h` read through the model's final norm and head (`READOUTS`): without
    `final` the norm's scale is recomputed on each state ("recompute"); with `final`, the last block's output at
    the same positions, it is frozen at final's scale ("frozen", `normed`)."""
    readout = model_or_readout if isinstance(model_or_readout, Readout) else Readout.from_model(model_or_readout)
    wide = [t.shape[-1] for t in (h, final) if t is not None and t.shape[-1] != readout.d_model]
    if wide:
        raise SemalignError(f"states have width {wide[0]}, but {readout.name or 'the readout'} reads d_model="
                            f"{readout.d_model}; read each model's states with its own head")
    return readout(h, final)


class LogitLens(torch.nn.Module):
    """A model's logit lens as its own modules: final `norm`, then `head`, read by `read_logits`.

    The module view, for training: the norm's and head's parameters enter the readout themselves, so gradients
    reach a trainable head and norm, and exposing the head weight lets `objectives.fisher_loss` fuse the head
    matmul with the loss, so that no vocabulary-sized tensor outlives a chunk of tokens. `Readout` above is the
    tensor view of the same parts.
    """

    def __init__(self, norm: torch.nn.Module, head: torch.nn.Linear, rows: int | None = None):
        super().__init__()
        self.norm, self.head = norm, head
        self.rows = rows  # the real vocabulary rows (`models.load.vocab_rows`); None: every head row

    def normed(self, h: torch.Tensor, final: torch.Tensor | None = None) -> torch.Tensor:
        """The final norm of `h`, in the head's dtype (fp32 states read through a bf16 student's head)."""
        return normed(h, **norm_parts(self.norm), dtype=self.head.weight.dtype, final=final)

    @property
    def weight(self) -> torch.Tensor:
        return self.head.weight if self.rows is None else self.head.weight[: self.rows]

    @property
    def bias(self) -> torch.Tensor | None:
        bias = self.head.bias
        return bias if bias is None or self.rows is None else bias[: self.rows]

    def forward(self, h: torch.Tensor, final: torch.Tensor | None = None) -> torch.Tensor:
        return read_logits(h, norm_parts(self.norm), self.weight, self.bias, final)


def lens_is_output(model: nn.Module, lens: LogitLens) -> bool:
    """Whether `lens` on the last block's output gives `model`'s own logits (one forward of 8 tokens; ours). False
    where the model's head does more than final norm + head (a logit soft-cap, a logit scale): a term at the last
    layer may read the model's logits for its lens only where this holds."""
    from .residuals import residual_states

    last = len(parts(model).layers) - 1
    tokens = torch.arange(8)[None] % (lens.rows or lens.head.weight.shape[0])
    with torch.no_grad():
        states = residual_states(model, tokens, [last], logits=True)
        read = lens(states.post[last]).float()
    out = states.logits[..., : read.shape[-1]].float()
    return read.shape == out.shape and bool((read - out).abs().max() <= 1e-2 * (1.0 + out.abs().max()))


def lens_fn(model: nn.Module, rows: int | None = None):
    """The logit lens of `model` ([n, d] -> [n, vocab]: final norm, then the LM head) as a `LogitLens`, over the
    first `rows` head rows (the real vocabulary, `models.load.vocab_rows`; None: all)."""
    p = parts(model)
    return LogitLens(p.norm, p.head, rows)
