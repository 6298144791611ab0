"""Statistics: gap closed (closed forms), Student-t intervals, per-seed summaries, paired differences."""

from __future__ import annotations

import math

import pytest

from semalign_lens import evaluation as ev
from semalign_lens.core.errors import SemalignError


def test_gap_closed_closed_forms():
    assert ev.gap_closed(0.2, 0.5, 0.8) == pytest.approx(0.5)
    assert ev.gap_closed(0.2, 0.8, 0.8) == pytest.approx(1.0)
    assert ev.gap_closed(0.2, 0.1, 0.8) == pytest.approx(-1 / 6)
    # losses: lower is better; same formula, direction only checks the teacher is better
    assert ev.gap_closed(3.0, 2.5, 2.0, higher_is_better=False) == pytest.approx(0.5)
    assert ev.gap_closed(3.0, 3.5, 2.0, higher_is_better=False) == pytest.approx(-0.5)
    assert math.isnan(ev.gap_closed(2.0, 2.5, 3.0, higher_is_better=False))  # teacher worse: no gap
    assert math.isnan(ev.gap_closed(0.5, 0.6, 0.5))


def test_mean_ci_is_a_student_t_interval():
    mean, lo, hi = ev.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert hi - mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)  # t_{0.975, 2} * sd / sqrt(n)
    assert mean - lo == pytest.approx(hi - mean)
    m1, lo1, hi1 = ev.mean_ci([5.0])
    assert m1 == 5.0 and math.isnan(lo1) and math.isnan(hi1)


def test_summarize_seeds_computes_gap_per_seed():
    s = ev.summarize_seeds(3.0, [2.5, 2.0, 3.0], 2.0, higher_is_better=False)
    assert s["score"] == pytest.approx(2.5)
    assert s["gap_closed"] == pytest.approx(0.5)
    assert s["n_seeds"] == 3 and s["gap_lo"] < 0.5 < s["gap_hi"]


def test_paired_difference_matches_scipys_paired_t_interval():
    from scipy import stats

    a, b = [4.03, 4.02, 4.05], [4.07, 4.08, 4.06]
    mean, lo, hi = ev.paired_difference(a, b)
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert mean == pytest.approx(sum(a) / 3 - sum(b) / 3) and (lo, hi) == pytest.approx((ci.low, ci.high))
    with pytest.raises(SemalignError, match="one value per seed on both sides, got 3 and 2"):
        ev.paired_difference(a, b[:2])
