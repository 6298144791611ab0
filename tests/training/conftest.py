"""Fixtures of the trainer tests: a fixed batch of random token sequences for the tiny pair."""

from __future__ import annotations

import pytest
import torch

from semalign_lens.data.tokens import TokenBatch


@pytest.fixture(scope="module")
def tokens(tiny_pair):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, tiny_pair.student.cfg.d_vocab, (20, 16), generator=gen)
    return TokenBatch(ids, torch.ones_like(ids, dtype=torch.bool))
