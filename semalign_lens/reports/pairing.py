"""The layer-pairing page: why each student layer is supervised by the teacher layer it gets.

`pairing_report(teacher, student, task, out_path)` is what `semalign report pairing TEACHER STUDENT --task ...`
runs: it loads and checks the pair, inspects it (`lens.inspection.inspect_pairing`, which computes everything as
data) and draws one self-contained HTML file (`render_pairing`) with:

1. model cards of both models (depth, width, heads, vocabulary, norm, mode) and the task (pairs, examples,
   how much the corruption moves the metric);
2. teacher layer attribution: one bar chart per ranker with bootstrap CIs, the top layers per method, and the
   Kendall-tau agreement table between methods;
3. teacher × student linear CKA (embeddings + every block output, on the task's clean prompts with their answers)
   as a heatmap with the chosen pairs drawn on it;
4. the pairing table of the chosen strategy (score, CKA, attribution rank and the reason per pair) and a
   side-by-side comparison of all strategies;
5. semantic-basis fidelity on the paired layers (round trips on each model's own basis, transfer fidelity of
   teacher targets read by the student head);
6. timings and provenance (package versions, model sources, mode, dtype, weight hashes, seed).
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
                f"for CKA; strategy `{strategy}`")
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

    heading("Teacher × student CKA")
    estimator = "debiased (unbiased HSIC)" if s.debiased else "linear (biased)"
    report.add_markdown(f"Linear CKA, {estimator}, on {inspection.n_cka_tokens} tokens of {inspection.n_cka_prompts} "
                        f"clean prompts with their answers{' (document-start token dropped)' if s.drop_first else ''}. "
                        "Rows: teacher "
                        "embeddings and block outputs; columns: the student's. Red crosses: the chosen pairing "
                        f"(`{strategy}`); open markers: the other strategies, each in its own shape (hover names "
                        "the pair and its reason).")
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


def pairing_report(teacher, student, task: Any = "facts", out_path: str | Path = "pairing_report.html", *,
                   report: Report | None = None, level: int = 2, vocab: str = "shared", png: bool = False,
                   progress: bool = True, **settings) -> PairingInspection:
    """Inspect a pair and write its page to `out_path` (one self-contained HTML file); returns the inspection
    (the tables and pairings as data, timings, notes, `path`).

    teacher, student: loaded bridges or sources for `models.load.load_model` (zoo name, HF directory, .gguf, Hub
        name); they must share a vocabulary and a loading mode (`models.pair.ModelPair`), or, with
        `vocab="intersection"`, share enough token strings.
    task: a built-in task name ("facts", "humaneval"), a .json/.jsonl task file, or a `tasks.Task`.
    settings: `lens.inspection.InspectionSettings` by name (n_prompts, methods, strategy, cka_tokens, ...).
    report / level: append the sections to this `Report` instead (nothing written; `out_path` and `png` ignored).
    png: also write each figure as PNG next to the HTML when kaleido and a Chromium are present.
    """
    from ..data.tasks import BUILTIN_TASKS, load_task
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
    inspection = inspect_pairing(pair, task, chosen, progress=progress)
    inspection.timings = {"load models": loaded, **inspection.timings}
    first_note = len(report.notes) if report is not None else 0  # a caller's report may hold notes of its own
    page = render_pairing(inspection, pair, report, level)
    if report is None:
        inspection.path = Path(page.write(out_path, png=png))
    inspection.notes += [n for n in page.notes[first_note:] if n not in inspection.notes]
    inspection.timings["total"] = round(time.perf_counter() - start, 2)
    inspection.cpu_timings["total"] = round(sum(inspection.cpu_timings.values()), 2)
    return inspection
