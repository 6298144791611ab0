"""Semantic bases: the pinv against closed forms, float32 accuracy, fold and centre, bad input, the cache."""

from __future__ import annotations

import types

import pytest
import torch
from semantics_helpers import F64, random_head

from semalign_lens.core.errors import SemalignError
from semalign_lens.lens.semantics import (
    SemanticBasis,
    TransferMap,
    decompose,
    most_frequent_tokens,
    recompose,
)


@pytest.mark.parametrize("method", ["cholqr2", "householder"])
def test_pinv_property(method):
    W_U = random_head()
    basis = SemanticBasis.from_unembedding(W_U, dtype=F64, method=method)
    W = W_U.T
    S_raw = basis.S * basis.norms
    assert torch.allclose(S_raw @ W, torch.eye(8, dtype=F64), atol=1e-12)  # S W = I_d
    P = W @ S_raw  # W S = orthogonal projector onto the column space of W (identity on it)
    assert torch.allclose(P, P.T, atol=1e-12) and torch.allclose(P @ P, P, atol=1e-12)
    assert torch.allclose(P @ W, W, atol=1e-12)
    assert torch.allclose(S_raw, torch.linalg.pinv(W), atol=1e-12)
    assert torch.allclose(basis.S.norm(dim=0), torch.ones(40, dtype=F64))


def test_float32_accuracy():
    W_U = random_head(d=16, V=300)
    s64 = SemanticBasis.from_unembedding(W_U, dtype=F64).S
    s32 = SemanticBasis.from_unembedding(W_U.float(), dtype=torch.float32).S
    assert ((s32.double() - s64).norm() / s64.norm()) < 1e-5


def test_fold_and_center_are_pinv_of_the_modified_head():
    W_U, g = random_head(), torch.linspace(0.5, 2.0, 8, dtype=F64)
    folded = SemanticBasis.from_unembedding(W_U, norm_weight=g, dtype=F64)
    expect = torch.linalg.pinv(W_U.T * g)
    assert torch.allclose(folded.S, expect / expect.norm(dim=0), atol=1e-12)
    W = W_U.T - W_U.T.mean(0)
    centred = SemanticBasis.from_unembedding(W_U, center=True, dtype=F64)
    assert torch.allclose(centred.S, torch.linalg.pinv(W) / torch.linalg.pinv(W).norm(dim=0), atol=1e-12)
    assert folded.key != centred.key != SemanticBasis.from_unembedding(W_U, dtype=F64).key


def test_model_without_unembedding():
    with pytest.raises(SemalignError, match="no unembedding.*from_unembedding"):
        SemanticBasis.from_model(types.SimpleNamespace(cfg=None))


def test_basis_for_another_model(tiny_pair, tiny_bases):
    teacher_basis = tiny_bases[0]
    with pytest.raises(SemalignError, match="d_model=64"):
        decompose(torch.randn(3, 32), teacher_basis)
    with pytest.raises(SemalignError, match="d_model=32.*from_model"):
        teacher_basis.check_model(tiny_pair.student)
    teacher_basis.check_model(tiny_pair.teacher)  # its own model passes
    W_U = tiny_pair.teacher.W_U.detach()
    tampered = SemanticBasis.from_unembedding(W_U * 1.001, norm_weight=torch.ones(64), name="tampered")
    with pytest.raises(SemalignError, match="other weights.*rebuild"):
        tampered.check_model(tiny_pair.teacher)
    with pytest.raises(SemalignError, match="tokens"):
        recompose(torch.randn(2, 10), teacher_basis)


def test_bad_token_subsets():
    W_U = random_head(d=4, V=20)
    for tokens, message in (([1, 2, 2, 3, 4], "repeats ids"), ([0, 1, 2, 20], "out of range"),
                            ([-1, 1, 2, 3], "out of range"), ([0, 1, 2], "at least d_model=4"),
                            ([0.5, 1, 2, 3], "integer")):
        with pytest.raises(SemalignError, match=message):
            SemanticBasis.from_unembedding(W_U, tokens=tokens)
    sub = SemanticBasis.from_unembedding(W_U, tokens=[5, 0, 7, 9, 11], dtype=F64)
    assert sub.token_ids.tolist() == [5, 0, 7, 9, 11]
    expect = torch.linalg.pinv(W_U.T[[5, 0, 7, 9, 11]])
    assert torch.allclose(sub.S, expect / expect.norm(dim=0), atol=1e-12)
    full = SemanticBasis.from_unembedding(W_U, dtype=F64)
    with pytest.raises(SemalignError, match="different tokens"):
        TransferMap(full, sub)


def test_most_frequent_tokens():
    assert most_frequent_tokens(torch.tensor([5.0, 1, 5, 3]), 3).tolist() == [0, 2, 3]
    with pytest.raises(SemalignError):
        most_frequent_tokens([1, 2], 3)


def test_rank_deficient_head():
    W_U = random_head(d=6, V=30)
    W_U[5] = W_U[4] * 2  # two identical directions: rank 5 < d_model 6
    with pytest.raises(SemalignError, match="rank-deficient"):
        SemanticBasis.from_unembedding(W_U, dtype=F64)


def test_basis_cache(tiny_pair, tmp_path, monkeypatch):
    import semalign_lens.lens.semantics.basis as basis_module

    monkeypatch.setenv("SEMALIGN_CACHE", str(tmp_path))
    first = SemanticBasis.from_model(tiny_pair.teacher)
    files = list((tmp_path / "bases").glob("*.safetensors"))
    assert len(files) == 1

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cached basis should have been loaded")

    monkeypatch.setattr(basis_module, "_pinv_qr", no_rebuild)
    second = SemanticBasis.from_model(tiny_pair.teacher)
    assert torch.equal(first.S, second.S) and first.key == second.key and second.model == first.model
    with pytest.raises(AssertionError):  # other options, other cache entry
        SemanticBasis.from_model(tiny_pair.teacher, fold_final_norm=False)
