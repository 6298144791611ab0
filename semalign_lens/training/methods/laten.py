"""LaTen (Tan et al., ACL 2025; "PrePKT"): located teacher neurons, translated by a small hypernetwork and
added to located student neurons (arXiv 2505.14436).

Kept from the published method: FFN neurons located in teacher and student separately (the same count
k = 10% of the student's FFN width on both sides, ranked and paired by rank); the teacher's up-projection
and down-projection weights of those neurons are extracted (Llama's up_proj rows and down_proj columns; each
family's pair is `architectures.Architecture.mlp`, GPT-2's Conv1D stored transposed); one hypernetwork per module (Linear → ReLU → Linear,
no bias, weights ~ N(0, 1e-5)) maps each d_T-vector to a d_S-vector along the hidden dimension; the
result is **added** to the student's up_proj rows / down_proj columns at its own located neurons, with
gradients reaching the hypernetwork; loss = LM loss + 1000 · mean(delta²).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ...core.errors import SemalignError
from ...core.hashing import sha256_hex
from .registry import Method, register_method

CHANGES = (
    "Toy-scale adaptations: (1) layers are not located by LaTen's log-prob-increase attribution but taken from "
    "the pairing every method shares (stage by stage, frontier layer <- its paired teacher layer); (2) neurons "
    "are ranked by |activation x gradient| of the LM loss summed over 16 transfer sequences (the first-order "
    "estimate of the effect LaTen's static attribution measures), once, not per example; (3) only the FFN "
    "modules (up_proj rows, down_proj columns), not attention v/o 'neurons'; (4) the hypernetwork's hidden "
    "width is chosen so that its parameter count matches the LoRA parameters the other methods train in that "
    "stage (published: a 5120->5120->4096 MLP, ~189M parameters), and those hypernetwork parameters replace "
    "the LoRA adapters as what is trained; (5) training runs for the shared schedule's steps on the transfer "
    "batches (published: one step per extract example, batches of 16); the deltas are injected at the end of "
    "each stage (the published method injects once after alignment, with no further training)."
)


class Hypernet(nn.Module):
    """Linear(d_T, h) → ReLU → Linear(h, d_S), no bias, N(0, std) init (LaTen: std 1e-5), drawn from `generator`
    (a CPU one: the same weights on every device; move the module to the student's device after)."""

    def __init__(self, d_in: int, hidden: int, d_out: int, std: float = 1e-5, generator=None):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(hidden, d_in, generator=generator) * std)
        self.w2 = nn.Parameter(torch.randn(d_out, hidden, generator=generator) * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.w1.T) @ self.w2.T


class NeuronDelta(nn.Module):
    """Weight parametrization W ↦ W + scatter(hypernet(teacher vectors)) at the located student neurons.

    `axis` is the weight axis that indexes neurons (`architectures.neuron_axis`): 0 adds rows (Llama's up_proj
    [d_mlp, d]), 1 adds columns (its down_proj [d, d_mlp]; GPT-2's Conv1D c_fc [d, d_mlp]).
    """

    def __init__(self, hypernet: Hypernet, teacher_vectors: torch.Tensor, index: torch.Tensor, axis: int):
        super().__init__()
        self.hypernet, self.axis = hypernet, axis
        self.register_buffer("teacher_vectors", teacher_vectors)  # [k, d_T]
        self.register_buffer("index", index)  # [k] student neuron ids
        self.last_delta: torch.Tensor | None = None

    def delta(self) -> torch.Tensor:
        return self.hypernet(self.teacher_vectors)  # [k, d_S]

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        d = self.delta().to(weight.dtype)
        self.last_delta = d
        if self.axis == 0:
            return weight.index_add(0, self.index, d)
        return weight.index_add(1, self.index, d.T)


def neuron_scores(model: nn.Module, layers: list[int], sequences: torch.Tensor) -> dict[int, torch.Tensor]:
    """{layer: Σ |a ⊙ ∂L/∂a| per FFN neuron} (a = the input of the down projection), LM loss, one pass for
    all layers.

    Weight gradients are never computed: the graph starts at a detached copy of the input embeddings.
    """
    from ...models.architectures import mlp_layers
    from ...models.plain import model_device, parts

    p = parts(model)
    store: dict[int, torch.Tensor] = {}
    handles = []
    for layer in layers:
        def hook(module, args, layer=layer):
            args[0].retain_grad()
            store[layer] = args[0]
        handles.append(mlp_layers(model, layer)[1].register_forward_pre_hook(hook))
    totals: dict[int, torch.Tensor] = {}
    try:
        for seq in sequences:
            x = seq[None].to(model_device(model))
            with torch.enable_grad():
                emb = p.embed(x).detach().requires_grad_(True)
                model(inputs_embeds=emb, labels=x, use_cache=False).loss.backward()
            for layer, a in store.items():
                # every axis but the neurons' (OPT flattens batch and positions before its fc layers)
                s = (a * a.grad).abs().reshape(-1, a.shape[-1]).sum(0).detach().float()
                totals[layer] = s if layer not in totals else totals[layer] + s
    finally:
        for h in handles:
            h.remove()
    return totals


