"""TransformerLens-native models (`TransformerBridge.boot_native`) as plain modules the trainer can train.

A native bridge has no Hugging Face model behind it: it wraps `NativeModel`, TransformerLens's own
`nn.Module`. The trainer never trains a bridge (`semalign_lens.models.plain`: booting rewires the module tree), so it
needs a plain copy, and for HF families that copy is rebuilt from the HF config. `NativeLM` is the same for a
native model: a `NativeModel` subclass (same parameter names, same forward, so the copy is exact) with the
small HF surface the trainer reads — `.config` (model_type and sizes), a forward that returns `.logits` (and
`.loss` given `labels=`), `get_output_embeddings`, `save_pretrained`.

A saved directory is `config.json` (model_type `transformerlens_native`, the sizes, and the whole
TransformerLens config under `transformer_lens_config`), `model.safetensors` and the tokenizer;
`load_model(dir)` reads it back as a native bridge.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformer_lens.model_bridge.sources.native.model import NativeModel

from .architectures import native_family


def tl_config_dict(cfg) -> dict[str, Any]:
    """The TransformerLens config as JSON-safe values (the dtype as its name, `torch.` dropped), without the
    device: where a model ran is not part of what it is (`load_model(device=)` decides on reading)."""
    out = {}
    for key, value in cfg.to_dict().items():
        if key == "device":
            continue
        if isinstance(value, torch.dtype):
            value = str(value).replace("torch.", "")
        out[key] = value
    json.dumps(out)  # a field TransformerLens adds later that JSON cannot hold should fail here, not on save
    return out


def tl_config_from_dict(data: dict[str, Any]):
    from transformer_lens.config import TransformerBridgeConfig

    data = dict(data)
    if isinstance(data.get("dtype"), str):
        data["dtype"] = getattr(torch, data["dtype"])
    return TransformerBridgeConfig.from_dict(data)


@dataclass
class NativeConfig:
    """The HF-style fields of a native model that the trainer and `load_model` read."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    transformer_lens_config: dict[str, Any] = field(repr=False)
    tie_word_embeddings: bool = False
    name_or_path: str = ""

    @classmethod
    def of(cls, cfg) -> NativeConfig:
        return cls(native_family(cfg), int(cfg.d_vocab), int(cfg.d_model), int(cfg.n_layers),
                   tl_config_dict(cfg), name_or_path=str(getattr(cfg, "model_name", "") or ""))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "architectures": ["TransformerLensNative"]}


class NativeLM(NativeModel):
    """A `NativeModel` with the HF causal-LM surface (see the module docstring)."""

    def __init__(self, cfg):
        super().__init__(copy.deepcopy(cfg))
        self.config = NativeConfig.of(self.cfg)

    def forward(self, input_ids=None, attention_mask=None, labels=None, inputs_embeds=None, **kwargs):
        from transformers.modeling_outputs import CausalLMOutput

        logits = super().forward(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds)
        loss = None
        if labels is not None:  # HF's convention: position t predicts labels[t + 1]; -100 is ignored
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)

    def get_output_embeddings(self):
        """The head. The logit lens (final norm, then this) leaves out `output_logits_soft_cap`, as the lens of
        an HF family with a soft cap (Gemma-2) does."""
        return self.head

    def save_pretrained(self, out: str | Path, safe_serialization: bool = True) -> None:
        """config.json + model.safetensors, the layout `load_model` reads back."""
        from safetensors.torch import save_model

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2), encoding="utf-8")
        save_model(self, str(out / "model.safetensors"))


def empty_copy(model: NativeModel) -> NativeLM:
    """A `NativeLM` of `model`'s config on the meta device (weights and buffers come from `model`)."""
    with torch.device("meta"):
        return NativeLM(model.cfg)
