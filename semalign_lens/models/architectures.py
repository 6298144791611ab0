"""Where each Hugging Face decoder family keeps its blocks, and which linear layers its LoRA adapts.

The one place that knows architecture names (TransformerLens keeps the same knowledge in its architecture
adapters; we only need the plain HF module tree the trainer runs). Everything else — capture, the frontier
schedule, LoRA, the logit lens, Seeking and LaTen — asks `architecture(model)`.

`lora_targets` are each family's equivalents of the paper's v_proj, o_proj, up_proj and down_proj (its
appendix: LoRA r16 on those four). Fused projections cannot be split by a LoRA adapter, so a family whose
value projection is fused with q and k (GPT-2's `c_attn`, NeoX's `query_key_value`, Phi-3's `qkv_proj`)
adapts the fused matrix, and Phi-3's fused `gate_up_proj` stands in for up_proj: our choice, not the paper's.
GPT-2's `c_proj` names both the attention output and the MLP output, so one name covers o_proj and down_proj.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from ..core.errors import SemalignError


@dataclass(frozen=True)
class Architecture:
    """Dotted paths from the causal LM to its trunk, and names inside the trunk and the block. `mlp`: the
    block's (up, down) FFN layers, whose outputs and inputs are the FFN neurons (LaTen's); None where there is
    no single pair (Phi-3's fused gate_up_proj, mixture-of-experts)."""

    trunk: str
    layers: str
    norm: str
    embed: str
    lora_targets: tuple[str, ...]
    mlp: tuple[str, str] | None = ("mlp.up_proj", "mlp.down_proj")
    # (path suffix inside a block, role) where a target's position in `lora_targets` does not say its role
    roles: tuple[tuple[str, str | None], ...] = ()


# The paper's four LoRA targets: the i-th name of every family's `lora_targets` plays the i-th role (a fused
# qkv projection plays v). What lets Seeking copy a teacher block into a student of another family.
ROLES = ("v", "o", "up", "down")


NATIVE_TYPE = "transformerlens_native"

LLAMA = Architecture("model", "layers", "norm", "embed_tokens", ("v_proj", "o_proj", "up_proj", "down_proj"))

# Llama's paths with a fused gate_up_proj standing in for up_proj (no single FFN pair); Phi-3's qkv is fused too
LLAMA_FUSED_MLP = Architecture("model", "layers", "norm", "embed_tokens",
                               ("qkv_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"), None,
                               (("qkv_proj", "v"), ("v_proj", "v"), ("o_proj", "o"), ("gate_up_proj", "up"),
                                ("down_proj", "down")))

ARCHITECTURES: dict[str, Architecture] = {
    **{t: LLAMA for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2",
                          "granite", "smollm3", "cohere", "stablelm")},
    **{t: Architecture("transformer", "h", "ln_f", "wte", ("c_attn", "c_proj", "c_fc"), ("mlp.c_fc", "mlp.c_proj"),
                       (("attn.c_attn", "v"), ("attn.c_proj", "o"), ("mlp.c_fc", "up"), ("mlp.c_proj", "down")))
       for t in ("gpt2", "gpt_bigcode")},  # GPT-BigCode: GPT-2's names on nn.Linear layers
    "gpt_neox": Architecture("gpt_neox", "layers", "final_layer_norm", "embed_in",
                             ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
                             ("mlp.dense_h_to_4h", "mlp.dense_4h_to_h")),
    "phi": Architecture("model", "layers", "final_layernorm", "embed_tokens", ("v_proj", "dense", "fc1", "fc2"),
                        ("mlp.fc1", "mlp.fc2")),
    "opt": Architecture("model.decoder", "layers", "final_layer_norm", "embed_tokens", ("v_proj", "out_proj", "fc1", "fc2"),
                        ("fc1", "fc2")),
    "starcoder2": Architecture("model", "layers", "norm", "embed_tokens", ("v_proj", "o_proj", "c_fc", "c_proj"),
                               ("mlp.c_fc", "mlp.c_proj")),
    # mixture-of-experts blocks whose experts are fused parameters, not linear layers: attention only (our choice)
    "mixtral": Architecture("model", "layers", "norm", "embed_tokens", ("v_proj", "o_proj"), None),
    "gptj": Architecture("transformer", "h", "ln_f", "wte", ("v_proj", "out_proj", "fc_in", "fc_out"),
                         ("mlp.fc_in", "mlp.fc_out")),
    "codegen": Architecture("transformer", "h", "ln_f", "wte", ("qkv_proj", "out_proj", "fc_in", "fc_out"),
                            ("mlp.fc_in", "mlp.fc_out")),
    "gpt_neo": Architecture("transformer", "h", "ln_f", "wte", ("v_proj", "out_proj", "c_fc", "c_proj"),
                            ("mlp.c_fc", "mlp.c_proj")),
    "mpt": Architecture("transformer", "blocks", "norm_f", "wte", ("Wqkv", "out_proj", "up_proj", "down_proj"),
                        ("ffn.up_proj", "ffn.down_proj")),
    "xglm": Architecture("model", "layers", "layer_norm", "embed_tokens", ("v_proj", "out_proj", "fc1", "fc2"),
                         ("fc1", "fc2")),
    "nanochat": Architecture("model", "layers", "norm", "embed_tokens", ("v_proj", "o_proj", "fc1", "fc2"),
                             ("mlp.fc1", "mlp.fc2")),
    # LFM2's final norm is named `embedding_norm`; its conv blocks have no attention (LoRA adapts what a block has)
    "lfm2": Architecture("model", "layers", "embedding_norm", "embed_tokens", ("v_proj", "out_proj", "w3", "w2"),
                         ("feed_forward.w3", "feed_forward.w2")),
    "lfm2_moe": Architecture("model", "layers", "embedding_norm", "embed_tokens", ("v_proj", "out_proj", "w3", "w2"),
                             None),  # its first blocks' FFNs are dense, the others' mixtures of experts
    # state-space and RNN families (our choices): Mamba's in_proj widens the stream as an FFN's up does (peft
    # refuses LoRA on its out_proj), its x/dt projections play no role; RWKV's names repeat in its two halves,
    # hence roles by path
    **{t: Architecture("backbone", "layers", "norm_f", "embeddings", ("in_proj", "x_proj", "dt_proj"), None,
                       (("mixer.in_proj", "up"), ("mixer.x_proj", None), ("mixer.dt_proj", None)))
       for t in ("mamba", "falcon_mamba", "mamba2")},  # Mamba-2 blocks lack the x/dt projections
    "rwkv": Architecture("rwkv", "blocks", "ln_out", "embeddings", ("value", "output", "key"),
                         ("feed_forward.key", "feed_forward.value"),
                         (("attention.value", "v"), ("attention.output", "o"), ("feed_forward.key", "up"),
                          ("feed_forward.value", "down"), ("attention.key", None))),
    "jamba": Architecture("model", "layers", "final_layernorm", "embed_tokens", ("v_proj", "o_proj", "up_proj", "down_proj"),
                          None),  # Mamba and attention blocks, some FFNs mixtures of experts
    # Mamba or attention, then a gated FFN, in every block
    **{t: Architecture("model", "layers", "final_layernorm", "embed_tokens", ("v_proj", "o_proj", "up_proj", "down_proj"),
                       ("feed_forward.up_proj", "feed_forward.down_proj")) for t in ("falcon_h1", "bamba")},
    "recurrent_gemma": Architecture("model", "layers", "final_norm", "embed_tokens",
                                    ("v_proj", "o_proj", "up_proj", "down_proj"),
                                    ("mlp_block.up_proj", "mlp_block.down_proj")),
    # ModernBERT's decoder: `Wo` names both outputs (as GPT-2's c_proj), `Wi` is a fused gate + up projection
    "modernbert-decoder": Architecture("model", "layers", "final_norm", "embeddings", ("v_proj", "Wo", "Wi"), None,
                                       (("attn.v_proj", "v"), ("attn.Wo", "o"), ("mlp.Wi", "up"),
                                        ("mlp.Wo", "down"))),
    # Nemotron-H: each block is one mixer (Mamba, attention or MLP); there is no single FFN pair per block
    "nemotron_h": Architecture("model", "layers", "norm_f", "embeddings", ("v_proj", "o_proj", "up_proj", "down_proj"),
                               None),
    # Zamba-2: Mamba blocks, and hybrid ones that reuse one shared transformer's weights (not trainable:
    # `shared_weights_problem`); the entry serves the analysis and says why
    "zamba2": Architecture("model", "layers", "final_layernorm", "embed_tokens",
                           ("v_proj", "o_proj", "gate_up_proj", "down_proj"), None),
    **{t: LLAMA_FUSED_MLP for t in ("phi3", "glm", "glm4")},
    **{t: Architecture("transformer", "h", "ln_f", "word_embeddings",
                       ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
                       ("mlp.dense_h_to_4h", "mlp.dense_4h_to_h")) for t in ("bloom", "falcon")},
    # TransformerLens-native models (`semalign_lens.models.native`, `native_family`): the blocks hang off the model
    NATIVE_TYPE: Architecture("", "layers", "ln_out", "tok_embed", ("v", "o", "fc_in", "fc_out"),
                              ("mlp.fc_in", "mlp.fc_out")),
    f"{NATIVE_TYPE}_gated": Architecture("", "layers", "ln_out", "tok_embed", ("v", "o", "in", "out"),
                                         ("mlp.in", "mlp.out")),
    f"{NATIVE_TYPE}_attn_only": Architecture("", "layers", "ln_out", "tok_embed", ("v", "o"), None),
}


