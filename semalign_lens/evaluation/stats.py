"""Gap closed and intervals over seeds: the statistics of the transfer table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..core.errors import SemalignError


def gap_closed(before: float, after: float, teacher: float, higher_is_better: bool = True) -> float:
    """(after - before) / (teacher - before): 0 = no change, 1 = reached the teacher, < 0 = got worse.

    Correct for losses as written (numerator and denominator both negative when the loss improves). NaN
    when the teacher is not strictly better than the student before transfer (no gap to close).
    """
    gap = teacher - before
    if not (gap > 0 if higher_is_better else gap < 0):
        return float("nan")
    return (after - before) / gap


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): two-sided Student-t interval over independent seeds; NaN bounds for n < 2."""
    from scipy import stats

    x = [float(v) for v in values if not math.isnan(float(v))]
    if not x:
        return float("nan"), float("nan"), float("nan")
    n = len(x)
    mean = sum(x) / n
    if n < 2:
        return mean, float("nan"), float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of a - b paired by seed: the Student-t interval of the per-seed differences.

    Pairing removes what both runs of one seed share (data order, adapter initialisation), so it is tighter
    than comparing two independent intervals when the seeds move both methods together."""
    if len(a) != len(b):
        raise SemalignError(f"paired differences need one value per seed on both sides, got {len(a)} and {len(b)}")
    return mean_ci([float(x) - float(y) for x, y in zip(a, b, strict=True)], confidence)


def summarize_seeds(before: float, afters: Sequence[float], teacher: float, higher_is_better: bool = True,
                    confidence: float = 0.95) -> dict[str, float]:
    """Score and gap closed over seeds: mean and t-interval of each (gap computed per seed first)."""
    score, s_lo, s_hi = mean_ci(afters, confidence)
    gaps = [gap_closed(before, a, teacher, higher_is_better) for a in afters]
    gap, g_lo, g_hi = mean_ci(gaps, confidence)
    return {"n_seeds": len(afters), "score": score, "score_lo": s_lo, "score_hi": s_hi,
            "gap_closed": gap, "gap_lo": g_lo, "gap_hi": g_hi, "before": before, "teacher": teacher}
