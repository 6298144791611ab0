"""Procrustes, mutual kNN, CKNNA and RSA grids (and their nulls) against independent references: scipy's
`orthogonal_procrustes` on zero-padded arrays (netrep's LinearMetric, written plainly), Huh et al.'s dense
n x n code in float64, scipy's `spearmanr` over `pdist`; plus closed forms (identical and rotated states,
random pairs at their chance level) and the inputs' errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.linalg import orthogonal_procrustes
from scipy.spatial.distance import pdist
from scipy.stats import rankdata, spearmanr

from semalign_lens.core.errors import SemalignError
from semalign_lens.lens.measures import (
    MEASURES,
    cknna_matrix,
    measure_matrix,
    measure_null,
    mutual_knn_matrix,
    procrustes_matrix,
    rsa_matrix,
)
from semalign_lens.lens.measures.rsa import average_ranks
from semalign_lens.lens.similarity import cka_matrix, token_matrix


def _stacks(n_seq=6, pos=20, seed=0):
    """Teacher-like [batch, pos, d] layers (two widths) and student layers that read them, with a padding mask."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n_seq, pos, 24, generator=g)
    xs = [base, base + 0.5 * torch.randn(n_seq, pos, 24, generator=g), torch.randn(n_seq, pos, 16, generator=g)]
    ys = [base @ torch.randn(24, 12, generator=g) + 0.3 * torch.randn(n_seq, pos, 12, generator=g),
          torch.randn(n_seq, pos, 12, generator=g)]
    mask = torch.ones(n_seq, pos, dtype=torch.bool)
    mask[1, 15:] = mask[4, 9:] = False
    return xs, ys, mask


def _flat(states, mask, drop_first):
    return [token_matrix(s, mask, drop_first).double().numpy() for s in states]


# --------------------------------------------------------------------------------------------- Procrustes


def _procrustes_reference(x: np.ndarray, y: np.ndarray, cross_validated: bool) -> float:
    """netrep's LinearMetric(alpha=1, zero_pad=True) fit/score, angular: zero-pad to one width, centre with the
    fitted rows' means, rotate with scipy's orthogonal Procrustes, angle on the scored rows."""
    width = max(x.shape[1], y.shape[1])
    x = np.pad(x, ((0, 0), (0, width - x.shape[1])))
    y = np.pad(y, ((0, 0), (0, width - y.shape[1])))
    fit, score = (slice(0, len(x) // 2), slice(len(x) // 2, None)) if cross_validated else (slice(None),) * 2
    mx, my = x[fit].mean(0), y[fit].mean(0)
    rotation, _ = orthogonal_procrustes(x[fit] - mx, y[fit] - my)
    a, b = (x[score] - mx) @ rotation, y[score] - my
    return float(np.arccos(np.clip((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b), -1, 1)))


@pytest.mark.parametrize("cross_validated", [False, True])
@pytest.mark.parametrize("precision", ["mixed", "float64"])
def test_procrustes_matches_scipy_with_zero_padding(cross_validated, precision):
    xs, ys, mask = _stacks()
    grid = procrustes_matrix(xs, ys, mask=mask, drop_first=True, cross_validated=cross_validated,
                             precision=precision)
    fx, fy = _flat(xs, mask, True), _flat(ys, mask, True)
    ref = np.array([[_procrustes_reference(x, y, cross_validated) for y in fy] for x in fx])
    assert grid.dtype == torch.float64 and grid.shape == (3, 2)
    np.testing.assert_allclose(grid.numpy(), ref, atol=1e-5, rtol=0)
    assert grid[0, 0] < grid[2, 0] - 0.3  # the related pair is much closer than the unrelated one


def test_procrustes_is_zero_for_identical_rotated_and_padded_states():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 10, generator=g, dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))
    ys = [x, 3.0 * x @ rotation + 7.0, torch.cat([x @ rotation, torch.zeros(300, 4, dtype=torch.float64)], 1)]
    for cross_validated in (False, True):
        grid = procrustes_matrix([x], ys, cross_validated=cross_validated, precision="float64")
        assert grid.abs().max() < 1e-6, (cross_validated, grid)
    assert procrustes_matrix([x.float()], [x.float()]).abs().max() < 1e-3  # float32 rounding, through arccos


def test_procrustes_null_is_oriented_as_a_distance():
    xs, ys, mask = _stacks()
    null = measure_null("procrustes", xs, ys, n_permutations=9, seed=3, mask=mask)
    assert not null.higher_is_closer
    assert null.p_values[0, 0] == pytest.approx(0.1)  # closer than every shuffle: (1 + 0) / (9 + 1)
    assert null.excess[0, 0] > 0.3 and null.p_values[2, 1] > 0.1  # unrelated layers sit inside their null
    torch.testing.assert_close(null.observed, procrustes_matrix(xs, ys, mask=mask))
    rows = token_matrix(ys[1], mask).clone()  # one shuffle recomputed by hand: the same generator as CKA's
    perm = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(3))
    again = procrustes_matrix([token_matrix(x, mask) for x in xs], [rows[perm]])
    torch.testing.assert_close(null.null[0, :, 1], again[:, 0])


