"""`compare_measures`: the measures side by side, each against its null, and the verdict, checked on grids whose
answers are known by construction, with scipy's Spearman as the reference for the rank agreement."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from semalign_lens.core.errors import SemalignError
from semalign_lens.lens.measures import Reading, compare_measures, measure_null, reading
from semalign_lens.lens.similarity import PermutationNull, residual_labels

N_T, N_S = 6, 3  # teacher blocks, student blocks; grids carry the embeddings row and column too
T_LABELS, S_LABELS = residual_labels(N_T), residual_labels(N_S)


def _diagonal_grid(seed: int) -> torch.Tensor:
    """A similarity grid peaking on the depth-proportional cells (student s <- teacher 2s + 1), plus noise."""
    gen = torch.Generator().manual_seed(seed)
    grid = 0.1 * torch.rand(N_T + 1, N_S + 1, generator=gen, dtype=torch.float64)
    for s in range(N_S):
        grid[2 * s + 2, s + 1] += 1.0
    return grid


def _null(name: str, observed: torch.Tensor, higher: bool, beaten: torch.Tensor | None = None) -> PermutationNull:
    """k = 4 shuffles, all far from the observed grid, except at the `beaten` cells, where one shuffle ties."""
    shuffles = (observed - 5.0 if higher else observed + 5.0).expand(4, *observed.shape).clone()
    if beaten is not None:
        shuffles[0][beaten] = observed[beaten]
    return PermutationNull(observed=observed, null=shuffles, seed=0, measure=name, higher_is_closer=higher)


def test_measures_that_agree_are_said_to_agree():
    grid = _diagonal_grid(0)
    readings = [Reading.of_null(_null("a", grid, True), "units a"),
                Reading.of_null(_null("b_distance", 2 - grid, False), "radians")]
    out = compare_measures(readings, T_LABELS, S_LABELS)
    assert out.best["a"].tolist() == out.best["b_distance"].tolist() == [1, 3, 5]
    assert out.best["agree"].all() and (out.best["spread"] == 0).all()
    assert out.null["cells beating the null"].tolist() == [1.0, 1.0]
    assert out.null["chosen cells beating the null"].tolist() == [N_S, N_S]
    assert out.agreement.loc["a", "b_distance"] == pytest.approx(1.0)
    assert out.diagonal["holds"].all() and out.diagonal.loc["a", "monotone_rho"] == pytest.approx(1.0)
    path = float(np.mean([grid[2 * s + 2, s + 1] for s in range(N_S)]))
    assert out.diagonal.loc["a", "proportional pairs"] == pytest.approx(path)
    assert out.diagonal.loc["a", "excess"] == pytest.approx(path - float(grid[1:, 1:].mean()))
    assert out.verdict[0].startswith("**Agree everywhere:**")
    assert "holds under a, b_distance." in out.verdict[-1]


def test_disagreement_nulls_and_rank_agreement_against_scipy():
    grid = _diagonal_grid(1)
    flat = torch.rand(N_T + 1, N_S + 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    flat[1:, 1:] = 0.0
    flat[1, 1:] = 1.0  # every student layer closest to teacher block 0: no diagonal
    weak = torch.zeros_like(flat, dtype=torch.bool)
    weak[1, 2] = True  # one shuffle ties the chosen cell of student layer 1
    readings = [Reading.of_null(_null("diag", grid, True)), Reading.of_null(_null("shallow", flat, True, weak))]
    stitching = SimpleNamespace(penalty=1 - grid, mean_ablation=torch.full((N_S + 1,), 0.5, dtype=torch.float64))
    readings.append(Reading.of_stitching(stitching))
    out = compare_measures(readings, T_LABELS, S_LABELS)
    assert out.best["shallow"].tolist() == [0, 0, 0] and out.best["stitch"].tolist() == [1, 3, 5]
    assert out.best["agree"].tolist() == [True, False, False]  # 1 and 0 are within one layer
    assert out.verdict[0].startswith("**Agree** at student layer(s) 0:")
    assert "**Disagree** at student layer(s) 1, 2" in out.verdict[1]
    assert "1 ← diag 3, shallow 0, stitch 3" in out.verdict[1]
    assert out.null.loc["shallow", "chosen cells beating the null"] == N_S - 1
    beats_stitch = (1 - grid[1:, 1:]) < 0.5
    assert out.null.loc["stitch", "cells beating the null"] == pytest.approx(float(beats_stitch.double().mean()))
    assert "shallow (1 of 3)" in out.verdict[2]
    for a, b in (("diag", "shallow"), ("diag", "stitch"), ("shallow", "stitch")):
        closeness = {"diag": grid, "shallow": flat, "stitch": -(1 - grid)}
        want = spearmanr(closeness[a][1:, 1:].ravel(), closeness[b][1:, 1:].ravel()).statistic
        assert out.agreement.loc[a, b] == pytest.approx(want, abs=1e-12)
    assert out.diagonal["holds"].tolist() == [True, False, True]
    assert "not under shallow" in out.verdict[-1]


def test_real_nulls_read_as_closer_than_every_shuffle(tiny_pair, tiny_hf):
    from semalign_lens.data.tokens import tokenize
    from semalign_lens.lens.capture import accumulated_resid

    batch = tokenize(tiny_hf[2], ["def f(x):\n    return x + 1\n", "import os, sys", "class A:\n    pass"])
    xs, ys = (accumulated_resid(m, batch, drop_first=True) for m in (tiny_pair.teacher, tiny_pair.student))
    null = measure_null("procrustes", xs, ys, n_permutations=3)
    read = reading(null)
    assert read.unit.startswith("radians") and not read.higher_is_closer
    torch.testing.assert_close(read.beats_null, (null.null > null.observed[None]).all(0))
    torch.testing.assert_close(read.beats_null, null.p_values == 1 / 4)


def test_bad_comparisons_are_one_line():
    grid = _diagonal_grid(0)
    with pytest.raises(SemalignError, match="no measures"):
        compare_measures([], T_LABELS, S_LABELS)
    with pytest.raises(SemalignError, match="another shape"):
        compare_measures([Reading.of_null(_null("a", grid, True)), Reading.of_null(_null("b", grid[:3], True))],
                         T_LABELS, S_LABELS)
    with pytest.raises(SemalignError, match="3 student labels"):
        compare_measures([Reading.of_null(_null("a", grid, True))], T_LABELS, S_LABELS[:3])
