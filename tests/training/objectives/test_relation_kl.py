"""`relation_kl` (MiniLMv2-style relation KL) against a by-hand float64 loop over heads, queries and keys, and its
one-pair rule."""

from __future__ import annotations

import math

import pytest
import torch

from semalign_lens.core.errors import SemalignError
from semalign_lens.lens.pairing import LayerPair
from semalign_lens.training.objectives import LayerInputs, StepContext, get_objective, relation_kl_loss
from semalign_lens.training.objectives.relation_kl import chosen_layer


def _relations_by_hand(h, mask, heads, b, a, i):
    """Relation distribution of query i in head a of sequence b over its allowed keys j <= i (real), float64."""
    x = h[b].double()
    x = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    d = x.shape[-1] // heads
    q = x[:, a * d:(a + 1) * d]
    keys = [j for j in range(i + 1) if mask[b, j]]
    scores = torch.stack([q[i] @ q[j] / math.sqrt(d) for j in keys])
    return torch.softmax(scores, 0)


@torch.no_grad()
def _by_hand(h_s, h_t, mask, heads):
    total, n = 0.0, 0
    for b in range(mask.shape[0]):
        for i in range(mask.shape[1]):
            if not mask[b, i]:
                continue
            for a in range(heads):
                p = _relations_by_hand(h_t, mask, heads, b, a, i)
                q = _relations_by_hand(h_s, mask, heads, b, a, i)
                total += float((p * (p.log() - q.log())).sum())
                n += 1
    return total / n


def test_relation_kl_equals_the_by_hand_kl_of_self_relations_of_two_widths():
    h_s, h_t = torch.randn(2, 5, 8, requires_grad=True), torch.randn(2, 5, 12) * 3
    mask = torch.tensor([[True] * 5, [True, True, False, True, False]])
    got = relation_kl_loss(h_s, h_t, mask, heads=2)
    assert got.item() == pytest.approx(_by_hand(h_s, h_t, mask, 2), rel=1e-5)
    got.backward()
    assert h_s.grad[1, 2].abs().max() == 0 and h_s.grad[0].abs().max() > 0  # padding takes no part
    # scale-free per token, and zero for the same geometry
    assert relation_kl_loss(h_t * 5.0, h_t, mask, heads=2).item() == pytest.approx(0.0, abs=1e-6)


def test_the_upper_middle_pair_is_chosen_and_every_other_pair_rests():
    assert chosen_layer([0, 1, 2, 3, 4, 5], 6, 0.75) == 4  # 3.75 -> 4
    assert chosen_layer([0, 2], 3, 0.75) == 2
    assert chosen_layer([0, 1, 2, 3], 4, 0.5) == 2  # a tie (1.5) goes deeper
    term = get_objective("relation_kl")
    pairs = tuple(LayerPair(k, 2 * k, 2 * k) for k in range(3))
    h_s, h_t = torch.randn(1, 4, 8, requires_grad=True), torch.randn(1, 4, 12)
    mask = torch.ones(1, 4, dtype=torch.bool)
    context = StepContext(0, 0.0, pairs, 3, torch.zeros(1, 4, dtype=torch.long), mask)

    def at(layer):
        return term.fn(LayerInputs(layer, h_s, h_s, h_s, h_s, mask, None, teacher_state=h_t, context=context),
                       **term.options({"heads": 4}))

    assert at(0).item() == 0.0 and at(1).item() == 0.0
    assert at(2).item() == pytest.approx(relation_kl_loss(h_s, h_t, mask, heads=4).item())
    with pytest.raises(SemalignError, match="heads = 3 does not divide the width 8"):
        relation_kl_loss(h_s, h_t, mask, heads=3)
