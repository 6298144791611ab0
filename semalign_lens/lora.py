"""A small LoRA for `nn.Linear`: enough for SemAlign's "LoRA on the frontier layer" and nothing more.

Why our own: `peft` is not a dependency, and the trainer needs exactly three things — wrap the chosen linear
layers of one block, train only the adapters, and merge them back into plain weights at the end of a stage
so the next stage (and the saved student) sees an ordinary Hugging Face model.

W' = W + (α/r)·B·A, A ∈ R^{r×in} (Kaiming-uniform, like peft), B ∈ R^{out×r} (zeros, so a fresh adapter
changes nothing). The paper's appendix uses r = 16 on up_proj, down_proj, v_proj, o_proj.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .errors import SemalignError


class LoRALinear(nn.Module):
    """`base(x) + (α/r)·x Aᵀ Bᵀ` with the base layer frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator | None = None):
        super().__init__()
        if rank <= 0:
            raise SemalignError(f"LoRA rank must be positive, got {rank}")
        self.base = base
        self.rank, self.alpha = int(rank), float(alpha)
        self.scale = self.alpha / self.rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=w.dtype, device=w.device))
        bound = 1.0 / math.sqrt(base.in_features)  # = kaiming_uniform_(a=sqrt(5)) as in nn.Linear / peft
        with torch.no_grad():
            a = torch.rand(self.lora_A.shape, generator=generator, dtype=torch.float32) * 2 - 1
            self.lora_A.copy_(a * bound)
        base.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale

    def merged(self) -> nn.Linear:
        """The base layer with the adapter folded into its weight (in place; returns the base layer)."""
        with torch.no_grad():
            self.base.weight += (self.lora_B @ self.lora_A).to(self.base.weight.dtype) * self.scale
        return self.base


def add_lora(module: nn.Module, targets: Sequence[str], rank: int, alpha: float,
             generator: torch.Generator | None = None) -> list[str]:
    """Wrap every `nn.Linear` inside `module` whose attribute name is in `targets`; return their paths.

    Raises if none of `targets` matches, naming the linear layers that exist (a typo would otherwise train
    nothing).
    """
    found = []
    linear_names = set()
    for path, child in list(module.named_modules()):
        for name, sub in list(child.named_children()):
            if isinstance(sub, nn.Linear):
                linear_names.add(name)
                if name in targets:
                    setattr(child, name, LoRALinear(sub, rank, alpha, generator))
                    found.append(f"{path}.{name}" if path else name)
    missing = sorted(set(targets) - {p.rsplit(".", 1)[-1] for p in found})
    if missing:
        raise SemalignError(f"LoRA target(s) {missing} are not linear layers of this block; its linear layers "
                            f"are {sorted(linear_names)}")
    return found


def merge_lora(module: nn.Module) -> int:
    """Replace every `LoRALinear` inside `module` by its merged base layer; return how many were merged."""
    count = 0
    for child in list(module.modules()):
        for name, sub in list(child.named_children()):
            if isinstance(sub, LoRALinear):
                setattr(child, name, sub.merged())
                count += 1
    return count


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for m in module.modules() if isinstance(m, LoRALinear) for p in (m.lora_A, m.lora_B)]
