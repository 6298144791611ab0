"""Fixtures of the semantics tests: the output bases of the tiny teacher and student."""

from __future__ import annotations

import pytest

from semalign_lens.lens.semantics import SemanticBasis


@pytest.fixture(scope="module")
def tiny_bases(tiny_pair):
    return (SemanticBasis.from_model(tiny_pair.teacher, cache=False),
            SemanticBasis.from_model(tiny_pair.student, cache=False))
