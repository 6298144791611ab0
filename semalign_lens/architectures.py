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

from dataclasses import dataclass

from torch import nn

from .errors import SemalignError


@dataclass(frozen=True)
class Architecture:
    """Dotted paths from the causal LM to its trunk, and names inside the trunk and the block."""

    trunk: str
    layers: str
    norm: str
    embed: str
    lora_targets: tuple[str, ...]


LLAMA = Architecture("model", "layers", "norm", "embed_tokens", ("v_proj", "o_proj", "up_proj", "down_proj"))

ARCHITECTURES: dict[str, Architecture] = {
    **{t: LLAMA for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2",
                          "granite", "smollm3", "cohere", "stablelm")},
    "gpt2": Architecture("transformer", "h", "ln_f", "wte", ("c_attn", "c_proj", "c_fc")),
    "gpt_neox": Architecture("gpt_neox", "layers", "final_layer_norm", "embed_in",
                             ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")),
    "phi3": Architecture("model", "layers", "norm", "embed_tokens", ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")),
    "phi": Architecture("model", "layers", "final_layernorm", "embed_tokens", ("v_proj", "dense", "fc1", "fc2")),
    "opt": Architecture("model.decoder", "layers", "final_layer_norm", "embed_tokens", ("v_proj", "out_proj", "fc1", "fc2")),
    "starcoder2": Architecture("model", "layers", "norm", "embed_tokens", ("v_proj", "o_proj", "c_fc", "c_proj")),
    # mixture-of-experts blocks whose experts are fused parameters, not linear layers: attention only (our choice)
    "mixtral": Architecture("model", "layers", "norm", "embed_tokens", ("v_proj", "o_proj")),
    **{t: Architecture("transformer", "h", "ln_f", "word_embeddings",
                       ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")) for t in ("bloom", "falcon")},
}


def _get(root: nn.Module, dotted: str):
    for name in dotted.split("."):
        root = getattr(root, name, None)
        if root is None:
            return None
    return root


def architecture(model: nn.Module) -> Architecture:
    """The entry of `model`'s family (`config.model_type`); a family not listed is tried as Llama-style."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    arch = ARCHITECTURES.get(model_type, LLAMA)
    trunk = _get(model, arch.trunk)
    if trunk is None or not isinstance(getattr(trunk, arch.layers, None), nn.ModuleList):
        raise SemalignError(f"the trainer does not know where the decoder blocks of {type(model).__name__} "
                            f"(model_type {model_type!r}) are; known families: {', '.join(sorted(ARCHITECTURES))}. "
                            "Add its paths to semalign_lens.architectures.ARCHITECTURES")
    return arch


def trunk(model: nn.Module) -> nn.Module:
    return _get(model, architecture(model).trunk)


def adaptable_names(block: nn.Module) -> list[str]:
    """Names of the linear-like layers of a block that LoRA can adapt (nn.Linear and GPT-2's Conv1D)."""
    from transformers.pytorch_utils import Conv1D

    return sorted({name.rsplit(".", 1)[-1] for name, m in block.named_modules()
                   if isinstance(m, (nn.Linear, Conv1D)) and name})


def mlp_problem(model: nn.Module, role: str = "model") -> str | None:
    """Why LaTen cannot locate FFN neurons in `model`, else None: this port reads a Llama-style MLP
    (`mlp.up_proj` rows and `mlp.down_proj` columns), which GPT-2 (`c_fc`), NeoX, Phi-3 (fused `gate_up_proj`)
    and OPT (`fc1`/`fc2` on the block) do not have."""
    block = getattr(trunk(model), architecture(model).layers)[0]
    mlp = getattr(block, "mlp", None)
    if mlp is None or not all(isinstance(getattr(mlp, n, None), nn.Module) for n in ("up_proj", "down_proj")):
        return (f"the LaTen baseline locates neurons in a Llama-style MLP (mlp.up_proj, mlp.down_proj); the {role} "
                f"({model.config.model_type}) has none; run LaTen on Llama-family models, or leave it out of "
                "--methods")
    return None
