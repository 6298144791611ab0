"""The layer-pairing page: why each student layer is supervised by the teacher layer it gets.

`pairing_report(teacher, student, task, out_path)` is what `semalign report pairing TEACHER STUDENT --task ...`
runs: it loads and checks the pair, inspects it (`lens.inspection.inspect_pairing`, which computes everything as
data) and draws one self-contained HTML file (`render_pairing`) with:

1. model cards of both models (depth, width, heads, vocabulary, norm, mode) and the task (pairs, examples,
   how much the corruption moves the metric);
2. teacher layer attribution: one bar chart per ranker with bootstrap CIs, the top layers per method, and the
   Kendall-tau agreement table between methods;
3. teacher × student similarity under several measures side by side (CKA, debiased CKA, Procrustes, mutual kNN,
   and model stitching with `stitching=True`; embeddings + every block output, on the task's clean prompts with
   their answers), each against its null, with a short verdict on where they agree; the CKA heatmap with every
   strategy's pairs drawn on it;
4. the head-by-head attention-pattern similarity of the chosen pairs (which teacher head each student head
   resembles), and with `sublayers=True` the same measures for each block's attention write and MLP write;
5. the pairing table of the chosen strategy (score, CKA, attribution rank and the reason per pair) and a
   side-by-side comparison of all strategies;
6. semantic-basis fidelity on the paired layers (round trips on each model's own basis, transfer fidelity of
   teacher targets read by the student head);
7. timings and provenance (package versions, model sources, mode, dtype, weight hashes, seed).
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..core.checks import check_output_file, is_bridge, require_hooked
from ..core.errors import SemalignError
from ..lens.inspection import InspectionSettings, PairingInspection, inspect_pairing
from .page import Report, home_relative


def _as_model(source, role: str, **load_kwargs):
    if isinstance(source, (str, Path)):
        from ..models.load import load_model

        return load_model(source, **load_kwargs)
    require_hooked(source, role)
    if not is_bridge(source):
        raise SemalignError(f"the {role} must be a model source (zoo name, HF directory, .gguf, Hub name) or a "
                            f"loaded TransformerBridge, got {type(source).__name__}")
    return source


def _model_card(model) -> tuple[str, str] | None:
    """(file name, text) of a MODEL_CARD.md / README.md shipped beside the model's weights, if any."""
    path = getattr(getattr(model, "provenance", None), "path", None)
    for name in ("MODEL_CARD.md", "README.md"):
        if path and (Path(path) / name).is_file():
            return name, (Path(path) / name).read_text(encoding="utf-8", errors="replace")[:20000]
    return None


def _top_table(df: pd.DataFrame, k: int = 3) -> pd.DataFrame:
    rows = []
    for method, part in df.groupby("method", sort=False):
        best = part.sort_values("rank").head(k)
        rows.append({"method": method, "unit": best["unit"].iloc[0],
                     **{f"#{i + 1}": f"{int(r.layer)} ({r.score:.3g} [{r.ci_low:.3g}, {r.ci_high:.3g}], "
                                      f"p_top {r.p_top:.2f})" for i, r in enumerate(best.itertuples())}})
    return pd.DataFrame(rows)


def _strategy_table(pairings: dict[str, Any], n_student: int) -> pd.DataFrame:
    rows = []
    for s in range(n_student):
        row = {"student_layer": s}
        for name, pairing in pairings.items():
            pair = pairing.pair_for(s)
            row[name] = "—" if pair is None else pair.target_label()
        rows.append(row)
    return pd.DataFrame(rows)


