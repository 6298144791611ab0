"""Seeking (Zhong et al., ICLR 2024; "PostPKT"): teacher parameters located by sensitivity, factored into LoRA,
then fine-tuned (arXiv 2310.11451). This is the published pipeline at toy scale:

Kept from the published method:
1. sensitivity S_i = Σ_j |θ_i · ∂L(x_j)/∂θ_i| over seed examples, one backward per example (teacher in fp32);
2. layer score = Σ S over every parameter of a block; the top-L_S teacher blocks, re-sorted by depth, map
   in order onto the student's blocks (k-th kept teacher block → student block k);
3. per matrix, the **contiguous** block of the student matrix's shape with the largest Σ S (found
   exhaustively with a summed-area table; the published code loops in Python, this is vectorised);
4. rank-r SVD of that block, B = U_r Σ_r, A = V_rᵀ; the frozen base becomes W − BA and the LoRA adapter starts
   at (B, A), so at step 0 the student computes exactly its original function but trains in the teacher's
   subspace; then supervised fine-tuning (CE) on the transfer data.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import nn
from tqdm.auto import tqdm

from ...core.errors import SemalignError
from ...core.hashing import sha256_hex
from ...models.lora import dense_weight, lora_factors, lora_layers
from .registry import Method, register_method

CHANGES = (
    "Different widths (576 -> 256) and depths (30 -> 6) need nothing new: Seeking's contiguous-block search "
    "already shrinks every matrix to the student's shape (v_proj 192x576 -> 128x256 across GQA heads, as the "
    "published blocks cut across heads). Changed for the fairness rule and toy scale: LoRA only on the "
    "schedule's targets (v, o, up, down) of the frontier layer of each stage, with the schedule's rank, "
    "alpha and steps, instead of all seven projections plus embeddings and LM head of all layers for 3 "
    "epochs; 16 seed sequences of the transfer data instead of 32 task examples; loss on every token (no "
    "prompt/response split in code text). The base W - BA + adapter (B, A) trick is exact: the student's "
    "function is unchanged at step 0. Across architecture families (ours; the paper pairs one family) a "
    "student layer takes its block from the teacher layer of the same role (`architectures.ROLES`: v, o, up, "
    "down; a fused qkv plays v), and a role the teacher's family lacks keeps the ordinary LoRA initialisation."
)

_SENSITIVITY_CACHE: dict[str, tuple[torch.Tensor, dict[tuple[int, str], torch.Tensor]]] = {}


def sensitivity(teacher: nn.Module, sequences: torch.Tensor, targets: tuple[str, ...],
                progress: bool = False) -> tuple[Float[torch.Tensor, "layer"], dict[tuple[int, str], torch.Tensor]]:  # noqa: F821
    """(layer scores [n_layers], {(layer, module path): S of that weight, on the teacher's device}) of an HF
    causal LM.

    One forward/backward per sequence (Seeking's per-example |θ·∇θL|), fp32, LM loss on every token, where the
    teacher is. The layer ranker `attribution.parameter_sensitivity` is the same formula per prompt and task metric.
    """
    from ...models.plain import clean_copy, model_device, parts

    model = clean_copy(teacher, share_weights=True, attn="eager").float().eval()
    layers = parts(model).layers
    model.requires_grad_(False)
    for layer in layers:
        layer.requires_grad_(True)
    named = {(i, name): mod for i, layer in enumerate(layers) for name, mod in layer.named_modules()
             if name and name.rsplit(".", 1)[-1] in targets and hasattr(mod, "weight")}
    if not named:
        raise SemalignError(f"the teacher has no linear layers named {targets} in its blocks")
    scores = torch.zeros(len(layers), dtype=torch.float64)
    blocks = {key: torch.zeros_like(dense_weight(m), dtype=torch.float32) for key, m in named.items()}
    for seq in tqdm(sequences, desc="seeking sensitivity", disable=not progress, leave=False):
        x = seq[None].to(model_device(model))
        loss = model(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        with torch.no_grad():
            for i, layer in enumerate(layers):
                scores[i] += sum(float((p * p.grad).abs().sum()) for p in layer.parameters() if p.grad is not None)
            for key, m in named.items():  # S = |θ·∇θL| in [out, in] orientation (Conv1D stores [in, out])
                s = (m.weight * m.weight.grad).abs()
                blocks[key] += s if dense_weight(m) is m.weight else s.t()
        model.zero_grad(set_to_none=True)
    model.requires_grad_(False)
    return scores, blocks


def best_block(score: Float[torch.Tensor, "rows cols"], rows: int, cols: int) -> tuple[int, int]:
    """Top-left corner of the contiguous rows x cols block with the largest sum (summed-area table)."""
    if rows > score.shape[0] or cols > score.shape[1]:
        raise SemalignError(f"cannot cut a {rows}x{cols} block out of a {tuple(score.shape)} teacher matrix; "
                            "Seeking needs the teacher at least as wide as the student")
    sat = score.new_zeros(score.shape[0] + 1, score.shape[1] + 1, dtype=torch.float64)
    sat[1:, 1:] = score.double().cumsum(0).cumsum(1)
    sums = sat[rows:, cols:] - sat[:-rows, cols:] - sat[rows:, :-cols] + sat[:-rows, :-cols]
    flat = int(torch.argmax(sums))
    return flat // sums.shape[1], flat % sums.shape[1]


def svd_factors(block: Float[torch.Tensor, "out inp"], rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B = U_r Σ_r [out, r], A = V_rᵀ [r, in]): the best rank-r approximation B·A of `block`."""
    u, s, vh = torch.linalg.svd(block.double(), full_matrices=False)
    r = min(rank, s.numel())
    b, a = u[:, :r] * s[:r], vh[:r]
    if r < rank:  # a block narrower than the rank: pad with zero directions (still exact)
        b = torch.cat([b, b.new_zeros(b.shape[0], rank - r)], 1)
        a = torch.cat([a, a.new_zeros(rank - r, a.shape[1])], 0)
    return b, a


def init_lora_from_block(layer: nn.Module, block: torch.Tensor) -> None:
    """Base W ← W − BA, adapter (B/scale, A): the layer's output is unchanged, its trainable subspace is B·A's.
    `layer`: a peft LoRA layer (`semalign_lens.models.lora`); `block` may be where the teacher is (the product moves to
    the student's weight)."""
    lora_a, lora_b, scale = lora_factors(layer)
    b, a = svd_factors(block, lora_a.shape[0])
    weight = dense_weight(layer)
    with torch.no_grad():
        weight -= (b @ a).to(weight)
        lora_b.copy_((b / scale).to(lora_b.dtype))
        lora_a.copy_(a.to(lora_a.dtype))


class SeekingPlugin:
    """Runs Seeking's extraction once per run and initialises each stage's LoRA adapters from it."""

    def __init__(self, seed_sequences: int = 16):
        self.seed_sequences = seed_sequences
        self.extras: dict = {}
        self.layer_map: dict[int, int] = {}
        self.blocks: dict[tuple[int, str], torch.Tensor] = {}
        self.teacher = None

    def setup(self, trainer, teacher) -> None:
        if trainer.cfg.schedule.adapter != "lora":
            raise SemalignError("Seeking initialises LoRA adapters from teacher blocks; run it with "
                                "schedule.adapter = 'lora' (with full fine-tuning W - BA + BA changes nothing)")
        from ...models.architectures import architecture, model_type
        from ...models.plain import clean_copy, parts, underlying_hf
        from ..schedule import lora_targets

        t_type, s_type = model_type(underlying_hf(teacher)), model_type(trainer.student)
        self.same_family = t_type == s_type
        if not self.same_family and trainer.cfg.schedule.lora_targets:
            raise SemalignError(f"Seeking maps a {t_type} teacher's layers onto a {s_type} student by their roles "
                                "(v, o, up, down), which only the families' own LoRA targets have; leave "
                                "schedule.lora_targets unset")
        seeds = trainer.data.tokens[: self.seed_sequences]
        # the teacher's own names for the student's targets: the same names in one family, by role across two
        targets = tuple(lora_targets(trainer.cfg.schedule, trainer.student) if self.same_family
                        else architecture(clean_copy(teacher, share_weights=True)).lora_targets)
        key = sha256_hex(trainer.identity["teacher_hash"] + str(seeds.tolist()) + str(sorted(targets)))
        if key not in _SENSITIVITY_CACHE:
            _SENSITIVITY_CACHE.clear()  # keep one teacher's worth of memory
            _SENSITIVITY_CACHE[key] = sensitivity(teacher, seeds, targets, progress=trainer.cfg.progress)
        scores, self.blocks = _SENSITIVITY_CACHE[key]
        n_student = trainer.n_student_layers
        kept = sorted(torch.argsort(scores, descending=True)[:n_student].tolist())
        self.layer_map = dict(enumerate(kept))
        self.teacher = clean_copy(teacher, share_weights=True)
        self.teacher_layers = parts(self.teacher).layers
        self.skipped: list[str] = []  # student targets whose role the teacher's family has no layer for
        self.extras = {"seeking_layer_map": self.layer_map, "seeking_layer_scores": scores.tolist()}

    def open_stage(self, trainer, stage, params: list[nn.Parameter]) -> list[nn.Parameter]:
        from ...models.architectures import role_of
        from ...models.plain import parts

        layers = parts(trainer.student).layers
        for pair in stage.pairs:
            t_index = self.layer_map[pair.student_layer]
            t_modules = dict(self.teacher_layers[t_index].named_modules())
            by_role = {role_of(self.teacher, n): n for n in t_modules if (t_index, n) in self.blocks}
            for name, layer in lora_layers(layers[pair.student_layer]):
                t_name = name if self.same_family else by_role.get(role_of(trainer.student, name))
                if t_name is None:
                    self.skipped.append(name)  # keeps its ordinary LoRA initialisation
                    continue
                t_weight = dense_weight(t_modules[t_name]).detach().float()
                score = self.blocks[(t_index, t_name)]
                rows, cols = dense_weight(layer).shape
                r0, c0 = best_block(score, rows, cols)
                init_lora_from_block(layer, t_weight[r0: r0 + rows, c0: c0 + cols])
        return params


register_method(Method(
    "seeking", {"ce": 1.0}, "Seeking (PostPKT): sensitivity-located teacher blocks -> rank-r SVD -> LoRA "
    "initialisation (base W - BA), then fine-tuning", plugin=SeekingPlugin, changes=CHANGES))
