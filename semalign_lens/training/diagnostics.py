"""What the trainer measures besides its losses: records only (the run page draws them: `reports.run`).

Per paired layer, on the held-out diagnostic batch (no grad):
- `cos_state` / `cos_contribution`: mean cosine between the student's state (residual change) and its mapped
  teacher target;
- `relation_cka`: 1 − the relation loss, per-sequence linear CKA of the two residual changes;
- `span_share` (our definition): the share of the student states' energy inside the principal subspace of
  the mapped targets, the smallest r directions holding 90 % of the targets' energy (r = `span_rank`).
  With more tokens than dimensions the targets span everything, so the *principal* span is what says
  whether the student writes where the teacher's semantics live;
- `top1_teacher`: logit-lens top-1 agreement of the student at its layer and the teacher at the paired
  teacher layer (the nearer one when the target interpolates two), each read with its own head, the final
  norm recomputed on each state (the "recompute" readout, `models.readout.READOUTS`);
- `top1_target`: top-1 agreement of the student's lens on its state and on the mapped target.
And at the start and end of every stage, the teacher x student linear CKA of every block's resid_post.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float

from .objectives import relation_cka

SPAN_ENERGY = 0.9


@torch.no_grad()
def projection_metrics(state: Float[torch.Tensor, "b t d"], target: Float[torch.Tensor, "b t d"],
                       contribution: Float[torch.Tensor, "b t d"], target_contribution: Float[torch.Tensor, "b t d"],
                       mask: Bool[torch.Tensor, "b t"], lens, teacher_top1: torch.Tensor | None) -> dict[str, float]:
    hs, ts = state[mask].float(), target[mask].float()
    out = {"cos_state": float(F.cosine_similarity(hs, ts, dim=-1).mean()),
           "cos_contribution": float(F.cosine_similarity(contribution[mask].float(),
                                                         target_contribution[mask].float(), dim=-1).mean())}
    cka, valid = relation_cka(contribution.float(), target_contribution.float(), mask)
    out["relation_cka"] = float(cka[valid].mean()) if bool(valid.any()) else float("nan")
    _, sing, vh = torch.linalg.svd(ts.double(), full_matrices=False)
    energy = sing.pow(2).cumsum(0) / sing.pow(2).sum().clamp_min(1e-30)
    rank = int((energy < SPAN_ENERGY).sum()) + 1
    basis = vh[:rank].to(hs.dtype)
    out["span_share"] = float((hs @ basis.T).pow(2).sum() / hs.pow(2).sum().clamp_min(1e-30))
    out["span_rank"] = rank
    student_top1 = lens(hs).argmax(-1)
    out["top1_target"] = float((student_top1 == lens(ts).argmax(-1)).float().mean())
    if teacher_top1 is not None:
        out["top1_teacher"] = float((student_top1 == teacher_top1.to(student_top1.device)[mask]).float().mean())
    return out


def cka_grid(teacher_stack: torch.Tensor, student_stack: torch.Tensor) -> tuple[torch.Tensor, list[str], list[str]]:
    """Linear CKA [teacher points, student points] of two `lens.capture.accumulated_resid`s of the same tokens,
    with their labels ("embed", then the blocks "0".."L-1")."""
    from ..lens.similarity import cka_matrix

    label = lambda stack: ["embed"] + [str(i) for i in range(len(stack) - 1)]  # noqa: E731
    return cka_matrix(teacher_stack, student_stack), label(teacher_stack), label(student_stack)


def cka_maps(run_dir: Path) -> dict[str, dict]:
    """{"cka_stage{i}_{start,end}": the map record} a run wrote into `diagnostics/`, in stage order."""
    stage = lambda p: (int(p.stem.split("_")[1].removeprefix("stage")), p.stem.endswith("_end"))  # noqa: E731
    folder = Path(run_dir) / "diagnostics"
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("cka_stage*_*.json"), key=stage)}


def cka_change(maps: dict[str, dict]) -> tuple[torch.Tensor, list[str], list[str]] | None:
    """(CKA after the last stage − CKA before the first, teacher labels, student labels) from a run's maps
    (`AlignResult.cka`, `cka_maps`), or None when it made none (`figures = false`).
    The paper claims alignment leaves the CKA pattern unchanged: this difference is that claim, measured."""
    starts = [m for name, m in maps.items() if name.endswith("_start")]
    ends = [m for name, m in maps.items() if name.endswith("_end")]
    if not starts or not ends:
        return None
    first, last = starts[0], ends[-1]
    return (torch.tensor(last["matrix"]) - torch.tensor(first["matrix"]), first["teacher_labels"],
            first["student_labels"])


def lens_agreement_change(records: list[dict]) -> dict[int, tuple[float, float]]:
    """{paired student layer: (top1_teacher at the first diagnosis, at the last)}: how often the student's logit
    lens at that layer names the teacher's top-1 token at the paired teacher layer, before any training and
    after the last stage (records from a run's `metrics.jsonl`, in log order; {} without diagnostics)."""
    seen: dict[int, list[float]] = {}
    for r in records:
        if r.get("kind") == "diag" and "top1_teacher" in r:
            seen.setdefault(int(r["student_layer"]), []).append(float(r["top1_teacher"]))
    return {layer: (values[0], values[-1]) for layer, values in sorted(seen.items())}


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


PROJECTION_METRICS = {
    "cos_state": "cosine of the student state with the mapped teacher target",
    "cos_contribution": "cosine of the layer's residual contribution with the target's",
    "relation_cka": "CKA of the token-token relations of the layer's contribution and the target's, per sequence",
    "span_share": "share of the student state's energy inside the principal span of the target states",
    "top1_teacher": "logit-lens top-1 agreement of the student state with the teacher's own layer (final norm "
                    "recomputed)",
    "top1_target": "logit-lens top-1 agreement of the student state with the mapped target (final norm recomputed)",
}