def render_pairing(inspection: PairingInspection, pair, report: Report | None = None, level: int = 2) -> Report:
    """The page of an inspection: a new `Report`, or its sections appended to `report` (headings at `level`, no
    models table or provenance of its own: how `semalign demo` puts the pairing and the training in one page)."""
    from ..models.readout import READOUTS
    from .plots import agreement_heatmap, attribution_bars, cka_heatmap, layer_metric_bars, signed_heatmap

    s, full, batch = inspection.settings, inspection.task, inspection.pairs
    attribution, agreement, cka = inspection.attribution, inspection.agreement, inspection.cka
    pairing, pairings, fid, maps = inspection.pairing, inspection.pairings, inspection.fidelity, inspection.patching
    strategy, metric = s.strategy, s.metric
    t_name, s_name = inspection.models["teacher"]["model"], inspection.models["student"]["model"]
    n_s = pair.student.cfg.n_layers
    t0 = time.perf_counter()
    own = report is None
    subtitle = (f"task `{full.name}`, {len(batch)} prompt pairs for attribution, {inspection.n_cka_tokens} tokens "
                f"for the similarity measures; strategy `{strategy}`")
    if own:
        report = Report(f"Layer pairing: {t_name} → {s_name}", subtitle=subtitle)
    else:
        report.add_markdown(subtitle)

    def heading(text: str) -> None:
        report.add_heading(text, level)

    heading("Summary")
    pairs_text = ", ".join(f"student {p.student_layer} ← teacher {p.target_label()}" for p in pairing)
    firsts = attribution[attribution["rank"] == 1].set_index("method")["layer"]
    report.add_markdown(
        f"- **Chosen pairing** (`{strategy}`): {pairs_text}.\n"
        f"- **Top teacher layer per method**: "
        + ", ".join(f"{m} → {int(layer)}" for m, layer in firsts.items()) + ".\n"
        f"- Layers are 0-based block indices (layer b = output of block b); the paper numbers them b + 1.\n"
        f"- Scores are oriented so that higher = more important; CIs are 95% bootstrap intervals over prompts "
        f"({s.n_boot} resamples, seed {s.seed}).")
    for note in inspection.notes:
        report.add_note(note)

    if own:  # a caller's page (the demo) has its own models table
        heading("Models")
        cards = pd.DataFrame([dict(role=role, **card) for role, card in inspection.models.items()])
        report.add_table(cards, caption="Model cards")
        for role, model in (("teacher", pair.teacher), ("student", pair.student)):
            card = _model_card(model)
            if card:
                report.add_html(f"<details><summary>{role} model card ({html.escape(card[0])})</summary>"
                                f"<pre>{html.escape(card[1])}</pre></details>")

    heading("Task")
    gap = attribution["gap"].dropna() if "gap" in attribution else pd.Series(dtype=float)
    report.add_markdown(f"**{full.name}** — {full.description or 'user task'} (source: `{home_relative(str(full.source)) if full.source else 'memory'}`). "
                        f"{len(full)} pairs in the task; {len(batch)} used by the rankers (align=`{s.align}`, "
                        f"{batch.n_padded} padded, {len(batch.dropped)} dropped)."
                        + (f" Mean clean − corrupted {metric} on the teacher: {gap.iloc[0]:.3f}." if len(gap) else ""))
    examples = pd.DataFrame([{"clean": p.clean[-80:], "corrupted": p.corrupted[-80:], "answer": p.answer[:40],
                              "corrupted_answer": (p.corrupted_answer or "")[:40]} for p in batch.pairs[:6]])
    report.add_table(examples, caption="Example pairs (prompt tails); the answer is teacher-forced in both runs")

    heading("Layer attribution (teacher)")
    report.add_markdown("Methods: `grad_x_act` is the paper's (gradient × activation on the block write, signed); "
                        "patching is normalised by the clean − corrupted gap; ablations are in metric units; "
                        "`seeking` is Seeking's Σ|θ·∇θ| per block; `laten` is LaTen's log-prob increase, read "
                        "by the cached logit lens (the final residual's norm scale, TransformerLens's "
                        "`apply_ln_to_stack`; see `semalign_lens.lens.attribution`).")
    report.add_figure(attribution_bars(attribution, title=f"Teacher layer attribution ({t_name}, metric {metric})"),
                      caption="Score per teacher layer with 95% bootstrap CI; the top layer is outlined.",
                      name="attribution")
    report.add_table(_top_table(attribution), caption="Top 3 layers per method: score [95% CI], p_top = share of "
                                                      "bootstrap resamples in which the layer ranks first")
    heading("Method agreement")
    report.add_figure(agreement_heatmap(agreement), caption="Kendall tau between the methods' layer scores",
                      name="agreement")
    report.add_table(agreement.round(3).reset_index(names="method"), caption="Kendall tau")
    for name, frame in maps.items():
        heading("Where in the prompt" if name == "position" else "Which heads")
        axis = {"position": "position in the prompt (left padded)", "head": "attention head"}[name]
        report.add_figure(signed_heatmap(frame.to_numpy(), list(frame.columns), list(frame.index), x_title=axis,
                                         value_title="recovery",
                                         title=f"Denoising recovery per layer and {frame.columns.name} ({t_name})"),
                          caption=f"Normalised recovery of the {metric}: 0 = patching the clean activation into the "
                                  f"corrupted run restores nothing, 1 = the clean value; {frame.attrs['pairs']} pairs "
                                  f"of matching length ({frame.attrs['left_out']} left out). "
                                  + ("Block input (resid_pre) at one position." if name == "position" else
                                     "One head's output (hook_z) at every position."), name=f"patching_{name}")

    estimator = "debiased (unbiased HSIC)" if s.debiased else "linear (biased)"
    _similarity_sections(inspection, report, heading, t_name, s_name)

    heading("Teacher × student CKA")
    report.add_markdown(f"Linear CKA, {estimator}, on {inspection.n_cka_tokens} tokens of {inspection.n_cka_prompts} "
                        f"clean prompts with their answers{' (document-start token dropped)' if s.drop_first else ''}. "
                        "Rows: teacher "
                        "embeddings and block outputs; columns: the student's. Red crosses: the chosen pairing "
                        f"(`{strategy}`); open markers: the other strategies, each in its own shape (hover names "
                        "the pair and its reason). The `cka` strategy pairs by this map; read it with the other "
                        "measures above.")
    others = {f"{name} (not chosen)": other for name, other in pairings.items() if name != strategy}
    report.add_figure(cka_heatmap(torch.tensor(cka.to_numpy()), list(cka.columns), list(cka.index),
                                  title=f"CKA {t_name} × {s_name}", pairs=pairing, others=others,
                                  pairs_name=f"{strategy} (chosen)"),
                      caption=f"CKA (0..1) with the chosen pairs ({strategy}) and the other strategies' pairs",
                      name="cka")

    heading("Pairing")
    report.add_table(pairing.summary_frame(), caption=f"Chosen pairing (`{strategy}`), with the reason for each pair")
    report.add_table(_strategy_table(pairings, n_s), caption="Teacher target per student layer under each strategy "
                                                             "(— = not paired)")

    heading("Semantic-basis fidelity")
    report.add_markdown("Round trip: cos(h, recompose(decompose(h))) and top-1 agreement of the logit-lens "
                        "readouts, on each model's own basis, for the paired layers. Transfer: the teacher "
                        "target mapped to the student space and read by the student's head, against the "
                        "teacher's own readout (kind `student` = the student's actual state, the baseline). "
                        f"Readout: {READOUTS['recompute']}.")
    left_out = fid.attrs.get("left_out", [])
    if left_out:
        report.add_note(f"{len(left_out)} token id(s) left out of both semantic bases (first: {left_out[0]}): "
                        "their LM-head row is all zero in a model (HF keeps a padding embedding at zero), so "
                        "they have no basis direction.")
    top1 = fid[fid["metric"] == "top1"]
    report.add_figure(layer_metric_bars(top1.assign(series=top1["side"] + " / " + top1["kind"].astype(str)),
                                        x="layer", y="value", color="series", y_range=(0, 1),
                                        x_title="layer (teacher layer for teacher round trip, else student)",
                                        y_title="top-1 agreement",
                                        title="Top-1 readout agreement (logit lens, final norm recomputed)"),
                      name="fidelity")
    wide = fid.pivot_table(index=["side", "layer", "kind"], columns="metric", values="value", sort=False)
    report.add_table(wide.reset_index(), caption="Fidelity per paired layer and basis variant")

    report.add_heading("Timings", level)
    timings = {**inspection.timings, "report assembly": round(time.perf_counter() - t0, 2)}
    report.add_table(pd.DataFrame({"stage": list(timings), "wall seconds": list(timings.values()),
                                   "CPU seconds": [inspection.cpu_timings.get(k, float("nan")) for k in timings]}),
                     caption=f"Per stage, {torch.get_num_threads()} torch threads; CPU seconds sum all threads")
    if own:
        report.add_provenance(("teacher", pair.teacher), ("student", pair.student), seed=s.seed,
                              extra={"task": full.name, "n_prompts": len(batch), "methods": ", ".join(s.methods),
                                     "metric": metric, "strategy": strategy,
                                     "attribution_method": s.attribution_method, "cka": estimator, "align": s.align})
    return report