def _get(root: nn.Module, dotted: str):
    for name in filter(None, dotted.split(".")):  # "" is `root` itself
        root = getattr(root, name, None)
        if root is None:
            return None
    return root


def is_native(module) -> bool:
    """Whether `module` is a TransformerLens-native model (a native bridge's `original_model`, or a
    `native.NativeLM`). Read without importing TransformerLens: before its module is imported no object can
    be one."""
    source = sys.modules.get("transformer_lens.model_bridge.sources.native.model")
    return source is not None and isinstance(module, source.NativeModel)


def native_family(cfg) -> str:
    """The family of a native model of TransformerLens config `cfg`: the block layout decides which linear
    layers exist (a plain MLP's fc_in/fc_out, a gated one's gate/in/out, none without an MLP), so each layout
    is its own entry of `ARCHITECTURES`."""
    return NATIVE_TYPE + ("_attn_only" if cfg.attn_only else "_gated" if cfg.gated_mlp else "")


def model_type(model: nn.Module) -> str | None:
    """`model`'s family: its HF `config.model_type`, or for a TransformerLens-native model (whose bridged
    `NativeModel` has no HF config) the native layout's."""
    if is_native(model):
        return native_family(model.cfg)
    return getattr(getattr(model, "config", None), "model_type", None)


