"""The demo's page, drawn from what the pipeline computed (`DemoData`): the results and their verdict, the
models, the layer pairing (`render_pairing`'s sections one level down), every method's training records and
the provenance, in one self-contained `report.html`. Nothing here runs a model: `semalign_lens.demo` computes,
this module writes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..lens.overview import norm_jumps, residual_norm_figure
from ..training.diagnostics import PROJECTION_METRICS, cka_change, lens_agreement_change
from ..training.methods import get_method
from .page import Report
from .pairing import render_pairing
from .plots import signed_heatmap, versus_reference
from .run import heldout_figure, loss_figure, projection_figure

METRIC_NAMES = {"stdlib_test_ce": "held-out stdlib-test cross-entropy", "humaneval_ce": "HumanEval solution "
                "cross-entropy", "answer_logprob": "held-out fact log-prob",
                "stdlib_test_bpb": "held-out stdlib-test bits per byte"}


@dataclass
class DemoData:
    """Everything the demo's page shows, as the pipeline computed it.

    `profile`: the run's sizes (a dataclass: its fields are the page's settings table); `architecture`,
    `norms`, `n_prompts`: the overview; `inspection`: the `PairingInspection` whose pairing trained;
    `per_problem`: HumanEval per problem ({model row: frame}, the teacher's under "teacher"); `runs`: each
    method's `AlignResult`; `cross`: a pair of two tokenizers (scores per byte)."""

    profile: Any
    profile_name: str
    machine: dict
    timings: dict
    pair: Any
    architecture: pd.DataFrame
    norms: pd.DataFrame
    n_prompts: int
    inspection: Any
    task: Any
    metric: str
    cross: bool
    n_train: int
    results: pd.DataFrame
    per_problem: dict[str, pd.DataFrame]
    runs: dict[str, Any]


def pairing_story(pairing, cka: pd.DataFrame, attribution_task: str, transfer_task: str) -> str:
    """What the reader needs before the pairing sections: which pairs trained and who chose them, whether the
    attribution ranked the transfer task, and where each trained pair sits in the CKA map (its CKA against
    the best teacher layer for that student layer; "low" below half of it)."""
    pairs = ", ".join(f"student {p.student_layer} ← teacher {p.target_label()}" for p in pairing)
    text = [f"Training used {pairs}: the paper's proportional depth rule (strategy `proportional`); the CKA "
            "heatmap below marks the proportional pair of every student layer, these among them."]
    if attribution_task != transfer_task:
        text.append(f"The attribution rankers scored the teacher's layers on `{attribution_task}`, not on the "
                    f"{transfer_task} transfer task, so their ranking says which layers matter for "
                    f"`{attribution_task}`; the pairing was not chosen from it.")
    notes = []
    for p in pairing:
        column = cka[str(p.student_layer)] if str(p.student_layer) in cka else None
        here = column.get(str(p.nearest_teacher_layer)) if column is not None else None
        if here is None:
            continue
        best = column.drop("embed", errors="ignore").max()
        if here < 0.5 * best:
            notes.append(f"student {p.student_layer} ← teacher {p.nearest_teacher_layer} sits in a low-CKA band "
                         f"({here:.2f}, against {best:.2f} for teacher {column.drop('embed', errors='ignore').idxmax()})")
    if notes:
        text.append("CKA: " + "; ".join(notes) + ". A low-CKA pair asks the student layer for a representation "
                    "unlike its own; the layer loss then has more to move.")
    return " ".join(text)


def gap_figure(table: pd.DataFrame, metric: str):
    """Gap closed per method as bars, with the untrained student (0) and the teacher (1) as reference lines."""
    import plotly.graph_objects as go

    rows = table[table["model"].str.startswith("student + ")]
    gaps = rows[f"gap_closed ({metric})"].astype(float)
    fig = go.Figure(go.Bar(x=rows["model"].str.removeprefix("student + "), y=gaps,
                           text=[f"{100 * g:+.1f} %" if g == g else "no gap" for g in gaps], textposition="outside",
                           marker_color=["#2ca02c" if g > 0 else "#d62728" for g in gaps]))
    fig.add_hline(y=0, line_dash="dot", annotation_text="student before")
    fig.add_hline(y=1, line_dash="dash", annotation_text="teacher")
    low = min(-0.05, float(gaps.min()) * 1.3) if len(gaps) else -0.05
    fig.update_layout(template="plotly_white", height=320, yaxis_range=[low, 1.1], yaxis_tickformat=".0%",
                      title=f"Gap closed on {METRIC_NAMES.get(metric, metric)}", yaxis_title="gap closed")
    return fig


def verdict(table: pd.DataFrame, metric: str) -> str:
    """One sentence that answers "did it transfer?" from the results table (gap closed per method, 1 seed)."""
    gaps = {m.removeprefix("student + "): g for m, g in zip(table["model"], table[f"gap_closed ({metric})"],
                                                             strict=True) if m.startswith("student + ")}
    listed = ", ".join(f"{m} {100 * g:+.1f} %" for m, g in gaps.items())
    name = METRIC_NAMES.get(metric, metric)
    closed = {m: g for m, g in gaps.items() if g > 0}
    if gaps and all(g != g for g in gaps.values()):  # NaN: the teacher is not better, there is no gap
        rows = dict(zip(table["model"], table[metric], strict=True))
        head = (f"There is no gap to close: the teacher ({rows.get('teacher', float('nan')):.4g}) is not better than "
                f"the untrained student ({rows.get('student (before)', float('nan')):.4g}) on {name}")
    elif not closed:
        head = f"No method closed any of the {name} gap at this budget ({listed})"
    else:
        best = max(closed, key=closed.get)
        head = f"{best} closed the most of the {name} gap at this budget ({listed})"
    return head + "; one seed, so no interval: see analysis/TRANSFER.md for the benchmark with seeds."


def write_demo_page(data: DemoData, path: Path) -> Path:
    """`report.html` of the demo at `path` (the sections above, in that order)."""
    report = Report(f"semalign demo: {data.architecture.index[0]} → {data.architecture.index[1]}",
                    subtitle=f"profile {data.profile_name}, seed {data.profile.seed}, "
                             f"{data.machine['resolved_precision']}")
    _results(report, data)
    _models(report, data)
    _pairing(report, data)
    _training(report, data)
    report.add_provenance(("teacher", data.pair.teacher), ("student", data.pair.student), seed=data.profile.seed,
                          extra={"precision": f"{data.machine['precision']} → {data.machine['resolved_precision']}",
                                 "timings_s": json.dumps(data.timings)})
    return report.write(path)


def _results(report: Report, data: DemoData) -> None:
    profile, metric, cross, results = data.profile, data.metric, data.cross, data.results
    report.add_heading("Results")
    report.add_markdown(f"**{verdict(results, metric)}**")
    report.add_markdown(
        f"Code transfer: {data.n_train} sequences of {profile.seq_len} tokens from the standard library's test files "
        f"(unseen by the student); {profile.stage_steps} steps per paired student layer "
        f"({', '.join(map(str, profile.student_layers))}), LoRA rank {profile.lora_rank}, lr {profile.lr:g}, "
        f"seed {profile.seed}. Headline metric: `{metric}` ({'bits per byte' if cross else 'cross-entropy'} on "
        f"{data.task.meta['heldout_tokens']:,} tokens of held-out stdlib test files, "
        f"{'bits/byte' if cross else 'nats/token'}, lower is better); `humaneval_ce` is HumanEval "
        "canonical-solution cross-entropy given the prompt (out of distribution); `*_bpb` are the same in bits per "
        "byte. Gap closed = (after − before) / (teacher − before). Every method trains the same LoRA parameters on "
        "the same data for the same steps; only the loss terms differ.")
    if cross:
        report.add_markdown(
            f"**Two tokenizers.** {data.pair.alignment.summary()}. The teacher reads its own tokenization of every "
            "training block; the layer term, the KL and the diagnostics use only the aligned positions, where both "
            "have read the same text (`semalign_lens/training/cross_pair.py`), and the transfer map is built on the "
            "intersection bases. `semalign-shared` = the relation term + KL on the shared tokens. The teacher's "
            "scores are on the same texts in its own tokens, so only its bits per byte compare with the student's.")
    report.add_markdown(
        f"How this relates to the benchmark: the demo trains one seed for "
        f"{profile.stage_steps * len(data.inspection.pairing)} steps of {profile.batch_size} x {profile.seq_len} "
        f"tokens at lr {profile.lr:g}, a pipeline run. "
        "`analysis/TRANSFER.md` trains the same student on the same kind of frontier LoRA schedule (64-token "
        "sequences, lr 2e-3) and on a train-all schedule, at four budgets with three seeds each, scores 16k "
        "held-out tokens, and states whether logit KD separates from SFT at all (on the frontier schedule it does "
        "not): read a demo number as one seed near the bottom of that table's frontier curve, not as a result.")
    report.add_figure(gap_figure(results, metric), caption="Gap closed on the headline metric, one seed: 0 is "
                      "the untrained student, 1 the teacher; below 0 the method made the student worse",
                      name="gap-closed")
    report.add_table(results, caption="Before, teacher, and after each method")
    unit = "bpb" if cross else "ce"  # each model reads HumanEval in its own tokens: a cross pair compares per byte
    unit_title = "bits/byte" if cross else "nats/token"
    teacher = data.per_problem["teacher"][unit]
    per_problem = pd.concat([f.assign(model=name, teacher=teacher) for name, f in data.per_problem.items()
                             if name != "teacher"], ignore_index=True)
    report.add_figure(versus_reference(per_problem, x="teacher", y=unit, color="model", hover="task_id",
                                       title="HumanEval, per problem: student against teacher",
                                       x_title=f"teacher {unit.upper()} ({unit_title})",
                                       y_title=f"student {unit.upper()} ({unit_title})"),
                      caption=f"Canonical-solution {'bits per byte' if cross else 'cross-entropy'} given the prompt, "
                              f"{per_problem['task_id'].nunique()} "
                              "problems; below the dotted line the student beats the teacher on that problem. "
                              "Where a method's points sit relative to the untrained student's shows which problems "
                              "it gained or lost on.", name="humaneval-per-problem")
    report.add_table(pd.DataFrame({"setting": list(asdict(profile)),
                                   "value": [str(v) for v in asdict(profile).values()]}),
                     caption="The profile: every size of this run")


def _models(report: Report, data: DemoData) -> None:
    report.add_heading("Models")
    report.add_table(data.architecture.reset_index(), caption="Architecture side by side")
    report.add_figure(residual_norm_figure(data.norms), caption=f"On {data.n_prompts} HumanEval prompts", name="norms")
    report.add_markdown(norm_jumps(data.norms, data.inspection.cka))


def _pairing(report: Report, data: DemoData) -> None:
    pairing = data.inspection.pairing
    report.add_heading("Layer pairing")
    report.add_markdown(pairing_story(pairing, data.inspection.cka, data.profile.attribution_task, "code"))
    report.add_table(pairing.summary_frame(), caption="Pairing used for training (0-based blocks; the `proportional` "
                                                 "strategy, the paper's depth rule)")
    report.extend(render_pairing(data.inspection, data.pair, Report("layer pairing"), level=3))


def _training(report: Report, data: DemoData) -> None:
    records_of = {method: result.records for method, result in data.runs.items()}
    if any(r.get("kind") == "heldout" for records in records_of.values() for r in records):
        report.add_heading("Training: every method")
        report.add_figure(heldout_figure(records_of),
                          caption="Next-token cross-entropy of the student on the trainer's held-out diagnostic batch, "
                                  "at every stage start and end, for every method on one axis (the same batch for "
                                  "all of them).", name="heldout-per-step")
    lens = {}  # method -> {student layer: (top1_teacher before, after)}
    for method, result in data.runs.items():
        records = records_of[method]
        lens[method] = lens_agreement_change(records)
        report.add_heading(f"Training: {method}")
        report.add_figure(loss_figure(records, list(get_method(method).terms)), name=f"loss-{method}")
        change = cka_change(result.cka)
        if change is not None:
            delta, t_labels, s_labels = change
            report.add_figure(signed_heatmap(delta.numpy(), s_labels, t_labels, x_title="student layer",
                                             y_title="teacher layer", value_title="Δ CKA",
                                             title=f"CKA after − before training ({method})"),
                              caption=f"Teacher × student linear CKA on the diagnostic batch after the last stage "
                                      f"minus before the first (largest change {float(delta.abs().max()):.3f}). The "
                                      "paper claims alignment leaves the CKA pattern unchanged: near-zero cells "
                                      "everywhere are that claim holding.", name=f"dcka-{method}")
        if any(r.get("kind") == "diag" for r in records):
            report.add_figure(projection_figure(records), name=f"proj-{method}")
            report.add_table(pd.DataFrame({"metric": list(PROJECTION_METRICS),
                                           "definition": list(PROJECTION_METRICS.values())}),
                             caption="The projection metrics (held-out batch, each paired student layer)")
    if any(lens.values()):
        report.add_heading("Logit-lens agreement of the paired layers")
        labels = {p.student_layer: p.target_label() for p in data.inspection.pairing}
        first = next(v for v in lens.values() if v)
        table = pd.DataFrame({"student layer": list(first), "teacher layer": [labels.get(k, "") for k in first],
                              "before training": [first[k][0] for k in first],
                              **{f"after {m}": [v.get(k, (None, None))[1] for k in first] for m, v in lens.items()}})
        report.add_table(table.round(3), caption="Share of held-out tokens on which the student's logit lens at the "
                                                 "paired layer names the teacher's top-1 token at its paired layer "
                                                 "(each read with its own head, final norm recomputed); higher = the "
                                                 "student's layer reads out more like the teacher's")
