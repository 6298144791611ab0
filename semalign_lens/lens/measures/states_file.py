"""One model's layer states read from a file, so the measures run on activations captured anywhere
(`semalign similarity TEACHER_STATES STUDENT_STATES`): row j of every layer must be the same token in both files.

Formats: `.safetensors` (one `[layer, token, d]` tensor, or one `[token, d]` tensor per layer, layers ordered by
the numbers in their names: `layer.2` before `layer.10`), `.npy` (a `[layer, token, d]` array) and `.pt` (a
tensor or a list of tensors, read with `torch.load(weights_only=True)`). Everything wrong with a file is one line
naming it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import Tensor

from ...core.checks import check_safetensors
from ...core.errors import SemalignError

SUFFIXES: tuple[str, ...] = (".safetensors", ".npy", ".pt")
SHAPES = "one [layer, token, d] tensor or one [token, d] tensor per layer"


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _read(path: Path) -> list[Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        check_safetensors(path, "states file", fix=f"save the states again ({SHAPES})")
        tensors = load_file(str(path))
        return [tensors[k] for k in sorted(tensors, key=_natural)]
    if path.suffix == ".npy":
        import numpy as np

        try:
            return [torch.from_numpy(np.load(path, allow_pickle=False))]
        except (ValueError, OSError, EOFError) as err:
            raise SemalignError(f"states file {path} is not a readable .npy array ({err})") from None
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises pickle, zip and runtime errors alike for a damaged file
        raise SemalignError(f"states file {path} is not a readable torch file ({type(err).__name__}); save it with "
                            "torch.save(tensor, path)") from None
    return [value] if isinstance(value, Tensor) else list(value) if isinstance(value, (list, tuple)) else [value]


def load_states(path: str | os.PathLike) -> Tensor | list[Tensor]:
    """The layers in `path`: a `[layer, token, d]` tensor, or a list of per-layer `[token, d]` tensors (widths may
    differ between layers). Shapes, dtypes and token counts are then checked by the measures themselves."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise SemalignError(f"states file {path} must end in {', '.join(SUFFIXES)} ({SHAPES})")
    if not path.is_file():
        raise SemalignError(f"states file {path} does not exist")
    found = _read(path)
    if not found or any(not isinstance(t, Tensor) for t in found):
        raise SemalignError(f"states file {path} holds no tensors; save {SHAPES}")
    if len(found) == 1 and found[0].ndim == 3:
        return found[0]
    bad = [tuple(t.shape) for t in found if t.ndim != 2]
    if bad:
        raise SemalignError(f"states file {path} holds a tensor of shape {bad[0]}; save {SHAPES}")
    return found