# --------------------------------------------------------------------------------------------- mutual kNN, CKNNA


def _hsic_unbiased(k: torch.Tensor, l_: torch.Tensor) -> torch.Tensor:
    m = k.shape[0]
    kt, lt = k.clone().fill_diagonal_(0), l_.clone().fill_diagonal_(0)
    value = (kt * lt.T).sum() + kt.sum() * lt.sum() / ((m - 1) * (m - 2)) - 2 * (kt @ lt).sum() / (m - 2)
    return value / (m * (m - 3))


def _knn_reference(a: np.ndarray, b: np.ndarray, k: int, cknna: bool) -> float:
    """Huh et al.'s `metrics.py` (mutual_knn, cknna), dense n x n masks, in float64 (no 1e-6 in the ratio)."""
    a, b = F.normalize(torch.from_numpy(a), dim=-1), F.normalize(torch.from_numpy(b), dim=-1)
    kk, ll = a @ a.T, b @ b.T
    n = len(a)

    def knn_mask(gram):
        index = gram.clone().fill_diagonal_(float("-inf")).topk(k, dim=1).indices
        return torch.zeros(n, n, dtype=gram.dtype).scatter_(1, index, 1.0)

    mk, ml = knn_mask(kk), knn_mask(ll)
    if not cknna:
        return float(((mk * ml).sum(1) / k).mean())
    m = mk * ml
    return float(_hsic_unbiased(m * kk, m * ll) / torch.sqrt(_hsic_unbiased(mk * kk, mk * kk)
                                                              * _hsic_unbiased(ml * ll, ml * ll)))


@pytest.mark.parametrize("cknna", [False, True])
def test_neighbour_measures_match_the_platonic_reference(cknna):
    xs, ys, mask = _stacks()
    fn = cknna_matrix if cknna else mutual_knn_matrix
    grid = fn(xs, ys, k=5, n_tokens=None, mask=mask, drop_first=True)
    fx, fy = _flat(xs, mask, True), _flat(ys, mask, True)
    ref = np.array([[_knn_reference(x, y, 5, cknna) for y in fy] for x in fx])
    np.testing.assert_allclose(grid.numpy(), ref, atol=1e-10, rtol=0)
    # the nulls' shuffles re-index the student's lists: the same as recomputing on shuffled rows
    name = "cknna" if cknna else "mutual_knn"
    null = measure_null(name, xs, ys, n_permutations=2, seed=5, k=5, n_tokens=None, mask=mask, drop_first=True)
    perms = [torch.randperm(len(fx[0]), generator=torch.Generator().manual_seed(5)) for _ in range(1)]
    ref = np.array([[_knn_reference(x, y[perms[0].numpy()], 5, cknna) for y in fy] for x in fx])
    np.testing.assert_allclose(null.null[0].numpy(), ref, atol=1e-10, rtol=0)


def test_mutual_knn_of_a_random_pair_sits_at_chance_and_in_its_null():
    g = torch.Generator().manual_seed(2)
    n, k = 400, 10
    x, y = torch.randn(n, 32, generator=g), torch.randn(n, 16, generator=g)
    null = measure_null("mutual_knn", [x], [y, x[:, :20]], n_permutations=20, k=k, n_tokens=None)
    chance = k / (n - 1)
    assert abs(null.observed[0, 0] - chance) < 0.01 and abs(null.mean[0, 0] - chance) < 0.005
    assert null.p_values[0, 0] > 0.05  # a random pair is not distinguishable from its shuffles
    assert null.observed[0, 1] > 0.3 and null.p_values[0, 1] == pytest.approx(1 / 21)  # shared features are
    assert mutual_knn_matrix([x], [x], k=k, n_tokens=None)[0, 0] == 1.0


def test_fixed_n_draws_the_same_tokens_for_both_models_and_depends_on_the_seed():
    xs, ys, mask = _stacks(n_seq=12, pos=30)
    same = mutual_knn_matrix(xs, xs, k=5, n_tokens=64, mask=mask)
    assert torch.equal(same.diagonal(), torch.ones(3, dtype=torch.float64))
    first, other = (cknna_matrix(xs, ys, k=5, n_tokens=64, seed=s, mask=mask) for s in (0, 1))
    assert not torch.equal(first, other)
    assert torch.equal(first, cknna_matrix(xs, ys, k=5, n_tokens=64, seed=0, mask=mask))


# --------------------------------------------------------------------------------------------- RSA


