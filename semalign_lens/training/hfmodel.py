"""Plain Hugging Face copies of bridged models, and residual capture on them with an early stop.

Why not train the TransformerBridge itself: booting a bridge rewires the HF module tree in place (every
module becomes a wrapper with hooks, parameter names gain `._original_component`) and forces eager
attention. For training we want the stock module tree (sdpa attention, `save_pretrained` names that
`load_model` reads back), so the trainer works on a *clean copy*: a fresh `AutoModelForCausalLM` built from
the same config, holding the bridge's weights (the teacher's are shared, not copied; the student's are
copied, so the caller's model is never modified).

Capture uses forward hooks on the decoder blocks; `StopForward` ends the forward after the deepest block
that is needed, so neither the remaining blocks nor the vocabulary-sized head run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import nn

from ..errors import SemalignError

_STRIP = "._original_component"


def underlying_hf(model) -> nn.Module:
    """The HF `PreTrainedModel` behind a bridge (or the model itself)."""
    return getattr(model, "original_model", model)


def clean_copy(model, *, share_weights: bool, attn: str = "sdpa") -> nn.Module:
    """A stock HF model (no bridge wrappers) with `model`'s weights, in train-ready form.

    `share_weights=True` reuses the tensors (no memory; for a frozen teacher); False clones them (the
    student, which we train without touching the caller's model). Extra entries the bridge adds (aliases
    such as `attn.k.weight`, a zero `lm_head.bias`) are dropped; anything else that does not fit is an error.
    """
    from transformers import AutoModelForCausalLM

    hf = underlying_hf(model)
    state = {k.replace(_STRIP, ""): v for k, v in hf.state_dict().items()}
    config = hf.config.__class__.from_dict(hf.config.to_dict())
    config._attn_implementation = attn
    with torch.device("meta"):
        clean = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    expected = set(clean.state_dict())
    known = {state[k].data_ptr() for k in expected if k in state}
    for key in sorted(set(state) - expected):  # bridge aliases of real weights, and its zero lm_head bias
        if state[key].data_ptr() in known or torch.count_nonzero(state[key]) == 0:
            del state[key]
    extra = sorted(set(state) - expected)
    missing = sorted(expected - set(state))
    if extra or missing:
        raise SemalignError(f"cannot rebuild {type(hf).__name__} as a plain HF model: missing {missing[:4]}, "
                            f"unexpected {extra[:4]}; this architecture is not supported by the trainer yet")
    if not share_weights:
        state = {k: v.detach().clone() for k, v in state.items()}
    clean.load_state_dict(state, strict=True, assign=True)
    if getattr(clean.config, "tie_word_embeddings", False):
        clean.tie_weights()
    rope = getattr(getattr(clean, "model", None), "rotary_emb", None)
    if rope is not None and hasattr(hf, "model") and hasattr(hf.model, "rotary_emb"):
        src = getattr(hf.model.rotary_emb, "_original_component", hf.model.rotary_emb)
        for name, buf in src.named_buffers(recurse=False):  # buffers are not in the state dict
            setattr(rope, name, buf.detach().clone())
    for name, buf in clean.named_buffers():
        if buf.is_meta:
            raise SemalignError(f"buffer {name} of the rebuilt model was not restored; this architecture is not "
                                "supported by the trainer yet")
    return clean


@dataclass
class Parts:
    """The pieces of a decoder-only LM the trainer touches."""

    embed: nn.Module
    layers: nn.ModuleList
    norm: nn.Module
    head: nn.Module


def parts(model: nn.Module) -> Parts:
    """Locate embedding, decoder blocks, final norm and LM head (Llama/Qwen/Mistral/Gemma/GPT-2/NeoX)."""
    for trunk_name, layers_name, norm_name, embed_name in (("model", "layers", "norm", "embed_tokens"),
                                                           ("transformer", "h", "ln_f", "wte"),
                                                           ("gpt_neox", "layers", "final_layer_norm", "embed_in")):
        trunk = getattr(model, trunk_name, None)
        if trunk is not None and hasattr(trunk, layers_name):
            return Parts(getattr(trunk, embed_name), getattr(trunk, layers_name), getattr(trunk, norm_name),
                         model.get_output_embeddings())
    raise SemalignError(f"the trainer does not know where the decoder blocks of {type(model).__name__} are; "
                        "supported: Llama-style (model.layers), GPT-2-style (transformer.h), GPT-NeoX")


class StopForward(Exception):
    """Raised by a hook to end a forward pass early (caught by `capture`)."""


def _output_tensor(out):
    return out[0] if isinstance(out, tuple) else out


def _input_tensor(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def capture(model: nn.Module, tokens: Int[torch.Tensor, "batch pos"], layers: Iterable[int], *,
            embed: bool = False, logits: bool = False) -> tuple[dict, torch.Tensor | None]:
    """One forward over `tokens`: {"post.{l}": resid_post of block l, "embed": block 0's input} and logits.

    Stops after the deepest requested block unless `logits` is asked for. Gradients flow if enabled (the
    caller decides with `torch.no_grad()`).
    """
    p = parts(model)
    layers = sorted(set(int(x) for x in layers))
    store: dict[str, torch.Tensor] = {}
    handles = []
    deepest = max(layers) if layers else -1
    stop_at = None if logits else deepest

    def post_hook(index):
        def hook(module, args, out):
            store[f"post.{index}"] = _output_tensor(out)
            if stop_at == index:
                raise StopForward
        return hook

    for index in layers:
        handles.append(p.layers[index].register_forward_hook(post_hook(index)))
    if embed:
        handles.append(p.layers[0].register_forward_pre_hook(
            lambda module, args, kwargs: store.__setitem__("embed", _input_tensor(args, kwargs)), with_kwargs=True))
    out_logits = None
    try:
        if logits:
            out_logits = model(input_ids=tokens, use_cache=False).logits
        elif layers or embed:
            if not layers:  # only the embedding: stop at block 0's input
                handles.append(p.layers[0].register_forward_pre_hook(_raise_stop))
            model(input_ids=tokens, use_cache=False)
    except StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return store, out_logits


def _raise_stop(module, args):
    raise StopForward


def lens_fn(model: nn.Module):
    """The logit lens of `model` ([n, d] -> [n, vocab]: final norm, then the LM head) as a `LogitLens`."""
    from ..objectives import LogitLens

    p = parts(model)
    return LogitLens(p.norm, p.head)


def all_layer_states(model: nn.Module, tokens: Int[torch.Tensor, "batch pos"]) -> dict[int, Float[torch.Tensor, "batch pos d"]]:
    """resid_post of every block (no grad), for CKA heatmaps."""
    with torch.no_grad():
        store, _ = capture(model, tokens, range(len(parts(model).layers)))
    return {int(k.split(".")[1]): v for k, v in store.items()}


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over every parameter's name, dtype, shape and bytes: the identity of a teacher's weights."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(underlying_hf(model).state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name.replace(_STRIP, '')}{t.dtype}{tuple(t.shape)}".encode())
        h.update(memoryview(t.view(-1).view(torch.uint8).numpy()))
    return h.hexdigest()
