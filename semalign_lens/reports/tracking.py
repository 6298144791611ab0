"""A finished run's figures, sent to its experiment trackers as images (ours).

The trainer sends its records to the trackers (`training.trackers`); its figures are drawn here, above it, so
here is where they go out: each figure of `run.run_figures` (loss curves, projections, the CKA map at every
stage's start and end) as a PNG (kaleido and Chromium, `page.export_pngs`) under `figures/{name}`, at the run's
last step, to the trackers that take images (TensorBoard, W&B).
"""

from __future__ import annotations

import tempfile

from ..core.progress import note
from ..training.loop import AlignResult
from .page import export_pngs, png_export_available
from .run import run_figures


def track_figures(result: AlignResult) -> list[str]:
    """Send `result`'s figures to its open trackers (`AlignResult.trackers`); returns the figure names sent.
    Without kaleido/Chromium or Pillow, a note says so and the trackers keep the metrics only."""
    if result.trackers is None or not result.trackers.names:
        return []
    figures = run_figures(result)
    if not figures:
        return []
    ok, reason = png_export_available()
    try:
        import numpy as np
        from PIL import Image
    except ImportError:
        ok, reason = False, "Pillow is not installed (pip install 'semalign-lens[trackers]')"
    if not ok:
        note(f"figures not sent to the trackers: {reason}")
        return []
    images = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in export_pngs(figures, tmp, scale=1.0).items():
            with Image.open(path) as image:
                images[f"figures/{name}"] = np.asarray(image.convert("RGB"))
    if len(images) < len(figures):
        note(f"{len(figures) - len(images)} of {len(figures)} figures failed to export as PNG; the trackers have "
             "the others")
    if not result.trackers.log_images(images, step=result.final["step"]):
        return []
    return [name.removeprefix("figures/") for name in images]
