"""Baselines and SemAlign variants as *methods*: a name, the loss terms it swaps in, and (rarely) a plugin.

The fairness rule of the transfer benchmark (issue 7, `research/baselines.md` §7): every method trains on
exactly the same transfer data, for the same steps, with the same trainable student parameters as SemAlign.
So a method may change only

- `terms` / `options`: the objective terms (`semalign_lens.objectives` registry; this package registers
  `fitnets`, `gram` and `laten_l2` there at import time), and
- `transfer_kind`: the teacher→student map (SemAlign variants by map kind), and
- `plugin`: for the parametric baselines (Seeking, LaTen) and FitNets' learned projector, code that runs
  when a stage opens or closes (`adapter.MethodTrainer`).

Data, pairing, schedule (frontier stages, LoRA rank and targets, learning rates, steps) come from one base
`AlignConfig` shared by all rows. Every row with an output KL term uses the same one (forward KL(p_T‖p_S),
τ = 2, τ²-scaled), so `semalign` − `kd` is exactly the contribution of SemAlign's layer term. `method_config(base, name)` returns that config with only the method's
fields replaced, and `run_method` trains it.

| name | terms | what it is |
|---|---|---|
| `sft` | ce | the control: the student fine-tuned alone on the transfer data, no teacher |
| `kd` | kl (forward, τ = 2) | word-level logit distillation (Hinton et al.) |
| `fitnets` | fitnets + kl | projected-MSE hints on the paired layers, learned projector (Romero et al.) |
| `gram` | gram + kl | relation (Gram / similarity-preserving) distillation on raw teacher states (Tung & Mori) |
| `seeking` | ce | sensitivity-located teacher blocks → SVD → LoRA init, then fine-tuning (Zhong et al.) |
| `laten` | ce + laten_l2 | located teacher neurons → hypernetwork → added to located student neurons (Tan et al.) |
| `semalign` | relation + kl | SemAlign v2 (relation geometry of the mapped residual) with the dual map |
| `semalign-cosine` | cosine + kl | SemAlign v1's layer loss with v2's output KL, dual map |
| `semalign-fisher` | fisher + kl | the ACL version's Fisher-weighted quadratic on aligned logits, dual map |
| `semalign-paper-map` | relation + kl | `semalign` with the paper's own (non-dual) recomposition |
| `semalign-v1` | cosine + cosine_onehot | SemAlign v1 as written (cosine layer and output losses, paper map) |
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import SemalignError

# Importing these registers the baselines' objectives (fitnets, gram, laten_l2) with semalign_lens.objectives.
from . import fitnets as _fitnets  # noqa: E402,F401
from . import laten as _laten  # noqa: E402,F401
from . import relation as _relation  # noqa: E402,F401
from . import seeking as _seeking  # noqa: E402,F401


@dataclass(frozen=True)
class Method:
    """One row of the transfer table.

    `changes` says what differs from the published method and why (toy scale, different widths, the
    fairness rule); `plugin` builds a per-run object with `setup/open_stage/close_stage` (see `adapter`).
    """

    name: str
    terms: dict[str, float]
    summary: str
    changes: str = ""
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    transfer_kind: str | None = None
    plugin: Callable[[], Any] | None = None
    uses_teacher: bool = True
    family: str = "baseline"  # control | baseline | semalign


METHODS: dict[str, Method] = {}


def register_method(method: Method, *, replace: bool = False) -> Method:
    if method.name in METHODS and not replace:
        raise SemalignError(f"a method named {method.name!r} is already registered; pick another name or "
                            "pass replace=True")
    METHODS[method.name] = method
    return method


def get_method(name: str | Method) -> Method:
    """The registered method `name`; an unknown name is an error listing the valid ones."""
    if isinstance(name, Method):
        return name
    try:
        return METHODS[name]
    except KeyError:
        raise SemalignError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}") from None


def method_config(base, method: str | Method):
    """A copy of `base` (an `AlignConfig`) with only the method's loss terms, options and map kind swapped.

    Everything else — data, pairing, schedule, trainable parameters, seed — stays identical, which is what
    makes the rows of the transfer table comparable.
    """
    m = get_method(method)
    cfg = copy.deepcopy(base)
    cfg.objective.terms = dict(m.terms)
    cfg.objective.options = copy.deepcopy(m.options)
    if m.transfer_kind is not None:
        cfg.transfer.kind = m.transfer_kind
    cfg.validate()
    return cfg


def run_method(method: str | Method, base, *, teacher, student, data, run_dir, pairing=None, transfer=None,
               diag_data=None, lean: bool = False):
    """Train `student` with `method` under the shared `base` config; returns the trainer's `AlignResult`,
    with `trainable_params` ({stage: count}), `data_hash` and `steps` added (what the fairness rule fixes).

    `transfer`: a prebuilt `TransferMap` (reused across methods to save time); ignored by methods whose map
    kind differs from it. `lean`: skip CKA heatmaps and figure files (the benchmark's setting).
    """
    from .adapter import MethodTrainer

    m = get_method(method)
    cfg = method_config(base, m)
    if transfer is not None and getattr(transfer, "kind", None) != cfg.transfer.kind:
        transfer = None
    trainer = MethodTrainer(cfg, method=m, teacher=teacher, student=student, data=data, diag_data=diag_data,
                            pairing=pairing, transfer=transfer, run_dir=run_dir, lean=lean)
    result = trainer.run()
    result.trainable_params = dict(trainer.stage_params)  # per stage; the fairness record of the row
    result.data_hash = trainer.identity["data_hash"]
    result.steps = trainer.stages[-1].end
    return result


_KD_T = 2.0
_KL = {"kl": {"direction": "forward", "temperature": _KD_T}}

for _m in (
    Method("sft", {"ce": 1.0}, "supervised fine-tuning of the student alone (the control)", family="control",
           uses_teacher=False,
           changes="Trains the same parameters (the frontier layers' LoRA adapters, stage by stage) on the same "
                   "transfer data and steps as every other row; only the loss differs. baselines.md §7 asks for "
                   "exactly this same-data control, which the SemAlign, Seeking and LaTen tables lack."),
    Method("kd", {"kl": 1.0}, "logit distillation: forward KL(p_T || p_S) at temperature 2, times T^2",
           options=_KL,
           changes="Hinton et al. use a CE + KL mixture and train all parameters; here the KL term alone (the same "
                   "output term every SemAlign row carries), on the frontier schedule, so the KD row isolates "
                   "what SemAlign's layer term adds."),
    Method("fitnets", {"fitnets": 1.0, "kl": 1.0}, "FitNets hints: MSE between a learned projection of the student "
           "state and the teacher state of the paired layer, plus the same output KL",
           options={"kl": _KL["kl"]}, plugin=lambda: _fitnets.FitNetsPlugin(),
           changes="Romero et al. train hints first, then KD, on all parameters; here hint and KL are summed in "
                   "each frontier stage (SemAlign's schedule). The projector (d_S -> d_T per paired layer, least-"
                   "squares initialised) is an auxiliary head, trained with the adapters and discarded; the MSE is "
                   "divided by the teacher states' mean square so its scale is comparable across layers."),
    Method("gram", {"gram": 1.0, "kl": 1.0}, "relation distillation: row-normalised token-token Gram matrices of "
           "the student and the raw teacher residual contribution (SP-KD), plus the same output KL",
           options={"kl": _KL["kl"]},
           changes="Tung & Mori compare batch x batch Gram matrices of CNN feature maps; here token x token per "
                   "sequence on the paired layers' residual contributions, with no semantic map — the ablation "
                   "of SemAlign's relation loss that reviewers ask for (baselines.md §3)."),
    Method("seeking", {"ce": 1.0}, "Seeking (PostPKT): sensitivity-located teacher blocks -> rank-r SVD -> LoRA "
           "initialisation (base W - BA), then fine-tuning", plugin=lambda: _seeking.SeekingPlugin(),
           changes=_seeking.CHANGES),
    Method("laten", {"ce": 1.0, "laten_l2": 1000.0}, "LaTen (PrePKT): located teacher FFN neurons mapped by a "
           "small hypernetwork and added to located student neurons; LM loss + 1000 x L2 on the deltas",
           plugin=lambda: _laten.LaTenPlugin(), changes=_laten.CHANGES),
    Method("semalign", {"relation": 1.0, "kl": 1.0}, "SemAlign v2: relation geometry of the mapped residual "
           "contribution + output KL; dual map", family="semalign", transfer_kind="dual", options=_KL),
    Method("semalign-cosine", {"cosine": 1.0, "kl": 1.0}, "SemAlign v1 layer loss (cosine to the mapped target) "
           "+ output KL; dual map", family="semalign", transfer_kind="dual", options=_KL),
    Method("semalign-fisher", {"fisher": 1.0, "kl": 1.0}, "SemAlign ACL: Fisher-weighted quadratic on aligned "
           "logits + output KL; dual map", family="semalign", transfer_kind="dual", options=_KL),
    Method("semalign-paper-map", {"relation": 1.0, "kl": 1.0}, "SemAlign v2 with the paper's own recomposition "
           "(unit-normalised bases, no dual frame)", family="semalign", transfer_kind="paper", options=_KL),
    Method("semalign-v1", {"cosine": 1.0, "cosine_onehot": 1.0}, "SemAlign v1 as written: cosine layer loss + "
           "cosine-to-one-hot output loss, paper map", family="semalign", transfer_kind="paper", uses_teacher=True),
):
    register_method(_m)

__all__ = ["METHODS", "Method", "get_method", "method_config", "register_method", "run_method"]
