"""Evaluation sets: deterministic and capped, unknown names refused, the teacher/student comparison table."""

from __future__ import annotations

import pytest
import torch

from semalign_lens import evaluation as ev
from semalign_lens.core.errors import SemalignError


def test_eval_sets_are_deterministic_and_capped(tiny_hf):
    _, _, tok = tiny_hf
    for name in ev.EVAL_SETS:
        a = ev.eval_set(name, tok, max_tokens=512, max_len=64)
        b = ev.eval_set(name, tok, max_tokens=512, max_len=64)
        assert torch.equal(a.batch.tokens, b.batch.tokens)
        assert a.n_tokens <= 2000
    with pytest.raises(SemalignError, match="valid: stdlib_val"):
        ev.eval_set("nope", tok)


def test_compare_table_has_both_models(tiny_pair):
    table = ev.compare_cross_entropy(tiny_pair.teacher, tiny_pair.student, ["pydoc"], max_tokens=256, max_len=64,
                                     progress=False)
    assert list(table["set"]) == ["pydoc"]
    row = table.iloc[0]
    assert row["gap"] == pytest.approx(row["student_ce"] - row["teacher_ce"])
    assert 0 < row["teacher_ce"] < 20 and 0 < row["student_ce"] < 20