MEASURE_TEXT = {
    "cka": "linear CKA (Kornblith et al. 2019), biased HSIC",
    "cka_debiased": "linear CKA with the unbiased HSIC₁ (Song et al. 2012)",
    "procrustes": "orthogonal Procrustes angle (Williams et al. 2021): the angle between the two clouds after the "
                  "best rotation, in radians",
    "procrustes_cv": "Procrustes angle with the rotation fitted on one half of the tokens, scored on the other",
    "mutual_knn": "mutual k-nearest neighbours (Huh et al. 2024): the share of each token's k neighbours the two "
                  "layers have in common",
    "cknna": "CKNNA (Huh et al. 2024): CKA restricted to mutual neighbours",
    "rsa": "RSA (Kriegeskorte et al. 2008): Spearman correlation of the dissimilarity matrices",
    "stitch": "model stitching (Bansal et al. 2021): the student's held-out CE increase when its state is replaced "
              "by the affinely mapped teacher state (a functional measure, from the models' outputs)",
}


def _similarity_sections(inspection: PairingInspection, report: Report, heading, t_name: str, s_name: str) -> None:
    """The measures side by side with the verdict, the sub-layer maps and the head view."""
    from ..lens.similarity import residual_labels
    from .plots import head_similarity_heatmaps, measure_heatmaps

    s, comparison = inspection.settings, inspection.comparison
    n_t, n_s = len(inspection.cka.index) - 1, len(inspection.cka.columns) - 1
    readings = comparison.readings
    heading("Teacher × student similarity: the measures side by side")
    report.add_markdown(
        "No single similarity measure settles which teacher layer a student layer resembles: CKA can be moved by a "
        "few points or one high-variance direction without any change in function (Davari et al. 2022), and "
        "measures disagree with each other (Ding et al. 2021). Each measure below is read against its own null "
        f"(token shuffles of the student's states, {s.permutations} of them; stitching: the mean-ablation penalty), "
        f"on the same {inspection.n_cka_tokens} tokens"
        + (f" (mutual kNN at a fixed n = {min(s.knn_tokens, inspection.n_cka_tokens)}, k = {s.knn_k})"
           if {"mutual_knn", "cknna", "rsa"} & set(inspection.measures) else "") + ":\n\n"
        + "\n".join(f"- `{r.name}`: {MEASURE_TEXT.get(r.name, r.name)}; {r.unit}, "
                     f"{'higher' if r.higher_is_closer else 'lower'} = closer." for r in readings))
    heading("Verdict")
    report.add_markdown("\n".join(f"- {line}" for line in comparison.verdict))
    report.add_figure(measure_heatmaps(readings, list(inspection.cka.columns), list(inspection.cka.index),
                                       pairs=inspection.pairing, pairs_name=f"{s.strategy} (chosen)",
                                       title=f"{t_name} × {s_name}: each measure's closeness rank"),
                      caption="Colour: each cell's closeness rank within its own measure's grid (1 = the closest "
                              "cell; distances flipped), so that measures in different units share one scale; hover "
                              "for the value. Grey dots: no closer than the null. Magenta rings: each measure's closest "
                              "teacher layer per student layer. Red crosses: the chosen pairing.",
                      name="measures")
    report.add_table(comparison.best.reset_index(), caption="Closest teacher layer per student layer under each "
                                                            "measure (agree: all within one layer)")
    report.add_table(comparison.null.reset_index().round(3), caption="Each measure against its null: the share of "
                                                                     "block cells closer than the null, and at how "
                                                                     "many student layers the measure's pick is")
    report.add_table(comparison.agreement.round(3).reset_index(names="measure"),
                     caption="Spearman correlation between the measures over every block cell (closeness-oriented)")
    report.add_table(comparison.diagonal.round(3).reset_index(),
                     caption="The paper's diagonal claim under each measure: Spearman between student depth and the "
                             "closest teacher layer (monotone_rho), and how much closer the depth-proportional pairs "
                             "are than the grid's mean (excess, in the measure's units)")
    if inspection.stitching is not None:
        st = inspection.stitching
        report.add_note(f"Stitching: maps fitted on {st.n_fit_tokens} tokens of the task's prompts (ridge "
                        f"{st.ridge:g}), scored on {st.n_heldout_tokens} held-out tokens; the student's own CE there "
                        f"is {st.own_ce:.3f} nats/token, the mean-ablation null costs "
                        f"{float(st.mean_ablation[1:].min()):.2f}–{float(st.mean_ablation[1:].max()):.2f}.")

    if inspection.sublayers:
        heading("Sub-layers: the attention write and the MLP write of each block")
        report.add_markdown("The same measures between what each teacher block's attention (`hook_attn_out`) and "
                            "MLP (`hook_mlp_out`) write into the residual stream and what the student's write, on "
                            "the same tokens: a block can match its partner in one sub-layer and not the other. "
                            "Rows: teacher blocks; columns: student blocks.")
        for point, sub in inspection.sublayer_comparison.items():
            what = {"attn_out": "attention write", "mlp_out": "MLP write"}.get(point, point)
            report.add_markdown(f"**{what[0].upper() + what[1:]}** (`{point}`):\n\n" + "\n".join(f"- {line}" for line in sub.verdict))
            report.add_figure(measure_heatmaps(sub.readings, residual_labels(n_s, False),
                                               residual_labels(n_t, False), pairs=inspection.pairing,
                                               pairs_name=f"{s.strategy} (chosen)",
                                               title=f"{what}: {t_name} × {s_name}"),
                              caption=f"As above, for each block's {what}.", name=f"measures_{point}")
    if inspection.heads:
        heading("Heads of the paired layers")
        head_map = inspection.patching.get("head")
        report.add_markdown(
            "Which teacher head each student head resembles: 1 − the Jensen-Shannon divergence (bits) between the "
            "two heads' attention distributions, averaged over every query position after the first (Clark et al. "
            "2019 compare heads this way), for each pair of the chosen pairing. Two pattern-free references sit "
            "below the dashed line: `uniform` (every earlier token alike) and `first token` (the attention sink); a "
            "student head no closer to any teacher head than to these resembles a generic pattern, not a teacher "
            "head (margin ≤ 0 below). "
            + ("The head-resolved patching map above says which teacher heads matter for the task (recovery, "
               "below)." if head_map is not None else
               "Run with the head patching map (`patching=('head',)`, `--patching-maps head`) to see which teacher "
               "heads matter for the task."))
        report.add_figure(head_similarity_heatmaps(inspection.heads, title="Attention-pattern similarity of the "
                                                                          "paired layers' heads"),
                          caption=f"{inspection.heads[0].n_queries} query positions; fixed 0..1 colour scale. Red "
                                  "squares: each student head's most similar teacher head.", name="heads")
        best = pd.concat([h.best() for h in inspection.heads], ignore_index=True)
        if head_map is not None:
            best["teacher_head_recovery"] = [float(head_map.loc[t, h]) if t in head_map.index else float("nan")
                                             for t, h in zip(best["teacher_layer"], best["teacher_head"], strict=True)]
        report.add_table(best.round(3), caption="Per student head: the most similar teacher head of its paired "
                                                "layer, the closest reference, and the margin over it")