@pytest.mark.parametrize("distance", ["correlation", "euclidean"])
def test_rsa_matches_scipy_spearman_over_pdist(distance):
    xs, ys, mask = _stacks()
    grid = rsa_matrix(xs, ys, distance=distance, n_tokens=None, mask=mask, drop_first=True)
    fx, fy = _flat(xs, mask, True), _flat(ys, mask, True)
    ref = np.array([[spearmanr(pdist(x, distance), pdist(y, distance))[0] for y in fy] for x in fx])
    np.testing.assert_allclose(grid.numpy(), ref, atol=1e-10, rtol=0)
    null = measure_null("rsa", xs, ys, n_permutations=1, seed=4, distance=distance, n_tokens=None, mask=mask,
                        drop_first=True)
    perm = torch.randperm(len(fx[0]), generator=torch.Generator().manual_seed(4)).numpy()
    ref = np.array([[spearmanr(pdist(x, distance), pdist(y[perm], distance))[0] for y in fy] for x in fx])
    np.testing.assert_allclose(null.null[0].numpy(), ref, atol=1e-10, rtol=0)


def test_rsa_ranks_average_ties_like_scipy():
    values = torch.tensor([3.0, 1.0, 3.0, 2.0, 1.0, 3.0, 0.5])
    np.testing.assert_array_equal(average_ranks(values).numpy(), rankdata(values.numpy()))
    x = torch.randn(50, 8, dtype=torch.float64)
    assert rsa_matrix([x], [2 * x + 1, x.exp()], n_tokens=None, distance="euclidean")[0, 0] == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------- registry, inputs


def test_registry_runs_every_measure_on_captured_states(tiny_pair):
    from semalign_lens.data.tokens import tokenize
    from semalign_lens.lens.capture import accumulated_resid

    texts = ["def add(a, b):\n    return a + b\n" * 3, "import os\nprint(os.sep)\n" * 4, "class P:\n    x = 1\n" * 4]
    batch = tokenize(tiny_pair.tokenizer, texts)
    t_states = accumulated_resid(tiny_pair.teacher, batch, drop_first=True)
    s_states = accumulated_resid(tiny_pair.student, batch, drop_first=True)
    torch.testing.assert_close(measure_matrix("cka", t_states, s_states), cka_matrix(t_states, s_states))
    for name, measure in MEASURES.items():
        options = {"k": 5} if name in ("mutual_knn", "cknna") else {}
        null = measure_null(name, t_states, s_states, n_permutations=3, **options)
        assert null.observed.shape == (7, 4) and null.null.shape == (3, 7, 4), name
        assert null.higher_is_closer == measure.higher_is_closer
        torch.testing.assert_close(null.observed, measure_matrix(name, t_states, s_states, **options))
    x, y = t_states[3].double().numpy(), s_states[2].double().numpy()  # one real pair, against the references
    assert measure_matrix("procrustes", [t_states[3]], [s_states[2]]).item() == pytest.approx(
        _procrustes_reference(x, y, False), abs=1e-5)
    assert measure_matrix("rsa", [t_states[3]], [s_states[2]], n_tokens=None).item() == pytest.approx(
        spearmanr(pdist(x, "correlation"), pdist(y, "correlation"))[0], abs=1e-5)
    assert measure_matrix("cknna", [t_states[3]], [s_states[2]], k=5).item() == pytest.approx(
        _knn_reference(x, y, 5, True), abs=1e-5)


@pytest.mark.parametrize("call,match", [
    (lambda x, y: measure_matrix("svcca", x, y), "unknown similarity measure 'svcca'"),
    (lambda x, y: measure_matrix("rsa", x, y, k=3), r"unknown option\(s\) \['k'\] for the rsa measure"),
    (lambda x, y: mutual_knn_matrix(x, y, k=40, n_tokens=None), r"k = 40 neighbours needs 1 <= k < n"),
    (lambda x, y: procrustes_matrix(x, [y[0][:20]]), "both models must be run on the same token batch"),
    (lambda x, y: rsa_matrix([x[0].masked_fill(x[0] > 2.5, float("nan"))], y), "contains NaN or inf"),
    (lambda x, y: procrustes_matrix([x[0] * float("inf")], y), "contains NaN or inf"),
    (lambda x, y: measure_null("cknna", x, y, n_permutations=0), "n_permutations must be >= 1"),
    (lambda x, y: rsa_matrix(x, y, distance="cosine"), "unknown distance"),
])
def test_bad_inputs_get_one_line(call, match):
    g = torch.Generator().manual_seed(0)
    x, y = [torch.randn(30, 6, generator=g)], [torch.randn(30, 4, generator=g)]
    with pytest.raises(SemalignError, match=match) as err:
        call(x, y)
    assert "\n" not in str(err.value)
