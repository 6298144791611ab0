"""Baselines and SemAlign variants as *methods*: a name, the loss terms it swaps in, and (rarely) a plugin.

The fairness rule of the transfer benchmark (`analysis/TRANSFER.md`): every method trains on
exactly the same transfer data, for the same steps, with the same trainable student parameters as SemAlign.
So a method may change only

- `terms` / `options`: the objective terms (the `semalign_lens.training.objectives` registry, which also defines the
  baselines' own terms `fitnets`, `gram` and `laten_l2` in `objectives/reference.py`), and
- `transfer_kind`: the teacher→student map (SemAlign variants by map kind), and
- `plugin`: for the parametric baselines (Seeking, LaTen) and FitNets' learned projector, code that runs
  when a stage opens or closes (the trainer's `plugins=` hook).

Data, pairing, schedule (frontier stages, LoRA rank and targets, learning rates, steps) come from one base
`AlignConfig` shared by all rows. Every row with an output KL term uses the same one (forward KL(p_T‖p_S),
τ = 1, `registry.KL_OUTPUT`), so `semalign` − `kd` is exactly the contribution of SemAlign's layer term. `method_config(base, name)` returns that config with only the method's
fields replaced, and `run_method` trains it.

| name | terms | what it is |
|---|---|---|
| `sft` | ce | the control: the student fine-tuned alone on the transfer data, no teacher |
| `kd` | kl (forward, τ = 1) | word-level logit distillation (Hinton et al.) |
| `fitnets` | fitnets + kl | projected-MSE hints on the paired layers, learned projector (Romero et al.) |
| `gram` | gram + kl | relation (Gram / similarity-preserving) distillation on raw teacher states (Tung & Mori) |
| `seeking` | ce | sensitivity-located teacher blocks → SVD → LoRA init, then fine-tuning (Zhong et al.) |
| `laten` | ce + laten_l2 | located teacher neurons → hypernetwork → added to located student neurons (Tan et al.) |
| `semalign` | relation + kl | SemAlign v2 (relation geometry of the mapped residual) with the dual map |
| `semalign-layer` | relation | SemAlign v2's layer term alone, no output KL (dual map) |
| `semalign-cosine` | cosine + kl | SemAlign v1's layer loss with v2's output KL, dual map |
| `semalign-fisher` | fisher + kl | the ACL version's Fisher-weighted quadratic on aligned logits, dual map |
| `semalign-paper-map` | relation + kl | `semalign` with the paper's own (non-dual) recomposition |
| `semalign-v1` | cosine + cosine_onehot | SemAlign v1 as written (cosine layer and output losses, paper map) |
| `kd-shared` | shared_kl | `kd` across two tokenizers: KL on the shared vocabulary at aligned positions |
| `uld` | uld | Universal Logit Distillation (Boizard et al.): sorted-probability Wasserstein-1, no vocabulary map |
| `semalign-shared` | relation + shared_kl | `semalign` across two tokenizers: intersection-basis map, aligned positions |
| `lens-kl` | lens_kl + kl | logit-lens KL per paired layer, depth-weighted, annealed (DistillLens, arXiv 2602.13567) |
| `lens-kl-shared` | lens_kl + shared_kl | `lens-kl` across two tokenizers, on the shared strings |
| `interchange` | interchange + kl | interchange intervention training on paired layers (DIITO, arXiv 2112.02505) |
| `relation-kl` | relation_kl + kl | relation KL at one upper-middle pair (MiniLMv2, arXiv 2012.15828) |
| `semalign-balanced` | relation (balanced) + kl | `semalign` with α = L_KL / L_relation each step (Minitron, arXiv 2407.14679) |
"""

from __future__ import annotations

# One module per method; each registers its method(s) (their loss terms live in semalign_lens.training.objectives).
from . import (  # noqa: F401
    balanced,
    cross_vocab,
    fitnets,
    interchange,
    kd,
    laten,
    lens_kl,
    relation,
    relation_kl,
    seeking,
    semalign,
    sft,
)
from .registry import METHODS, Method, get_method, method_config, method_trainer, register_method, run_method

ROW_ORDER = ("sft", "kd", "fitnets", "gram", "seeking", "laten", "semalign", "semalign-layer", "semalign-cosine",
             "semalign-fisher", "semalign-paper-map", "semalign-v1", "kd-shared", "uld", "semalign-shared",
             "lens-kl", "lens-kl-shared", "interchange", "relation-kl", "semalign-balanced")
for _name in ROW_ORDER:  # the table's row order: control, baselines, SemAlign variants (user methods after)
    METHODS[_name] = METHODS.pop(_name)

__all__ = ["METHODS", "ROW_ORDER", "Method", "get_method", "method_config", "method_trainer", "register_method",
           "run_method"]
