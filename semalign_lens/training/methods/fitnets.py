"""FitNets-style hints (Romero et al., ICLR 2015): a learned projection of the student state regresses the
teacher state of the paired layer.

Published: hint loss ½‖h_T − r(h_S)‖² with a trainable regressor r, trained in a first stage, then KD.
Here (what changes, and why):
- r is one bias-free linear map d_S → d_T per paired student layer, initialised by ridge least squares on
  16 training sequences (so a short run spends its steps on the student, not on fitting r from noise), then
  trained jointly with the student's adapters; it is an auxiliary head and is discarded after training.
- hint and output KL are summed within each frontier stage (SemAlign's schedule), not run as two stages.
- the squared error is divided by the mean squared norm of the teacher states in the batch (scale-free, so
  weight 1.0 means the same at every depth of a teacher whose residual norm grows with depth), and the
  first position (`<|endoftext|>`, whose teacher state is a massive-activation outlier) is skipped by default.
"""

from __future__ import annotations

import torch
from torch import nn

from ..objectives.reference import hint_loss  # noqa: F401  (the row's loss, defined with the objectives)
from .registry import KL_OUTPUT, Method, register_method


def ridge_projector(h_student: torch.Tensor, h_teacher: torch.Tensor, ridge: float = 1e-3) -> nn.Linear:
    """Linear d_S → d_T map minimising ‖X P − Y‖² + λ‖P‖² (λ = ridge · mean eigenvalue of XᵀX)."""
    x, y = h_student.double(), h_teacher.double()
    gram = x.T @ x
    lam = ridge * gram.diagonal().mean().clamp(min=1e-12)
    p = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device), x.T @ y)
    layer = nn.Linear(x.shape[1], y.shape[1], bias=False)
    with torch.no_grad():
        layer.weight.copy_(p.T.float())
    return layer


class FitNetsPlugin:
    """Creates, initialises and trains the projector of each stage's paired layers."""

    def __init__(self, init_sequences: int = 16):
        self.init_sequences = init_sequences
        self.extras: dict[str, nn.ModuleDict] = {"fitnets": nn.ModuleDict()}

    def open_stage(self, trainer, stage, params: list[nn.Parameter]) -> list[nn.Parameter]:
        from ...models.residuals import residual_states

        projectors = self.extras["fitnets"]
        n = min(self.init_sequences, len(trainer.data))
        index = torch.arange(n)
        batch = trainer.data.batch(index)
        tokens, mask = batch.tokens.to(trainer.device), batch.mask.to(trainer.device)
        mask = mask.clone()
        mask[:, 0] = False
        with torch.no_grad():
            teacher = trainer.targets(tokens, index)
            s_states = residual_states(trainer.student, tokens, [p.student_layer for p in stage.pairs])
        new = []
        for pair in stage.pairs:
            key = str(pair.student_layer)
            if key not in projectors:
                t = pair.target(teacher.post).float()
                proj = ridge_projector(s_states.post[pair.student_layer][mask].float(), t[mask])
                projectors[key] = proj.to(trainer.device)
            projectors[key].requires_grad_(True)
            new += list(projectors[key].parameters())
        return params + new

    def close_stage(self, trainer, stage) -> None:
        self.extras["fitnets"].requires_grad_(False)


register_method(Method(
    "fitnets", {"fitnets": 1.0, "kl": 1.0}, "FitNets hints: MSE between a learned projection of the student state "
    "and the teacher state of the paired layer, plus the same output KL",
    options={"kl": KL_OUTPUT["kl"]}, plugin=FitNetsPlugin,
    changes="Romero et al. train hints first, then KD, on all parameters; here hint and KL are summed in each "
            "frontier stage (SemAlign's schedule). The projector (d_S -> d_T per paired layer, least-squares "
            "initialised) is an auxiliary head, trained with the adapters and discarded; the MSE is divided by the "
            "teacher states' mean square so its scale is comparable across layers."))