def architecture(model: nn.Module) -> Architecture:
    """The entry of `model`'s family (`model_type`); a family not listed is tried as Llama-style."""
    family = model_type(model)
    arch = ARCHITECTURES.get(family, LLAMA)
    body = _get(model, arch.trunk)
    if body is None or not isinstance(getattr(body, arch.layers, None), nn.ModuleList):
        raise SemalignError(f"the trainer does not know where the decoder blocks of {type(model).__name__} "
                            f"(model_type {family!r}) are; known families: {', '.join(sorted(ARCHITECTURES))}. "
                            "Add its paths to semalign_lens.models.architectures.ARCHITECTURES")
    lacking = [name for name in (arch.embed, arch.norm) if getattr(body, name, None) is None]
    if lacking:
        raise SemalignError(f"{type(model).__name__} (model_type {family!r}) has decoder blocks where the trainer "
                            f"looks, but no {' or '.join(lacking)} beside them (it has "
                            f"{[n for n, _ in body.named_children()]}); add its entry to "
                            "semalign_lens.models.architectures.ARCHITECTURES")
    return arch


def trunk(model: nn.Module) -> nn.Module:
    return _get(model, architecture(model).trunk)


def shared_weights_problem(model: nn.Module) -> str | None:
    """Why `model`'s blocks cannot be trained one at a time, else None: two blocks hold the same weight (Zamba-2's
    hybrid blocks reuse one shared transformer). Training the frontier block would also change the other one,
    and a copy of the model would silently untie them."""
    owner: dict[int, tuple[int, str]] = {}
    for i, block in enumerate(getattr(trunk(model), architecture(model).layers)):
        for name, weight in block.named_parameters():
            if weight.is_meta or weight.numel() == 0:
                continue
            first = owner.setdefault(weight.data_ptr(), (i, name))
            if first[0] != i:
                return (f"blocks {first[0]} and {i} of {type(model).__name__} ({model_type(model)}) share the weight "
                        f"{name}; the trainer trains one block at a time on its own weights, so this family can be "
                        "analysed but not trained")
    return None


def adaptable_names(block: nn.Module) -> list[str]:
    """Names of the linear-like layers of a block that LoRA can adapt (nn.Linear and GPT-2's Conv1D)."""
    from transformers.pytorch_utils import Conv1D

    return sorted({name.rsplit(".", 1)[-1] for name, m in block.named_modules()
                   if isinstance(m, (nn.Linear, Conv1D)) and name})


