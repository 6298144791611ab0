"""Activation checkpointing of the student's blocks (`train.activation_checkpointing`; the technique is Chen et
al. 2016, "Training deep nets with sublinear memory cost"; torch.utils.checkpoint does the work).

Why every block and not only the stage's trainable ones: in a frontier stage whose terms read the logits, the
gradient runs from the head back through every frozen block after the trainable one, and those blocks hold
most of the step's activations (31 of 32 blocks at Llama-2-7B's stage 0). A block before the first trainable one
sees no gradient, keeps nothing either way, and is never recomputed.

The blocks' `forward` is wrapped only while the context is open (the trainer's student forward), so the model
is left as it was: diagnostics, evaluation and the saved student never see the wrapper. The checkpoint is the
non-reentrant one: gradients reach adapters and parametrized weights inside a block whose input needs no
gradient, keyword arguments pass through, and autocast and the RNG state are replayed in the recomputation,
so loss and gradients are those of the plain forward. Forward hooks (how `models.residuals` reads and stops)
run outside the checkpointed function.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from torch.utils.checkpoint import checkpoint

from ..models.plain import parts


@contextmanager
def recomputed_blocks(model: nn.Module) -> Iterator[None]:
    """While open, each decoder block of `model` keeps only its inputs for backward and recomputes the rest."""
    blocks = list(parts(model).layers)
    own = [block.__dict__.get("forward") for block in blocks]  # a forward set on the instance, if any
    for block in blocks:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
    try:
        yield
    finally:
        for block, forward in zip(blocks, own, strict=True):
            if forward is None:
                del block.forward  # the class's forward again
            else:
                block.forward = forward
