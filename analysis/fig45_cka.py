"""SemAlign's Figs. 4-5 on the embedded pair: CKA heatmaps without and with the alignment, and their claims.

The paper (v1, Figs. 4-6) shows linear-CKA heatmaps of layer outputs on HumanEval:
Fig. 4 (a) the student against itself, (b) the same "with alignment"; Fig. 5 (a) teacher against student,
(b) the same "with alignment". It claims (i) high similarity "especially along the main diagonal", a
layer-by-layer correspondence from shallow to deep, and (ii) that the patterns with and without alignment
look very similar, which it reads as "no neural incompatibility" when transferring through layer outputs.
"With alignment" is not defined; we compute both readings:

- **mapped**: teacher states sent through a `TransferMap` into the student's space (kind `dual`, our
  default, and the paper's own `paper` kind), i.e. what the student is asked to reproduce;
- **trained**: the student after a short SemAlign run (`trainer.align`: frontier schedule, relation + KL,
  dual map, proportional pairing), whose states replace the student's.

Matrices (debiased linear CKA, unbiased HSIC, document-start token dropped; rows/columns = embeddings then
every block output):

    fig4a  student x student                 fig4b  student x aligned student, aligned x aligned
    fig5a  teacher x student (+ permutation null)
    fig5b  mapped teacher (dual, paper) x student;  teacher x aligned student

**Every measure.** CKA alone cannot say whether "no diagonal" is the models or the measure, so claim (i) is
re-tested with every measure of `lens.measures` (CKA, debiased CKA, Procrustes in sample and cross-validated,
mutual kNN, CKNNA, RSA), each against its shuffled-token null, and with model stitching (the student's held-out
CE increase when its state is replaced by the affinely mapped teacher state; fitted on the first three quarters
of the prompts, scored on the rest; `--no-stitching` skips it): `lens.measures.compare_measures`'s diagonal
test (closest teacher layer rising with student depth, Spearman >= 0.8, and the depth-proportional pairs closer
than the grid's mean).

Summary numbers: `path_cka` = mean CKA on the paper's depth-proportional pairs; `excess` = path_cka − the
matrix mean; `monotone_rho` = Spearman correlation between student depth and its best teacher layer; `r` and
`max_abs_diff` between a matrix without and with alignment (the "patterns look similar" claim). How to
read them: linear CKA is invariant to orthogonal transforms and isotropic scaling of either side, so a map
that acted like a rotation could not change the map by construction; a similar pattern after mapping is
therefore evidence about the map (it keeps the token-token geometry), not about "neural incompatibility",
which CKA cannot measure. After training, similarity says the student moved little relative to the spread
of its layers (see `student_shift`: CKA between each student layer before and after).

    python analysis/fig45_cka.py            # embedded pair; a few minutes on 2 cores
    python analysis/fig45_cka.py --fast     # tiny random pair, seconds (CI smoke test)

Writes `fig45_cka.{html,md,csv}` and `summary.json` into `--out` (default analysis/out/fig45).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from semalign_lens.core.errors import run_reporting_errors  # noqa: E402
from semalign_lens.data.tokens import tokenize  # noqa: E402
from semalign_lens.evaluation.protocol import load_pair  # noqa: E402
from semalign_lens.lens.capture import accumulated_resid  # noqa: E402
from semalign_lens.lens.measures import MEASURES, Reading, compare_measures, measure_null, reading  # noqa: E402
from semalign_lens.lens.overview import humaneval_prompts  # noqa: E402
from semalign_lens.lens.pairing import make_pairing  # noqa: E402
from semalign_lens.lens.semantics import SemanticBasis, TransferMap  # noqa: E402
from semalign_lens.lens.similarity import cka_matrix, cka_permutation_null, residual_labels
from semalign_lens.models.inspect import describe  # noqa: E402
from semalign_lens.models.load import load_model
from semalign_lens.reports.page import Report  # noqa: E402
from semalign_lens.reports.plots import cka_heatmap, measure_heatmaps

OUT = Path(__file__).resolve().parent / "out" / "fig45"
HIGH_R, SMALL_DIFF, MONOTONE = 0.95, 0.10, 0.8  # what we take "very similar" and "layer by layer" to mean


def standardized(stack: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each feature z-scored over the tokens: every dimension weighs the same in linear CKA."""
    return [(h - h.mean(0)) / h.std(0).clamp_min(1e-6) for h in stack]