def pairing_report(teacher, student, task: Any = "facts", out_path: str | Path = "pairing_report.html", *,
                   report: Report | None = None, level: int = 2, vocab: str = "shared", png: bool = False,
                   progress: bool = True, **settings) -> PairingInspection:
    """Inspect a pair and write its page to `out_path` (one self-contained HTML file); returns the inspection
    (the tables and pairings as data, timings, notes, `path`).

    teacher, student: loaded bridges or sources for `models.load.load_model` (zoo name, HF directory, .gguf, Hub
        name); they must share a vocabulary and a loading mode (`models.pair.ModelPair`), or, with
        `vocab="intersection"`, share enough token strings.
    task: a built-in task name ("facts", "humaneval"), a .json/.jsonl task file, or a `tasks.Task`.
    settings: `lens.inspection.InspectionSettings` by name (n_prompts, methods, strategy, cka_tokens, measures,
        permutations, sublayers, heads, ...); `stitching=True` also computes the stitching map here (the
        evaluation floor) on the task's prompts (`lens.inspection.stitching_batches`) and adds it as a measure
        and the `stitch` strategy.
    report / level: append the sections to this `Report` instead (nothing written; `out_path` and `png` ignored).
    png: also write each figure as PNG next to the HTML when kaleido and a Chromium are present.
    """
    from ..data.tasks import BUILTIN_TASKS, load_task
    from ..lens.inspection import stitching_batches
    from ..models.pair import ModelPair, check_pair_sources

    # every check that needs no loaded model first, so a refused call loads nothing and writes nothing
    chosen = InspectionSettings.make(**settings)
    if report is None:
        check_output_file(out_path, "report path", (".html", ".htm"))
    if isinstance(task, (str, Path)) and str(task) not in BUILTIN_TASKS:
        load_task(task)  # a task file: exists, UTF-8, well-formed records (read again with the tokenizer)
    check_pair_sources(teacher, student, vocab)
    start = time.perf_counter()
    pair = ModelPair(_as_model(teacher, "teacher"), _as_model(student, "student"), vocab=vocab)
    loaded = round(time.perf_counter() - start, 2)
    stitching, stitch_times = None, {}
    if chosen.stitching:
        from ..evaluation.stitching import stitching_map

        if pair.alignment is not None:
            raise SemalignError("stitching maps a teacher state into the student at the same token, so it needs one "
                                "tokenizer; drop stitching for a two-tokenizer pair (vocab='intersection')")
        wall, cpu = time.perf_counter(), time.process_time()
        task = load_task(task, tokenizer=pair.teacher.tokenizer, seed=chosen.seed)
        fit, heldout = stitching_batches(pair.teacher.tokenizer, task, chosen)
        stitching = stitching_map(pair.teacher, pair.student, fit, heldout, ridge=chosen.stitching_ridge,
                                  batch_size=chosen.batch_size, progress=progress)
        stitch_times = ({"stitching map": round(time.perf_counter() - wall, 2)},
                        {"stitching map": round(time.process_time() - cpu, 2)})
    inspection = inspect_pairing(pair, task, chosen, stitching=stitching, progress=progress)
    inspection.timings = {"load models": loaded, **(stitch_times[0] if stitch_times else {}), **inspection.timings}
    if stitch_times:
        inspection.cpu_timings = {**stitch_times[1], **inspection.cpu_timings}
    first_note = len(report.notes) if report is not None else 0  # a caller's report may hold notes of its own
    page = render_pairing(inspection, pair, report, level)
    if report is None:
        inspection.path = Path(page.write(out_path, png=png))
    inspection.notes += [n for n in page.notes[first_note:] if n not in inspection.notes]
    inspection.timings["total"] = round(time.perf_counter() - start, 2)
    inspection.cpu_timings["total"] = round(sum(inspection.cpu_timings.values()), 2)
    return inspection
