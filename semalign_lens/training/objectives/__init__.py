"""SemAlign's training objectives: plain tensor functions plus a registry that selects them by name.

Each loss is first a plain function of tensors (`losses`, tested against explicit reference formulas), then
registered as an `Objective` that adapts it to what the trainer hands over (`registry`: `LayerInputs` for a
paired layer, `OutputInputs` for the final logits). The baselines' terms are defined and registered here too
(`reference`: `gram`, `fitnets`, `laten_l2`), so every term is registered at first import and a method is
nothing but a dict of term names and weights. `sparse_logits` holds the top-k teacher distribution of a
target cache and the KL against it.

What is the paper's and what is inferred (SemAlign v1, v2 and the ACL version of arXiv 2510.24208):

| name            | kind   | source |
|-----------------|--------|--------|
| `cosine`        | layer  | v1 Eq. 3: L_layer = 1 − Avg cos(h^(k), h_⋆^(k)), averaged over supervised positions. *Inferred*: the interface (v1 says "sublayer output before residual addition"; we default to the layer's residual contribution, see below) and which positions (all real tokens). |
| `relation`      | layer  | v2 abstract: "centered token-token relation geometry" of the layer's residual contribution against the aligned source residual. *Inferred*: the form. We use 1 − linear CKA per sequence, which is exactly ½‖Ĝ_S − Ĝ_T‖²_F for the Frobenius-normalised centred Grams Ĝ = G/‖G‖_F, so the two candidate readings of the abstract (CKA, Frobenius distance of normalised Grams) coincide (up to the factor ½). |
| `fisher`        | layer  | ACL abstract: "Fisher-weighted quadratic surrogate on target-space aligned logits". *Inferred*: ½ (z − z̃)ᵀ F (z − z̃), F = diag(p̃) − p̃p̃ᵀ, p̃ = softmax(z̃), z = student logit lens of the student state, z̃ = student logit lens of the aligned target (the second-order expansion of KL(p̃‖p) around z̃). |
| `kl`            | output | v2/ACL: "output KL distillation". *Inferred*: forward KL(p_T‖p_S) by default, temperature τ with the usual τ² gradient scale (Hinton et al.); both are options. From a top-k target cache: KL over the top-k tokens plus a tail bucket (ours, `sparse_logits`). |
| `cosine_onehot` | output | v1 Eq. 4: L_out = 1 − Avg cos(z, y_onehot) over supervised positions, optional label smoothing (v1 mentions it). |
| `ce`            | output | not SemAlign: plain next-token cross-entropy, the supervised (SFT) control. |
| `shared_kl`     | output | ours, cross-tokenizer pairs: KL on the shared vocabulary (renormalised) at aligned positions (`cross_vocab`). |
| `uld`           | output | not SemAlign: Universal Logit Distillation (Boizard et al. 2024), sorted-probability Wasserstein-1 (`cross_vocab`). |
| `lens_kl`       | layer  | published (DistillLens, arXiv 2602.13567): KL between the teacher's and the student's logit-lens distributions per pair, depth-weighted, annealed to zero over its stage; needs an output KL beside it (`lens_kl`). From a top-k target cache: the teacher's lens top-k cached per pair, the bucket KL with the student's head fused in (ours). |
| `interchange`   | layer  | published (DIITO, arXiv 2112.02505): KL between teacher and student outputs under the same interchange of paired-layer states between sequences of the batch (`interchange`). |
| `relation_kl`   | layer  | published (MiniLMv2, arXiv 2012.15828): KL over softmax-normalised self-relations of the residual states per relation head, at one upper-middle pair (`relation_kl`). |

Every layer term also takes `balance` (ours, after Minitron, arXiv 2407.14679): the term is scaled each step by
α = L_out / L_term, detached, with L_out the output terms that read teacher logits (`training.terms`).

Interfaces of the layer losses (the `interface` option):
- `state`: the student's residual stream after block k (resid_post) against the mapped teacher state.
- `contribution`: what the student wrote into the stream since the previous supervised interface,
  h_S(k) − h_S(k_prev), against the mapped teacher residual change over the paired teacher depth span,
  map(h_T(τ_k) − h_T(τ_prev)). When every student layer is paired (the usual pairing) this is exactly the
  block write resid_post − resid_pre of block k; the first pair's predecessor is the embedding output on
  both sides. *Inferred*: the papers do not say which teacher quantity is the "aligned supervisory residual";
  a single teacher block's write would be a fraction of the change a student block must make when
  L_T > L_S, so we use the change over the paired span.

Masks: padding positions never enter any loss. Output losses that score next-token predictions use
positions t with both t and t+1 real; `kl` uses every real position.

Vocabulary rows (ours; the paper's Llama-2 heads have no padding): the trainer hands every output term the
logits of the real vocabulary only, the first `models.load.vocab_rows` = len(tokenizer) head rows, and the logit lens
(`LogitLens.rows`, so `fisher` too) reads those rows. A head padded beyond its tokenizer (Qwen2.5: 152,064 rows
for 151,665 tokens) has rows no text encodes to: a padded row is never a target, and the softmax over the
tokenizer's rows is the model's distribution over text, conditioned on emitting a token. So `ce` and `kl` are
over the real rows, renormalised there; the all-rows CE would exceed it by log(1 + mass on padded rows / mass
on real rows), which a trained model keeps near 0 (those rows never occur in its data); padded rows get no
gradient, so training leaves their mass as it was. Two heads of different sizes over one tokenizer (Qwen2.5-7B:
152,064 rows, 1.5B: 151,936) compare on their common real rows.
"""

from __future__ import annotations

from . import cross_vocab, interchange, lens_kl, reference, relation_kl  # noqa: F401  (register the other terms)
from .cross_vocab import shared_kl_loss, uld_loss
from .interchange import interchange_loss
from .lens_kl import lens_kl_loss
from .losses import (
                     KL_CHUNK_ELEMENTS,
                     Lens,
                     ce_loss,
                     cosine_loss,
                     cosine_onehot_loss,
                     fisher_loss,
                     fisher_quadratic,
                     kl_loss,
                     next_token_mask,
                     readout_kl_loss,
                     relation_cka,
                     relation_loss,
)
from .reference import hint_loss, sp_gram, sp_loss
from .registry import (
                     INTERFACES,
                     LAYER_OPTIONS,
                     NEEDS,
                     OBJECTIVES,
                     LayerInputs,
                     Objective,
                     OutputInputs,
                     StepContext,
                     get_objective,
                     register_objective,
)
from .relation_kl import relation_kl_loss
from .sparse_logits import SparseLogits, sparse_kl_sum, sparse_readout_kl_sum

__all__ = ["INTERFACES", "KL_CHUNK_ELEMENTS", "LAYER_OPTIONS", "NEEDS", "OBJECTIVES", "LayerInputs", "Lens",
           "Objective", "OutputInputs", "SparseLogits", "StepContext", "ce_loss", "cosine_loss", "cosine_onehot_loss",
           "fisher_loss", "fisher_quadratic", "get_objective", "hint_loss", "interchange_loss", "kl_loss",
           "lens_kl_loss", "next_token_mask", "readout_kl_loss", "register_objective", "relation_cka",
           "relation_kl_loss", "relation_loss", "shared_kl_loss", "sp_gram", "sp_loss", "sparse_kl_sum",
           "sparse_readout_kl_sum", "uld_loss"]
