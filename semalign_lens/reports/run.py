"""The page of one training run, drawn from the records the trainer returns (`training.AlignResult`).

The trainer writes records only (metrics, diagnostics, CKA maps); this module turns them into figures and
`report.html`, so training never imports a page and a page can be drawn again from a run directory
(`AlignResult.from_run_dir`).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import torch

from ..core.errors import writing
from ..training.diagnostics import PROJECTION_METRICS
from ..training.loop import AlignResult
from .page import Report
from .plots import cka_heatmap


def integer_steps(fig, n_steps: int):
    """Whole-number step ticks: plotly's automatic ticks put 0.5 steps on a short run's axis."""
    fig.update_xaxes(tickformat="d", tick0=0, dtick=max(1, round(n_steps / 10)))
    return fig


def smooth(values, window: int):
    """Trailing mean over `window` points (the first points average what exists): what a reader's eye does."""
    return pd.Series(values, dtype=float).rolling(window, min_periods=1).mean().tolist()


def loss_figure(records: list[dict], terms: list[str]):
    """Loss per term (and the weighted total, where there is more than one term) against the step: each raw
    curve faint, its trailing mean over ~5 % of the run (at least 3 steps once a run has 10) drawn over it;
    stage boundaries marked; whole-number steps."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    train = [r for r in records if r.get("kind") == "train"]
    steps = [r["step"] for r in train]
    window = max(3, len(train) // 20) if len(train) >= 10 else 1
    present = [t for t in terms if any(t in r for r in train)]
    shown = (["loss"] if len(present) != 1 else []) + present  # one term: the total is that term
    fig = go.Figure()
    for i, term in enumerate(t for t in shown if any(t in r for r in train)):
        colour = qualitative.Plotly[i % len(qualitative.Plotly)]
        values = [r.get(term) for r in train]
        fig.add_trace(go.Scatter(x=steps, y=values, mode="lines", line={"color": colour, "width": 1}, opacity=0.3,
                                 name=f"{term} (per step)", legendgroup=term, showlegend=False))
        fig.add_trace(go.Scatter(x=steps, y=smooth(values, window), mode="lines", line={"color": colour},
                                 name=term, legendgroup=term))
    for r in records:
        if r.get("kind") == "stage" and r.get("when") == "start" and r["step"] > 0:
            fig.add_vline(x=r["step"], line_dash="dot", line_color="grey")
    smoothing = f"bold: trailing mean of {window} steps" if window > 1 else "each step"
    total = "weighted total = loss; " if "loss" in shown else ""
    fig.update_layout(title=f"Training loss per term ({total}{smoothing})",
                      xaxis_title="step", yaxis_title="loss", template="plotly_white")
    return integer_steps(fig, max(steps, default=1))


# Panel titles of `projection_figure`: short, in words (the definitions above go in the table beside it).
PROJECTION_TITLES = {
    "cos_state": "cos(state, mapped target)",
    "cos_contribution": "cos(contribution, target's)",
    "relation_cka": "relation CKA (token-token)",
    "span_share": "energy in the targets' span",
    "top1_teacher": "lens top-1 matches the teacher's",
    "top1_target": "lens top-1 matches the target's",
}


def projection_figure(records: list[dict]):
    """Projection diagnostics per paired student layer over the run, one panel per metric (titled in words,
    `PROJECTION_TITLES`; `PROJECTION_METRICS` defines each)."""
    import plotly.express as px

    rows = [{"step": r["step"], "layer": f"student L{r['student_layer']}", "metric": m, "value": r[m]}
            for r in records if r.get("kind") == "diag" for m in PROJECTION_METRICS if m in r]
    frame = pd.DataFrame(rows, columns=["step", "layer", "metric", "value"])
    fig = px.line(frame, x="step", y="value", color="layer", facet_col="metric", facet_col_wrap=3, markers=True,
                  title="Projection diagnostics on the held-out batch")
    fig.for_each_annotation(lambda a: a.update(text=PROJECTION_TITLES.get(a.text.split("=", 1)[-1],
                                                                          a.text.split("=", 1)[-1])))
    fig.update_yaxes(matches=None, showticklabels=True, title_text="")
    fig.update_layout(template="plotly_white")
    return integer_steps(fig, int(frame["step"].max()) if len(frame) else 1)


def heldout_figure(runs: dict[str, list[dict]]):
    """The held-out CE (the diagnostic batch, `kind == "heldout"` records) against the step, one line per
    method on one axis: where the methods part, and when."""
    import plotly.graph_objects as go

    fig = go.Figure()
    last = 1
    for method, records in runs.items():
        points = sorted({r["step"]: r["ce"] for r in records if r.get("kind") == "heldout"}.items())
        if points:
            fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], name=method,
                                     mode="lines+markers"))
            last = max(last, points[-1][0])
    fig.update_layout(title="Held-out cross-entropy against the training step", template="plotly_white",
                      xaxis_title="step", yaxis_title="cross-entropy (nats/token), lower is better", height=380)
    return integer_steps(fig, last)


def write_figure(fig, path: Path) -> None:
    """HTML next to a shared plotly.min.js (one copy per figure folder, offline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs="directory", full_html=True)


