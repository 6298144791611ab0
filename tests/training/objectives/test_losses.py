"""Loss functions against explicit reference formulas (small tensors, float64 where it matters), masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semalign_lens.core.errors import SemalignError
from semalign_lens.training.objectives import (
    ce_loss,
    cosine_loss,
    cosine_onehot_loss,
    fisher_loss,
    fisher_quadratic,
    kl_loss,
    relation_loss,
)


def _mask(batch=3, pos=7):
    mask = torch.ones(batch, pos, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2, 3:] = False
    return mask


def _scramble_padding(x, mask):
    """Same tensor with garbage (large random values) at the padding positions."""
    y = x.clone()
    y[~mask] = torch.randn_like(y[~mask]) * 100
    return y


def test_cosine_matches_reference_and_ignores_padding():
    mask = _mask()
    h, t = torch.randn(3, 7, 5, dtype=torch.float64), torch.randn(3, 7, 5, dtype=torch.float64)
    ref = [1 - (h[b, i] @ t[b, i]) / (h[b, i].norm() * t[b, i].norm())
           for b in range(3) for i in range(7) if mask[b, i]]
    expected = torch.stack(ref).mean()
    got = cosine_loss(h, t, mask)
    assert torch.allclose(got.double(), expected, atol=1e-6)
    assert torch.allclose(cosine_loss(_scramble_padding(h, mask), _scramble_padding(t, mask), mask), got)


def test_cosine_gradient_does_not_reach_target():
    h = torch.randn(2, 4, 3, requires_grad=True)
    t = torch.randn(2, 4, 3, requires_grad=True)
    cosine_loss(h, t, torch.ones(2, 4, dtype=torch.bool)).backward()
    assert h.grad is not None and t.grad is None


def _relation_reference(x, y, mask):
    """½‖G_x/‖G_x‖ − G_y/‖G_y‖‖²_F per sequence with explicit token x token Grams over real tokens."""
    out = []
    for b in range(x.shape[0]):
        xs, ys = x[b, mask[b]].double(), y[b, mask[b]].double()
        if xs.shape[0] < 2:
            continue
        xs, ys = xs - xs.mean(0), ys - ys.mean(0)
        gx, gy = xs @ xs.T, ys @ ys.T
        out.append(0.5 * ((gx / gx.norm() - gy / gy.norm()) ** 2).sum())
    return torch.stack(out).mean()


@pytest.mark.parametrize("widths", [(3, 4), (16, 24)])  # token-space and feature-space branches
def test_relation_equals_frobenius_of_normalised_centred_grams(widths):
    mask = _mask()
    x, y = torch.randn(3, 7, widths[0]), torch.randn(3, 7, widths[1])
    got = relation_loss(x, y, mask)
    assert torch.allclose(got.double(), _relation_reference(x, y, mask), atol=1e-5)
    assert torch.allclose(relation_loss(_scramble_padding(x, mask), _scramble_padding(y, mask), mask), got, atol=1e-6)


def test_relation_is_scale_rotation_and_shift_invariant_and_zero_on_itself():
    mask = _mask()
    x = torch.randn(3, 7, 6, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    assert relation_loss(x, x, mask) < 1e-6
    assert relation_loss(3.0 * x @ q + 5.0, x, mask) < 1e-6
    assert relation_loss(x, torch.randn(3, 7, 9, dtype=torch.float64), mask) > 0.05


def test_relation_skips_sequences_with_fewer_than_two_tokens():
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, :4] = True
    mask[1, :1] = True  # a single token: no geometry
    x, y = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    got = relation_loss(x, y, mask)
    assert torch.allclose(got.double(), _relation_reference(x, y, mask), atol=1e-5)


def test_fisher_quadratic_equals_explicit_fisher_matrix():
    torch.manual_seed(1)
    z, zt = torch.randn(5, 11, dtype=torch.float64), torch.randn(5, 11, dtype=torch.float64)
    for i in range(5):
        p = torch.softmax(zt[i], -1)
        fisher = torch.diag(p) - torch.outer(p, p)
        d = z[i] - zt[i]
        assert torch.allclose(fisher_quadratic(z[i:i + 1], zt[i:i + 1])[0].double(), 0.5 * d @ fisher @ d, atol=1e-6)
    assert torch.allclose(fisher_quadratic(z + 7.0, zt), fisher_quadratic(z, zt), atol=1e-5)  # shift-invariant


@pytest.mark.parametrize("chunk", [1, 3, 512])
def test_fisher_loss_matches_reference_values_and_gradients(chunk):
    torch.manual_seed(2)
    mask = _mask()
    W = torch.randn(13, 4, dtype=torch.float64)
    lens = lambda h: h @ W.T  # noqa: E731  (a linear logit lens)
    h = torch.randn(3, 7, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 7, 4, dtype=torch.float64)
    got = fisher_loss(h, t, mask, lens, chunk=chunk)
    got.backward()
    h_ref = h.detach().clone().requires_grad_(True)
    vals = []
    for b, i in mask.nonzero().tolist():
        z, zt = lens(h_ref[b, i]), lens(t[b, i])
        p = torch.softmax(zt, -1)
        fisher = torch.diag(p) - torch.outer(p, p)
        vals.append(0.5 * (z - zt) @ fisher @ (z - zt))
    ref = torch.stack(vals).mean()
    ref.backward()
    assert torch.allclose(got.double(), ref, atol=1e-8)
    assert torch.allclose(h.grad, h_ref.grad, atol=1e-8)
    assert h.grad[~mask].abs().max() == 0  # padding gets no gradient


@pytest.mark.parametrize("train_head", [False, True])
def test_fused_fisher_with_a_logit_lens_matches_the_generic_path(train_head, monkeypatch):
    import semalign_lens.training.objectives as objectives
    from semalign_lens.models.readout import LogitLens

    monkeypatch.setattr(objectives.losses, "KL_CHUNK_ELEMENTS", 13 * 4)  # chunks of 4 rows: the chunking is exercised
    torch.manual_seed(6)
    mask = _mask()
    norm = torch.nn.LayerNorm(4, dtype=torch.float64)
    head = torch.nn.Linear(4, 13, bias=True, dtype=torch.float64)
    head.requires_grad_(train_head)
    lens = LogitLens(norm, head)
    h = torch.randn(3, 7, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 7, 4, dtype=torch.float64)
    fused = fisher_loss(h, t, mask, lens)
    fused.backward()
    grads = [h.grad.clone(), norm.weight.grad.clone()] + (
        [head.weight.grad.clone(), head.bias.grad.clone()] if train_head else [])
    h.grad = None
    norm.zero_grad()
    head.zero_grad()
    generic = fisher_loss(h, t, mask, lambda v: lens(v), chunk=5)
    generic.backward()
    ref = [h.grad, norm.weight.grad] + ([head.weight.grad, head.bias.grad] if train_head else [])
    assert torch.allclose(fused.double(), generic.double(), atol=1e-6)
    for a, b in zip(grads, ref, strict=True):
        assert torch.allclose(a.double(), b.double(), atol=1e-5)


def test_fisher_is_zero_at_the_target():
    W = torch.randn(9, 4)
    t = torch.randn(2, 3, 4)
    assert fisher_loss(t.clone(), t, torch.ones(2, 3, dtype=torch.bool), lambda h: h @ W.T) < 1e-7


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_kl_matches_torch_kl_div_both_directions(temperature):
    torch.manual_seed(3)
    mask = _mask()
    s, t = torch.randn(3, 7, 10), torch.randn(3, 7, 10)
    ls, lt = F.log_softmax(s[mask] / temperature, -1), F.log_softmax(t[mask] / temperature, -1)
    n = int(mask.sum())
    fwd = F.kl_div(ls, lt, log_target=True, reduction="sum") / n * temperature**2
    rev = F.kl_div(lt, ls, log_target=True, reduction="sum") / n * temperature**2
    assert torch.allclose(kl_loss(s, t, mask, "forward", temperature), fwd, atol=1e-5)
    assert torch.allclose(kl_loss(s, t, mask, "reverse", temperature), rev, atol=1e-5)
    assert torch.allclose(kl_loss(s, t, mask, "forward", temperature, scale_by_t2=False), fwd / temperature**2,
                          atol=1e-5)
    assert torch.allclose(kl_loss(_scramble_padding(s, mask), _scramble_padding(t, mask), mask, "forward",
                                  temperature), fwd, atol=1e-5)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("chunk", [1, 4, 256])
def test_kl_gradient_matches_autograd_reference(direction, chunk):
    torch.manual_seed(5)
    mask = _mask()
    s = torch.randn(3, 7, 10, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 7, 10, dtype=torch.float64)
    tau = 1.7
    kl_loss(s, t, mask, direction, tau, chunk=chunk).backward()
    s_ref = s.detach().clone().requires_grad_(True)
    ls, lt = F.log_softmax(s_ref[mask] / tau, -1), F.log_softmax(t[mask] / tau, -1)
    a, b = (lt, ls) if direction == "forward" else (ls, lt)
    ref = F.kl_div(b, a, log_target=True, reduction="sum") / int(mask.sum()) * tau**2
    ref.backward()
    assert torch.allclose(s.grad.double(), s_ref.grad, atol=1e-6)
    assert s.grad[~mask].abs().max() == 0


def test_kl_rejects_bad_options():
    s = torch.randn(1, 2, 3)
    with pytest.raises(SemalignError, match="direction"):
        kl_loss(s, s, torch.ones(1, 2, dtype=torch.bool), direction="sideways")
    with pytest.raises(SemalignError, match="temperature"):
        kl_loss(s, s, torch.ones(1, 2, dtype=torch.bool), temperature=0)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cosine_onehot_matches_explicit_one_hot(smoothing):
    torch.manual_seed(4)
    mask = _mask()
    logits, tokens = torch.randn(3, 7, 9, dtype=torch.float64), torch.randint(0, 9, (3, 7))
    ref = []
    for b in range(3):
        for i in range(6):
            if mask[b, i] and mask[b, i + 1]:
                y = F.one_hot(tokens[b, i + 1], 9).double() * (1 - smoothing) + smoothing / 9
                ref.append(1 - F.cosine_similarity(logits[b, i], y, dim=0))
    got = cosine_onehot_loss(logits, tokens, mask, label_smoothing=smoothing)
    assert torch.allclose(got.double(), torch.stack(ref).mean(), atol=1e-6)


def test_ce_matches_cross_entropy_on_supervised_positions():
    mask = _mask()
    logits, tokens = torch.randn(3, 7, 9), torch.randint(0, 9, (3, 7))
    valid = mask[:, :-1] & mask[:, 1:]
    expected = F.cross_entropy(logits[:, :-1][valid], tokens[:, 1:][valid])
    assert torch.allclose(ce_loss(logits, tokens, mask), expected)
    full = torch.ones_like(mask)
    assert torch.allclose(ce_loss(logits, tokens, full),
                          F.cross_entropy(logits[:, :-1].reshape(-1, 9), tokens[:, 1:].reshape(-1)))
