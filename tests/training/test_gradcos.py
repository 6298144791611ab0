"""Gradient diagnostics (`training.gradcos`): the per-piece backward gives the one backward's gradients, the
cosine and norm ratio agree with a finite-difference directional derivative, and a run logs, draws and trains
exactly as without them."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from trainer_helpers import make_cfg, run

from semalign_lens.training.gradcos import Piece, backward_by_pieces, gradient_agreement
from semalign_lens.training.objectives import cosine_loss, kl_loss


def _toy(seed: int = 0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 9)).double()


def _pieces(model, x, target_h, teacher_logits):
    h = model[1](model[0](x))
    logits = model[2](h)
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    return [Piece("kl", None, kl_loss(logits, teacher_logits, mask), 1.0),  # the chunked KL's own backward
            Piece("cosine", 0, cosine_loss(h, target_h[0], mask), 0.7),
            Piece("cosine", 1, cosine_loss(h[..., :3], target_h[1], mask), 0.2)]


def test_backward_by_pieces_equals_one_backward_and_the_cosine_a_finite_difference():
    model = _toy()
    params = list(model.parameters())
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    target_h = (torch.randn(2, 5, 6, dtype=torch.float64), torch.randn(2, 5, 3, dtype=torch.float64))
    teacher = torch.randn(2, 5, 9, dtype=torch.float64)
    pieces = _pieces(model, x, target_h, teacher)
    (sum(p.scale * p.value for p in pieces) * 0.5).backward()
    want = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)
    records = backward_by_pieces(_pieces(model, x, target_h, teacher), params, 0.5, {"kl"})
    for p, w in zip(params, want, strict=True):
        assert torch.allclose(p.grad, w, atol=1e-12)
    assert [(r["term"], r["student_layer"]) for r in records] == [("cosine", 0), ("cosine", 1)]

    # independent check: d/dε L_kl(θ + ε·g) at 0 = ⟨∇L_kl, g⟩ by central differences of a float64 KL
    # written out here, g = the scaled layer gradient
    def kl_at(shift):
        with torch.no_grad():
            for p, s in zip(params, shift, strict=True):
                p.add_(s)
            log_q, log_p = torch.log_softmax(model(x), -1), torch.log_softmax(teacher, -1)
            value = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
            for p, s in zip(params, shift, strict=True):
                p.sub_(s)
        return value

    for record, piece in zip(records, _pieces(model, x, target_h, teacher)[1:], strict=True):
        grads = torch.autograd.grad(piece.value, params, allow_unused=True, retain_graph=True)
        g = [piece.scale * (torch.zeros_like(p) if t is None else t) for p, t in zip(params, grads, strict=True)]
        eps = 1e-6
        directional = (kl_at([eps * t for t in g]) - kl_at([-eps * t for t in g])) / (2 * eps)
        assert record["cos"] * record["grad_norm"] * record["reference_norm"] == pytest.approx(directional, rel=1e-4)
        assert record["norm_ratio"] == pytest.approx(record["grad_norm"] / record["reference_norm"])
        assert record["grad_norm"] == pytest.approx(float(torch.sqrt(sum((t ** 2).sum() for t in g))))


def test_agreement_of_parallel_opposite_and_missing_gradients():
    a = [torch.tensor([1.0, 2.0]), None]  # None: no gradient on that parameter (a zero one)
    assert gradient_agreement(a, [torch.tensor([2.0, 4.0]), None])["cos"] == pytest.approx(1.0)
    assert gradient_agreement(a, [torch.tensor([-1.0, -2.0]), None])["cos"] == pytest.approx(-1.0)
    other = gradient_agreement(a, [torch.tensor([2.0, 4.0]), torch.ones(3)])  # the reference moves more
    assert other["cos"] == pytest.approx(10 / (5 * 23) ** 0.5) and other["norm_ratio"] == pytest.approx((5 / 23) ** 0.5)
    none = gradient_agreement(a, [None, None])
    assert none["cos"] is None and none["norm_ratio"] is None and none["reference_norm"] == 0.0


def test_a_run_with_gradient_diagnostics_trains_the_same_student_and_draws_them(tmp_path, tiny_pair, tokens):
    from semalign_lens.reports.run import draw_run, gradcos_table

    terms = {"objective.terms": {"relation": 1.0, "lens_kl": 1.0, "kl": 1.0},
             "objective.options": {"lens_kl": {"anneal": "none"}}}
    plain = run(make_cfg(tmp_path / "a", **terms), tiny_pair, tokens)
    diag = run(make_cfg(tmp_path / "b", gradcos_every=1, figures=True, report=True, **terms), tiny_pair, tokens)
    # the same gradients (their norm per step, before clipping) and so, up to float32 rounding that AdamW's
    # normalisation carries into the weights, the same student
    grad_norms = [r.metrics().query("kind == 'train'")["grad_norm"].to_numpy() for r in (plain, diag)]
    assert grad_norms[1] == pytest.approx(grad_norms[0], rel=1e-5)
    for name, value in plain.student.state_dict().items():
        assert torch.allclose(value, diag.student.state_dict()[name], atol=1e-4), name
    records = diag.metrics().query("kind == 'gradcos'")
    assert len(records) == 6 * 2  # 6 steps, one active pair each, two layer terms
    assert records["cos"].between(-1, 1).all() and (records["norm_ratio"] > 0).all()
    assert sorted(set(records["student_layer"])) == [0, 1, 2]
    # at the last pair the lens term is the output KL itself (same readout, weight 1): parallel and equal
    last = records[(records["term"] == "lens_kl") & (records["student_layer"] == 2)]
    assert last["cos"].to_numpy() == pytest.approx(1.0, abs=1e-5)
    assert last["norm_ratio"].to_numpy() == pytest.approx(1.0, rel=1e-4)
    page = draw_run(diag).read_text()
    assert "Gradient agreement with the output KL" in page and (diag.run_dir / "figures" / "gradcos.html").exists()
    table = gradcos_table(diag.records)
    assert len(table) == 6 and (table["steps"] == 2).all()
