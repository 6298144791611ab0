"""The reference (baseline) methods' loss terms, registered beside SemAlign's own.

They live with the objectives, not with their methods in `semalign_lens.training.methods`, so that the registry
never has to import the package above it: a method names its terms, the objectives define them. Each
term's `source` says it is a baseline, not SemAlign. Terms that need a learned part (FitNets' projector,
LaTen's hypernetworks) read it from `LayerInputs.extras`, which the method's trainer plugin fills.

- `gram`: similarity-preserving KD (Tung & Mori, ICCV 2019) on token geometry; see `baselines/relation.py`.
- `fitnets`: FitNets hints (Romero et al., ICLR 2015) through a learned projector; see `baselines/fitnets.py`.
- `laten_l2`: LaTen's L2 pull of the translated weight deltas (Tan et al., ACL 2025); see `baselines/laten.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import nn

from ...core.errors import SemalignError
from .registry import LayerInputs, Objective, register_objective

# ----------------------------------------------------------------------------------------------- gram (SP-KD)

def sp_gram(x: Float[torch.Tensor, "batch pos d"], mask: Bool[torch.Tensor, "batch pos"]
            ) -> Float[torch.Tensor, "batch pos pos"]:
    """Row-normalised token-token Gram per sequence; padded rows and columns are zero."""
    x = x.float() * mask.unsqueeze(-1)
    return F.normalize(x @ x.transpose(1, 2), dim=-1)


def sp_loss(h_student: torch.Tensor, h_teacher: torch.Tensor, mask: torch.Tensor,
            skip_first: bool = True) -> torch.Tensor:
    """Mean over sequences of ‖Ĝ_S − Ĝ_T‖²_F / n², n = real tokens of the sequence."""
    mask = mask.clone()
    if skip_first:
        mask[:, 0] = False
    n = mask.sum(1).float()
    diff = (sp_gram(h_student, mask) - sp_gram(h_teacher.detach(), mask)).pow(2).sum((1, 2))
    valid = n >= 2
    if not bool(valid.any()):
        return h_student.sum() * 0.0
    return (diff[valid] / n[valid].pow(2)).mean()


def _gram(x: LayerInputs, interface: str, skip_first: bool) -> torch.Tensor:
    if interface == "state":
        student, teacher = x.state, x.teacher_state
    elif interface == "contribution":
        student, teacher = x.contribution, x.teacher_contribution
    else:
        raise SemalignError(f"gram interface must be 'state' or 'contribution', got {interface!r}")
    if teacher is None:
        raise SemalignError("the 'gram' objective needs raw teacher activations (LayerInputs.teacher_state)")
    return sp_loss(student, teacher, x.mask, skip_first)


register_objective(Objective(
    "gram", "layer", _gram, {"interface": "contribution", "skip_first": True},
    source="baseline, not SemAlign: similarity-preserving KD (row-normalised Gram, Tung & Mori 2019) on raw "
           "teacher activations, token x token"))


# ----------------------------------------------------------------------------------------------- fitnets

def hint_loss(h_student: torch.Tensor, h_teacher: torch.Tensor, mask: torch.Tensor, projector: nn.Module,
              skip_first: bool = True) -> torch.Tensor:
    """mean‖r(h_S) − h_T‖² / mean‖h_T‖² over the real (scored) positions.

    The normaliser mean‖h_T‖² is a statistic of the whole batch, so the loss is no mean over tokens: a step in
    micro-batches (`train.micro_batch_size`) divides each micro-batch's error by its own teacher mean square, and
    its gradient differs from the whole batch's by the spread of that normaliser across micro-batches."""
    mask = mask.clone()
    if skip_first:
        mask[:, 0] = False
    s, t = h_student[mask].float(), h_teacher[mask].detach().float()
    if s.shape[0] == 0:
        return h_student.sum() * 0.0
    err = (projector(s) - t).pow(2).sum(-1).mean()
    return err / t.pow(2).sum(-1).mean().clamp(min=1e-12)


def _fitnets(x: LayerInputs, skip_first: bool) -> torch.Tensor:
    projectors = getattr(x, "extras", {}).get("fitnets")
    if projectors is None or str(x.student_layer) not in projectors:
        raise SemalignError("the 'fitnets' objective needs its learned projector; train it through "
                            "semalign_lens.training.methods.run_method('fitnets', ...), which adds the FitNets plugin")
    if x.teacher_state is None:
        raise SemalignError("the 'fitnets' objective needs the raw teacher state (LayerInputs.teacher_state)")
    return hint_loss(x.state, x.teacher_state, x.mask, projectors[str(x.student_layer)], skip_first)


register_objective(Objective(
    "fitnets", "layer", _fitnets, {"skip_first": True},
    source="baseline, not SemAlign: FitNets hint MSE through a learned d_S->d_T projector (Romero et al. 2015)",
    batch_statistic="its normaliser, the teacher states' mean square over the batch"))


# ----------------------------------------------------------------------------------------------- laten_l2

def _laten_l2(x: LayerInputs) -> torch.Tensor:
    deltas = getattr(x, "extras", {}).get("laten", {}).get(x.student_layer)
    if deltas is None:
        raise SemalignError("the 'laten_l2' objective needs LaTen's hypernetworks; train it through "
                            "semalign_lens.training.methods.run_method('laten', ...), which adds the LaTen plugin")
    return torch.stack([p.delta().pow(2).mean() for p in deltas]).mean()


register_objective(Objective(
    "laten_l2", "layer", _laten_l2, {},
    source="baseline, not SemAlign: LaTen's L2 pull of the translated deltas toward zero (weight 1000 published)"))
