"""Plain Hugging Face copies of bridged models.

Why not train the TransformerBridge itself: booting a bridge rewires the HF module tree in place (every
module becomes a wrapper with hooks, parameter names gain `._original_component`) and forces eager
attention. For training we want the stock module tree (sdpa attention, `save_pretrained` names that
`load_model` reads back), so the trainer works on a *clean copy*: a fresh `AutoModelForCausalLM` built from
the same config, holding the bridge's weights (the teacher's are shared, not copied; the student's are
copied, so the caller's model is never modified). A native bridge's copy is a `native.NativeLM`.
Residual states of a copy (or of a bridge) are read by `models.residuals`.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import SemalignError
from ..core.hashing import named_tensors_hash

_STRIP = "._original_component"


def underlying_hf(model) -> nn.Module:
    """The HF `PreTrainedModel` behind a bridge (a native bridge's `NativeModel`), or the model itself."""
    return getattr(model, "original_model", model)


def model_device(model: nn.Module) -> torch.device:
    """Where `model`'s weights are (the CPU for a model without parameters): the device every stage creates its
    tensors on and moves its token batches to before a forward, so that it runs where the model is."""
    first = next(iter(model.parameters()), None)
    return torch.device("cpu") if first is None else first.device


def plain_name(key: str) -> str:
    """A parameter or buffer name of a bridged module tree as the plain module names it."""
    return key.replace(_STRIP, "")


def logits_of(out) -> torch.Tensor:
    """The logits of a forward's output: HF returns an output object, a native model the tensor itself."""
    return out.logits if hasattr(out, "logits") else out


def skeleton(hf: nn.Module, attn: str = "eager", device: str = "meta") -> nn.Module:
    """The plain model of `hf`'s architecture on `device` (meta: no memory, no initialisation): rebuilt from
    the HF config, or a `native.NativeLM` for a TransformerLens-native model. On meta, what asks only about the
    module tree (which linear layers a block has) reads it for free."""
    from transformers import AutoModelForCausalLM

    from .architectures import is_native
    from .native import empty_copy

    if is_native(hf):
        return empty_copy(hf)
    config = hf.config.__class__.from_dict(hf.config.to_dict())
    error = None
    for impl in dict.fromkeys((attn, "eager")):  # Gemma-2 and a few others have no sdpa path
        try:
            config._attn_implementation = impl
            with torch.device(device):
                return AutoModelForCausalLM.from_config(config, attn_implementation=impl)
        except ValueError as err:
            error = err
    raise SemalignError(f"transformers cannot build {type(hf).__name__} from its config ({error}); this "
                        "architecture is not supported by the trainer yet")


def clean_copy(model, *, share_weights: bool, attn: str = "sdpa") -> nn.Module:
    """A plain model (no bridge wrappers) with `model`'s weights, in train-ready form: a stock HF model, or
    for a native bridge a `native.NativeLM`.

    `share_weights=True` reuses the tensors (no memory; for a frozen teacher); False clones them (the
    student, which we train without touching the caller's model). Entries the bridge adds beside the HF
    weights (split q/k/v aliases of a fused projection, a zero `lm_head.bias`) are dropped once every HF
    weight is present: the fused HF weight is the source of truth. Buffers outside the state dict (rotary
    frequencies, Gemma's `embed_scale`) are copied by name. `attn`: sdpa where the family supports it, else
    eager. The copy's logits are checked against the source's on a short probe, so a family whose rebuild is
    not exact fails here, in one line, and never trains on wrong weights.
    """
    hf = underlying_hf(model)
    state = {plain_name(k): v for k, v in hf.state_dict().items()}
    clean = skeleton(hf, attn)
    expected = set(clean.state_dict())
    missing = sorted(expected - set(state))
    if missing:
        raise SemalignError(f"cannot rebuild {type(hf).__name__} as a plain HF model: its weights lack {missing[:4]}; "
                            "this architecture is not supported by the trainer yet")
    state = {k: v for k, v in state.items() if k in expected}
    if not share_weights:
        state = {k: v.detach().clone() for k, v in state.items()}
    clean.load_state_dict(state, strict=True, assign=True)
    if getattr(clean.config, "tie_word_embeddings", False):
        clean.tie_weights()
    source_buffers = {plain_name(k): b for k, b in hf.named_buffers()}
    for name, buf in list(clean.named_buffers()):
        if buf.is_meta:
            if name not in source_buffers:  # the bridge dropped it (GPT-OSS's rotary inv_freq): compute it
                source_buffers.update((k, b) for k, b in skeleton(hf, attn, "cpu").named_buffers()
                                      if k not in source_buffers)
            owner, _, leaf = name.rpartition(".")
            clean.get_submodule(owner).register_buffer(leaf, source_buffers[name].detach().clone(), persistent=False)
    try:
        _check_same_logits(hf, clean)
    except _CopyFails as err:
        if attn != "eager":  # an sdpa path that builds but does not run this config (DeepSeek-V2's MLA heads)
            return clean_copy(model, share_weights=share_weights, attn="eager")
        raise SemalignError(f"the plain copy of {type(hf).__name__} fails on a forward pass ({err}); this "
                            "architecture is not supported by the trainer yet") from None
    return clean


class _CopyFails(Exception):
    """The rebuilt model raised on the probe forward (not: computed other logits)."""


def probe_tokens(vocab_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The 8 tokens, [1, 8], of the load-time and copy-time probe forwards: enough to run every module, a few ms."""
    return torch.arange(1, 9, device=device).remainder(int(vocab_size))[None]


HALF = (torch.bfloat16, torch.float16)
COPY_TOLERANCE = 1e-3  # relative, in fp32: sdpa vs eager attention and summation order stay far below it


def _check_same_logits(source: nn.Module, copy: nn.Module) -> None:
    """The rebuilt model must compute what the source computes (`probe_tokens`).

    Both run in fp32 whatever their dtype (`computing_in_fp32`), so the comparison is exact up to summation
    order: a bf16 forward alone differs from itself in fp32 by ~1e-2 (tiny Llama) to 1.3 (SmolLM2-135M, whose
    probe tokens reach large activations), far above any tolerance that still catches a wrong rebuild.
    """
    device = model_device(source)
    tokens = probe_tokens(copy.config.vocab_size, device)
    dtype = next((p.dtype for p in source.parameters() if p.dtype in HALF), torch.float32)
    was = source.training, copy.training
    source.eval(), copy.eval()
    # a caller's autocast would run both in bf16, where eager and sdpa attention round differently
    no_autocast = (torch.autocast(device.type, enabled=False) if torch.amp.is_autocast_available(device.type)
                   else nullcontext())
    try:
        with torch.no_grad(), no_autocast:
            half = dtype in HALF  # per-block upcasting needs the blocks; an fp32 model runs as it is
            with computing_in_fp32(source, _blocks_of(source, copy) if half else ()):
                want = logits_of(source(input_ids=tokens, use_cache=False)).float()
            try:
                with computing_in_fp32(copy.to(device), _blocks_of(copy, copy) if half else ()):
                    got = copy(input_ids=tokens, use_cache=False).logits.float()
            except Exception as err:  # any failure of the rebuilt module is this one problem
                raise _CopyFails(f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}") \
                    from None
    finally:
        source.train(was[0]), copy.train(was[1])
    err = float((want - got).abs().max() / want.abs().max().clamp_min(1e-6))
    if not err < COPY_TOLERANCE:
        held = "" if dtype == torch.float32 else f"; both were run in float32 from their {str(dtype)[6:]} weights, " \
                                                  "so this is not rounding"
        raise SemalignError(f"the plain copy of {type(source).__name__} computes different logits from the source "
                            f"(relative error {err:.1e} on {tokens.shape[1]} probe tokens{held}): transformers "
                            "rebuilds this family differently from the loaded model; this architecture is not "
                            "supported by the trainer yet")


def _blocks_of(model: nn.Module, plain: nn.Module) -> list[nn.Module]:
    """`model`'s decoder blocks, found by the plain copy's block paths (a bridged tree keeps them under the same
    names, `plain_name`); [] where the family's blocks are unknown (the whole model is then upcast at once)."""
    from .architectures import architecture, trunk

    try:
        arch, body = architecture(plain), trunk(plain)
        prefix = next(n for n, m in plain.named_modules() if m is body)
        paths = [f"{prefix}.{arch.layers}.{i}".lstrip(".") for i in range(len(getattr(body, arch.layers)))]
    except Exception:  # noqa: BLE001 - an unknown family: no per-block upcast, still a correct check
        return []
    outer: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        outer.setdefault(plain_name(name), module)  # the outermost module of that plain name (a bridge's wrapper)
    return [outer[p] for p in paths if p in outer]


@contextmanager
def computing_in_fp32(model: nn.Module, blocks: Iterable[nn.Module] = ()):
    """Run `model` in fp32 although its weights are bf16/fp16, and give every tensor back unchanged after.

    Ours, for the copy check (and any reference forward of a half-precision model): the tensors outside `blocks`
    (embeddings, final norm, head) are upcast for the whole context, each block's only while that block runs,
    so the extra memory is one fp32 block plus the non-block weights, not a second fp32 model (52 GB for 13B).
    Parameters keep their identity (only `.data` is swapped), so weights the trainer's copies share stay shared.
    A model without half-precision tensors is left alone.
    """
    if not any(t.dtype in HALF for t in [*model.parameters(), *model.buffers()]):
        yield model
        return
    saved: dict[int, tuple[dict, str, torch.Tensor]] = {}  # id of the upcast tensor -> (its table, name, original)

    def upcast(modules: Iterable[nn.Module]) -> list[int]:
        done = []
        for module in modules:
            for table in (module._parameters, module._buffers):
                for name, t in table.items():
                    if t is None or t.dtype not in HALF or id(t) in saved:
                        continue
                    if isinstance(t, nn.Parameter):
                        saved[id(t)] = (table, name, t.data)
                        t.data = t.data.float()
                    else:
                        table[name] = t.float()
                        saved[id(table[name])] = (table, name, t)
                    done.append(id(table[name]))
        return done

    def restore(keys: Iterable[int]) -> None:
        for key in list(keys):
            table, name, original = saved.pop(key)
            if isinstance(table[name], nn.Parameter):
                table[name].data = original
            else:
                table[name] = original

    blocks = list(blocks)
    inside = {id(m) for b in blocks for m in b.modules()}
    handles, open_blocks = [], {}
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(
            lambda m, args, i=i: open_blocks.__setitem__(i, upcast(m.modules()))))
        handles.append(block.register_forward_hook(lambda m, args, out, i=i: restore(open_blocks.pop(i, []))))
    try:
        upcast(m for m in model.modules() if id(m) not in inside)
        yield model
    finally:
        for h in handles:
            h.remove()
        restore(list(saved))


@dataclass
class Parts:
    """The pieces of a decoder-only LM the trainer touches."""

    embed: nn.Module
    layers: nn.ModuleList
    norm: nn.Module
    head: nn.Module


def parts(model: nn.Module) -> Parts:
    """Locate embedding, decoder blocks, final norm and LM head (`semalign_lens.models.architectures`)."""
    from .architectures import architecture, trunk

    arch, body = architecture(model), trunk(model)
    return Parts(getattr(body, arch.embed), getattr(body, arch.layers), getattr(body, arch.norm),
                 model.get_output_embeddings())


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over every parameter's name, dtype, shape and bytes: the identity of a teacher's weights."""
    weights = sorted(underlying_hf(model).state_dict().items())
    return named_tensors_hash((plain_name(name), t) for name, t in weights)
