"""LoRA through peft, for SemAlign's "LoRA on the frontier layer": adapt named layers of one block, train only
the adapters, merge them back at the end of the stage.

Why peft's layers: they cover `nn.Linear` and GPT-2's `Conv1D` (fused projections included), with the
initialisation everyone compares against (A Kaiming-uniform, B zero, so a fresh adapter changes nothing) and
an exact `merge()`. What we add is the stage life cycle: `add_lora` on a block (seeded, so a resumed run
rebuilds the same adapters), `lora_parameters`, and `merge_lora`, which folds W' = W + (α/r)·B·A into the
base weight and puts the plain base layer back, so the next stage and the saved student are ordinary
Hugging Face modules. The paper's appendix uses r = 16 on up_proj, down_proj, v_proj, o_proj; other families'
equivalents are in `semalign_lens.models.architectures`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..core.errors import SemalignError
from .architectures import base_layer, target_problem

ADAPTER = "default"


def _is_conv1d(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def add_lora(module: nn.Module, targets: Sequence[str], rank: int, alpha: float,
             generator: torch.Generator | None = None) -> list[str]:
    """Attach rank-`rank` adapters to every layer inside `module` whose name is in `targets`; return their
    paths. A name that is not a linear (or Conv1D) layer of the block is an error naming those that are."""
    from peft import LoraConfig, inject_adapter_in_model

    if rank <= 0:
        raise SemalignError(f"LoRA rank must be positive, got {rank}")
    if problem := target_problem(module, targets):
        raise SemalignError(problem)
    found = [path for path, m in module.named_modules() if path and path.rsplit(".", 1)[-1] in targets]
    conv = any(_is_conv1d(module.get_submodule(p)) for p in found)
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha), target_modules=list(targets), lora_dropout=0.0,
                        bias="none", fan_in_fan_out=conv)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if generator is not None else None
    with torch.random.fork_rng(devices=[]):  # peft draws A from the global generator
        if seed is not None:
            torch.manual_seed(seed)
        inject_adapter_in_model(config, module, adapter_name=ADAPTER)
    return found


def lora_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, peft LoRA layer) for every adapted layer inside `module`."""
    from peft.tuners.lora import LoraLayer

    return [(path, m) for path, m in module.named_modules() if isinstance(m, LoraLayer)]


def lora_factors(layer: nn.Module) -> tuple[nn.Parameter, nn.Parameter, float]:
    """(A [r, in], B [out, r], scale α/r) of one adapted layer."""
    return layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight, float(layer.scaling[ADAPTER])


def dense_weight(layer: nn.Module) -> torch.Tensor:
    """The [out, in] weight of a linear layer, a LoRA layer's base or GPT-2's Conv1D ([in, out]; a view)."""
    base = base_layer(layer)
    return base.weight.t() if _is_conv1d(base) else base.weight


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for _, layer in lora_layers(module) for p in lora_factors(layer)[:2]]


def save_lora(model: nn.Module, out: str | Path) -> Path:
    """The adapters attached inside `model` (the whole student) in peft's own format, `adapter_config.json` and
    `adapter_model.safetensors`, before `merge_lora` folds them away: `PeftModel.from_pretrained(base, out)` on
    the student as it was when the adapters were attached gives the adapted student."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    blocks = [(path, m) for path, m in model.named_modules() if path and ADAPTER in getattr(m, "peft_config", {})]
    if not blocks:
        raise SemalignError("the model holds no LoRA adapters to save (schedule.adapter = 'lora' attaches them)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state, targets = {}, []
    for path, block in blocks:  # peft keys: base_model.model.<full module path>.lora_A.weight
        for key, value in get_peft_model_state_dict(block, adapter_name=ADAPTER).items():
            state[f"base_model.model.{path}.{key}"] = value.detach().contiguous().cpu()
        targets += [f"{path}.{p}" for p, _ in lora_layers(block)]
    config = copy.deepcopy(blocks[0][1].peft_config[ADAPTER])
    config.target_modules = sorted(targets)  # exactly the adapted layers, by full path
    config.save_pretrained(str(out))
    save_file(state, str(out / "adapter_model.safetensors"))
    return out


def merge_lora(module: nn.Module) -> int:
    """Fold every adapter inside `module` into its base weight and put the base layer back; return how many."""
    count = 0
    for path, layer in lora_layers(module):
        layer.merge(adapter_names=[ADAPTER])
        parent, _, name = path.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, name, layer.get_base_layer())
        count += 1
    for m in module.modules() if count else ():  # peft's record sits on each module `add_lora` was given
        if hasattr(m, "peft_config"):
            del m.peft_config
    return count
