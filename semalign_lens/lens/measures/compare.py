"""Where the similarity measures agree about a teacher x student pair, and where they do not (ours): the
verdict of the pairing page (`lens.inspection`) and the diagonal test of the Figs. 4-5 analysis.

Every measure is read the same way (`Reading`): oriented so that higher = closer, on the block cells only (the
embeddings row and column are never paired), and against its own null:
- a permutation measure (`similarity.PermutationNull`): a cell beats its null when it is closer than every one of the k token
  shuffles (one-sided permutation p = 1/(k + 1), the smallest k shuffles can give);
- model stitching (an `evaluation.stitching.StitchingMap`, read duck-typed: the lens floor does not import the
  evaluation floor): a cell beats its null when its penalty is below the mean-ablation penalty, i.e. the mapped
  teacher state serves the student better than the student's mean state.

What is compared (`compare_measures` -> `MeasureComparison`):
- `best`: each student layer's closest teacher layer under each measure; they agree when all fall within
  `tolerance` layers of each other;
- `null`: the share of block cells beating the null, and at how many student layers the chosen cell does;
- `agreement`: Spearman correlation between every two measures over the block cells (do they rank the cells
  alike, not only the winners?);
- `diagonal`: the paper's Fig. 5 claim, per measure: the best teacher layer rises with student depth
  (Spearman >= `MONOTONE`) and the depth-proportional pairs are closer than the grid's mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ...core.errors import SemalignError
from ..similarity import PermutationNull

MONOTONE = 0.8  # what we take "layer by layer, shallow to deep" to mean (as analysis/fig45_cka.py)


@dataclass
class Reading:
    """One measure's `[teacher point x student point]` grid as the comparison reads it."""

    name: str
    observed: Float[Tensor, "lt ls"]  # in the measure's own units
    higher_is_closer: bool
    beats_null: Bool[Tensor, "lt ls"]
    null: str  # how the null is read, in words
    unit: str

    @property
    def closeness(self) -> Float[Tensor, "lt ls"]:
        return self.observed if self.higher_is_closer else -self.observed

    @classmethod
    def of_null(cls, null: PermutationNull, unit: str = "") -> Reading:
        """A permutation measure: cells closer than every one of its k shuffles beat the null."""
        closer = null.null >= null.observed[None] if null.higher_is_closer else null.null <= null.observed[None]
        k = null.null.shape[0]
        return cls(null.measure, null.observed.double(), null.higher_is_closer, closer.sum(0) == 0,
                   f"closer than all {k} token shuffles (p = 1/{k + 1})", unit)

    @classmethod
    def of_stitching(cls, stitching, name: str = "stitch") -> Reading:
        """A stitching map (`evaluation.stitching.StitchingMap`): cells whose penalty is below the mean-ablation
        penalty of their student point beat the null."""
        penalty = torch.as_tensor(stitching.penalty, dtype=torch.float64)
        return cls(name, penalty, False, penalty < torch.as_tensor(stitching.mean_ablation, dtype=torch.float64)[None],
                   "penalty below the mean-ablation penalty", "CE increase, nats/token")


@dataclass
class MeasureComparison:
    """`compare_measures`'s tables (see the module docstring) and the verdict in a few sentences."""

    best: pd.DataFrame  # index: student layer; one column per measure (teacher layer), then "agree", "spread"
    null: pd.DataFrame  # index: measure
    agreement: pd.DataFrame  # measures x measures, Spearman over block cells
    diagonal: pd.DataFrame  # index: measure
    verdict: list[str] = field(default_factory=list)
    readings: list[Reading] = field(default_factory=list)  # what was compared, in order