_TEACHER_SCORES: dict[str, dict[int, torch.Tensor]] = {}


class LaTenPlugin:
    """Locates neurons once, then per stage parametrizes the frontier layer's up/down weights by hypernetworks."""

    def __init__(self, seed_sequences: int = 16, rate: float = 0.1, std: float = 1e-5):
        self.seed_sequences, self.rate, self.std = seed_sequences, rate, std
        self.extras: dict = {"laten": {}}
        self.teacher = None

    def setup(self, trainer, teacher) -> None:
        from ...models.architectures import mlp_problem
        from ...models.plain import clean_copy

        self.teacher = clean_copy(teacher, share_weights=True, attn="eager").eval().requires_grad_(False)
        for role, model in (("teacher", self.teacher), ("student", trainer.student)):
            if (problem := mlp_problem(model, role)) is not None:
                raise SemalignError(problem)
        self.seeds = trainer.data.tokens[: self.seed_sequences]
        layers = sorted({p.nearest_teacher_layer for p in trainer.pairs})
        key = sha256_hex(f"{trainer.identity['teacher_hash']}{layers}{self.seeds.tolist()}")
        if key not in _TEACHER_SCORES:
            _TEACHER_SCORES.clear()
            _TEACHER_SCORES[key] = neuron_scores(self.teacher, layers, self.seeds)
        self.teacher_scores = _TEACHER_SCORES[key]

    def open_stage(self, trainer, stage, params: list[nn.Parameter]) -> list[nn.Parameter]:
        from ...models.architectures import base_layer, mlp_layers, neuron_axis, neuron_vectors

        lora_budget = sum(p.numel() for p in params)
        for p in params:  # LaTen trains the hypernetworks instead of the stage's LoRA adapters
            p.requires_grad_(False)
        s_scores = neuron_scores(trainer.student, [p.student_layer for p in stage.pairs],
                                 self.seeds.to(trainer.device))
        gen = torch.Generator().manual_seed(trainer.cfg.seed * 7919 + stage.index)
        new: list[nn.Parameter] = []
        for pair in stage.pairs:
            s_mlp = mlp_layers(trainer.student, pair.student_layer)  # (up, down), LoRA-wrapped during a stage
            t_mlp = mlp_layers(self.teacher, pair.nearest_teacher_layer)
            s_up = base_layer(s_mlp[0])
            d_mlp = s_up.weight.shape[neuron_axis(s_up, "up")]
            d_s = s_up.weight.shape[1 - neuron_axis(s_up, "up")]
            d_t = t_mlp[0].weight.shape[1 - neuron_axis(t_mlp[0], "up")]  # the teacher is never LoRA-wrapped
            k = max(1, int(d_mlp * self.rate))
            t_idx = torch.argsort(self.teacher_scores[pair.nearest_teacher_layer], descending=True)[:k]
            s_idx = torch.argsort(s_scores[pair.student_layer], descending=True)[:k]
            hidden = max(1, lora_budget // len(stage.pairs) // (2 * (d_s + d_t)))
            deltas = []
            for side, module, t_module in (("up", s_mlp[0], t_mlp[0]), ("down", s_mlp[1], t_mlp[1])):
                base = base_layer(module)  # under LoRA
                vectors = neuron_vectors(t_module, side, t_idx.to(t_module.weight.device))  # where the teacher is
                net = Hypernet(d_t, hidden, d_s, self.std, gen).to(base.weight.device)
                delta = NeuronDelta(net, vectors.detach().to(base.weight.device, torch.float32, copy=True), s_idx,
                                    neuron_axis(base, side))
                parametrize.register_parametrization(base, "weight", delta)
                deltas.append(delta)
                new += list(net.parameters())
            self.extras["laten"][pair.student_layer] = deltas
        return new

    def close_stage(self, trainer, stage) -> None:
        """Inject: bake each parametrized weight (W + delta) into a plain weight."""
        for module in trainer.student.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
                module.weight.requires_grad_(False)
        self.extras["laten"] = {}


register_method(Method(
    "laten", {"ce": 1.0, "laten_l2": 1000.0}, "LaTen (PrePKT): located teacher FFN neurons mapped by a small "
    "hypernetwork and added to located student neurons; LM loss + 1000 x L2 on the deltas",
    plugin=LaTenPlugin, changes=CHANGES))
