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


def _gradcos_frame(records: list[dict]) -> pd.DataFrame:
    rows = [r for r in records if r.get("kind") == "gradcos"]
    return pd.DataFrame(rows, columns=["step", "term", "student_layer", "cos", "norm_ratio"])


def gradcos_figure(records: list[dict]):
    """Per layer term and paired student layer (`kind == "gradcos"` records, `training.gradcos`): the cosine
    between the term's gradient and the output KL's on the trainable parameters (left: fixed range [−1, 1], 0
    marked), and the ratio of their norms (right: log axis, 1 marked), against the step."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    frame = _gradcos_frame(records)
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1, subplot_titles=[
        "cos(∇ layer term, ∇ output KL)", "‖∇ layer term‖ / ‖∇ output KL‖"])
    for i, ((term, layer), g) in enumerate(frame.groupby(["term", "student_layer"], sort=True)):
        colour, name = qualitative.Plotly[i % len(qualitative.Plotly)], f"{term} · student L{int(layer)}"
        g = g.sort_values("step")
        for col, metric in ((1, "cos"), (2, "norm_ratio")):
            fig.add_trace(go.Scatter(x=g["step"], y=g[metric], mode="lines+markers", name=name, legendgroup=name,
                                     line={"color": colour}, showlegend=col == 1), row=1, col=col)
    fig.add_hline(y=0, line_dash="dot", line_color="grey", row=1, col=1)
    fig.add_hline(y=1, line_dash="dot", line_color="grey", row=1, col=2)
    fig.update_yaxes(range=[-1.05, 1.05], title_text="cosine", row=1, col=1)
    fig.update_yaxes(type="log", title_text="norm ratio", row=1, col=2)
    fig.update_xaxes(title_text="step")
    fig.update_layout(title="Gradient agreement of each layer term with the output KL", template="plotly_white",
                      height=420)
    return integer_steps(fig, int(frame["step"].max()) if len(frame) else 1)


def gradcos_table(records: list[dict]) -> pd.DataFrame:
    """One row per layer term and paired student layer: steps measured, mean cosine, the share of steps where the
    term opposes the output KL (cosine < 0), and the median norm ratio."""
    frame = _gradcos_frame(records)
    grouped = frame.groupby(["term", "student_layer"], sort=True)
    return pd.DataFrame({"steps": grouped.size(), "mean cos": grouped["cos"].mean(),
                         "share cos < 0": grouped["cos"].apply(lambda c: float((c < 0).mean())),
                         "median norm ratio": grouped["norm_ratio"].median()}).reset_index()


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


def cka_figure(cka: dict):
    """One of a run's CKA maps (`AlignResult.cka`), the pairing's cells marked."""
    return cka_heatmap(torch.tensor(cka["matrix"]), cka["student_labels"], cka["teacher_labels"],
                       title=cka.get("title"), pairs=[tuple(p) for p in cka.get("pairs", [])])


def run_figures(result: AlignResult) -> dict:
    """A run's figures by name, with its `figures` setting (else none): `loss_curves`, `projections`, `gradcos`
    (when the run measured it) and the CKA map at every stage's start and end (`cka_stage{i}_{start,end}`)."""
    config = result.config
    if not config.get("figures", True):
        return {}
    figures = {"loss_curves": loss_figure(result.records, list(config["objective"]["terms"])),
               "projections": projection_figure(result.records)}
    if any(r.get("kind") == "gradcos" for r in result.records):
        figures["gradcos"] = gradcos_figure(result.records)
    figures.update({name: cka_figure(cka) for name, cka in result.cka.items()})
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
    if any(r.get("kind") == "gradcos" for r in result.records):
        rep.add_heading("Gradient agreement with the output KL")
        rep.add_markdown(
            f"Every {config.get('gradcos_every')} steps, per paired layer: the cosine between each layer term's "
            "gradient and the output KL's on the trainable parameters, and the ratio of their norms (each term's "
            "share of the step's loss: weight, balance factor, 1/pairs). Positive: the term pushes where the KL "
            "does; negative: they compete and the step is a compromise; near 0 with a large ratio: the term spends "
            "the step on directions the output does not care about (semalign_lens.training.gradcos).")
        if "gradcos" in figures:
            rep.add_figure(figures["gradcos"], caption="Cosine (left) and norm ratio (right) per layer term and "
                                                       "paired student layer against the step.", name="gradcos")
        rep.add_table(gradcos_table(result.records), caption="Gradient agreement per layer term and paired layer")
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