def _blocks(labels: Sequence, n: int, what: str) -> list[int]:
    """Matrix index -> block index (−1 for the embeddings), from `similarity.residual_labels`-style labels."""
    text = [str(v) for v in labels]
    if len(text) != n:
        raise SemalignError(f"{len(text)} {what} labels for a grid with {n} {what} points")
    return [-1 if t == "embed" else int(t) for t in text]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def compare_measures(readings: Sequence[Reading], teacher_labels: Sequence, student_labels: Sequence, *,
                     tolerance: int = 1) -> MeasureComparison:
    """Compare the measures' grids (all on the same `[teacher point x student point]` cells, labelled by block
    index or "embed") and write the verdict."""
    from ..pairing import pair_proportional

    readings = list(readings)
    if not readings:
        raise SemalignError("no measures to compare; pass at least one Reading")
    shape = tuple(readings[0].observed.shape)
    bad = [r.name for r in readings if tuple(r.observed.shape) != shape]
    if bad:
        raise SemalignError(f"measure(s) {bad} have grids of another shape than {readings[0].name}'s {shape}")
    tb, sb = _blocks(teacher_labels, shape[0], "teacher"), _blocks(student_labels, shape[1], "student")
    rows = [i for i, b in enumerate(tb) if b >= 0]
    cols = [j for j, b in enumerate(sb) if b >= 0]
    if not rows or not cols:
        raise SemalignError("the grids have no block rows or columns besides the embeddings")
    names = [r.name for r in readings]
    close = {r.name: r.closeness[rows][:, cols].numpy() for r in readings}
    beats = {r.name: r.beats_null[rows][:, cols].numpy() for r in readings}
    students = [sb[j] for j in cols]
    pick = {m: close[m].argmax(0) for m in names}

    best = pd.DataFrame({m: [tb[rows[i]] for i in pick[m]] for m in names}, index=pd.Index(students,
                                                                                             name="student layer"))
    best["spread"] = best[names].max(1) - best[names].min(1)
    best["agree"] = best["spread"] <= tolerance

    null = pd.DataFrame({
        "unit": [r.unit for r in readings], "null": [r.null for r in readings],
        "cells beating the null": [float(beats[m].mean()) for m in names],
        "chosen cells beating the null": [int(beats[m][pick[m], np.arange(len(cols))].sum()) for m in names],
    }, index=pd.Index(names, name="measure"))

    agreement = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            agreement.iloc[a, b] = agreement.iloc[b, a] = _spearman(close[names[a]].ravel(), close[names[b]].ravel())

    proportional = pair_proportional(max(tb) + 1, max(sb) + 1, interpolate=False, student_layers=students)
    cells = [(rows.index(tb.index(p.teacher_low)), cols.index(sb.index(p.student_layer))) for p in proportional]
    diagonal = []
    for r in readings:
        grid = r.observed[rows][:, cols].numpy()
        path = float(np.mean([grid[i, j] for i, j in cells]))
        excess = (path - float(grid.mean())) * (1 if r.higher_is_closer else -1)
        rho = _spearman(np.asarray(students, dtype=float), np.asarray(best[r.name], dtype=float))
        diagonal.append({"best teacher layer per student layer": best[r.name].tolist(), "monotone_rho": rho,
                         "proportional pairs": path, "grid mean": float(grid.mean()), "excess": excess,
                         "holds": bool(rho >= MONOTONE and excess > 0)})
    diagonal = pd.DataFrame(diagonal, index=pd.Index(names, name="measure"))
    return MeasureComparison(best, null, agreement, diagonal,
                             _verdict(best, null, agreement, diagonal, names, len(cols), tolerance), readings)


def _layers(values) -> str:
    return ", ".join(str(v) for v in values)


def _verdict(best: pd.DataFrame, null: pd.DataFrame, agreement: pd.DataFrame, diagonal: pd.DataFrame,
             names: list[str], n_students: int, tolerance: int) -> list[str]:
    within = "the same teacher layer" if tolerance == 0 else f"teacher layers within {tolerance} of each other"
    agree, disagree = best.index[best["agree"]].tolist(), best.index[~best["agree"]].tolist()
    lines = []
    if len(names) == 1:
        lines.append(f"**One measure only** ({names[0]}): nothing to compare it with; add another measure.")
    elif not disagree:
        lines.append(f"**Agree everywhere:** all {len(names)} measures pick {within} for every student layer ("
                     + "; ".join(f"{s} ← {_span(best.loc[s, names])}" for s in agree) + ").")
    else:
        if agree:
            lines.append(f"**Agree** at student layer(s) {_layers(agree)}: every measure picks {within} ("
                         + "; ".join(f"{s} ← {_span(best.loc[s, names])}" for s in agree) + ").")
        lines.append(f"**Disagree** at student layer(s) {_layers(disagree)}: "
                     + "; ".join(f"{s} ← " + ", ".join(f"{m} {best.loc[s, m]}" for m in names) for s in disagree)
                     + ".")
    weak = [f"{m} ({n_students - int(null.loc[m, 'chosen cells beating the null'])} of {n_students})" for m in names
            if int(null.loc[m, "chosen cells beating the null"]) < n_students]
    lines.append("**Against the null:** share of cells beating it: "
                 + ", ".join(f"{m} {null.loc[m, 'cells beating the null']:.0%}" for m in names) + ". "
                 + (f"Student layers whose chosen teacher layer does not beat the null: {', '.join(weak)}; "
                    "there the measure's pick says nothing." if weak else
                    "Every measure's pick beats its null at every student layer."))
    if len(names) > 1:
        pairs = [(agreement.loc[a, b], a, b) for i, a in enumerate(names) for b in names[i + 1:]
                 if np.isfinite(agreement.loc[a, b])]
        if pairs:
            lo, hi = min(pairs), max(pairs)
            lines.append(f"**Rank agreement over all block cells** (Spearman): from {lo[0]:.2f} ({lo[1]} vs "
                         f"{lo[2]}) to {hi[0]:.2f} ({hi[1]} vs {hi[2]}).")
    holds = diagonal.index[diagonal["holds"]].tolist()
    fails = diagonal.index[~diagonal["holds"]].tolist()
    lines.append(f"**Diagonal** (best teacher layer rises with student depth, Spearman >= {MONOTONE}, and the "
                 f"depth-proportional pairs beat the grid mean): holds under {', '.join(holds) or 'no measure'}"
                 + (f"; not under {', '.join(fails)}." if fails else "."))
    return lines


def _span(values) -> str:
    lo, hi = int(min(values)), int(max(values))
    return str(lo) if lo == hi else f"{lo}–{hi}"
