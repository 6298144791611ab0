"""What the trainer measures besides its losses, and the figures it writes into the run directory.

Per paired layer, on the held-out diagnostic batch (no grad):
- `cos_state` / `cos_contribution`: mean cosine between the student's state (residual change) and its mapped
  teacher target;
- `relation_cka`: 1 − the relation loss, per-sequence linear CKA of the two residual changes;
- `span_share` (our definition): the share of the student states' energy inside the principal subspace of
  the mapped targets, the smallest r directions holding 90 % of the targets' energy (r = `span_rank`).
  With more tokens than dimensions the targets span everything, so the *principal* span is what says
  whether the student writes where the teacher's semantics live;
- `top1_teacher`: logit-lens top-1 agreement of the student at its layer and the teacher at the paired
  teacher layer (the nearer one when the target interpolates two), each read with its own head, the final
  norm recomputed on each state (the "recompute" readout, `semantics.READOUTS`);
- `top1_target`: top-1 agreement of the student's lens on its state and on the mapped target.
And at the start and end of every stage, the teacher x student linear CKA of every block's resid_post.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float

from .objectives import relation_cka

SPAN_ENERGY = 0.9


@torch.no_grad()
def projection_metrics(state: Float[torch.Tensor, "b t d"], target: Float[torch.Tensor, "b t d"],
                       contribution: Float[torch.Tensor, "b t d"], target_contribution: Float[torch.Tensor, "b t d"],
                       mask: Bool[torch.Tensor, "b t"], lens, teacher_top1: torch.Tensor | None) -> dict[str, float]:
    hs, ts = state[mask].float(), target[mask].float()
    out = {"cos_state": float(F.cosine_similarity(hs, ts, dim=-1).mean()),
           "cos_contribution": float(F.cosine_similarity(contribution[mask].float(),
                                                         target_contribution[mask].float(), dim=-1).mean())}
    cka, valid = relation_cka(contribution.float(), target_contribution.float(), mask)
    out["relation_cka"] = float(cka[valid].mean()) if bool(valid.any()) else float("nan")
    _, sing, vh = torch.linalg.svd(ts.double(), full_matrices=False)
    energy = sing.pow(2).cumsum(0) / sing.pow(2).sum().clamp_min(1e-30)
    rank = int((energy < SPAN_ENERGY).sum()) + 1
    basis = vh[:rank].to(hs.dtype)
    out["span_share"] = float((hs @ basis.T).pow(2).sum() / hs.pow(2).sum().clamp_min(1e-30))
    out["span_rank"] = rank
    student_top1 = lens(hs).argmax(-1)
    out["top1_target"] = float((student_top1 == lens(ts).argmax(-1)).float().mean())
    if teacher_top1 is not None:
        out["top1_teacher"] = float((student_top1 == teacher_top1.to(student_top1.device)[mask]).float().mean())
    return out


def cka_grid(teacher_stack: torch.Tensor, student_stack: torch.Tensor) -> tuple[torch.Tensor, list[str], list[str]]:
    """Linear CKA [teacher points, student points] of two `activations.accumulated_resid`s of the same tokens,
    with their labels ("embed", then the blocks "0".."L-1")."""
    from ..lens.similarity import cka_matrix

    label = lambda stack: ["embed"] + [str(i) for i in range(len(stack) - 1)]  # noqa: E731
    return cka_matrix(teacher_stack, student_stack), label(teacher_stack), label(student_stack)


def cka_change(run_dir: Path) -> tuple[torch.Tensor, list[str], list[str]] | None:
    """(CKA after the last stage − CKA before the first, teacher labels, student labels) from the maps a run
    writes (`diagnostics/cka_stage{i}_{start,end}.json`), or None when it wrote none (`figures = false`).
    The paper claims alignment leaves the CKA pattern unchanged: this difference is that claim, measured."""
    folder = Path(run_dir) / "diagnostics"
    stage = lambda p: int(p.stem.split("_")[1].removeprefix("stage"))  # noqa: E731  (cka_stage12_end -> 12)
    starts = sorted(folder.glob("cka_stage*_start.json"), key=stage)
    ends = sorted(folder.glob("cka_stage*_end.json"), key=stage)
    if not starts or not ends:
        return None
    first, last = json.loads(starts[0].read_text()), json.loads(ends[-1].read_text())
    return (torch.tensor(last["matrix"]) - torch.tensor(first["matrix"]), first["teacher_labels"],
            first["student_labels"])


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


def lens_agreement_change(records: list[dict]) -> dict[int, tuple[float, float]]:
    """{paired student layer: (top1_teacher at the first diagnosis, at the last)}: how often the student's logit
    lens at that layer names the teacher's top-1 token at the paired teacher layer, before any training and
    after the last stage (records from a run's `metrics.jsonl`, in log order; {} without diagnostics)."""
    seen: dict[int, list[float]] = {}
    for r in records:
        if r.get("kind") == "diag" and "top1_teacher" in r:
            seen.setdefault(int(r["student_layer"]), []).append(float(r["top1_teacher"]))
    return {layer: (values[0], values[-1]) for layer, values in sorted(seen.items())}


def write_figure(fig, path: Path) -> None:
    """HTML next to a shared plotly.min.js (one copy per figure folder, offline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs="directory", full_html=True)


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def integer_steps(fig, n_steps: int):
    """Whole-number step ticks: plotly's automatic ticks put 0.5 steps on a short run's axis."""
    fig.update_xaxes(tickformat="d", tick0=0, dtick=max(1, round(n_steps / 10)))
    return fig


def smooth(values, window: int):
    """Trailing mean over `window` points (the first points average what exists): what a reader's eye does."""
    import pandas as pd

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


PROJECTION_METRICS = {
    "cos_state": "cosine of the student state with the mapped teacher target",
    "cos_contribution": "cosine of the layer's residual contribution with the target's",
    "relation_cka": "CKA of the token-token relations of the layer's contribution and the target's, per sequence",
    "span_share": "share of the student state's energy inside the principal span of the target states",
    "top1_teacher": "logit-lens top-1 agreement of the student state with the teacher's own layer (final norm "
                    "recomputed)",
    "top1_target": "logit-lens top-1 agreement of the student state with the mapped target (final norm recomputed)",
}


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
    import pandas as pd
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


def _figure(run_dir: Path, name: str):
    import plotly.io as pio

    path = run_dir / "figures" / f"{name}.json"
    return pio.from_json(path.read_text()) if path.exists() else None


def write_report(run_dir: Path, config: dict, final: dict, stages, pairs, models: dict, provenance: dict) -> Path:
    """`report.html`: summary, pairing, per-stage losses, loss curves, projections, CKA heatmaps, provenance."""
    import html
    from types import SimpleNamespace

    import pandas as pd

    from ..reports.page import Report

    terms = config["objective"]["terms"]
    sched = config["schedule"]
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
    rep.add_table(pd.DataFrame([p.record() for p in pairs]), caption="Layer pairing (0-based blocks)")
    if final.get("stages"):
        rep.add_table(pd.DataFrame(final["stages"]).drop(columns=["kind", "when"], errors="ignore"),
                      caption="Loss terms at the end of each stage (global-batch means)")
    rep.add_heading("Training curves")
    for name, caption in (("loss_curves", "Loss per term against the step; dotted lines mark stage starts."),
                          ("projections", "Projection diagnostics per paired layer on the held-out batch "
                                          "(see semalign_lens.training.diagnostics).")):
        fig = _figure(run_dir, name)
        if fig is not None:
            rep.add_figure(fig, caption=caption, name=name)
    records = read_metrics(run_dir / "metrics.jsonl")
    if any(r.get("kind") == "heldout" for r in records):
        rep.add_figure(heldout_figure({"this run": records}), caption="Next-token cross-entropy of the student on the "
                       "held-out diagnostic batch at every diagnosis.", name="heldout-per-step")
    if final.get("diagnostics"):
        rep.add_table(pd.DataFrame(final["diagnostics"]).T.reset_index(names="layer"),
                      caption="Final projection diagnostics per paired student layer")
    rep.add_heading("Teacher x student CKA per stage")
    for stage in stages:
        for when in ("start", "end"):
            fig = _figure(run_dir, f"cka_stage{stage.index}_{when}")
            if fig is not None:
                rep.add_figure(fig, caption=f"Linear CKA of every block's resid_post, stage {stage.index} "
                                            f"({stage.label}) {when}; x marks the pairing.",
                               name=f"cka-stage{stage.index}-{when}")
    shims = [(role, SimpleNamespace(provenance=prov)) for role, prov in models.items() if prov is not None]
    rep.add_provenance(*shims, seed=config.get("seed"), extra={"processes": provenance.get("processes", 1)})
    rep.add_heading("Resolved config")
    rep.add_html("<pre>" + html.escape(json.dumps(config, indent=2)) + "</pre>")
    return rep.write(run_dir / "report.html")
