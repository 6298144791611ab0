"""A first look at a model pair: architecture side by side and residual-stream norms per layer.

Why: before pairing layers, users want to see how deep and wide each model is and how the residual stream
grows with depth (norm growth decides whether cosine- or MSE-type targets are sensible). Norms are
measured on real (unpadded) positions, excluding the document-start token whose norm is atypical.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from ..core.checks import require_hooked
from ..core.errors import SemalignError
from ..data.tokens import TokenBatch
from ..models.inspect import describe
from ..models.load import model_name
from .capture import capture


def architecture_table(*models) -> pd.DataFrame:
    if not models:
        raise SemalignError("architecture_table needs at least one model")
    return pd.DataFrame([describe(m) for m in models]).set_index("model")


def residual_norms(model, batch: TokenBatch, batch_size: int = 4) -> pd.DataFrame:
    """‖resid_post‖ per block over real positions (first position dropped): median and quartiles (the norm is
    heavy-tailed: a few tokens carry norms 10-100x the rest, so mean ± std reaches below 0), and mean and std."""
    require_hooked(model)
    layers = list(range(model.cfg.n_layers))
    cap = capture(model, batch, layers, points=("resid_post",), batch_size=batch_size, progress=False)
    mask = cap.mask.clone()
    mask[:, 0] = False
    rows = []
    for layer in layers:
        norms = cap.get("resid_post", layer)[mask].norm(dim=-1)
        rows.append({"model": model_name(model), "layer": layer, "relative_depth": (layer + 1) / len(layers),
                     "median_norm": norms.median().item(), "q25_norm": norms.quantile(0.25).item(),
                     "q75_norm": norms.quantile(0.75).item(), "mean_norm": norms.mean().item(),
                     "std_norm": norms.std().item(), "n_tokens": norms.numel()})
    return pd.DataFrame(rows)


def residual_norm_figure(norms: pd.DataFrame) -> go.Figure:
    """‖resid_post‖ against relative depth, one line per model (so a 30- and a 6-layer model share an axis):
    median with the interquartile range, on a log axis (robust for a heavy-tailed, positive quantity)."""
    fig = go.Figure()
    for name, group in norms.groupby("model", sort=False):
        fig.add_trace(go.Scatter(
            x=group["relative_depth"], y=group["median_norm"], mode="lines+markers", name=name,
            error_y={"type": "data", "symmetric": False, "array": group["q75_norm"] - group["median_norm"],
                     "arrayminus": group["median_norm"] - group["q25_norm"], "visible": True},
            customdata=group[["layer", "q25_norm", "q75_norm"]].to_numpy(),
            hovertemplate="block %{customdata[0]}: median %{y:.1f}, IQR %{customdata[1]:.1f}-%{customdata[2]:.1f}"))
    fig.update_layout(title="Residual-stream norm per block (median and interquartile range over tokens)",
                      xaxis_title="relative depth (block + 1) / n_layers", yaxis_title="‖resid_post‖ (log scale)",
                      yaxis_type="log", template="plotly_white")
    return fig


def norm_jumps(norms: pd.DataFrame, cka: pd.DataFrame | None = None) -> str:
    """One sentence per model: the block where the median residual norm grows most relative to the block before
    (the "massive activation" jump), and, given a teacher x student CKA frame (rows: "embed", "0", ...), whether
    the teacher's CKA band changes at the same depth (the largest step of its row mean between adjacent blocks).
    The first model of `norms` is the teacher."""
    parts = []
    for name, g in norms.groupby("model", sort=False):
        med = g.set_index("layer")["median_norm"]
        if len(med) < 2:
            continue
        ratio = (med / med.shift(1)).iloc[1:]
        at = int(ratio.idxmax())
        parts.append(f"{name}: the median norm jumps {ratio.max():.1f}x at block {at} ({med[at - 1]:.3g} → "
                     f"{med[at]:.3g})")
    text = "; ".join(parts)
    if cka is not None and len(parts):
        rows = cka.drop(index="embed", errors="ignore").mean(axis=1)
        steps = rows.diff().abs().iloc[1:]
        if len(steps):
            band = int(steps.idxmax())
            teacher = next(iter(norms["model"]))
            t = norms[norms["model"] == teacher].set_index("layer")["median_norm"]
            jump = int((t / t.shift(1)).iloc[1:].idxmax())
            same = ("about the depth of the norm jump" if abs(band - jump) <= 1
                    else f"another depth than the norm jump (block {jump})")
            text += (f". The teacher's CKA band changes most at block {band} (mean CKA over student layers "
                     f"{rows.iloc[rows.index.get_loc(str(band)) - 1]:.2f} → {rows[str(band)]:.2f}), {same}")
    return text + "." if text else ""


def humaneval_prompts(n: int = 8) -> list[str]:
    """The first `n` HumanEval prompts (signature and docstring), in task order: real code for a first look."""
    from ..data.tasks.code import humaneval_problems

    return [p["prompt"] for p in humaneval_problems()[:n]]
