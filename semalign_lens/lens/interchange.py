"""Interchange interventions on a plain model: a forward in which one block's output at chosen positions is
another run's, so everything after it computes from the swapped states (the interchange intervention of causal
abstraction, Geiger et al.; DIITO trains on it, arXiv 2112.02505).

`patching` measures such swaps on TransformerLens bridges; this is the same intervention on the trainer's plain
HF copies (a forward hook on the block, as `models.residuals` reads states), differentiable, so that a
training term (`training.objectives.interchange`, handed this function by the trainer) can run it in the teacher
and in the student.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from jaxtyping import Bool, Float, Int
from torch import nn

from ..models.plain import logits_of, parts


@contextmanager
def replacing_block_output(model: nn.Module, layer: int, source: Float[torch.Tensor, "batch pos d"],
                           where: Bool[torch.Tensor, "batch pos"]):
    """Within the context, block `layer`'s output (resid_post) of `model` is `source` where `where` is True."""
    def hook(module, args, out):
        h = out[0] if isinstance(out, tuple) else out  # a block returns its output alone or first in a tuple
        new = torch.where(where[..., None], source.to(h.dtype), h)
        return (new, *out[1:]) if isinstance(out, tuple) else new

    handle = parts(model).layers[layer].register_forward_hook(hook)
    try:
        yield model
    finally:
        handle.remove()


def interchange_logits(model: nn.Module, tokens: Int[torch.Tensor, "batch pos"], layer: int,
                       source: Float[torch.Tensor, "batch pos d"], where: Bool[torch.Tensor, "batch pos"]
                       ) -> Float[torch.Tensor, "batch pos vocab"]:
    """`model`'s logits on `tokens` with block `layer`'s output replaced by `source` at `where`."""
    with replacing_block_output(model, layer, source, where):
        return logits_of(model(input_ids=tokens, use_cache=False))
