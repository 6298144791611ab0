"""Stages of an alignment run and which student parameters each one trains.

Frontier (v2/ACL: "shallow-to-deep ... only the frontier target layer is trainable"): one stage per paired
student layer, in depth order; at stage i only layer k_i trains and only its layer loss (plus the output
terms) is optimised; layers before it were trained in earlier stages and stay frozen, layers after it are
frozen until their own stage. Joint (v1): one stage in which all paired layers train on all their layer
losses at once. `trainable = "all"` trains every student parameter instead (SFT-style controls with the
same stages, data and steps). `global_steps` adds one last stage with no pairs in which every student layer
trains on the output terms (local then global, `ScheduleConfig`). Each stage gets a fresh AdamW (its
parameter set differs) and its own learning rate; LoRA adapters are merged into the weights at the end of
their stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import SemalignError
from ..lens.pairing import LayerPair
from ..models.lora import add_lora, lora_parameters, merge_lora
from ..models.plain import parts
from .config import ScheduleConfig


@dataclass(frozen=True)
class Stage:
    index: int
    pairs: tuple[LayerPair, ...]  # pairs whose layer losses are active
    steps: int
    lr: float
    start: int  # first global step of the stage
    is_global: bool = False  # the end-to-end stage after the others: every layer trains, no layer term

    @property
    def end(self) -> int:
        return self.start + self.steps

    @property
    def label(self) -> str:
        return "global" if self.is_global else "+".join(f"L{p.student_layer}" for p in self.pairs)


def _per_stage(value, n: int, name: str) -> list:
    if isinstance(value, list):
        if len(value) != n:
            raise SemalignError(f"schedule.{name} lists {len(value)} values but there are {n} stages; give one value "
                                "per stage or a single value for all")
        return list(value)
    return [value] * n


def build_stages(cfg: ScheduleConfig, pairs: list[LayerPair]) -> list[Stage]:
    pairs = sorted(pairs, key=lambda p: p.student_layer)
    groups = [(p,) for p in pairs] if cfg.mode == "frontier" else [tuple(pairs)]
    steps = [int(s) for s in _per_stage(cfg.stage_steps, len(groups), "stage_steps")]
    lrs = [float(v) for v in _per_stage(cfg.lr, len(groups), "lr")]
    stages, start = [], 0
    for i, (group, n, lr) in enumerate(zip(groups, steps, lrs, strict=True)):
        stages.append(Stage(i, group, n, lr, start))
        start += n
    if cfg.global_steps:
        stages.append(Stage(len(stages), (), int(cfg.global_steps), float(cfg.global_lr or lrs[-1]), start, True))
    return stages


def stage_at(stages: list[Stage], step: int) -> Stage:
    for stage in stages:
        if step < stage.end:
            return stage
    return stages[-1]


def warmup_then_decay(peak: float, step: int, steps: int, warmup: int, min_ratio: float,
                      decay: str = "cosine") -> float:
    """The learning rate at `step` of `steps`: linear warmup over `warmup` steps (capped at `steps`), then constant
    or cosine decay to `min_ratio * peak`. The one schedule of the aligner's stages and student pretraining."""
    warm = min(warmup, steps)
    if step < warm:
        return peak * (step + 1) / warm
    if decay == "constant":
        return peak
    progress = min(1.0, (step - warm) / max(1, steps - warm))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def lr_at(cfg: ScheduleConfig, stage: Stage, step: int) -> float:
    """A stage's learning rate at global `step`: the schedule restarts at every stage."""
    return warmup_then_decay(stage.lr, step - stage.start, stage.steps, cfg.warmup_steps, cfg.min_lr_ratio,
                             cfg.lr_decay)


def trainable_modules(student: nn.Module, cfg: ScheduleConfig, stage: Stage) -> list[nn.Module]:
    layers = parts(student).layers
    if cfg.trainable == "all" or stage.is_global:
        return [student] if cfg.adapter == "full" else list(layers)
    return [layers[p.student_layer] for p in stage.pairs]


def lora_targets(cfg: ScheduleConfig, student: nn.Module, block: nn.Module | None = None) -> list[str]:
    """The layers LoRA adapts: the config's, else the student family's (`architectures.ARCHITECTURES`); with
    `block`, the family's that this block has (`architectures.default_lora_targets`)."""
    from ..models.architectures import architecture, default_lora_targets

    if cfg.lora_targets:
        return list(cfg.lora_targets)
    return list(architecture(student).lora_targets) if block is None else default_lora_targets(student, block)


def open_stage(student: nn.Module, cfg: ScheduleConfig, stage: Stage, seed: int) -> list[nn.Parameter]:
    """Freeze everything, then unfreeze (or attach LoRA to) the stage's modules; return its parameters."""
    student.requires_grad_(False)
    modules = trainable_modules(student, cfg, stage)
    if cfg.adapter == "full":
        for m in modules:
            m.requires_grad_(True)
        params = [p for m in modules for p in m.parameters()]
    else:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + stage.index)  # resume-safe adapter init
        for m in modules:
            add_lora(m, lora_targets(cfg, student, m), cfg.lora_rank, cfg.lora_alpha, gen)
        params = [p for m in modules for p in lora_parameters(m)]
    unique = list({id(p): p for p in params}.values())  # tied embeddings appear twice
    if not unique:
        raise SemalignError(f"stage {stage.index} ({stage.label}) has no trainable parameters")
    _fp32_masters(student, unique)
    return unique


HALF = (torch.bfloat16, torch.float16)


def _fp32_masters(student: nn.Module, params: list[nn.Parameter]) -> None:
    """Train a half-precision student's stage parameters in fp32 (ours; mixed-precision practice): AdamW's
    update lr·m/√v is ~1e-4 of a weight, below bf16's resolution (2⁻⁸ ≈ 4e-3 relative), so most updates applied
    to bf16 weights round away. The stage's parameters (or its LoRA factors) are upcast while it trains, under
    the trainer's autocast in the model's dtype, and `close_stage` casts them back after LoRA is merged (the
    merge adds the fp32 update to the bf16 weight, rounded once). Frozen weights stay in the model's dtype."""
    masters = getattr(student, "_semalign_masters", None)
    if masters is None:
        masters = {}
        student._semalign_masters = masters  # plain attribute: not a parameter, not in the state dict
    for p in params:
        if p.dtype in HALF:
            masters[id(p)] = (p, p.dtype)
            p.data = p.data.float()


def close_stage(student: nn.Module) -> None:
    """Merge LoRA adapters into their weights, cast fp32 master weights back to the model's dtype, and freeze
    everything."""
    merge_lora(student)
    for p, dtype in getattr(student, "_semalign_masters", {}).values():
        p.data = p.data.to(dtype)
    if hasattr(student, "_semalign_masters"):
        student._semalign_masters.clear()
    student.requires_grad_(False)


def make_optimizer(params: list[nn.Parameter], cfg: ScheduleConfig, lr: float) -> torch.optim.Optimizer:
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
