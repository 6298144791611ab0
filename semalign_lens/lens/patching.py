"""Position- and head-resolved activation patching: *where* in the prompt, and in *which* heads, a layer carries
what the task needs. The layer rankers (`attribution`) give one number per layer; these maps split it.

TransformerLens's own `patching` functions do the interventions (denoising: the corrupted prompt runs with one
clean activation patched in), on the same prompt pairs the rankers use:

- `position`: [layer, pos], `get_act_patch_resid_pre`: block l's input at position p taken from the clean run;
- `head`: [layer, head], `get_act_patch_attn_head_out_all_pos`: head h's output (`hook_z`) at every position.

Each cell is the normalised recovery of the task metric, (m_patched − m_corrupted) / (m_clean − m_corrupted),
with m the mean over the pairs: 0 = patching restores nothing, 1 = the clean metric. Positions must mean the
same thing in both runs, so only pairs whose clean and corrupted prompts have the same padding mask are
used (the others are counted in the result's `attrs["left_out"]`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence

import pandas as pd
import torch

from ..core.checks import require_choices, require_hooked
from ..core.errors import SemalignError
from ..data.tasks.batch import PairBatch
from ..data.tasks.metrics import METRICS, metric_fn
from ..models.plain import model_device
from .attribution import require_eval

MAPS: tuple[str, ...] = ("position", "head")


def patching_maps(model, batch: PairBatch, *, maps: Sequence[str] = MAPS, metric: str = "logprob",
                  max_pairs: int = 16, progress: bool = True) -> dict[str, pd.DataFrame]:
    """{map name: DataFrame [layer rows x position or head columns]} of normalised denoising recovery.

    `max_pairs` caps the pairs used (the first ones with matching masks): each cell is one forward of all of
    them, so the position map costs layers x positions forwards. `progress`: TransformerLens's own bars.
    """
    from transformer_lens import patching

    require_hooked(model)
    require_eval(model, "position- and head-resolved patching")
    maps = require_choices("patching maps", maps, MAPS)
    require_choices("metric", [metric], METRICS)
    if not isinstance(batch, PairBatch):
        raise SemalignError(f"patching maps need prompt pairs (semalign_lens.data.tasks.tokenize_pairs), got "
                            f"{type(batch).__name__}")
    same = [i for i in range(len(batch)) if torch.equal(batch.clean.mask[i], batch.corrupted.mask[i])]
    if not same:
        raise SemalignError("no prompt pair has clean and corrupted prompts of the same token length, so positions "
                            "cannot be matched; use a task whose corruption keeps the length (e.g. facts)")
    sub = batch.select(same[:max_pairs])
    fn = metric_fn(metric)
    device = model_device(model)
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(sub.clean.tokens.to(device))
        clean = float(fn(clean_logits, sub).mean())
        corrupted = float(fn(model(sub.corrupted.tokens.to(device)), sub).mean())
    if abs(clean - corrupted) < 1e-6:
        raise SemalignError(f"the corruption does not change the {metric} ({clean:.4g} both ways), so there is no "
                            "effect to locate; use prompt pairs whose answers differ")

    def recovery(logits: torch.Tensor) -> torch.Tensor:
        return (fn(logits, sub).mean() - corrupted) / (clean - corrupted)

    runners = {"position": patching.get_act_patch_resid_pre, "head": patching.get_act_patch_attn_head_out_all_pos}
    out = {}
    for name in maps:
        with torch.no_grad(), _bars(progress):
            values = runners[name](model, sub.corrupted.tokens.to(device), cache, recovery).float().cpu()
        frame = pd.DataFrame(values.numpy(), index=pd.Index(range(values.shape[0]), name="layer"))
        frame.columns.name = "position" if name == "position" else "head"
        frame.attrs.update({"metric": metric, "pairs": len(sub), "left_out": len(batch) - len(sub),
                            "clean": clean, "corrupted": corrupted})
        out[name] = frame
    return out


@contextlib.contextmanager
def _bars(show: bool):
    """TransformerLens's patching functions draw their own tqdm bars with no switch (and tqdm reads its
    environment variables only at import), so quiet runs swap the module's `tqdm` for a disabled one."""
    from transformer_lens import patching

    original = patching.tqdm
    if not show:
        patching.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        patching.tqdm = original
