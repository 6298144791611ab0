"""Plotly figure builders shared by reports, the trainer and the notebooks.

Rules: every builder returns a `go.Figure` and never calls `show()`; axes are labelled;
signed quantities are centred on 0 (symmetric axis or colour range, RdBu), bounded ones use fixed ranges
so that figures compare across runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from ..core.errors import SemalignError
from ..lens.similarity import axis_labels

if TYPE_CHECKING:
    import plotly.graph_objects as go

POSITIVE, NEGATIVE = "#2166ac", "#b2182b"  # RdBu ends: blue = supports the answer, red = opposes it
# Cell text only while it stays legible (values are in the hover beyond that); rows keep a readable height.
HEATMAP_TEXT_ROWS, HEATMAP_ROW_PX = 15, 18
HEATMAP_TEXT_COLS = 20  # a 1400 px page fits about 20 columns of two-decimal cell text


def _symmetric(values: np.ndarray, pad: float = 1.08) -> list[float] | None:
    """A y-range centred on 0 when the data are signed (None lets plotly choose for one-signed data)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0 or finite.min() >= 0:
        return None
    top = float(np.abs(finite).max()) * pad or 1.0
    return [-top, top]


def attribution_bars(df: pd.DataFrame, methods: Sequence[str] | None = None, *, title: str | None = None,
                     layer_title: str = "layer (block index)") -> go.Figure:
    """One bar chart per method (stacked rows, shared layer axis): score per layer with its 95% CI.

    `df` is a ranker table (`attribution.rank_layers`). Bars are blue where the layer supports the answer and
    red where it opposes it; rows with signed scores get a y-axis centred on 0. The top-ranked layer of each
    method is outlined.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    need = {"method", "layer", "score", "ci_low", "ci_high"}
    if not need <= set(df.columns):
        raise SemalignError(f"attribution table lacks columns {sorted(need - set(df.columns))}; pass the DataFrame "
                            "returned by semalign_lens.lens.attribution.rank_layers")
    methods = list(dict.fromkeys(df["method"])) if methods is None else list(methods)
    if not methods:
        raise SemalignError("no methods to plot; the attribution table is empty")
    units = {m: str(df.loc[df["method"] == m, "unit"].iloc[0]) if "unit" in df else "score" for m in methods}
    fig = make_subplots(rows=len(methods), cols=1, shared_xaxes=True, vertical_spacing=0.35 / len(methods),
                        subplot_titles=[f"{m} ({units[m]})" for m in methods])
    for row, method in enumerate(methods, start=1):
        part = df[df["method"] == method].sort_values("layer")
        if part.empty:
            raise SemalignError(f"method {method!r} is not in the table; present: {sorted(df['method'].unique())}")
        score = part["score"].to_numpy(dtype=float)
        top = int(part.loc[part["score"].idxmax(), "layer"])
        fig.add_trace(go.Bar(
            x=part["layer"], y=score, name=method, showlegend=False,
            marker=dict(color=[POSITIVE if s >= 0 else NEGATIVE for s in score],
                        line=dict(color=["black" if lay == top else "rgba(0,0,0,0)" for lay in part["layer"]],
                                  width=2)),
            error_y=dict(type="data", symmetric=False, array=part["ci_high"] - part["score"],
                         arrayminus=part["score"] - part["ci_low"], thickness=1, width=2),
            customdata=np.stack([part["ci_low"], part["ci_high"]], -1),
            hovertemplate="layer %{x}<br>score %{y:.4g}<br>95% CI [%{customdata[0]:.4g}, %{customdata[1]:.4g}]"
                          "<extra>" + method + "</extra>"), row=row, col=1)
        bounds = np.concatenate([score, part["ci_low"].to_numpy(float), part["ci_high"].to_numpy(float)])
        yrange = _symmetric(bounds)
        fig.update_yaxes(title_text="score", range=yrange, zeroline=True, zerolinecolor="#888", row=row, col=1)
    fig.update_xaxes(title_text=layer_title, dtick=1, row=len(methods), col=1)
    fig.update_layout(title=title, height=max(320, 210 * len(methods)), bargap=0.15,
                      margin=dict(l=60, r=20, t=60, b=50))
    return fig


def agreement_heatmap(table: pd.DataFrame, *, title: str | None = "Rank agreement between methods (Kendall tau)"
                      ) -> go.Figure:
    """Square method × method Kendall-tau table as a heatmap, RdBu fixed to [-1, 1] (centred on 0)."""
    import plotly.express as px

    if table.shape[0] != table.shape[1]:
        raise SemalignError(f"agreement table must be square (methods x methods), got {table.shape}")
    fig = px.imshow(table.to_numpy(dtype=float), x=list(table.columns), y=list(table.index), zmin=-1, zmax=1,
                    color_continuous_scale="RdBu", color_continuous_midpoint=0.0, text_auto=".2f", aspect="auto",
                    labels={"x": "method", "y": "method", "color": "Kendall tau"}, title=title)
    fig.update_xaxes(title="method")
    fig.update_yaxes(title="method")
    return fig


def layer_metric_bars(df: pd.DataFrame, *, x: str, y: str, color: str, title: str | None = None,
                      x_title: str | None = None, y_title: str | None = None,
                      y_range: Sequence[float] | None = None) -> go.Figure:
    """Grouped bars of a long-form table (e.g. fidelity per paired layer and map kind), fixed y-range if given."""
    import plotly.express as px

    missing = {x, y, color} - set(df.columns)
    if missing:
        raise SemalignError(f"table lacks columns {sorted(missing)}")
    frame = df.assign(**{x: df[x].astype(str)})
    fig = px.bar(frame, x=x, y=y, color=color, barmode="group", title=title,
                 labels={x: x_title or x, y: y_title or y, color: color})
    fig.update_xaxes(title=x_title or x, type="category")
    fig.update_yaxes(title=y_title or y, range=list(y_range) if y_range is not None else _symmetric(
        df[y].to_numpy(dtype=float)))
    return fig


def versus_reference(df: pd.DataFrame, *, x: str, y: str, color: str, hover: str | None = None,
                     title: str | None = None, x_title: str = "", y_title: str = "") -> go.Figure:
    """One point per item (e.g. a HumanEval problem): `y` of each model against the reference's `x`, a trace
    per `color` value, with the y = x line, so points below it are items where the model beats the reference
    on a lower-is-better score."""
    import plotly.graph_objects as go

    missing = sorted({x, y, color} - set(df.columns))
    if missing:
        raise SemalignError(f"the table lacks columns {missing}")
    fig = go.Figure()
    for name, part in df.groupby(color, sort=False):
        fig.add_trace(go.Scatter(x=part[x], y=part[y], mode="markers", name=str(name),
                                 text=part[hover] if hover else None,
                                 hovertemplate="%{text}<br>%{x:.3f} → %{y:.3f}" if hover else None))
    values = pd.concat([df[x], df[y]]).astype(float)
    low, high = float(values.min()), float(values.max())
    fig.add_trace(go.Scatter(x=[low, high], y=[low, high], mode="lines", name="y = x",
                             line={"dash": "dot", "color": "grey"}))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, height=480, template="plotly_white")
    return fig


def signed_heatmap(matrix: np.ndarray, x_labels: Sequence, y_labels: Sequence, *, title: str | None = None,
                   x_title: str = "", y_title: str = "layer (block index)", value_title: str = "effect") -> go.Figure:
    """A [rows, cols] map of a signed effect: colour centred on 0 (RdBu, symmetric range), height growing with
    the rows, cell text only up to `HEATMAP_TEXT_ROWS` rows and `HEATMAP_TEXT_COLS` columns (the hover always
    carries the value)."""
    import plotly.express as px

    values = np.asarray(matrix, dtype=float)
    if values.ndim != 2 or values.shape != (len(y_labels), len(x_labels)):
        raise SemalignError(f"a {values.shape} map needs {values.shape[0] if values.ndim == 2 else '?'} row and "
                            f"column labels, got {len(y_labels)} and {len(x_labels)}")
    finite = values[np.isfinite(values)]
    top = float(np.abs(finite).max()) if finite.size else 1.0
    rows, cols = values.shape
    fig = px.imshow(values, x=list(range(cols)), y=list(range(rows)), origin="lower", aspect="auto",
                    color_continuous_scale="RdBu", zmin=-(top or 1.0), zmax=top or 1.0,
                    text_auto=".2f" if rows <= HEATMAP_TEXT_ROWS and cols <= HEATMAP_TEXT_COLS else False,
                    labels={"x": x_title, "y": y_title, "color": value_title}, title=title)
    fig.update_xaxes(tickmode="array", tickvals=list(range(cols)), ticktext=[str(v) for v in x_labels], title=x_title)
    fig.update_yaxes(tickmode="array", tickvals=list(range(rows)), ticktext=[str(v) for v in y_labels], title=y_title)
    fig.update_layout(height=max(360, 140 + HEATMAP_ROW_PX * rows))
    return fig


def cka_heatmap(matrix, x_labels: Sequence | None = None, y_labels: Sequence | None = None,
                title: str | None = None, pairs=None, *, x_title: str = "student layer",
                y_title: str = "teacher layer", row_of_teacher=None, col_of_student=None,
                others: dict | None = None, pairs_name: str = "pairing"):
    """Heatmap of a [teacher, student] CKA matrix (teacher on y, deepest at the top; student on x), colour range
    fixed to 0..1 so figures compare; its height grows with the rows, and cells carry text only up to 15 rows
    and columns (the hover always has the values). Returns a `go.Figure`; never shows it.

    `pairs` overlays the chosen pairing: a `pairing.LayerPairing` (an interpolated pair is drawn between its two
    teacher rows, at low + weight), or (teacher_row, student_col) tuples in matrix coordinates. A LayerPairing
    uses block indices; when the matrix rows are not blocks 0..L-1 (e.g. an "embed" row comes first), pass
    `row_of_teacher` / `col_of_student` (dict or callable: block -> matrix index), or labels from
    `residual_labels`, which this function recognises. `others` ({name: pairing}) draws further pairings
    (e.g. the strategies not chosen) each with its own open marker and legend entry; `pairs_name` labels
    `pairs` in the legend.
    """
    import plotly.express as px
    import plotly.graph_objects as go

    matrix = torch.as_tensor(matrix, dtype=torch.float64).cpu()
    rows, cols = matrix.shape
    x_labels, y_labels = axis_labels(x_labels, cols, "student"), axis_labels(y_labels, rows, "teacher")
    show_values = max(rows, cols) <= HEATMAP_TEXT_ROWS
    fig = px.imshow(matrix.numpy(), x=list(range(cols)), y=list(range(rows)), origin="lower", zmin=0.0, zmax=1.0,
                    color_continuous_scale="Viridis", aspect="auto", text_auto=".2f" if show_values else False,
                    labels={"x": x_title, "y": y_title, "color": "CKA"}, title=title)
    fig.update_xaxes(tickmode="array", tickvals=list(range(cols)), ticktext=[str(v) for v in x_labels], title=x_title)
    fig.update_yaxes(tickmode="array", tickvals=list(range(rows)), ticktext=[str(v) for v in y_labels], title=y_title)
    fig.update_layout(height=max(360, 140 + HEATMAP_ROW_PX * rows))  # legible rows: 31 teacher layers need ~700 px
    # open rings around the chosen crosses, in colours that read on the Viridis cells and the white legend
    styles = iter([("circle-open", "#ff9f1c"), ("diamond-open", "#e377c2"), ("square-open", "#17becf"),
                   ("triangle-up-open", "#8c564b")])
    for name, other in (others or {}).items():  # behind the chosen pairing's crosses
        xs, ys, text = _pair_markers(other, y_labels, x_labels, row_of_teacher, col_of_student)
        symbol, colour = next(styles, ("circle-open", "#7f7f7f"))
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=name, text=[f"{name}: {t}" for t in text],
                                 hoverinfo="text", marker=dict(symbol=symbol, size=15, color=colour,
                                                               line=dict(width=2, color=colour))))
    if pairs is not None:
        xs, ys, text = _pair_markers(pairs, y_labels, x_labels, row_of_teacher, col_of_student)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=pairs_name, text=text, hoverinfo="text",
                                 marker=dict(symbol="x", size=12, color="red", line=dict(width=2, color="white"))))
    if pairs is not None or others:
        fig.update_layout(legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1))
    return fig


def _block_lookup(mapping, labels: list):
    """block index -> matrix position: an explicit mapping, else `residual_labels`-style labels, else identity."""
    if mapping is not None:
        return mapping if callable(mapping) else mapping.__getitem__
    text = [str(v) for v in labels]
    if text and text[0] == "embed":
        return lambda block: text.index(str(block))
    return lambda block: block


def _pair_markers(pairs, teacher_labels, student_labels, row_of_teacher, col_of_student):
    if hasattr(pairs, "pairs"):  # a LayerPairing (duck-typed: pairing.py imports nothing from here)
        row = _block_lookup(row_of_teacher, teacher_labels)
        col = _block_lookup(col_of_student, student_labels)
        xs, ys, text = [], [], []
        for p in pairs.pairs:
            try:
                low, high, x = row(p.teacher_low), row(p.teacher_high), col(p.student_layer)
            except (KeyError, ValueError, IndexError):
                raise SemalignError(f"pair (teacher {p.teacher_low}, student {p.student_layer}) has no row/column "
                                    "in the matrix; pass row_of_teacher / col_of_student mappings") from None
            xs.append(x)
            ys.append(low + p.weight * (high - low))
            text.append(f"student {p.student_layer} ← teacher {p.target_label()}: {p.reason}")
        return xs, ys, text
    pts = [tuple(p) for p in pairs]
    return [p[1] for p in pts], [p[0] for p in pts], [f"teacher {p[0]}, student {p[1]}" for p in pts]


# small multiples keep their subplot titles clear: colour bar and legend stacked at the right
_SIDE_COLORBAR = dict(x=1.01, xanchor="left", y=1, yanchor="top", len=0.55)
_SIDE_LEGEND = dict(x=1.01, xanchor="left", y=0.4, yanchor="top")


def measure_heatmaps(readings: Sequence, x_labels: Sequence, y_labels: Sequence, *, pairs=None,
                     pairs_name: str = "chosen pairing", title: str | None = None, x_title: str = "student layer",
                     y_title: str = "teacher layer", columns: int = 5) -> go.Figure:
    """Several similarity measures' `[teacher x student]` grids side by side (`lens.measures.Reading`s: CKA,
    Procrustes, mutual kNN, stitching, ...), on one colour scale: each cell's closeness *rank* within its own grid
    (0 = the farthest cell, 1 = the closest; distances are flipped), since the measures' units differ; the hover
    carries the raw value. Grey dots: cells no closer than the measure's null; magenta rings: each measure's closest
    teacher layer per student layer; red crosses: `pairs` (a `LayerPairing`), as in `cka_heatmap`."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    readings = list(readings)
    if not readings:
        raise SemalignError("no measures to draw; pass at least one lens.measures.Reading")
    rows_n, cols_n = readings[0].observed.shape
    x_labels, y_labels = axis_labels(x_labels, cols_n, "student"), axis_labels(y_labels, rows_n, "teacher")
    columns = max(1, min(columns, len(readings)))
    n_rows = -(-len(readings) // columns)
    fig = make_subplots(rows=n_rows, cols=columns, shared_yaxes=True, horizontal_spacing=0.03,
                        vertical_spacing=0.12 / n_rows,
                        subplot_titles=[f"{r.name} ({'↑' if r.higher_is_closer else '↓'} closer)" for r in readings])
    blocks_x = [j for j, v in enumerate(x_labels) if str(v) != "embed"]
    blocks_y = [i for i, v in enumerate(y_labels) if str(v) != "embed"]
    weak_shown = False
    for k, r in enumerate(readings):
        row, col = k // columns + 1, k % columns + 1
        close = r.closeness.double().numpy()
        ranks = pd.Series(close.ravel()).rank(pct=True).to_numpy().reshape(close.shape)
        raw = r.observed.double().numpy()
        fig.add_trace(go.Heatmap(
            z=ranks, x=list(range(cols_n)), y=list(range(rows_n)), zmin=0, zmax=1, coloraxis="coloraxis",
            customdata=np.dstack([raw.astype(object), np.where(r.beats_null.numpy(), "yes", "no")]),
            hovertemplate=f"{r.name}<br>teacher %{{y}}, student %{{x}}<br>value %{{customdata[0]:.4g}} ({r.unit})"
                          "<br>beats null: %{customdata[1]}<extra></extra>"), row=row, col=col)
        weak = (~r.beats_null).nonzero().tolist()
        if weak:
            fig.add_trace(go.Scatter(x=[j for _, j in weak], y=[i for i, _ in weak], mode="markers", hoverinfo="skip",
                                     marker=dict(symbol="circle", size=6, color="#9a9a9a", line=dict(width=1,
                                                                                                      color="white")),
                                     showlegend=not weak_shown, name="not closer than its null", legendgroup="null"),
                          row=row, col=col)
            weak_shown = True
        if blocks_x and blocks_y:
            sub = close[np.ix_(blocks_y, blocks_x)]
            best = [blocks_y[i] for i in sub.argmax(0)]
            fig.add_trace(go.Scatter(x=blocks_x, y=best, mode="markers", hoverinfo="skip", showlegend=k == 0,
                                     name="closest teacher layer (this measure)", legendgroup="best",
                                     marker=dict(symbol="circle-open", size=11, color="#ff4dff", line=dict(width=2))),
                          row=row, col=col)
        if pairs is not None:
            xs, ys, text = _pair_markers(pairs, y_labels, x_labels, None, None)
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", text=text, hoverinfo="text", showlegend=k == 0,
                                     name=pairs_name, legendgroup="pairs",
                                     marker=dict(symbol="x", size=9, color="red", line=dict(width=1, color="white"))),
                          row=row, col=col)
        fig.update_xaxes(tickmode="array", tickvals=list(range(cols_n)), ticktext=[str(v) for v in x_labels],
                         title_text=x_title if row == n_rows else None, row=row, col=col)
        fig.update_yaxes(tickmode="array", tickvals=list(range(rows_n)), ticktext=[str(v) for v in y_labels],
                         title_text=y_title if col == 1 else None, row=row, col=col)
    fig.update_layout(title=title, coloraxis=dict(colorscale="Viridis", cmin=0, cmax=1, colorbar=_SIDE_COLORBAR
                                                  | dict(title="closeness<br>rank")),
                      height=n_rows * max(360, 140 + HEATMAP_ROW_PX * rows_n), legend=_SIDE_LEGEND)
    return fig