def top_dimension_share(stack: list[torch.Tensor]) -> list[float]:
    """Per layer: the share of the token variance held by the single largest feature (1/d for isotropic)."""
    shares = []
    for h in stack:
        var = h.var(0)
        shares.append(float(var.max() / var.sum().clamp_min(1e-30)))
    return shares


def align_student(args, pair, work: Path):
    """A short SemAlign run (the package defaults, sized by --steps / --align-*); returns (bridge, result)."""
    from semalign_lens.training import align, load_align_config

    cfg = load_align_config(None, {
        "run_dir": str(work / "align"), "progress": False, "report": False, "seed": args.seed,
        "data.source": "code-transfer", "data.seq_len": args.align_seq_len, "data.n_sequences": args.align_sequences,
        "data.batch_size": args.align_batch, "data.diag_sequences": 4, "pairing.strategy": "proportional",
        "transfer.kind": "dual", "objective.terms": {"relation": 1.0, "kl": 1.0},
        "schedule.stage_steps": args.steps, "schedule.lr": args.lr, "schedule.adapter": "full",
        "cka_max_tokens": 512})
    result = align(cfg, pair)
    aligned = load_model(result.student, tokenizer=pair.student.tokenizer, name="aligned student")
    return aligned, result


def proportional_cells(n_teacher: int, n_student: int) -> list[tuple[int, int]]:
    """(row, col) matrix cells of the paper's depth rule; row/col 0 is the embeddings, so block b is b + 1."""
    pairing = make_pairing("proportional", n_teacher, n_student, interpolate=False)
    return [(p.teacher_low + 1, p.student_layer + 1) for p in pairing]


def cross_summary(name: str, m: np.ndarray, cells: list[tuple[int, int]]) -> dict:
    from scipy.stats import spearmanr

    blocks = m[1:, 1:]  # without the embeddings row/column
    best = blocks.argmax(0)  # best teacher block per student block
    rho = float(spearmanr(np.arange(len(best)), best).statistic) if np.ptp(best) > 0 else float("nan")
    path = float(np.mean([m[r, c] for r, c in cells]))
    return {"matrix": name, "mean": float(blocks.mean()), "path_cka": path, "excess": path - float(blocks.mean()),
            "best_teacher_block": best.tolist(), "monotone_rho": rho}


def self_summary(name: str, m: np.ndarray) -> dict:
    n = m.shape[0]
    adjacent = float(np.mean([m[i, i + 1] for i in range(n - 1)]))
    far = float(np.mean([m[i, j] for i in range(n) for j in range(n) if abs(i - j) >= 2])) if n > 2 else float("nan")
    return {"matrix": name, "mean": float(m.mean()), "adjacent": adjacent, "far": far}