def target_problem(block: nn.Module, targets: Sequence[str]) -> str | None:
    """Why LoRA cannot adapt `targets` in `block`, else None: a name that is not one of its linear layers."""
    names = adaptable_names(block)
    if missing := sorted(set(targets) - set(names)):
        return f"LoRA target(s) {missing} are not linear layers of this block; its linear (or Conv1D) layers are {names}"
    return None


def default_lora_targets(model: nn.Module, block: nn.Module) -> list[str]:
    """The family's LoRA targets that `block` (one of `model`'s blocks) has as linear layers. A hybrid or
    mixture-of-experts family's blocks differ (a conv or Mamba block has no attention projections; fused
    experts are no linear layers): each block adapts what it has. None of them is an error naming the
    block's linear layers."""
    names = adaptable_names(block)
    found = [t for t in architecture(model).lora_targets if t in names]
    if not found:
        raise SemalignError(f"a block of {type(model).__name__} ({model_type(model)}) has none of the family's LoRA "
                            f"targets {list(architecture(model).lora_targets)}; its linear layers are {names}: set "
                            "schedule.lora_targets to some of them, or train with schedule.adapter = 'full'")
    return found


def lora_problem(model: nn.Module, role: str = "model", targets: list[str] | None = None) -> str | None:
    """Why LoRA cannot adapt every block of `model`, else None: with `targets` (the config's), a block that
    lacks one of them; without, a block that has none of the family's defaults (`default_lora_targets`)."""
    for i, block in enumerate(getattr(trunk(model), architecture(model).layers)):
        if targets:
            if problem := target_problem(block, targets):
                return f"the {role}, block {i}: {problem}"
            continue
        try:
            default_lora_targets(model, block)
        except SemalignError as err:
            return f"the {role}: {err}"
    return None


def mlp_problem(model: nn.Module, role: str = "model") -> str | None:
    """Why LaTen cannot locate FFN neurons in `model`, else None: it needs one (up, down) pair of linear
    layers per block (`Architecture.mlp`), which Phi-3 (fused gate_up_proj), mixture-of-experts blocks and
    attention-only models do not have."""
    from transformers.pytorch_utils import Conv1D

    arch = architecture(model)
    block = getattr(trunk(model), arch.layers)[0]
    # a bridge's own HF model holds its layers inside TransformerBridge components (`_original_component`)
    found = [getattr(m, "_original_component", m) for m in
             (base_layer(_get(block, path)) for path in arch.mlp)] if arch.mlp else []
    if not found or not all(isinstance(m, (nn.Linear, Conv1D)) for m in found):
        return (f"the LaTen baseline locates neurons in an MLP with one up and one down projection; the {role} "
                f"({model_type(model)}) has no such pair (fused or expert projections, or no MLP); leave LaTen out of "
                "--methods for this model")
    return None


def role_of(model: nn.Module, path: str) -> str | None:
    """The role (`ROLES`) of the LoRA target at `path` inside a block of `model` (e.g. "self_attn.v_proj" -> "v",
    GPT-2's "mlp.c_proj" -> "down"); None for a layer that is not one of the family's targets."""
    arch = architecture(model)
    for suffix, role in arch.roles:
        if path == suffix or path.endswith("." + suffix):
            return role
    name = path.rsplit(".", 1)[-1]
    return ROLES[arch.lora_targets.index(name)] if name in arch.lora_targets else None


def base_layer(module):
    """The layer under a LoRA wrapper (peft's `get_base_layer`), or `module` itself."""
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


def mlp_layers(model: nn.Module, layer: int) -> tuple[nn.Module, nn.Module]:
    """(up, down) FFN layers of block `layer` (as they are: LoRA-wrapped during a stage)."""
    arch = architecture(model)
    block = getattr(trunk(model), arch.layers)[layer]
    up, down = (_get(block, path) for path in arch.mlp)
    return up, down


def neuron_axis(module: nn.Module, side: str) -> int:
    """The weight axis that indexes FFN neurons: an up layer's outputs, a down layer's inputs. nn.Linear stores
    [out, in]; GPT-2's Conv1D stores [in, out]."""
    linear = isinstance(base_layer(module), nn.Linear)
    return (0 if linear else 1) if side == "up" else (1 if linear else 0)


def neuron_vectors(module: nn.Module, side: str, index):
    """[k, d_model]: the weights of neurons `index` (an up layer's rows of inputs, a down layer's outputs)."""
    weight = base_layer(module).weight
    axis = neuron_axis(module, side)
    picked = weight.index_select(axis, index)
    return picked if axis == 0 else picked.T