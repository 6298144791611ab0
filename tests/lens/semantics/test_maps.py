"""Decompose, recompose, transfer maps: the kinds on closed forms and real states, chunks, the Gram trick."""

from __future__ import annotations

import pytest
import torch
from semantics_helpers import F64, cos, random_head, resid

from semalign_lens.core.errors import SemalignError
from semalign_lens.lens.semantics import (
    KINDS,
    CoefficientGram,
    SemanticBasis,
    TransferMap,
    condition_report,
    decompose,
    fidelity,
    iter_decompose,
    recompose,
    roundtrip,
)
from semalign_lens.models.readout import Readout, logit_lens


def test_orthonormal_head_all_kinds_agree():
    Q = torch.linalg.qr(torch.randn(8, 8, dtype=F64))[0]
    basis = SemanticBasis.from_unembedding(Q, dtype=F64)  # W = Qᵀ orthogonal: pinv = Q, unit columns
    h = torch.randn(5, 8, dtype=F64)
    unit = h / h.norm(dim=-1, keepdim=True)
    a = {k: decompose(h, basis, k) for k in KINDS}
    assert torch.allclose(a["paper"], a["dual"]) and torch.allclose(a["logits"], h @ Q)
    assert torch.allclose(a["paper"], a["logits"] / h.norm(dim=-1, keepdim=True))
    for k in ("paper", "dual"):
        assert torch.allclose(recompose(a[k], basis, k), unit, atol=1e-12)
    assert torch.allclose(recompose(a["logits"], basis, "logits"), h, atol=1e-12)


def test_tight_frame_makes_the_paper_kind_exact():
    Q = torch.linalg.qr(torch.randn(8, 8, dtype=F64))[0]
    basis = SemanticBasis.from_unembedding(torch.cat([Q, Q], 1), dtype=F64)  # W = [Qᵀ; Qᵀ]: ŜŜᵀ = 2 I
    assert condition_report(basis)["frame_eig_ratio"] == pytest.approx(1.0)
    h = torch.randn(5, 8, dtype=F64)
    assert torch.all(cos(recompose(decompose(h, basis, "paper"), basis, "paper"), h) > 1 - 1e-12)