def compare(name: str, a: np.ndarray, b: np.ndarray) -> dict:
    r = float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    diff = np.abs(a - b)
    return {"comparison": name, "r": r, "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())}


def label(ok: bool | None) -> str:
    return "CONTEXT" if ok is None else "HOLDS" if ok else "DOES NOT HOLD"


def every_measure(T, S, batch, teacher, student, args):
    """`compare_measures` of every registered measure with its null on teacher x student, and stitching."""
    readings = [reading(measure_null(name, T, S, n_permutations=args.permutations, seed=args.seed))
                for name in MEASURES]
    if args.stitching:
        from semalign_lens.evaluation.stitching import stitching_map

        n_fit = max(1, len(batch) * 3 // 4)
        fit, heldout = batch.select(range(n_fit)), batch.select(range(n_fit, len(batch)))
        readings.append(Reading.of_stitching(stitching_map(teacher, student, fit, heldout, ridge=args.ridge)))
    labels = residual_labels(teacher.cfg.n_layers), residual_labels(student.cfg.n_layers)
    return compare_measures(readings, *labels)


def verdicts(cross: pd.DataFrame, comparisons: pd.DataFrame, null_q95: float, shift: list[float],
             diagonal: pd.DataFrame) -> list:
    """(claim, holds: True/False, or None for context lines, the numbers behind it)."""
    c = cross.set_index("matrix")
    k = comparisons.set_index("comparison")
    ts = c.loc["fig5a teacher x student"]
    out = [(
        "(i) Fig. 5a: teacher x student CKA is high along the main diagonal (best teacher layer rises with student "
        f"depth, Spearman >= {MONOTONE}, and the depth-proportional pairs beat the matrix mean)",
        bool(ts.monotone_rho >= MONOTONE and ts.excess > 0),
        f"Spearman {ts.monotone_rho:.2f}; best teacher block per student block {ts.best_teacher_block}; "
        f"proportional-pair CKA {ts.path_cka:.3f} vs matrix mean {ts['mean']:.3f} (excess {ts.excess:+.3f}); "
        f"95% permutation-null quantile {null_q95:.3f}")]
    for name, row in diagonal.iterrows():
        out.append((f"(i) with {name}: the closest teacher layer rises with student depth and the proportional "
                    "pairs beat the grid mean", bool(row["holds"]),
                    f"Spearman {row['monotone_rho']:.2f}; closest teacher block per student block "
                    f"{row['best teacher layer per student layer']}; proportional pairs {row['proportional pairs']:.4g} "
                    f"vs grid mean {row['grid mean']:.4g} (excess {row['excess']:+.4g}, closer-oriented)"))
    for label, key in (("(ii-a) Fig. 4: student self-similarity with and without alignment (trained)",
                        "fig4: student x student vs aligned x aligned"),
                       ("(ii-b) Fig. 5: teacher x student with and without alignment (teacher mapped, dual)",
                        "fig5: teacher x student vs mapped(dual) x student"),
                       ("(ii-c) Fig. 5: teacher x student with and without alignment (teacher mapped, paper)",
                        "fig5: teacher x student vs mapped(paper) x student"),
                       ("(ii-d) Fig. 5: teacher x student with and without alignment (trained student)",
                        "fig5: teacher x student vs teacher x aligned")):
        row = k.loc[key]
        out.append((f"{label}: patterns 'very similar' (r >= {HIGH_R} and max |diff| <= {SMALL_DIFF})",
                    bool(row.r >= HIGH_R and row.max_abs_diff <= SMALL_DIFF),
                    f"r = {row.r:.3f}, max |diff| = {row.max_abs_diff:.3f}, mean |diff| = {row.mean_abs_diff:.3f}"))
    z = c.loc["fig5a teacher x student (standardized)"]
    out.append(("same as (i) with every feature standardized (each dimension weighs the same)", None,
                f"Spearman {z.monotone_rho:.2f}; best teacher block per student block {z.best_teacher_block}; "
                f"proportional-pair CKA {z.path_cka:.3f} vs matrix mean {z['mean']:.3f}"))
    out.append(("how far training moved the student: CKA(layer before, same layer after)", None,
                "per student block " + ", ".join(f"{v:.3f}" for v in shift)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fast", action="store_true", help="tiny random pair and small sizes (smoke test)")
    p.add_argument("--teacher", default="smollm2-135m")
    p.add_argument("--student", default="stdlib-student")
    p.add_argument("--n-prompts", type=int, default=None, help="HumanEval prompts (default 32; fast 4)")
    p.add_argument("--max-len", type=int, default=None, help="tokens per prompt (default 128; fast 32)")
    p.add_argument("--steps", type=int, default=None, help="alignment steps per stage (default 6; fast 2)")
    p.add_argument("--lr", type=float, default=None, help="alignment learning rate (default 1e-3; fast 1e-2)")
    p.add_argument("--align-sequences", type=int, default=None, help="alignment sequences (default 32; fast 12)")
    p.add_argument("--align-seq-len", type=int, default=None, help="alignment sequence length (default 64; fast 32)")
    p.add_argument("--align-batch", type=int, default=None, help="alignment batch size (default 4; fast 4)")
    p.add_argument("--permutations", type=int, default=None, help="permutation-null draws (default 5; fast 3)")
    p.add_argument("--no-stitching", dest="stitching", action="store_false",
                   help="leave model stitching out of the every-measure test (a student forward per cell)")
    p.add_argument("--ridge", type=float, default=0.01, help="ridge of the stitching maps' fit (scale-free)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    sizes = {"n_prompts": (32, 4), "max_len": (128, 32), "steps": (6, 2), "lr": (1e-3, 1e-2),
             "align_sequences": (32, 12), "align_seq_len": (64, 32), "align_batch": (4, 4), "permutations": (5, 3)}
    for key, (full, fast) in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, fast if args.fast else full)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    t0, timings = time.perf_counter(), {}
    lap = lambda name, since: timings.__setitem__(name, round(time.perf_counter() - since, 1)) or time.perf_counter()  # noqa: E731

    pair = load_pair("tiny", "tiny") if args.fast else load_pair(args.teacher, args.student)
    teacher, student = pair.teacher, pair.student
    assert not teacher.training and not student.training, "analyses run in eval mode"
    t = lap("load", t0)
    batch = tokenize(teacher.tokenizer, humaneval_prompts(args.n_prompts), max_len=args.max_len)
    T, S = (accumulated_resid(m, batch, drop_first=True) for m in (teacher, student))
    t = lap("capture", t)

    maps = {kind: TransferMap(SemanticBasis.from_model(teacher), SemanticBasis.from_model(student), kind=kind)
            for kind in ("dual", "paper")}
    mapped = {kind: [m(h) for h in T] for kind, m in maps.items()}
    t = lap("transfer maps", t)

    work = Path(tempfile.mkdtemp(prefix="fig45-"))
    try:
        aligned, result = align_student(args, pair, work)
        A = accumulated_resid(aligned, batch, drop_first=True)
        align_info = {"steps": result.final["step"], "elapsed_s": round(result.final["elapsed_s"], 1),
                      "stages": [{k: round(v, 4) if isinstance(v, float) else v for k, v in s.items()
                                  if k in ("stage", "label", "loss", "relation", "kl")}
                                 for s in result.final["stages"]]}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    t = lap("alignment run", t)

    cka = lambda xs, ys=None: cka_matrix(xs, ys, debiased=True).numpy()  # noqa: E731
    M = {"fig4a student x student": cka(S),
         "fig4b student x aligned": cka(S, A),
         "fig4b aligned x aligned": cka(A),
         "fig5a teacher x student": cka(T, S),
         "fig5b mapped(dual) x student": cka(mapped["dual"], S),
         "fig5b mapped(paper) x student": cka(mapped["paper"], S),
         "fig5b teacher x aligned": cka(T, A)}
    M["fig5a teacher x student (standardized)"] = cka(standardized(T), standardized(S))
    outliers = pd.DataFrame({"model": ["teacher"] * len(T) + ["student"] * len(S),
                             "layer": residual_labels(teacher.cfg.n_layers) + residual_labels(student.cfg.n_layers),
                             "top_dimension_share": top_dimension_share(T) + top_dimension_share(S)})
    null = cka_permutation_null(T, S, debiased=True,
                                n_permutations=args.permutations, seed=args.seed)
    null_q95 = float(null.quantile(0.95)[1:, 1:].max())
    t = lap("CKA", t)
    comparison = every_measure(T, S, batch, teacher, student, args)
    t = lap("every measure", t)

    t_labels, s_labels = residual_labels(teacher.cfg.n_layers), residual_labels(student.cfg.n_layers)
    cells = proportional_cells(teacher.cfg.n_layers, student.cfg.n_layers)
    cross = pd.DataFrame([cross_summary(name, M[name], cells) for name in M
                          if name.startswith("fig5")])
    selfs = pd.DataFrame([self_summary(name, M[name]) for name in ("fig4a student x student", "fig4b aligned x aligned")])
    comparisons = pd.DataFrame([
        compare("fig4: student x student vs aligned x aligned", M["fig4a student x student"], M["fig4b aligned x aligned"]),
        compare("fig5: teacher x student vs mapped(dual) x student", M["fig5a teacher x student"],
                M["fig5b mapped(dual) x student"]),
        compare("fig5: teacher x student vs mapped(paper) x student", M["fig5a teacher x student"],
                M["fig5b mapped(paper) x student"]),
        compare("fig5: teacher x student vs teacher x aligned", M["fig5a teacher x student"], M["fig5b teacher x aligned"])])
    shift = np.diag(M["fig4b student x aligned"])[1:].tolist()
    claims = verdicts(cross, comparisons, null_q95, shift, comparison.diagonal)

    # ---------------------------------------------------------------------------------------------- outputs
    long = []
    for name, m in M.items():
        rows = s_labels if name.startswith("fig4") else t_labels
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                long.append({"matrix": name, "row": rows[i], "col": s_labels[j], "cka": m[i, j]})
    pd.DataFrame(long).to_csv(out / "fig45_cka.csv", index=False)

    names = (describe(teacher)["model"], describe(student)["model"])
    report = Report(f"Figs. 4-5: CKA without and with alignment ({names[0]} -> {names[1]})",
                    subtitle=f"debiased linear CKA on {batch.n_tokens} tokens of {args.n_prompts} HumanEval prompts "
                             "(document-start token dropped)")
    report.add_markdown(__doc__.split("\n\n")[1] + "\n\n" + __doc__.split("\n\n")[2])
    titles = {"fig4a student x student": ("student layer", "student layer"),
              "fig4b student x aligned": ("aligned-student layer", "student layer"),
              "fig4b aligned x aligned": ("aligned-student layer", "aligned-student layer")}
    for name, m in M.items():
        x_title, y_title = titles.get(name, ("student layer" if "aligned" not in name else "aligned-student layer",
                                             "teacher layer" if "mapped" not in name else "mapped teacher layer"))
        rows = s_labels if name.startswith("fig4") else t_labels
        pairs = None if name.startswith("fig4") else [(r, c) for r, c in cells]
        report.add_figure(cka_heatmap(torch.tensor(m), s_labels, rows, title=name, pairs=pairs, x_title=x_title,
                                      y_title=y_title), name=name.split()[0] + "-" + str(len(report.blocks)),
                          caption="crosses: the paper's depth-proportional pairs" if pairs else "")
    report.add_markdown("**Claim (i) under every measure** (each against its null):\n\n"
                        + "\n".join(f"- {line}" for line in comparison.verdict))
    report.add_figure(measure_heatmaps(comparison.readings, s_labels, t_labels, pairs=make_pairing("proportional",
                                                                                         teacher.cfg.n_layers,
                                                                                         student.cfg.n_layers,
                                                                                         interpolate=False),
                                       pairs_name="depth-proportional pairs",
                                       title="Fig. 5a under every measure: closeness rank"), name="measures",
                      caption="Each measure's grid as closeness ranks (grey dots: no closer than its null; magenta "
                              "rings: the closest teacher layer per student layer; red crosses: the paper's pairs)")
    report.add_table(comparison.diagonal.round(4).reset_index(), caption="The diagonal claim under every measure")
    report.add_table(cross.round(4), caption="Cross matrices: mean, CKA on the proportional pairs, excess, best "
                                             "teacher block per student block, Spearman")
    report.add_table(selfs.round(4), caption="Self matrices: adjacent layers vs layers two or more apart")
    report.add_table(comparisons.round(4), caption="Without vs with alignment")
    report.add_table(outliers.round(4), caption="Share of the token variance in the largest single feature, per "
                                                "layer (linear CKA weighs features by variance)")
    report.add_markdown("\n".join(f"- **{label(ok)}** {text}: {nums}"
                                  for text, ok, nums in claims))
    report.add_provenance(("teacher", teacher), ("student", student), seed=args.seed,
                          extra={"alignment": json.dumps(align_info), "timings_s": json.dumps(timings)})
    report.write(out / "fig45_cka.html")

    timings["total"] = round(time.perf_counter() - t0, 1)
    settings = {"mode": "fast (tiny random pair)" if args.fast else "full (embedded pair)",
                "teacher": names[0], "student": names[1],
                "prompts": f"HumanEval/0..{args.n_prompts - 1}, max {args.max_len} tokens, {batch.n_tokens} tokens",
                "estimator": "debiased linear CKA (unbiased HSIC), document-start token dropped",
                "alignment": f"frontier, relation + kl, dual map, proportional pairing, full layers, {args.steps} "
                             f"steps/stage, lr {args.lr}, {args.align_sequences} x {args.align_seq_len} code-transfer "
                             f"tokens, batch {args.align_batch}, seed {args.seed}",
                "permutation null": f"{args.permutations} token shuffles of the student side",
                "every measure": ", ".join(r.name for r in comparison.readings)
                                 + (f" (stitching ridge {args.ridge})" if args.stitching else ""),
                "torch threads": torch.get_num_threads(), "timings_s": timings}
    lines = ["# Figs. 4-5: CKA without and with alignment", "",
             f"Produced by `python analysis/fig45_cka.py{' --fast' if args.fast else ''}`; figures in "
             "`fig45_cka.html`, every matrix entry in `fig45_cka.csv`.", "",
             "## Cross matrices (teacher or mapped teacher x student)", "", cross.round(4).to_markdown(index=False), "",
             "## Claim (i) under every measure", "", comparison.diagonal.round(4).to_markdown(), "",
             *[f"- {line}" for line in comparison.verdict], "",
             "## Self matrices", "", selfs.round(4).to_markdown(index=False), "",
             "## Without vs with alignment", "", comparisons.round(4).to_markdown(index=False), "",
             "## Variance held by the largest single feature (why linear CKA can be dominated by one dimension)", "",
             "Teacher: " + ", ".join(f"{r.layer}: {r.top_dimension_share:.2f}" for r in outliers.itertuples()
                                     if r.model == "teacher"), "",
             "Student: " + ", ".join(f"{r.layer}: {r.top_dimension_share:.2f}" for r in outliers.itertuples()
                                     if r.model == "student"), "",
             "## Alignment run", "", "```json", json.dumps(align_info, indent=1), "```", "",
             "## The paper's claims", ""]
    lines += [f"- **{label(ok)}** {text}: {nums}" for text, ok, nums in claims]
    lines += ["", "## Settings", ""] + [f"- {k}: {v}" for k, v in settings.items()]
    (out / "fig45_cka.md").write_text("\n".join(lines) + "\n")
    summary = {"settings": settings, "cross": cross.to_dict("records"),
               "measures": comparison.diagonal.reset_index().to_dict("records"),
               "measure_agreement": comparison.agreement.to_dict(), "measure_verdict": comparison.verdict, "top_dimension_share": outliers.to_dict("records"), "self": selfs.to_dict("records"),
               "comparisons": comparisons.to_dict("records"), "student_shift": shift, "null_q95": null_q95,
               "alignment": align_info, "claims": [{"claim": c, "holds": ok, "numbers": n} for c, ok, n in claims]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))

    print(cross.round(3).to_string(index=False))
    print(comparisons.round(3).to_string(index=False))
    for text, ok, nums in claims:
        print(f"[{label(ok)}] {text}\n    {nums}")
    print(f"wrote {out}/fig45_cka.{{html,md,csv}} and summary.json in {timings['total']} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, prog=Path(__file__).name))
