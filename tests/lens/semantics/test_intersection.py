"""The cross-tokenizer pair end to end on the real models: ModelPair(vocab=...), intersection bases, maps."""

from __future__ import annotations

import pytest
import torch

from semalign_lens.core.errors import SemalignError
from semalign_lens.lens.semantics import SemanticBasis, TransferMap, intersection_bases, roundtrip
from semalign_lens.models.load import load_model
from semalign_lens.models.pair import ModelPair
from semalign_lens.models.readout import Readout

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def student8k():
    return load_model("stdlib-student-8k")


@pytest.fixture(scope="module")
def pair(smollm2, student8k):
    return ModelPair(smollm2, student8k, vocab="intersection")


def test_default_pairing_refuses_two_tokenizers_naming_both(smollm2, student8k):
    with pytest.raises(SemalignError, match=r"smollm2-135m has 49152 tokens, student stdlib-student-8k has 8192.*"
                                            r"vocab=\"intersection\""):
        ModelPair(smollm2, student8k)


def test_intersection_pair_states_its_coverage(pair):
    al = pair.alignment
    assert al.n_shared > 5000 and al.student_coverage > 0.5
    assert "shared tokens" in pair.describe().attrs["vocab"]
    with pytest.raises(SemalignError, match="two tokenizers"):
        _ = pair.tokenizer


def test_intersection_bases_follow_one_string_order(pair):
    t_basis, s_basis = intersection_bases(pair.teacher, pair.student, pair.alignment)
    assert t_basis.n_tokens == s_basis.n_tokens == pair.alignment.n_shared
    assert torch.equal(t_basis.token_ids, pair.alignment.teacher_ids)
    assert torch.equal(s_basis.token_ids, pair.alignment.student_ids)
    assert t_basis.vocab_key == s_basis.vocab_key == pair.alignment.key


def test_logits_map_is_least_squares_logit_matching_on_the_shared_strings(pair):
    """kind='logits' on the intersection = pinv(W_S[shared]) W_T[shared], checked with torch.linalg.lstsq."""
    t_basis, s_basis = intersection_bases(pair.teacher, pair.student, pair.alignment)
    m = TransferMap(t_basis, s_basis, kind="logits")
    from semalign_lens.models.readout import final_norm, unembedding

    def head(model, ids):
        return (unembedding(model).T * final_norm(model)["weight"]).double()[ids]  # [n_shared, d]

    W_T, W_S = head(pair.teacher, pair.alignment.teacher_ids), head(pair.student, pair.alignment.student_ids)
    h = torch.randn(5, pair.teacher.cfg.d_model, dtype=torch.float64)
    want = torch.linalg.lstsq(W_S, (h @ W_T.T).T).solution.T  # argmin_x ‖W_S x − W_T h‖
    assert torch.allclose(m(h.float()).double(), want, rtol=1e-3, atol=1e-3 * want.abs().max())


def test_restriction_keeps_logits_kind_exact_and_changes_the_paper_kind(pair):
    t_basis = intersection_bases(pair.teacher, pair.student, pair.alignment)[0]
    full = SemanticBasis.from_model(pair.teacher)
    h = torch.randn(8, pair.teacher.cfg.d_model)
    assert torch.allclose(roundtrip(h, t_basis, "logits"), h, atol=1e-3 * h.abs().max())
    paper_full, paper_shared = roundtrip(h, full, "paper"), roundtrip(h, t_basis, "paper")
    assert not torch.allclose(paper_full, paper_shared, atol=1e-3)


def test_full_and_intersection_bases_do_not_mix(pair, tmp_path):
    t_shared, s_shared = intersection_bases(pair.teacher, pair.student, pair.alignment)
    full_t = SemanticBasis.from_model(pair.teacher)
    with pytest.raises(SemalignError, match="full vocabulary and .* is an intersection basis"):
        TransferMap(full_t, s_shared)
    # a map saved on full bases, loaded for an intersection pair: refused by name
    same = ModelPair(pair.teacher, load_model("stdlib-student"))
    path = TransferMap(full_t, SemanticBasis.from_model(same.student)).save(tmp_path / "full.safetensors")
    with pytest.raises(SemalignError, match="built for the full vocabulary of teacher.*intersection basis"):
        TransferMap.load(path, teacher=t_shared)


def test_restricted_readout_reads_the_shared_columns(pair):
    ids = pair.alignment.teacher_ids
    read = Readout.from_model(pair.teacher)
    h = torch.randn(3, pair.teacher.cfg.d_model)
    assert torch.allclose(read.restricted(ids)(h), read(h)[:, ids], atol=1e-4)
