"""The cross-vocabulary output losses against explicit references (loops over plain Python lists)."""

from __future__ import annotations

import math

import pytest
import torch

from semalign_lens.core.errors import SemalignError
from semalign_lens.training.objectives import OutputInputs, get_objective, shared_kl_loss, uld_loss


def _probs(row: list[float], tau: float) -> list[float]:
    m = max(row)
    e = [math.exp((v - m) / tau) for v in row]
    return [v / sum(e) for v in e]


def test_shared_kl_equals_the_renormalised_kl_by_hand():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 7, dtype=torch.float64), torch.randn(2, 3, 11, dtype=torch.float64)
    s_ids, t_ids = torch.tensor([6, 0, 3, 2]), torch.tensor([1, 10, 4, 7])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    tau = 2.0
    expected = []
    for b in range(2):
        for p in range(3):
            if not mask[b, p]:
                continue
            q_s = _probs([s[b, p, i].item() for i in s_ids], tau)
            q_t = _probs([t[b, p, i].item() for i in t_ids], tau)
            expected.append(sum(a * math.log(a / c) for a, c in zip(q_t, q_s, strict=True)))
    want = tau ** 2 * sum(expected) / len(expected)
    assert shared_kl_loss(s, t, s_ids, t_ids, mask, temperature=tau).item() == pytest.approx(want, rel=1e-6)
    reverse = shared_kl_loss(s, t, s_ids, t_ids, mask, direction="reverse", temperature=tau, scale_by_t2=False)
    assert reverse.item() > 0 and reverse.item() != pytest.approx(want / tau ** 2)


def test_shared_kl_is_zero_when_the_shared_logits_agree_and_has_a_gradient():
    t = torch.randn(1, 4, 9)
    s = torch.zeros(1, 4, 5, requires_grad=True)
    ids_t, ids_s = torch.tensor([0, 2, 4]), torch.tensor([3, 1, 0])
    with torch.no_grad():
        s[0, :, ids_s] = t[0, :, ids_t] + 1.5  # a constant shift leaves the renormalised distribution alone
    loss = shared_kl_loss(s, t, ids_s, ids_t, torch.ones(1, 4, dtype=torch.bool))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    shared_kl_loss(s * 0.5, t, ids_s, ids_t, torch.ones(1, 4, dtype=torch.bool)).backward()
    assert s.grad is not None and s.grad[0, :, 2].abs().max() == 0  # unshared student logits get no gradient


def test_uld_equals_the_sorted_l1_by_hand():
    torch.manual_seed(1)
    s, t = torch.randn(2, 2, 5, dtype=torch.float64), torch.randn(2, 2, 8, dtype=torch.float64)
    mask = torch.tensor([[True, True], [False, True]])
    expected = []
    for b in range(2):
        for p in range(2):
            if mask[b, p]:
                ps = sorted(_probs(s[b, p].tolist(), 1.0), reverse=True) + [0.0] * 3
                pt = sorted(_probs(t[b, p].tolist(), 1.0), reverse=True)
                expected.append(sum(abs(a - c) for a, c in zip(ps, pt, strict=True)))
    assert uld_loss(s, t, mask).item() == pytest.approx(sum(expected) / 3, rel=1e-6)


def test_uld_ignores_token_identity():
    t = torch.randn(1, 3, 6)
    s = t[..., torch.randperm(6)]  # the same distribution on a permuted vocabulary
    assert uld_loss(s, t, torch.ones(1, 3, dtype=torch.bool)).item() == pytest.approx(0.0, abs=1e-6)


def test_registered_and_refusing_without_their_inputs():
    x = OutputInputs(logits=torch.randn(1, 2, 5), tokens=torch.zeros(1, 2, dtype=torch.long),
                     mask=torch.ones(1, 2, dtype=torch.bool), teacher_logits=torch.randn(1, 2, 7))
    with pytest.raises(SemalignError, match="shared_kl.*needs a cross-tokenizer pair's shared ids"):
        get_objective("shared_kl").fn(x, **get_objective("shared_kl").options(None))
    x.shared = (torch.tensor([0, 1]), torch.tensor([3, 4]))
    assert get_objective("shared_kl").fn(x, **get_objective("shared_kl").options(None)).item() >= 0
    assert get_objective("uld").fn(x, temperature=1.0).item() >= 0
    x.teacher_logits = None
    with pytest.raises(SemalignError, match="'uld' objective needs dense teacher logits"):
        get_objective("uld").fn(x, temperature=1.0)