def run_figures(result: AlignResult) -> dict:
    """A run's figures by name, with its `figures` setting (else none): `loss_curves`, `projections` and the
    CKA map at every stage's start and end (`cka_stage{i}_{start,end}`)."""
    config = result.config
    if not config.get("figures", True):
        return {}
    figures = {"loss_curves": loss_figure(result.records, list(config["objective"]["terms"])),
               "projections": projection_figure(result.records)}
    for name, cka in result.cka.items():
        figures[name] = cka_heatmap(torch.tensor(cka["matrix"]), cka["student_labels"], cka["teacher_labels"],
                                    title=cka.get("title"), pairs=[tuple(p) for p in cka.get("pairs", [])])
    return figures


def draw_run(result: AlignResult) -> Path | None:
    """Draw a finished run's figures (`figures/*.html`, with the run's `figures` setting) and its page
    (`report.html`, with `report`), from the records the trainer returned; returns the page's path (None
    without one) and sets `result.report_path`. Run it on the main process only."""
    config, run_dir = result.config, result.run_dir
    figures = run_figures(result)
    for name, fig in figures.items():
        with writing(run_dir / "figures" / f"{name}.html"):
            write_figure(fig, run_dir / "figures" / f"{name}.html")
    result.report_path = run_page(result, figures).write(run_dir / "report.html") if config.get("report", True) \
        else None
    return result.report_path


def run_page(result: AlignResult, figures: dict) -> Report:
    """The run's page: summary, pairing, per-stage losses, loss curves, projections, CKA heatmaps, provenance."""
    config, final, provenance, run_dir = result.config, result.final, result.provenance, result.run_dir
    terms = config["objective"]["terms"]
    sched = config["schedule"]
    stages = [r for r in result.records if r.get("kind") == "stage" and r.get("when") == "end"]
    rep = Report(f"SemAlign run: {provenance.get('teacher', {}).get('source', 'teacher')} → "
                 f"{provenance.get('student', {}).get('source', 'student')}",
                 subtitle=f"run directory `{run_dir}`")
    rep.add_heading("Summary")
    rep.add_markdown(
        f"Objective: {', '.join(f'**{k}** x {v:g}' for k, v in terms.items())}. Schedule: **{sched['mode']}**, "
        f"trainable **{sched['trainable']}** ({sched['adapter']}), {final['step']} steps in {len(stages)} stage(s), "
        f"global batch {config['data']['batch_size']} x {config['data']['seq_len']} tokens, "
        f"{provenance.get('processes', 1)} process(es). Transfer map: `{provenance.get('transfer', '')}`. "
        f"Targets: {config['targets']['mode']}.")
    rep.add_table(pd.DataFrame(result.pairing), caption="Layer pairing (0-based blocks)")
    if final.get("stages"):
        rep.add_table(pd.DataFrame(final["stages"]).drop(columns=["kind", "when"], errors="ignore"),
                      caption="Loss terms at the end of each stage (global-batch means)")
    rep.add_heading("Training curves")
    for name, caption in (("loss_curves", "Loss per term against the step; dotted lines mark stage starts."),
                          ("projections", "Projection diagnostics per paired layer on the held-out batch "
                                          "(see semalign_lens.training.diagnostics).")):
        if name in figures:
            rep.add_figure(figures[name], caption=caption, name=name)
    if any(r.get("kind") == "heldout" for r in result.records):
        rep.add_figure(heldout_figure({"this run": result.records}), caption="Next-token cross-entropy of the student "
                       "on the held-out diagnostic batch at every diagnosis.", name="heldout-per-step")
    if final.get("diagnostics"):
        rep.add_table(pd.DataFrame(final["diagnostics"]).T.reset_index(names="layer"),
                      caption="Final projection diagnostics per paired student layer")
    rep.add_heading("Teacher x student CKA per stage")
    for stage in stages:
        for when in ("start", "end"):
            name = f"cka_stage{stage['stage']}_{when}"
            if name in figures:
                rep.add_figure(figures[name], caption=f"Linear CKA of every block's resid_post, stage {stage['stage']} "
                                                      f"({stage['label']}) {when}; x marks the pairing.",
                               name=f"cka-stage{stage['stage']}-{when}")
    shims = [(role, SimpleNamespace(provenance=provenance.get(role))) for role in ("teacher", "student")
             if provenance.get(role) is not None]
    rep.add_provenance(*shims, seed=config.get("seed"), extra={"processes": provenance.get("processes", 1)})
    rep.add_heading("Resolved config")
    rep.add_html("<pre>" + html.escape(json.dumps(config, indent=2)) + "</pre>")
    return rep