def head_similarity_heatmaps(heads: Sequence, *, title: str | None = None, columns: int = 3) -> go.Figure:
    """One heatmap per paired layer (`lens.heads.HeadSimilarity`): teacher heads and the two pattern-free
    references (rows, below a dashed line) against the student's heads (columns), 1 − Jensen-Shannon divergence
    on a fixed 0..1 scale with the values written in the cells; a red ring marks the teacher head each student
    head resembles most."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    heads = list(heads)
    if not heads:
        raise SemalignError("no head similarities to draw; pass lens.heads.head_similarity's result")
    columns = max(1, min(columns, len(heads)))
    n_rows = -(-len(heads) // columns)
    fig = make_subplots(rows=n_rows, cols=columns, horizontal_spacing=0.08, vertical_spacing=0.25 / n_rows,
                        subplot_titles=[f"student {h.student_layer} ← teacher {h.teacher_layer}" for h in heads])
    tallest = max(h.similarity.shape[0] for h in heads)
    for k, h in enumerate(heads):
        row, col = k // columns + 1, k % columns + 1
        frame = h.frame()
        values = frame.to_numpy(dtype=float)
        labels = [f"head {i}" if i.isdigit() else i for i in frame.index]
        fig.add_trace(go.Heatmap(z=values, x=list(range(values.shape[1])), y=list(range(values.shape[0])),
                                 zmin=0, zmax=1, coloraxis="coloraxis", text=np.round(values, 2),
                                 texttemplate="%{text:.2f}" if values.size <= 300 else None,
                                 hovertemplate="teacher %{y}, student head %{x}<br>similarity %{z:.3f}<extra></extra>"),
                      row=row, col=col)
        best = frame.iloc[: h.n_teacher_heads].to_numpy(dtype=float).argmax(0)
        fig.add_trace(go.Scatter(x=list(range(values.shape[1])), y=best.tolist(), mode="markers", hoverinfo="skip",
                                 showlegend=k == 0, name="most similar teacher head",
                                 marker=dict(symbol="square-open", size=22, color="red", line=dict(width=2))),
                      row=row, col=col)
        fig.add_hline(y=h.n_teacher_heads - 0.5, line=dict(color="white", dash="dash", width=2), row=row, col=col)
        fig.update_xaxes(tickmode="array", tickvals=list(range(values.shape[1])), title_text="student head",
                         ticktext=[str(c) for c in frame.columns], row=row, col=col)
        fig.update_yaxes(tickmode="array", tickvals=list(range(values.shape[0])), ticktext=labels, autorange="reversed",
                         row=row, col=col)
    fig.update_layout(title=title, coloraxis=dict(colorscale="Viridis", cmin=0, cmax=1, colorbar=_SIDE_COLORBAR
                                                  | dict(title="1 − JSD")),
                      height=n_rows * max(300, 120 + 26 * tallest), legend=_SIDE_LEGEND)
    return fig
