"""similarity.py against independent n x n reference implementations (float64), plus closed-form checks."""

from __future__ import annotations

import pytest
import torch

from semalign_lens.core.errors import SemalignError
from semalign_lens.lens.similarity import (
    PermutationNull,
    cka_frame,
    cka_matrix,
    cka_permutation_null,
    cka_wide,
    keep_mask,
    minibatch_cka_matrix,
    residual_labels,
    token_matrix,
)
from semalign_lens.reports.plots import cka_heatmap

# ------------------------------------------------------------------ references: the textbook n x n forms, float64


def ref_linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Kornblith et al.: HSIC₀(K, L) = tr(KHLH) with K = XXᵀ, L = YYᵀ, H = I − 11ᵀ/n; CKA = normalised HSIC₀."""
    x, y = x.double(), y.double()
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    gx, gy = x @ x.T, y @ y.T

    def hsic(a, b):
        return torch.trace(a @ h @ b @ h)

    return float(hsic(gx, gy) / torch.sqrt(hsic(gx, gx) * hsic(gy, gy)))


def ref_hsic1(gk: torch.Tensor, gl: torch.Tensor) -> float:
    """Song et al. (2012) unbiased HSIC, written out literally with the diagonals zeroed."""
    n = gk.shape[0]
    k, m = gk.clone().fill_diagonal_(0), gl.clone().fill_diagonal_(0)
    one = torch.ones(n, 1, dtype=k.dtype)
    value = (torch.trace(k @ m) + (one.T @ k @ one) * (one.T @ m @ one) / ((n - 1) * (n - 2))
             - 2 * (one.T @ k @ m @ one) / (n - 2))
    return float(value) / (n * (n - 3))


def ref_debiased_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    gx, gy = x.double() @ x.double().T, y.double() @ y.double().T
    return ref_hsic1(gx, gy) / (ref_hsic1(gx, gx) * ref_hsic1(gy, gy)) ** 0.5


def ref_grid(fn, xs, ys) -> torch.Tensor:
    return torch.tensor([[fn(x, y) for y in ys] for x in xs], dtype=torch.float64)


@pytest.fixture
def layers():
    """Random 'teacher' (3 layers of width 24, offset mean) and 'student' (widths 8, 12) with a shared signal."""
    g = torch.Generator().manual_seed(1)
    n = 200
    base = torch.randn(n, 8, generator=g)
    xs = [torch.randn(n, 24, generator=g) * (i + 1) + 5.0 for i in range(3)]
    xs[1][:, :8] += 3 * base
    ys = [base @ torch.randn(8, 8, generator=g) + 0.3 * torch.randn(n, 8, generator=g),
          torch.randn(n, 12, generator=g) - 2.0]
    return xs, ys


# ------------------------------------------------------------------ agreement with the references


@pytest.mark.parametrize("precision", ["mixed", "float64"])
def test_linear_cka_matches_gram_reference(layers, precision):
    xs, ys = layers
    got = cka_matrix(xs, ys, precision=precision, chunk_size=64)  # several chunks: exercises float64 accumulation
    assert got.dtype == torch.float64 and got.shape == (3, 2)
    assert torch.allclose(got, ref_grid(ref_linear_cka, xs, ys), atol=1e-6, rtol=0)


@pytest.mark.parametrize("precision", ["mixed", "float64"])
def test_debiased_cka_matches_hsic1_reference(layers, precision):
    xs, ys = layers
    got = cka_matrix(xs, ys, debiased=True, precision=precision, chunk_size=64)
    assert torch.allclose(got, ref_grid(ref_debiased_cka, xs, ys), atol=1e-6, rtol=0)


def test_stacked_tensor_equals_list_and_self_grid_is_symmetric(layers):
    xs, _ = layers
    stacked = torch.stack(xs)
    grid = cka_matrix(stacked)
    assert torch.allclose(grid, cka_matrix(xs, xs), atol=1e-9)
    assert torch.allclose(grid, grid.T)
    assert torch.allclose(grid.diagonal(), torch.ones(3, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(grid, ref_grid(ref_linear_cka, xs, xs), atol=1e-6)
    assert torch.allclose(cka_matrix(xs, debiased=True), ref_grid(ref_debiased_cka, xs, xs), atol=1e-6)


def test_minibatch_matches_per_batch_reference(layers):
    xs, ys = layers
    got = minibatch_cka_matrix(xs, ys, batch_size=64, shuffle=False)
    # 200 tokens -> batches of 64, 64, 64, 8 (all kept: >= 4); ratio of the averaged HSIC₁ (Nguyen et al.)
    xy = torch.zeros(3, 2, dtype=torch.float64)
    xx, yy = torch.zeros(3, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    for s in range(0, 200, 64):
        kx = [x[s: s + 64].double() @ x[s: s + 64].double().T for x in xs]
        ky = [y[s: s + 64].double() @ y[s: s + 64].double().T for y in ys]
        xy += torch.tensor([[ref_hsic1(a, b) for b in ky] for a in kx], dtype=torch.float64)
        xx += torch.tensor([ref_hsic1(a, a) for a in kx], dtype=torch.float64)
        yy += torch.tensor([ref_hsic1(b, b) for b in ky], dtype=torch.float64)
    assert torch.allclose(got, xy / torch.sqrt(xx[:, None] * yy[None, :]), atol=1e-6, rtol=0)


def test_minibatch_is_seeded_and_close_to_full_debiased(layers):
    xs, ys = layers
    a = minibatch_cka_matrix(xs, ys, batch_size=50, seed=3)
    assert torch.equal(a, minibatch_cka_matrix(xs, ys, batch_size=50, seed=3))
    assert not torch.equal(a, minibatch_cka_matrix(xs, ys, batch_size=50, seed=4))
    assert (a - cka_matrix(xs, ys, debiased=True)).abs().max() < 0.1  # same target, more variance


# ------------------------------------------------------------------ closed-form properties


def test_cka_of_x_with_itself_and_orthogonal_transform_is_one():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))
    rotated = (x.double() @ q).float()
    for debiased in (False, True):
        grid = cka_matrix([x], [x, rotated], debiased=debiased)
        assert torch.allclose(grid, torch.ones(1, 2, dtype=torch.float64), atol=1e-6)


def test_cka_is_invariant_to_isotropic_scaling_and_shift():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 12, generator=g), torch.randn(256, 20, generator=g)
    y[:, :12] += x
    for debiased in (False, True):
        base = cka_matrix([x], [y], debiased=debiased)
        assert torch.allclose(cka_matrix([x * 37.5 + 4.0], [y * 1e-3 - 2e-3], debiased=debiased), base, atol=1e-6)


def test_debiased_is_near_zero_for_independent_data_while_biased_is_not():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 64, generator=g), torch.randn(256, 64, generator=g)
    biased = cka_matrix([x], [y]).item()
    debiased = cka_matrix([x], [y], debiased=True).item()
    assert biased > 0.1  # the small-n bias of biased CKA (d/n = 0.25)
    assert abs(debiased) < 0.02
    assert abs(minibatch_cka_matrix([x], [y], batch_size=64).item()) < 0.05


# ------------------------------------------------------------------ masks and the first token


def test_masking_drops_padding_like_manual_removal():
    g = torch.Generator().manual_seed(0)
    batch, pos = 4, 30
    xs = torch.randn(2, batch, pos, 10, generator=g)
    ys = torch.randn(3, batch, pos, 6, generator=g)
    ys[0] += xs[0][..., :6]
    lengths = [30, 22, 17, 9]
    mask = torch.arange(pos)[None, :] < torch.tensor(lengths)[:, None]
    xs[:, ~mask] = 1e3  # garbage in the padding must not matter
    got = cka_matrix(xs, ys, mask=mask)
    manual_x = [torch.cat([x[b, :n] for b, n in enumerate(lengths)]) for x in xs]
    manual_y = [torch.cat([y[b, :n] for b, n in enumerate(lengths)]) for y in ys]
    assert torch.allclose(got, cka_matrix(manual_x, manual_y), atol=1e-9)
    assert torch.allclose(got, ref_grid(ref_linear_cka, manual_x, manual_y), atol=1e-6)
    assert torch.allclose(minibatch_cka_matrix(xs, ys, mask=mask, batch_size=16, shuffle=False),
                          minibatch_cka_matrix(manual_x, manual_y, batch_size=16, shuffle=False), atol=1e-9)


def test_drop_first_removes_first_real_token_with_any_padding_side():
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(1, 3, 8, 5, generator=g)
    ys = torch.randn(1, 3, 8, 4, generator=g)
    right = torch.tensor([[1] * 8, [1] * 5 + [0] * 3, [1] * 6 + [0] * 2], dtype=torch.bool)
    left = right.flip(1)
    keep = keep_mask((3, 8), right, drop_first=True)
    assert keep.sum() == 19 - 3 and not keep[:, 0].any()
    keep = keep_mask((3, 8), left, drop_first=True)
    assert keep.sum() == 16 and not keep[1, 3] and keep[1, 4] and not keep[0, 0]
    manual = torch.cat([xs[0, b, 1:n] for b, n in enumerate([8, 5, 6])])
    assert torch.equal(token_matrix(xs[0], right, drop_first=True), manual)
    no_mask = cka_matrix(xs, ys, drop_first=True)
    assert torch.allclose(no_mask, cka_matrix([xs[0, :, 1:].reshape(-1, 5)], [ys[0, :, 1:].reshape(-1, 4)]))


# ------------------------------------------------------------------ permutation baseline


def test_permutation_null(layers):
    xs, ys = layers
    null = cka_permutation_null(xs, ys, n_permutations=8, seed=0)
    assert isinstance(null, PermutationNull) and null.null.shape == (8, 3, 2)
    assert torch.allclose(null.observed, cka_matrix(xs, ys), atol=1e-12)
    # one permuted copy by hand
    perm = torch.randperm(200, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(null.null[0], cka_matrix(xs, [y[perm] for y in ys]), atol=1e-9)
    # x layer 1 shares a signal with y layer 0: far above its null; unrelated pairs are not
    assert null.p_values[1, 0] == pytest.approx(1 / 9) and null.excess[1, 0] > 0.3
    assert null.p_values[0, 1] > 1 / 9
    assert (null.quantile(0.5) <= null.null.max(0).values).all() and (null.std > 0).all()
    grouped = cka_permutation_null(xs, ys, n_permutations=8, seed=0, max_bytes=1)  # one copy per pass
    assert torch.allclose(grouped.null, null.null, atol=1e-12)
    deb = cka_permutation_null(xs, ys, n_permutations=8, seed=0, debiased=True)
    assert torch.allclose(deb.observed, cka_matrix(xs, ys, debiased=True), atol=1e-12)
    assert deb.mean.abs().max() < 0.05  # debiased null sits at 0


# ------------------------------------------------------------------ bad input


def test_bad_input_is_refused_clearly(layers):
    xs, ys = layers
    with pytest.raises(SemalignError, match="at least 4 tokens"):
        cka_matrix([x[:3] for x in xs], [y[:3] for y in ys], debiased=True)
    with pytest.raises(SemalignError, match="at least 4 tokens"):
        minibatch_cka_matrix([x[:3] for x in xs], [y[:3] for y in ys])
    with pytest.raises(SemalignError, match="same token batch"):
        cka_matrix(xs, [y[:100] for y in ys])
    with pytest.raises(SemalignError, match="mask has shape"):
        cka_matrix(torch.zeros(2, 3, 4, 5), mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(SemalignError, match="already flattened"):
        cka_matrix(xs, ys, drop_first=True)
    with pytest.raises(SemalignError, match="NaN or inf"):
        cka_matrix([xs[0].clone().fill_(float("nan"))], ys)
    with pytest.raises(SemalignError, match="no variance"):
        cka_matrix([torch.ones(50, 4)], [torch.randn(50, 3)])
    with pytest.raises(SemalignError, match="precision"):
        cka_matrix(xs, ys, precision="float16")
    with pytest.raises(SemalignError, match="no layers"):
        cka_matrix([], ys)
    with pytest.raises(SemalignError, match="same tokens"):
        cka_matrix([xs[0], xs[1][:10]], ys)
    with pytest.raises(SemalignError, match="boolean"):
        cka_matrix(torch.zeros(1, 2, 3, 4), mask=torch.full((2, 3), 0.5))


# ------------------------------------------------------------------ tables and figures


def test_frames_and_heatmap(layers):
    import plotly.graph_objects as go

    from semalign_lens.lens.pairing import pair_proportional

    xs, ys = layers
    grid = cka_matrix(xs, ys)
    null = cka_permutation_null(xs, ys, n_permutations=4)
    frame = cka_frame(grid, ["embed", "0", "1"], ["0", "1"], null=null)
    assert len(frame) == 6 and {"teacher_layer", "student_layer", "cka", "p_value", "null_mean"} <= set(frame)
    assert frame.loc[(frame.teacher_index == 1) & (frame.student_index == 0), "cka"].item() == pytest.approx(
        grid[1, 0].item())
    wide = cka_wide(grid, residual_labels(2), residual_labels(2, include_embed=False))
    assert wide.shape == (3, 2) and list(wide.index) == ["embed", "0", "1"]

    pairing = pair_proportional(2, 2)  # teacher blocks 0, 1 <- rows 1, 2 (row 0 is "embed")
    fig = cka_heatmap(grid, ["0", "1"], residual_labels(2), title="CKA", pairs=pairing)
    assert isinstance(fig, go.Figure)
    assert fig.layout.coloraxis.cmin == 0 and fig.layout.coloraxis.cmax == 1
    assert fig.layout.xaxis.title.text == "student layer" and fig.layout.yaxis.title.text == "teacher layer"
    markers = fig.data[-1]
    assert list(markers.x) == [0, 1] and list(markers.y) == [1, 2]
    fig = cka_heatmap(grid, pairs=[(0.5, 1)])
    assert list(fig.data[-1].y) == [0.5]
    # other strategies: one trace each, in its own marker and legend entry, under the chosen pairing
    fig = cka_heatmap(grid, ["0", "1"], residual_labels(2), pairs=pairing, pairs_name="proportional (chosen)",
                      others={"cka": [(2, 0), (2, 1)], "attribution": [(1, 1)]})
    names = [t.name for t in fig.data[1:]]
    assert names == ["cka", "attribution", "proportional (chosen)"]
    assert len({t.marker.symbol for t in fig.data[1:]}) == 3 and list(fig.data[1].y) == [2, 2]
    with pytest.raises(SemalignError, match="labels"):
        cka_heatmap(grid, ["a"], None)


def test_cka_heatmap_stays_legible_for_deep_teachers():
    """31 teacher rows (SmolLM2's embed + 30 blocks): no cell text, and a height that gives each row ~18 px;
    a small map keeps its values in the cells."""
    deep = cka_heatmap(torch.rand(31, 7))
    assert deep.layout.height >= 31 * 18 and not deep.data[0].texttemplate
    small = cka_heatmap(torch.rand(4, 3))
    assert small.layout.height >= 360 and small.data[0].texttemplate


# ------------------------------------------------------------------ real (tiny) models


def test_tiny_models_teacher_by_student_grid(tiny_pair):
    from semalign_lens.data.tokens import tokenize
    from semalign_lens.lens.capture import capture

    batch = tokenize(tiny_pair.tokenizer, ["def f(x):\n    return x + 1", "import os\nprint(os.sep)",
                                           "class A:\n    pass"])
    teacher = capture(tiny_pair.teacher, batch, range(6), ("resid_pre", "resid_post"), progress=False)
    student = capture(tiny_pair.student, batch, range(3), ("resid_post",), progress=False)
    xs = [teacher.get("resid_pre", 0)] + [teacher.get("resid_post", b) for b in range(6)]
    ys = [student.get("resid_post", b) for b in range(3)]
    grid = cka_matrix(xs, ys, mask=batch.mask, drop_first=True)
    assert grid.shape == (7, 3) and ((grid >= 0) & (grid <= 1 + 1e-9)).all()
    manual = ref_grid(ref_linear_cka, [token_matrix(x, batch.mask, True) for x in xs],
                      [token_matrix(y, batch.mask, True) for y in ys])
    assert torch.allclose(grid, manual, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_device_option_matches_cpu(layers):
    xs, ys = layers
    assert torch.allclose(cka_matrix(xs, ys, device="cuda"), cka_matrix(xs, ys), atol=1e-6)