def test_paper_kind_is_not_exact_for_a_non_tight_frame():
    g = torch.Generator().manual_seed(1)
    W_U = torch.randn(8, 60, generator=g, dtype=F64) * torch.logspace(0, 1.5, 8, dtype=F64)[:, None]
    basis = SemanticBasis.from_unembedding(W_U, dtype=F64)
    assert condition_report(basis)["frame_eig_ratio"] > 10
    h = torch.randn(200, 8, generator=g, dtype=F64)
    c = cos(recompose(decompose(h, basis, "paper"), basis, "paper"), h)
    assert c.mean() < 0.999
    for kind in ("dual", "logits"):
        assert torch.all(cos(recompose(decompose(h, basis, kind), basis, kind), h) > 1 - 1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("kind", ["dual", "logits"])
def test_exact_kinds_on_random_states(kind, dtype):
    basis = SemanticBasis.from_unembedding(random_head(d=16, V=500, dtype=dtype), dtype=dtype)
    h = torch.randn(64, 16, dtype=dtype) * 30
    assert torch.all(cos(recompose(decompose(h, basis, kind), basis, kind), h) > 1 - 1e-6)


def test_roundtrip_operator_equals_explicit_composition():
    basis = SemanticBasis.from_unembedding(random_head(d=12, V=100), norm_weight=torch.rand(12, dtype=F64) + 0.5,
                                           dtype=F64)
    h = torch.randn(3, 4, 12, dtype=F64)
    for kind in KINDS:
        explicit = recompose(decompose(h, basis, kind), basis, kind)
        assert explicit.shape == h.shape
        assert torch.allclose(roundtrip(h, basis, kind), explicit, rtol=1e-9, atol=1e-12)


def test_logits_kind_is_the_models_own_logits():
    W_U, g, b_U = random_head(d=12, V=90), torch.rand(12, dtype=F64) + 0.5, torch.randn(90, dtype=F64)
    basis = SemanticBasis.from_unembedding(W_U, norm_weight=g, dtype=F64)
    readout = Readout(W_U=W_U, b_U=b_U, norm="rms", weight=g, eps=1e-6)
    h = torch.randn(7, 12, dtype=F64) * 5
    rms = (h.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt()
    assert torch.allclose(decompose(h, basis, "logits"), (readout(h) - b_U) * rms, rtol=1e-9, atol=1e-9)


def test_exact_kinds_on_real_states(tiny_pair, tiny_bases):
    teacher_basis = tiny_bases[0]
    states, _ = resid(tiny_pair.teacher, range(6))
    for h in states.values():
        for kind in ("dual", "logits"):
            assert torch.all(cos(recompose(decompose(h, teacher_basis, kind), teacher_basis, kind), h) > 1 - 1e-6)
        assert cos(recompose(decompose(h, teacher_basis, "paper"), teacher_basis, "paper"), h).mean() < 0.999


def dot_rounding_bound(x, S):
    """Largest difference between two float32 evaluations of every x·s in any summation order.

    Each order is within γ_d·Σ|x_i s_i| of the exact dot product (γ_d = d·u/(1−d·u), u = 2⁻²⁴; Higham,
    *Accuracy and Stability of Numerical Algorithms*, §3.1), so two orders differ by at most twice that.
    BLAS picks kernels (and so summation orders) by matrix width and CPU, which is why a chunked product
    need not equal the whole one bit for bit (it does on AVX-512, not on AVX2).
    """
    d, u = x.shape[-1], torch.finfo(torch.float32).eps / 2
    gamma = d * u / (1 - d * u)
    return 2 * gamma * (x.abs().double() @ S.abs().double())


def test_chunked_equals_unchunked(tiny_bases):
    from semalign_lens.lens.semantics.maps import _prepare

    basis = tiny_bases[0]
    h = torch.randn(15, basis.d_model) * 10
    for kind in KINDS:
        a = decompose(h, basis, kind, chunk_size=None)
        w = basis.analysis(kind)[1]
        bound = dot_rounding_bound(_prepare(h, basis, kind), basis.S) * (1 if w is None else w.abs().double())
        for chunk in (2, 3, 7, 383):  # 384 tokens: chunks of 383 leave one column, merged into the last
            chunked = decompose(h, basis, kind, chunk_size=chunk)
            assert ((chunked.double() - a.double()).abs() <= bound).all(), (kind, chunk)
            parts = list(iter_decompose(h, basis, kind, chunk_size=chunk))
            assert sum(cols.stop - cols.start for cols, _ in parts) == basis.n_tokens
            assert ((torch.cat([p for _, p in parts], 1).double() - a.double()).abs() <= bound).all()


def two_bases(V=60):
    teacher = SemanticBasis.from_unembedding(random_head(d=12, V=V, seed=1), dtype=F64, name="T")
    student = SemanticBasis.from_unembedding(random_head(d=8, V=V, seed=2), dtype=F64, name="S")
    return teacher, student


@pytest.mark.parametrize("kind", KINDS)
def test_transfer_map_is_decompose_then_recompose(kind):
    teacher, student = two_bases()
    tmap = TransferMap(teacher, student, kind=kind)
    assert tmap.matrix.shape == (8, 12) and tmap.matrix.dtype == torch.float32 and tmap.kind == kind
    h = torch.randn(2, 5, 12, dtype=F64)
    expect = recompose(decompose(h, teacher, kind), student, kind)
    assert torch.allclose(tmap(h), expect, rtol=1e-5, atol=1e-5 * expect.abs().max())
    if kind == "logits":  # least-squares logit matching: pinv(W_S) W_T
        W_T, W_S = random_head(d=12, V=60, seed=1).T, random_head(d=8, V=60, seed=2).T
        assert torch.allclose(tmap.matrix.double(), torch.linalg.pinv(W_S) @ W_T, rtol=1e-5, atol=1e-5)
    kept = TransferMap(teacher, student, kind=kind, preserve_norm=True)(h)
    assert torch.allclose(kept.norm(dim=-1), h.norm(dim=-1)) and torch.all(cos(kept, expect) > 1 - 1e-6)


def test_transfer_map_save_load(tmp_path):
    teacher, student = two_bases()
    tmap = TransferMap(teacher, student, kind="dual")
    path = tmap.save(tmp_path / "map")
    assert path.suffix == ".safetensors" and path.with_suffix(".json").exists()
    back = TransferMap.load(path, teacher=teacher, student=student)
    assert torch.equal(back.matrix, tmap.matrix) and back.to_dict() == tmap.to_dict()
    other = SemanticBasis.from_unembedding(random_head(d=12, V=60, seed=9), dtype=F64, name="other")
    with pytest.raises(SemalignError, match="built for teacher 'T'.*rebuild"):
        TransferMap.load(path, teacher=other)
    with pytest.raises(SemalignError, match="student"):
        TransferMap.load(path, student=teacher)


@pytest.mark.parametrize("kind", KINDS)
def test_gram_trick_equals_explicit(tiny_bases, kind):
    teacher, student = tiny_bases
    x_S, x_T = torch.randn(4, 6, 32, dtype=F64) * 3, torch.randn(4, 6, 64, dtype=F64) * 3
    a_S, a_T = decompose(x_S, student, kind).double(), decompose(x_T, teacher, kind).double()
    gram = CoefficientGram(student, teacher, kind=kind)
    explicit = {"inner": (a_S * a_T).sum(-1), "cosine": cos(a_S, a_T), "mse": (a_S - a_T).pow(2).mean(-1)}
    for name, value in explicit.items():
        got = getattr(gram, name)(x_S, x_T)
        assert got.shape == (4, 6)
        assert torch.allclose(got, value, rtol=1e-5, atol=1e-5 * value.abs().max()), name
    same = CoefficientGram(student, student, kind=kind)  # student vs a mapped target on the same basis
    y = torch.randn(3, 32, dtype=F64)
    a_y = decompose(y, student, kind).double()
    assert torch.allclose(same.cosine(x_S[0, :3], y), cos(a_S[0, :3], a_y), rtol=1e-5)


def test_gram_trick_is_differentiable(tiny_bases):
    teacher, student = tiny_bases
    gram = CoefficientGram(student, teacher)
    x_S = torch.randn(5, 32, requires_grad=True)
    (1 - gram.cosine(x_S, torch.randn(5, 64))).mean().backward()
    assert x_S.grad is not None and torch.isfinite(x_S.grad).all()


def test_nan_states_and_unknown_kind():
    basis = SemanticBasis.from_unembedding(random_head())
    h = torch.randn(4, 8)
    h[2, 1] = float("nan")
    for call in (lambda: decompose(h, basis), lambda: roundtrip(h, basis), lambda: fidelity(h, basis, metrics=("cosine",)),
                 lambda: recompose(torch.full((1, 40), float("inf")), basis)):
        with pytest.raises(SemalignError, match="NaN/inf"):
            call()
    with pytest.raises(SemalignError, match="unknown decomposition kind"):
        decompose(torch.randn(2, 8), basis, kind="cosine")


@pytest.mark.slow
def test_smollm2_exactness(smollm2):
    basis = SemanticBasis.from_model(smollm2, cache=False)
    states, logits = resid(smollm2, [14, 29])
    assert torch.allclose(logit_lens(smollm2, states[29]), logits, atol=1e-3)
    for h in states.values():
        h = h[1:]
        for kind in ("dual", "logits"):
            assert torch.all(cos(recompose(decompose(h, basis, kind), basis, kind), h) > 1 - 1e-6)
        assert 0.5 < cos(roundtrip(h, basis, "paper"), h).mean() < 0.95
