"""`interchange` (DIITO-style): the swap on the plain copy against TransformerLens's own hooks on the bridge, the
loss against a by-hand KL of those reference logits, and the draw of positions."""

from __future__ import annotations

import pytest
import torch

from semalign_lens.core.errors import SemalignError
from semalign_lens.lens.interchange import interchange_logits
from semalign_lens.models.plain import clean_copy
from semalign_lens.models.residuals import residual_states
from semalign_lens.training.objectives import interchange_loss
from semalign_lens.training.objectives.interchange import interchange_positions


def _bridge_swap(bridge, tokens, layer, source, where):
    """The reference: TransformerLens's hook on blocks.{layer}.hook_resid_post of the bridge."""
    def hook(resid, hook):
        return torch.where(where[..., None], source.to(resid.dtype), resid)

    with torch.no_grad():
        return bridge.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.hook_resid_post", hook)])


def test_positions_pair_each_sequence_with_its_predecessor_and_stay_on_real_tokens():
    mask = torch.ones(4, 10, dtype=torch.bool)
    mask[2, 7:] = False
    partner, where = interchange_positions(mask, 0.5, torch.Generator().manual_seed(0))
    assert partner.tolist() == [3, 0, 1, 2]
    assert not where[2, 7:].any() and not where[3, 7:].any()  # sequence 3 takes sequence 2's states
    again = interchange_positions(mask, 0.5, torch.Generator().manual_seed(0))[1]
    assert torch.equal(where, again) and 0.2 < where[mask].float().mean() < 0.8
    with pytest.raises(SemalignError, match="at least two sequences"):
        interchange_positions(mask[:1], 0.5, torch.Generator())


def test_the_swap_on_the_plain_copy_is_transformer_lens_s_swap_on_the_bridge(tiny_pair, tokens):
    teacher = tiny_pair.teacher
    plain = clean_copy(teacher, share_weights=True).eval()
    ids = tokens.tokens[:3]
    states = residual_states(plain, ids, [2])
    partner, where = interchange_positions(torch.ones_like(ids, dtype=torch.bool), 0.5,
                                           torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = interchange_logits(plain, ids, 2, states.post[2][partner], where)
        plain_run = plain(input_ids=ids).logits
    want = _bridge_swap(teacher, ids, 2, states.post[2][partner], where)
    assert torch.allclose(got, want, atol=1e-4)
    first = where.float().argmax(1)  # before a sequence's first swap nothing changes; after it, it does
    for b in range(3):
        assert torch.allclose(got[b, : first[b]], plain_run[b, : first[b]], atol=1e-5)
    assert not torch.allclose(got, plain_run, atol=1e-3)


def test_interchange_loss_is_the_kl_of_the_two_swapped_runs_by_hand(tiny_pair, tokens):
    teacher = clean_copy(tiny_pair.teacher, share_weights=True).eval()
    student = clean_copy(tiny_pair.student, share_weights=False).eval()
    ids, mask = tokens.tokens[:3], torch.ones(3, tokens.tokens.shape[1], dtype=torch.bool)
    t_states = residual_states(teacher, ids, [3])
    s_states = residual_states(student, ids, [1], keep_graph=True)
    partner, where = interchange_positions(mask, 0.3, torch.Generator().manual_seed(2))
    loss = interchange_loss(interchange_logits, student, teacher, ids, mask, 1, 3, s_states.post[1],
                            t_states.post[3], partner, where, temperature=2.0)
    # the reference: the bridges' own hooks, then KL(p_T || p_S) at tau = 2 times tau^2 by hand, from each
    # sequence's first swapped position on
    t = _bridge_swap(tiny_pair.teacher, ids, 3, t_states.post[3][partner], where).double()
    s = _bridge_swap(tiny_pair.student, ids, 1, s_states.post[1][partner].detach(), where).double()
    reached = where.cumsum(1) > 0
    log_p, log_q = torch.log_softmax(t[reached] / 2, -1), torch.log_softmax(s[reached] / 2, -1)
    by_hand = float((log_p.exp() * (log_p - log_q)).sum(-1).mean()) * 4
    assert loss.item() == pytest.approx(by_hand, rel=1e-4)
    # the gradient reaches the student through its base run and through the source states
    loss.backward()
    assert all(p.grad is not None for p in student.model.layers[0].parameters())
