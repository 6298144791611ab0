"""Plotly figure builders shared by reports, the trainer and the notebooks.

Rules (design.md §6): every builder returns a `go.Figure` and never calls `show()`; axes are labelled;
signed quantities are centred on 0 (symmetric axis or colour range, RdBu), bounded ones use fixed ranges
so that figures compare across runs. Layer × layer similarity maps live in `similarity.cka_heatmap`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .errors import SemalignError

if TYPE_CHECKING:
    import plotly.graph_objects as go

POSITIVE, NEGATIVE = "#2166ac", "#b2182b"  # RdBu ends: blue = supports the answer, red = opposes it


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
                            "returned by semalign_lens.attribution.rank_layers")
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
