"""One record of a forward's residual stream, and the one engine that captures it (ours).

`ResidualStates` is what every reader of the residual stream takes from one forward: `embed`, the input of
block 0 (the embedding, with whatever scaling the family applies; TransformerLens's `blocks.0.hook_resid_pre`);
`post[l]`, the output of block l (`blocks.{l}.hook_resid_post`; Hugging Face's `hidden_states[l + 1]`, except
for the last block, whose HF hidden state comes after the final norm); and, when asked for, the logits and the
mask of the positions where the states are real. Layers are 0-based block indices, as everywhere in the package.

`residual_states` produces it on a TransformerBridge and on a plain HF model (or a native copy) alike, with
PyTorch hooks on the decoder blocks: a bridge's `blocks` are its hooked wrappers of the HF blocks, so the hook on
a block's output reads the tensor its `hook_out` returns. The forward ends after the deepest block asked for
unless the logits are (`StopForward`), so neither later blocks nor the vocabulary-sized head run. The teacher
targets, the trainer's student forward, the layer rankers, `lens.capture` and the residual stack all read it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import nn

from ..core.checks import is_bridge
from ..core.errors import SemalignError
from .plain import logits_of, model_device, parts

State = Float[torch.Tensor, "batch pos d"]
Sink = Callable[[int | None, State], None]  # (block whose output it is, None for block 0's input; the state)


@dataclass
class ResidualStates:
    """The residual stream of one forward (see the module docstring). `logits` are [batch, pos, vocab], or a
    teacher-target cache's top-k form (`training.objectives.sparse_logits.SparseLogits`); `mask` [batch, pos]
    marks the positions where the states are real (None: every position). A record of the real tokens of a
    batch, flattened (`lens.capture.token_states`), holds [n_tokens, d] states and no mask."""

    post: dict[int, State] = field(default_factory=dict)
    embed: State | None = None
    logits: Any = None
    mask: Bool[torch.Tensor, "batch pos"] | None = None
    # readouts of intermediate states kept beside them, by what they read (a teacher-target cache's logit-lens
    # top-k per pair target: `training.targets`); empty: none
    lens: dict[Any, Any] = field(default_factory=dict)

    def stream(self) -> list[State]:
        """[embed, post[0], ..., post[L]]: the state entering each block, then the last block's output
        (TransformerLens's `accumulated_resid` order); needs the embedding and every block up to the last."""
        if self.embed is None or sorted(self.post) != list(range(len(self.post))):
            raise SemalignError(f"the stream needs the embedding and blocks 0..L; these states hold "
                                f"{'the embedding and ' if self.embed is not None else ''}blocks {sorted(self.post)}")
        return [self.embed, *(self.post[layer] for layer in range(len(self.post)))]

    @classmethod
    def from_stream(cls, stream: Sequence[State], mask: Bool[torch.Tensor, "batch pos"] | None = None
                    ) -> ResidualStates:
        """The record whose `stream()` is `stream` ([embed, post[0], ..., post[L]]; the rows of a stacked tensor
        stay views of it, no copies)."""
        return cls(dict(enumerate(stream[1:])), stream[0], mask=mask)

    def map(self, fn: Callable[[State], State]) -> ResidualStates:
        """The same record with `fn` applied to every state (the embedding and each block's output); logits and
        mask (and readouts) are kept as they are."""
        return ResidualStates({layer: fn(x) for layer, x in self.post.items()},
                              None if self.embed is None else fn(self.embed), self.logits, self.mask, self.lens)


class StopForward(Exception):
    """Raised by a hook to end a forward once every state asked for is taken (caught by `residual_states`)."""


def blocks_of(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks whose inputs and outputs are the residual stream: a bridge's `blocks`, a plain model's
    (`plain.parts`)."""
    return model.blocks if is_bridge(model) else parts(model).layers


def residual_states(model: nn.Module, tokens: Int[torch.Tensor, "batch pos"], layers: Iterable[int] = (), *,
                    embed: bool = False, logits: bool = False, mask: Bool[torch.Tensor, "batch pos"] | None = None,
                    keep_graph: bool = False, leaf_embed: bool = False, sink: Sink | None = None) -> ResidualStates:
    """One forward of `model` over `tokens` (moved to its device): the outputs of blocks `layers`, block 0's input
    with `embed`, the logits with `logits`, and `mask` carried along; in the model's dtype, on its device.

    `keep_graph`: the states stay on the autograd graph (losses, gradient attribution; inside `torch.no_grad()`
    there is no graph to keep); without it the forward runs under no_grad. `leaf_embed` (with `keep_graph`):
    block 0's input becomes a leaf that requires grad, so every later state has a gradient path although no
    weight requires grad, and no gradient flows into the embedding. `sink(layer, state)` takes each state the
    moment the forward makes it (layer None: block 0's input) and the record keeps none of them, so a caller
    that copies states out never holds every layer at once.
    """
    blocks = blocks_of(model)
    layers = sorted({int(x) for x in layers})
    bad = [x for x in layers if not 0 <= x < len(blocks)]
    if bad:
        raise SemalignError(f"layer index {bad[0]} is out of range for {len(blocks)}-layer model "
                            f"{type(model).__name__}; valid layers are 0..{len(blocks) - 1}")
    device = model_device(model)
    out = ResidualStates(mask=None if mask is None else mask.to(device))
    if not (layers or embed or logits):
        return out

    def put(layer: int | None, x: State) -> None:
        if sink is not None:
            sink(layer, x)
        elif layer is None:
            out.embed = x
        else:
            out.post[layer] = x

    last = None if logits else (layers[-1] if layers else -1)  # the block after which to stop; -1: before block 0
    leaf = keep_graph and leaf_embed

    def entering(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        if leaf:
            x = x.detach().requires_grad_(True)
            args, kwargs = ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})
        if embed:
            put(None, x)
        if last == -1:
            raise StopForward
        return (args, kwargs) if leaf else None

    def leaving(layer: int):
        def hook(module, args, output):
            put(layer, output[0] if isinstance(output, tuple) else output)  # a block's output alone, or first
            if layer == last:
                raise StopForward
        return hook

    handles = [blocks[layer].register_forward_hook(leaving(layer)) for layer in layers]
    if embed or leaf or last == -1:
        handles.append(blocks[0].register_forward_pre_hook(entering, with_kwargs=True))
    try:
        with torch.set_grad_enabled(keep_graph and torch.is_grad_enabled()):
            tokens = tokens.to(device)
            result = model(tokens) if is_bridge(model) else logits_of(model(input_ids=tokens, use_cache=False))
        out.logits = result if logits else None
    except StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return out
